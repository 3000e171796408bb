"""Balanced cuts (``--cuts balanced``): the cut points of K modules that minimise the peak
memory of a training step, found by an exact search over a cost model measured from the
training step itself on fake tensors.

The cost model (docs/measurement.md, "Balanced cuts"). A steady-state step of a local method
runs module after module: module k's forward (its units), its local loss (the auxiliary net
after its last unit), the loss's backward through the auxiliary net and the module's units;
module k+1 then starts from the detached output. So the live bytes at any moment of module k
are

* what is resident (parameters, buffers, momentum: the backbone's, the method's own, and the
  auxiliary nets of *every* cut, present from the first module on), the batch and the
  previous step's losses;
* what the earlier modules left: their gradients (created in their backward, since the step
  starts with ``zero_grad(set_to_none=True)``), their detached losses, and the boundary tensor
  (the input of module k);
* module k's own course: a sequence of pieces, each measured once in isolation as a *profile*
  (highest level above its start, net change at its end): each unit's forward, the auxiliary
  net's forward and backward up to the gradient of the cut's output, each unit's backward.

A unit's pieces depend on where it sits in its module: the first unit's input needs no
gradient (the boundary is detached), an inner unit's does; the last unit's output stays alive
(it is the next module's input), an inner unit's is freed once its backward is done. Each unit
is measured in those variants (:func:`measure`), each cut's auxiliary net once per distinct
net (AugLocal's depth changes with the module index). Profiles compose exactly
(:meth:`Profile.then`), so the peak of any split is the maximum over its modules, plus the
last step's tail (the accuracy count, the optimizer step's temporaries).

The search (:meth:`CostModel.search`) is a dynamic programme over (module, first unit) whose
states keep the Pareto front of (bytes left so far, highest level so far, resident bytes of
the chosen auxiliary nets, largest auxiliary parameter): the resident bytes of later cuts
raise every earlier module's level too, so a single number per state would not be exact. It
minimises the peak with CUDA's 512-byte rounding; ties go to the lexicographically smallest
cuts. :func:`balanced_cuts` confirms the choice with one fake-tensor estimate of the whole step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from locbench.data.base import DataInfo
from locbench.data.catalog import DATASETS
from locbench.errors import UserError
from locbench.harness.build import Resolved, build, hidden_units, resolve
from locbench.harness.fake import DeepcopyAsClone, fake_modes, fake_step_peak
from locbench.harness.precision import MixedPrecision, channels_last_input, to_channels_last
from locbench.harness.trainer import place
from locbench.measure.memory import MemoryTracker, round_up
from locbench.methods.base import Batch, Capabilities, Method, StepContext
from locbench.nets.backbone import Backbone, get_backbone
from locbench.nets.split import Split, check_K
from locbench.settings.run_config import RunConfig


@dataclass(frozen=True)
class Profile:
    """A piece of the step: ``peak`` is its highest live level above its start (>= 0: the
    level at its start was reached before), ``net`` the change at its end. Bytes."""

    peak: int = 0
    net: int = 0

    def then(self, other: Profile) -> Profile:
        """This piece followed by ``other``."""
        return Profile(max(self.peak, self.net + other.peak), self.net + other.net)

    @classmethod
    def of(cls, deltas: Iterable[int]) -> Profile:
        level = peak = 0
        for d in deltas:
            level += d
            peak = max(peak, level)
        return cls(peak, level)


def chain(pieces: Iterable[Profile]) -> Profile:
    out = Profile()
    for p in pieces:
        out = out.then(p)
    return out


#: Two measures of every quantity: bytes as is (``peak_bytes``) and with CUDA's 512-byte
#: rounding of each storage (``peak_bytes_rounded``, what the search minimises).
RAW, ROUNDED = 0, 1


@dataclass(frozen=True)
class UnitCosts:
    """One unit's pieces in one measure. ``forward[first]``: its forward, ``first`` when its
    input is a module's (detached) input. ``backward[first, last]``: its backward from the
    gradient of its output to the gradient of its input (or the end, when ``first``), its
    output kept (``last``: the module's output) or not."""

    forward: dict[bool, Profile]
    backward: dict[tuple[bool, bool], Profile]
    out_bytes: int  # its output's storage, freed when the next module's input is replaced


@dataclass(frozen=True)
class AuxCosts:
    """The local loss after a cut: ``profile`` from its forward to the gradient of the cut's
    output (gradients of its parameters and its kept loss included), ``resident`` its
    parameters, buffers, momentum and the previous step's loss, ``grads`` its parameters'
    gradients, ``opt_excess`` the optimizer step's temporaries for its largest parameter;
    ``after``: what the module's backward frees once through all its units."""

    profile: Profile
    resident: int
    grads: int
    opt_excess: int
    after: Profile = Profile()


@dataclass
class CostModel:
    """The peak of a step of one method on one net at one batch size, for any split into
    ``trained_K`` modules, in one measure (:data:`RAW` or :data:`ROUNDED`)."""

    n: int  # hidden units
    units: list[UnitCosts]  # hidden units 0..n-1, then the head
    aux: Callable[[int, int], AuxCosts]  # (last unit of module k, k) -> its local loss
    output: Profile  # the output loss and its backward to the logits' gradient
    output_after: Profile  # what the last module's backward frees once through
    tail: Profile  # after the last module: the accuracy count
    base: int  # resident backbone and method state, the batch, the last step's output loss
    backbone_grads: int
    opt_excess: int  # the optimizer step's temporaries for the backbone's largest parameter
    trained_K: int
    last_min_units: int = 1  # the last module's fewest hidden units (AugLocal's merged tail)

    # -- one split --------------------------------------------------------------------------

    def module(self, a: int, b: int, k: int) -> Profile:
        """Module ``k`` of hidden units ``a..b`` (with the head when ``b`` is the last unit)."""
        u = self.units
        fwd = chain(u[i].forward[i == a] for i in range(a, b + 1))
        last = b == self.n - 1
        if last:  # the head is the module's last unit and the output loss its "local loss"
            fwd = fwd.then(u[self.n].forward[False]).then(self.output)
            back = [u[self.n].backward[False, True]]
            back += [u[i].backward[i == a, False] for i in range(b, a - 1, -1)]
            back.append(self.output_after)
        else:
            aux = self.aux(b, k)
            fwd = fwd.then(aux.profile)
            back = [u[b].backward[b == a, True]]
            back += [u[i].backward[i == a, False] for i in range(b - 1, a - 1, -1)]
            back.append(aux.after)
        return fwd.then(chain(back))

    def peak(self, cuts: Sequence[int]) -> int:
        """The step's peak for the trained split cut after ``cuts`` (len ``trained_K - 1``)."""
        ends = [*cuts, self.n - 1]
        starts = [0, *(c + 1 for c in cuts)]
        aux = [self.aux(b, k) for k, b in enumerate(cuts)]
        resident = self.base + sum(x.resident for x in aux)
        # The first registered state: last step's gradients still there (freed by zero_grad).
        top = resident + self.backbone_grads + sum(x.grads for x in aux)
        level = resident
        for k, (a, b) in enumerate(zip(starts, ends)):
            p = self.module(a, b, k)
            top = max(top, level + p.peak)
            level += p.net - (self.units[a - 1].out_bytes if k else 0)  # the old input goes
        top = max(top, level + self.tail.peak)
        excess = max([self.opt_excess, *(x.opt_excess for x in aux)])
        return max(top, level + self.tail.net + excess)

    # -- the search ---------------------------------------------------------------------------

    def search(self) -> tuple[tuple[int, ...], int]:
        """The cuts of ``trained_K`` modules with the least :meth:`peak`, and that peak."""
        n, K = self.n, self.trained_K
        if K == 1:
            return (), self.peak(())
        # front[a]: prefixes of k modules whose next module starts at unit a, as
        # (left, highest, resident, excess, cuts); everything relative to self.base.
        front: dict[int, list[tuple]] = {0: [(0, 0, 0, self.opt_excess, ())]}
        for k in range(K - 1):
            nxt: dict[int, list[tuple]] = {}
            room = (K - 2 - k) + self.last_min_units  # hidden units the later modules need
            for a in sorted(front):
                free = self.units[a - 1].out_bytes if k else 0
                for b in range(a, n - room):
                    p = self.module(a, b, k)
                    x = self.aux(b, k)
                    for left, high, res, exc, cuts in front[a]:
                        entry = (
                            left + p.net - free,
                            max(high, left + p.peak),
                            res + x.resident,
                            max(exc, x.opt_excess),
                            (*cuts, b),
                        )
                        nxt.setdefault(b + 1, []).append(entry)
            front = {a: pareto(entries) for a, entries in nxt.items()}
        best: tuple[int, tuple[int, ...]] | None = None
        for a in sorted(front):
            if n - a < self.last_min_units:
                continue
            p = self.module(a, n - 1, K - 1)
            free = self.units[a - 1].out_bytes
            for left, high, res, exc, cuts in front[a]:
                end = left + p.net - free
                value = res + max(
                    high, left + p.peak, end + self.tail.peak, end + self.tail.net + exc
                )
                if best is None or (value, cuts) < best:
                    best = (value, cuts)
        assert best is not None
        value, cuts = best
        return cuts, self.base + value


def pareto(entries: list[tuple]) -> list[tuple]:
    """The entries no other entry beats in all four numbers (ties: the smaller cuts stay)."""
    entries.sort(key=lambda e: (e[:4], e[4]))
    kept: list[tuple] = []
    for e in entries:
        if not any(all(o[i] <= e[i] for i in range(4)) for o in kept):
            kept.append(e)
    return kept


# -- measuring the pieces ------------------------------------------------------------------------


class _Probe:
    """What the two autograd markers below report to."""

    def __init__(self, tracker: MemoryTracker) -> None:
        self.tracker = tracker
        self.start: int | None = None  # after the output's gradient is allocated
        self.sink: int | None = None  # when the input's gradient is complete
        self.skip: set[int] = set()  # scaffolding storages
        self.sink_uid: int | None = None  # the input's gradient


class _Sink(torch.autograd.Function):
    """Identity on an input that needs a gradient; its backward notes the moment that gradient
    is complete (where the unit before would take it) and drops it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, probe: _Probe) -> torch.Tensor:
        ctx.probe = probe
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        probe = ctx.probe
        if probe.sink is None:
            probe.sink = probe.tracker.mark()
            probe.sink_uid = probe.tracker.uid(grad)  # the unit before frees it
        return None, None


class _GradSource(torch.autograd.Function):
    """Identity on a unit's output; its backward allocates the output's gradient as a fresh
    tensor (as the next unit's backward or the local loss's would) and notes the moment."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, probe: _Probe) -> torch.Tensor:
        ctx.probe, ctx.like = probe, (x.shape, x.stride(), x.dtype, x.device)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        shape, stride, dtype, device = ctx.like
        probe = ctx.probe
        uid = probe.tracker.uid(grad)
        if uid is not None:
            probe.skip.add(uid)
        out = torch.empty_strided(shape, stride, dtype=dtype, device=device)
        probe.start = probe.tracker.mark()
        return out, None


def _like(t: torch.Tensor, requires_grad: bool = False) -> torch.Tensor:
    return torch.empty_strided(
        t.shape, t.stride(), dtype=t.dtype, device=t.device, requires_grad=requires_grad
    )


def _state(tensors: Iterable[torch.Tensor]) -> tuple[int, int]:
    """Bytes of distinct storages, as is and rounded."""
    sizes = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}
    return sum(sizes.values()), sum(round_up(s) for s in sizes.values())


def _both(deltas: list[tuple[int, int]]) -> tuple[Profile, Profile]:
    return Profile.of(d[RAW] for d in deltas), Profile.of(d[ROUNDED] for d in deltas)


def _param_costs(modules: Iterable[nn.Module]) -> tuple[tuple[int, int], ...]:
    """(resident, grads, opt_excess) in both measures: parameters and momentum, buffers."""
    params = {id(p): p for m in modules for p in m.parameters()}
    buffers = {id(b): b for m in modules for b in m.buffers()}
    p_raw, p_rnd = _state(params.values())
    b_raw, b_rnd = _state(buffers.values())
    sizes = [p.untyped_storage().nbytes() for p in params.values()]
    return (
        (2 * p_raw + b_raw, 2 * p_rnd + b_rnd),
        (p_raw, p_rnd),
        (2 * max(sizes, default=0), 2 * round_up(max(sizes, default=0))),
    )


@dataclass
class _Measured:
    """Everything :func:`measure` found, in both measures (index RAW / ROUNDED)."""

    n: int
    units: list[tuple[UnitCosts, UnitCosts]]
    aux: dict[tuple[int, int], tuple[AuxCosts, AuxCosts]]
    output: tuple[Profile, Profile]
    output_after: tuple[Profile, Profile]
    tail: tuple[Profile, Profile]
    base: tuple[int, int]
    backbone_grads: tuple[int, int]
    opt_excess: tuple[int, int]
    trained_K: int
    last_min_units: int

    def model(self, measure: int = ROUNDED) -> CostModel:
        def aux(b: int, k: int) -> AuxCosts:
            return self.aux[b, k][measure]

        return CostModel(
            self.n,
            [u[measure] for u in self.units],
            aux,
            self.output[measure],
            self.output_after[measure],
            self.tail[measure],
            self.base[measure],
            self.backbone_grads[measure],
            self.opt_excess[measure],
            self.trained_K,
            self.last_min_units,
        )


def supports(method_cls: type[Method]) -> str | None:
    """Why the cost model cannot describe ``method_cls`` (None when it can)."""
    hooks = ("forward_module", "boundary", "overlap", "after_backward", "after_step")
    overridden = [name for name in hooks if getattr(method_cls, name) is not getattr(Method, name)]
    if overridden:
        return (
            f"method {method_cls.name or method_cls.__name__!r} overrides "
            f"{' and '.join(overridden)} (e.g. checkpointed, attached, overlapping modules or "
            "state kept across steps), which the cost model of plain, detached, stateless "
            "modules does not describe"
        )
    if method_cls.capabilities != Capabilities():
        return (
            f"method {method_cls.name or method_cls.__name__!r} declares "
            f"{method_cls.capabilities}, which the cost model does not describe"
        )
    return None


def trained_modules(run: Resolved, n: int, K: int) -> tuple[int, int]:
    """(modules the method trains when asked for K, fewest hidden units of its last module):
    a method's ``plan_split`` may keep a prefix of the requested modules (AugLocal merges its
    last d + 1 into the output module) or one module (BP)."""
    check_K(K, n)
    asked = Split.uniform(n, K)
    planned = run.method_cls.plan_split(asked, run.params)
    if planned.K == 1:
        return 1, 1
    if planned.starts != asked.starts[: planned.K]:
        raise UserError(
            f"--cuts balanced: method {run.config.method!r} changes the requested split in a way "
            "the search does not model (it keeps no prefix of the requested modules)"
        )
    return planned.K, K - planned.K + 1


def measure(
    run: Resolved,
    K: int,
    batch_size: int,
    image_size: int | None = None,
    num_classes: int = 10,
    net: Callable[[int], Backbone] | None = None,
) -> _Measured:
    """The pieces of a step of ``run``'s method on its net, for splits into K requested
    modules, at ``batch_size``, measured on fake tensors as ``locbench estimate`` runs."""
    config = run.config
    why = supports(run.method_cls)
    if why is not None:
        raise UserError(f"--cuts balanced: {why}; give --K or --cuts instead")
    with fake_modes(run):
        torch.manual_seed(config.seed)
        backbone = (net or (lambda c: get_backbone(config.net, c)))(num_classes)
        if image_size is not None and image_size != backbone.input_shape[1]:
            shape = (backbone.input_shape[0], image_size, image_size)
            backbone = Backbone(backbone.name, list(backbone.units), shape, backbone.specs)
        n = backbone.n_hidden
        trained_K, last_min = trained_modules(run, n, K)
        device, dtype = torch.device("cpu"), getattr(torch, config.dtype)
        units = [place(u, device, dtype) for u in backbone.units]
        if config.channels_last:
            for u in units:
                to_channels_last(u)
        amp = MixedPrecision(config.precision, device, fake=True)
        c = backbone.input_shape[0]
        data = DataInfo("placeholder", num_classes, backbone.input_shape, (0.5,) * c, (0.25,) * c)
        x = torch.empty(batch_size, *backbone.input_shape, dtype=dtype)
        if config.channels_last:  # as the trainer's to_device and train_step leave it
            if x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            x = channels_last_input(x)
        y = torch.zeros(batch_size, dtype=torch.long)
        batch = Batch(x, y, StepContext(lr=config.lr or 0.1))
        # Each unit's output as a run's step makes it (dtype and layout under autocast).
        outs = []
        with torch.no_grad(), amp.autocast():
            h = x
            for u in units:
                h = u(h)
                outs.append(h)
        inputs = [x, *outs[:-1]]

        measured_units = []
        for i, unit in enumerate(units):
            head = i == n
            variants = [(f, last) for f in (True, False) for last in (True, False)]
            if i == 0:
                variants = [(True, last) for last in (True, False)]
            if head:
                variants = [(False, True)]
            elif i == n - 1:  # the last hidden unit is always followed by the head
                variants = [(f, False) for f in ((True, False) if i else (True,))]
            fwd: dict[bool, tuple[Profile, Profile]] = {}
            bwd: dict[tuple[bool, bool], tuple[Profile, Profile]] = {}
            for first, last in variants:
                fwd[first], bwd[first, last] = _unit_pieces(unit, inputs[i], first, last, amp)
            out_bytes = outs[i].untyped_storage().nbytes()
            measured_units.append(
                tuple(
                    UnitCosts(
                        {f: p[m] for f, p in fwd.items()},
                        {v: p[m] for v, p in bwd.items()},
                        (out_bytes, round_up(out_bytes))[m],
                    )
                    for m in (RAW, ROUNDED)
                )
            )

        method_cls, params = run.method_cls, run.params
        planned = method_cls.plan_split(Split.uniform(n, K), params)
        reference = method_for_split(planned, method_cls, backbone, data, params)
        output, output_after, _ = _loss_piece(
            lambda o: reference.output_loss(o, batch), outs[-1], amp, reference, (x, y)
        )
        tail = _tail_piece(outs[-1], y)
        backbone_state = _param_costs(units)
        own = _param_costs([reference])
        in_aux = _param_costs(
            [m for k in range(reference.split.K - 1) for m in reference.aux_modules(k)]
        )
        x_state, y_state = _state([x]), _state([y])
        # the last step's output loss and accuracy count: 0-dim float32 and int64
        last_losses = (4 + 8, 2 * round_up(4))
        base = tuple(
            backbone_state[0][m] + own[0][m] - in_aux[0][m] + x_state[m] + y_state[m]
            + last_losses[m]
            for m in (RAW, ROUNDED)
        )  # fmt: skip

        # Every cut's local loss, measured once per distinct auxiliary net.
        by_net: dict[str, tuple[AuxCosts, AuxCosts]] = {}
        by_cut: dict[tuple[int, int], tuple[AuxCosts, AuxCosts]] = {}
        for k in range(trained_K - 1):
            room = (trained_K - 2 - k) + last_min
            for b in range(k, n - room):
                # a split of trained_K modules whose module k ends at b
                cuts = [*range(b - k, b + 1), *range(b + 1, b + trained_K - k - 1)]
                split = Split(n, (0, *(c + 1 for c in cuts)))
                method = method_for_split(split, method_cls, backbone, data, params)
                if config.channels_last:
                    to_channels_last(method)
                modules = method.aux_modules(k)
                key = json.dumps([b, [repr(m) for m in modules]])
                if key not in by_net:
                    piece, after, loss = _loss_piece(
                        functools.partial(_local_loss, method, k, batch),
                        outs[b],
                        amp,
                        method,
                        (x, y),
                    )
                    resident, grads, excess = _param_costs(modules)
                    loss_bytes = (loss, round_up(loss))
                    by_net[key] = tuple(
                        AuxCosts(
                            piece[m], resident[m] + loss_bytes[m], grads[m], excess[m], after[m]
                        )
                        for m in (RAW, ROUNDED)
                    )
                by_cut[b, k] = by_net[key]

        return _Measured(
            n,
            measured_units,
            by_cut,
            output,
            output_after,
            tail,
            base,
            backbone_state[1],
            backbone_state[2],
            trained_K,
            last_min,
        )


def _local_loss(method: Method, k: int, batch: Batch, out: torch.Tensor) -> torch.Tensor | None:
    return method.local_loss(k, out, batch)


def method_for_split(
    split: Split, method_cls: type[Method], backbone: Backbone, data: DataInfo, params: object
) -> Method:
    with DeepcopyAsClone():
        method = method_cls(backbone, split, data, params)
    return place(method, torch.device("cpu"), torch.float32)


def _unit_pieces(
    unit: nn.Module, like: torch.Tensor, first: bool, last: bool, amp: MixedPrecision
) -> tuple[tuple[Profile, Profile], tuple[Profile, Profile]]:
    """A unit's forward and backward pieces in one variant (see :class:`UnitCosts`)."""
    unit.train()
    # A first, untracked pass: the first call of an op on fake tensors may allocate what
    # later calls do not (e.g. a BatchNorm's step counter); a run's step is a later one.
    with amp.autocast():
        out = unit(_like(like, requires_grad=not first))
    _clear(unit, out.float().sum())
    tracker = _tracker([unit])
    probe = _Probe(tracker)
    with tracker:
        leaf = _like(like, requires_grad=not first)
        h = leaf if first else _Sink.apply(leaf, probe)
        m0 = tracker.mark()
        with amp.autocast():
            out = unit(h)
        m1 = tracker.mark()
        loss = _GradSource.apply(out, probe).sum()
        probe.skip.add(tracker.uid(loss))
        kept = out if last else None
        del out
        dropped = tracker.mark()  # an output nothing in the unit saves is freed here
        loss.backward()
        end = tracker.mark() if first else probe.sink
        forward = tracker.deltas(m0, m1)
        backward = tracker.deltas(m1, dropped, probe.skip)
        backward += tracker.deltas(probe.start, end, probe.skip)
        del kept, loss, h, leaf
    for p in unit.parameters():
        p.grad = None
    return _both(forward), _both(backward)


def _loss_piece(
    loss_fn: Callable[[torch.Tensor], torch.Tensor | None],
    like: torch.Tensor,
    amp: MixedPrecision,
    owner: nn.Module,
    extra: Sequence[torch.Tensor] = (),
) -> tuple[tuple[Profile, Profile], tuple[Profile, Profile], int]:
    """A loss on a module's output: its forward and its backward up to the output's gradient
    (the loss itself kept, as the harness keeps it detached); what the backward frees at its
    very end; and the loss's bytes."""
    with amp.autocast():  # untracked first pass, as in _unit_pieces
        loss = loss_fn(_like(like, requires_grad=True))
    if loss is not None:
        _clear(owner, loss)
    tracker = _tracker([owner], extra)
    probe = _Probe(tracker)
    with tracker:
        leaf = _like(like, requires_grad=True)
        h = _Sink.apply(leaf, probe)
        m0 = tracker.mark()
        with amp.autocast():
            loss = loss_fn(h)
        if loss is None:
            raise UserError(
                "--cuts balanced: the method has no local loss (local_loss returned None): its "
                "modules do not train one after another; give --K or --cuts instead"
            )
        amp.backward(loss)
        piece = tracker.deltas(m0, probe.sink)
        # what the backward frees once it is through (the loss's seed gradient)
        after = tracker.deltas(probe.sink, None, {*probe.skip, probe.sink_uid})
        size = loss.untyped_storage().nbytes()
        del loss, h, leaf
    for p in owner.parameters():
        p.grad = None
    return _both(piece), _both(after), size


def _tracker(modules: Sequence[nn.Module], tensors: Sequence[torch.Tensor] = ()) -> MemoryTracker:
    """A tracker that knows what exists before the step, as a run's memory window does: a view
    of a parameter (a transposed weight) or an in-place update of a buffer is not new."""
    tracker = MemoryTracker()
    for m in modules:
        tracker.register([*m.parameters(), *m.buffers()], "parameters")
    tracker.register(tensors, "other")
    return tracker


def _clear(owner: nn.Module, loss: torch.Tensor) -> None:
    """Backward of ``loss``, then no gradients on ``owner``: as the step starts."""
    loss.backward()
    for p in owner.parameters():
        p.grad = None


def _tail_piece(logits: torch.Tensor, y: torch.Tensor) -> tuple[Profile, Profile]:
    """After the last module: the step's accuracy count, as the trainer makes it."""
    tracker = _tracker([], [y])
    with tracker:
        h = _like(logits)
        m0 = tracker.mark()
        correct = (h.argmax(1) == y).sum()
        piece = tracker.deltas(m0)
        del correct
    return _both(piece)


# -- the setting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BalancedCuts:
    """What ``--cuts balanced`` found: the record's ``balanced_cuts``."""

    K: int  # modules asked for
    cuts: tuple[int, ...]  # the K - 1 cut points, as --cuts takes them
    trained_K: int  # modules the method trains (AugLocal: K - depth; BP: 1)
    batch_size: int
    image_size: int
    # the cost model's peak of the chosen split (None when nothing was searched: BP)
    model_peak_bytes: int | None
    model_peak_bytes_rounded: int | None
    estimated_peak_bytes: int  # one fake-tensor estimate of the chosen split (the check)
    estimated_peak_bytes_rounded: int
    search_s: float

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cuts"] = list(self.cuts)
        return d


def requested_cuts(trained: Sequence[int], K: int, n: int) -> tuple[int, ...]:
    """The K - 1 requested cuts whose first ``len(trained)`` are the trained split's; the rest
    (modules a method merges, e.g. AugLocal's last d) as early as they can be."""
    cuts = list(trained)
    nxt = (cuts[-1] + 1) if cuts else 0
    while len(cuts) < K - 1:
        cuts.append(nxt)
        nxt += 1
    if cuts and cuts[-1] > n - 2:
        raise UserError(f"--cuts balanced: no {K - 1} cuts fit {n} hidden units")
    return tuple(cuts)


def search_key(config: RunConfig) -> str:
    """What the balanced cuts of ``config`` depend on, as text (the cache's key)."""
    classes = DATASETS.get(config.dataset).num_classes
    keep = ("method", "method_params", "net", "K", "batch_size", "dtype", "precision")
    d = {name: getattr(config, name) for name in keep}
    return json.dumps({**d, "channels_last": config.channels_last, "classes": classes},
                      sort_keys=True, default=str)  # fmt: skip


_FOUND: dict[str, BalancedCuts] = {}


def found(config: RunConfig) -> BalancedCuts | None:
    """The search's result for ``config`` if it ran in this process and chose its cuts."""
    result = _FOUND.get(search_key(config))
    return result if result is not None and result.cuts == config.cuts else None


def balanced_cuts(config: RunConfig) -> BalancedCuts:
    """The balanced cuts of ``config`` (``cuts = "balanced"``, K and the batch size set): at
    its batch size, with its dataset's classes, at its net's image size. Searched once per
    process for everything that changes the answer (:func:`search_key`)."""
    if config.K is None:
        raise UserError("--cuts balanced needs --K")
    key = search_key(config)
    if key not in _FOUND:
        _FOUND[key] = search(config)
    return _FOUND[key]


def search(config: RunConfig) -> BalancedCuts:
    """Measure the pieces, search, and check the choice with one estimate of the step."""
    t0 = time.perf_counter()
    classes = DATASETS.get(config.dataset).num_classes
    plain = dataclasses.replace(config, cuts=None, cuts_balanced=False)
    run = resolve(plain)
    K, batch = config.K, config.batch_size
    n = hidden_units(config.net)
    trained_K, _ = trained_modules(run, n, K)
    model_raw = model_rounded = None
    if trained_K == 1:  # one module whatever the cuts (BP): nothing to balance
        cuts = tuple(Split.uniform(n, K).starts[1:])
        cuts = tuple(c - 1 for c in cuts)
    else:
        measured = measure(run, K, batch, None, classes)
        trained, model_rounded = measured.model(ROUNDED).search()
        model_raw = measured.model(RAW).peak(trained)
        cuts = requested_cuts(trained, K, n)
    check = resolve(dataclasses.replace(config, cuts=cuts, cuts_balanced=True))
    with torch.device("meta"):
        image_size = build(check, num_classes=classes)[0].input_shape[1]
    estimated = fake_step_peak(check, batch, None, classes)
    return BalancedCuts(
        K=K,
        cuts=cuts,
        trained_K=trained_K,
        batch_size=batch,
        image_size=image_size,
        model_peak_bytes=model_raw,
        model_peak_bytes_rounded=model_rounded,
        estimated_peak_bytes=estimated.peak_bytes,
        estimated_peak_bytes_rounded=estimated.peak_bytes_rounded,
        search_s=round(time.perf_counter() - t0, 3),
    )
