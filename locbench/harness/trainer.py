"""The local-learning harness: K gradient-isolated modules trained by one loop for every method.

The harness, never the model's ``forward``, calls ``backward()``: module k runs forward, its
local loss is backpropagated at once (freeing its graph), and a detached output feeds module
k+1. The last module ends in the output head and trains on the task loss. With K = 1 this is
plain end-to-end backpropagation. The step is :meth:`LocalTrainer.train_step`; the loop that
runs it is :func:`locbench.harness.loop.fit`, the measured windows :mod:`locbench.harness.windows`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from locbench.data.base import Loader
from locbench.errors import UserError
from locbench.harness.distributed import GradSync, Ranks, global_batchnorm
from locbench.harness.optim import make_sgd
from locbench.harness.precision import MixedPrecision, channels_last_input, to_channels_last
from locbench.measure.memory import MemoryTracker
from locbench.measure.meters import PhaseClock
from locbench.methods.base import Batch, Method, ModulesView, Paths, StepContext
from locbench.nets.backbone import Backbone
from locbench.nets.split import Split
from locbench.settings.run_config import RunConfig, TrainSettings

#: Learning rate of a trainer built outside a run for a configuration that sets none.
PROBE_LR = 0.1


def probe_config(config: RunConfig, lr: float = PROBE_LR) -> RunConfig:
    """``config`` for a trainer that runs single steps outside a training run (describe,
    FLOPs, estimate, regression figures): one epoch without warm-up, at ``config.lr`` if it
    sets one, else ``lr``. Memory and FLOPs do not depend on the learning rate's value."""
    return dataclasses.replace(
        config, epochs=1, warmup_epochs=0.0, lr=lr if config.lr is None else config.lr
    )


@dataclass
class StepLosses:
    """Detached per-step losses: the local losses (of the modules that have one) and the
    output loss."""

    local: list[torch.Tensor]
    output: torch.Tensor | None  # None in a pipeline stage without the output head
    correct: torch.Tensor | None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (*self.local, self.output, self.correct) if t is not None]

    @classmethod
    def weighted(cls, parts: list[StepLosses], weights: list[float]) -> StepLosses:
        """The step's losses from its micro-batches' (mean losses weighted by their shares of
        the batch, correct predictions summed): what one pass over the whole batch reports."""

        def mean(values: list[torch.Tensor]) -> torch.Tensor:
            return sum(v * w for v, w in zip(values, weights))

        local = [mean([p.local[i] for p in parts]) for i in range(len(parts[0].local))]
        output = None if parts[0].output is None else mean([p.output for p in parts])
        correct = None if parts[0].correct is None else sum(p.correct for p in parts)
        return cls(local, output, correct)


@contextlib.contextmanager
def _no_phase(tag: str, module: int | None = None) -> Iterator[None]:
    yield


def place(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``module.to(device, dtype)``, skipped when nothing would move (fake tensors, built
    under ``FakeTensorMode``, cannot be swapped by ``.to``)."""
    tensors = list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]
    if any(t.device != device or t.dtype != dtype for t in tensors):
        module.to(device=device, dtype=dtype)
    return module


def check_method(method: Method, split: Split) -> list[int]:
    """What the contract asks of a method beyond its hooks' results, checked before any step,
    one line each: ``boundary`` takes the batch (an override written before it did would be a
    TypeError in the first step), ``capabilities.steady_after`` is a count, and each module's
    ``overlap`` is one the contract's "Overlap" allows. Returns ``method.overlap(k)`` for every
    module (0 for the first)."""
    name = type(method).__name__
    if len(inspect.signature(method.boundary).parameters) < 3:
        raise UserError(
            f"method {name}: boundary() takes (k, out); it receives the batch too: define "
            "boundary(self, k, out, batch)"
        )
    steady = method.capabilities.steady_after
    if not isinstance(steady, int) or not 1 <= steady <= 1000:
        raise UserError(
            f"method {name}: capabilities.steady_after is {steady!r}; use an integer from 1 to 1000"
        )
    overlaps = [0] + [method.overlap(k) for k in range(1, split.K)]
    for k, n in enumerate(overlaps):
        units = len(split.unit_range(k - 1)) if k else 0
        if not isinstance(n, int) or not 0 <= n <= units:
            raise UserError(
                f"method {name}: overlap({k}) is {n!r}; module {k - 1} has {units} hidden "
                f"units, so use an integer from 0 to {units}"
            )
    if method.capabilities.greedy_path and not any(overlaps):
        raise UserError(
            f"method {name} declares Capabilities(greedy_path=True) but no overlap: the greedy "
            "path is a module's second forward next to an overlap (see Method.overlap)"
        )
    if any(overlaps) and type(method).forward_module is not Method.forward_module:
        raise UserError(
            f"method {name} declares an overlap and overrides forward_module(); an overlap "
            "needs the default forward_module (the harness splits the module)"
        )
    return overlaps


def build_modules(backbone: Backbone, split: Split) -> nn.ModuleList:
    """Module k = its hidden units in order; the last module also ends in the output head."""
    modules = []
    for k in range(split.K):
        units = [backbone.units[i] for i in split.unit_range(k)]
        if k == split.K - 1:
            units.append(backbone.units[-1])
        modules.append(nn.Sequential(*units))
    return nn.ModuleList(modules)


class Seam(Protocol):
    """Where a pipeline stage's steps meet the other stages (:mod:`locbench.harness.stages`):
    the stage runs only modules ``modules`` of the split, receives each step's ``[x, y, h]``
    from the stage before (unless ``first``) and sends its output to the stage after (unless
    ``last``). The sequential harness has no seam: every module, the input from the batch. The
    step, the schedule, the sums, divergence, evaluation and the curve are the same either
    way: :func:`fit` and :class:`LocalTrainer` run both."""

    modules: range
    first: bool
    last: bool

    def recv(self, step: int | None) -> list[torch.Tensor]:
        """The next message from the stage before (``step``: the training step it is for, or
        ``None`` in evaluation)."""

    def send(self, tensors: list[torch.Tensor], step: int | None) -> None:
        """Start sending to the stage after."""

    def start(self, timed: range) -> None:
        """Training starts; ``timed``: the steps of the timed window."""

    def begin(self, step: int) -> None:
        """Training step ``step`` starts (its input has arrived)."""

    def end(self, step: int) -> None:
        """Training step ``step`` has ended."""

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds in any stage (every stage calls it at the same point)."""


class LocalTrainer:
    """Owns the device, the optimizer and the step; the method only supplies losses.

    It takes the run's train section (``lr`` and ``epochs`` set: resolved, or see
    :func:`probe_config`): its optimizer fields (``lr``, ``momentum``, ``weight_decay``,
    ``nesterov``) make the optimizer, and :func:`fit` reads the schedule from it. Device,
    dtype, precision and memory layout are passed in; :meth:`for_config` takes them all from a
    :class:`RunConfig`."""

    def __init__(
        self,
        backbone: Backbone,
        split: Split,
        method: Method,
        train: TrainSettings,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        *,
        precision: str = "fp32",
        channels_last: bool = False,
        ranks: Ranks | None = None,
        seam: Seam | None = None,
        local_backward_apart: bool = False,
    ) -> None:
        if train.lr is None or train.epochs is None:
            raise UserError("a trainer needs a configuration with lr and epochs set (resolved)")
        self.split, self.method, self.train = split, method, train
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        # A pipeline stage trains (and its optimizer steps) only its own modules.
        self.seam = seam
        self.own = seam.modules if seam is not None else range(split.K)
        self.modules = place(build_modules(backbone, split), device, dtype)
        place(self.method, device, dtype)
        # A data-parallel rank (locbench.harness.distributed): its share of each batch, gradients
        # averaged module by module, BatchNorm over the global batch with sync_bn.
        self.ranks = ranks if ranks is not None and ranks.world > 1 else None
        if self.ranks is not None and train.sync_bn:
            self.modules = global_batchnorm(self.modules, device)
            self.method = global_batchnorm(self.method, device)
        if channels_last:
            to_channels_last(self.modules)
            to_channels_last(self.method)
        # Autocast and the fp16 loss scaler; a trainer built under FakeTensorMode has fake
        # parameters, whose overflow check has no value to read.
        fake = any(isinstance(p, FakeTensor) for p in self.modules.parameters())
        self.amp = MixedPrecision(precision, device, fake)
        # Frozen parameters (requires_grad=False) are never optimised nor averaged across ranks:
        # they have no gradient, and every rank updates them alike.
        trainable = [p for p in self.parameters() if p.requires_grad]
        self.optimizer = make_sgd(
            trainable, train.lr, train.momentum, train.weight_decay, train.nesterov
        )
        # What a step outside a run (describe, estimate, a test's own step) shows the method.
        self.default_step = StepContext(lr=train.lr)
        self.view = ModulesView(self.modules, self.method)  # what state hooks may read
        # Declared overlap (Method.overlap): module k reruns module k-1's last overlaps[k] units.
        self.overlaps = check_method(method, split)
        overlapped = [
            p for k, n in enumerate(self.overlaps) if n
            for p in self.modules[k - 1][-n:].parameters()
        ]  # fmt: skip
        self.grad_sync = (
            GradSync(trainable, self.ranks, once_per_step=overlapped) if self.ranks else None
        )
        # FLOP counting (locbench.harness.flops): each local loss's backward in two parts, down
        # to the cut (phase "aux": the auxiliary share) and through the module ("backward"),
        # so that a step's auxiliary share is read on that step. Same gradients, same FLOPs.
        self.local_backward_apart = local_backward_apart

    @classmethod
    def for_config(
        cls,
        config: RunConfig,
        backbone: Backbone,
        split: Split,
        method: Method,
        device: torch.device,
        **kwargs,
    ) -> LocalTrainer:
        """A trainer of ``config``: its train section, its precision and memory layout."""
        train = config.section(TrainSettings)
        env = {"precision": config.precision, "channels_last": config.channels_last}
        return cls(backbone, split, method, train, device, **env, **kwargs)

    def train_step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        tracker: MemoryTracker | None = None,
        step: StepContext | None = None,
        clock: PhaseClock | None = None,
        h: torch.Tensor | None = None,
    ) -> StepLosses:
        """One training step on a batch already on the device; the method sees ``step`` as
        ``batch.step`` (default: step 0 of 1 at the configuration's learning rate).

        In a pipeline stage (a :class:`Seam`), the step runs the stage's modules from ``h``
        (the stage before's output; ``x`` itself in the first stage) and sends its output on
        before its optimizer step.

        With a ``tracker`` (entered by the caller), each part of the step is labelled for the
        memory breakdown; the computation is the same either way. With ``precision``
        bf16/fp16, each forward and each loss runs under autocast, and fp16 losses are scaled by one
        loss scaler for the whole step (:mod:`locbench.harness.precision`).

        With a ``clock`` (timed steps; never with a tracker, which would slow the phases it
        times), the same phase points mark each module's forward, local loss and backward and
        the optimizer step; without either, a phase costs nothing."""
        if tracker is not None:
            phase = tracker.phase
        else:
            phase = clock.phase if clock is not None else _no_phase
        self.modules.train()
        self.method.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.channels_last:
            x = channels_last_input(x)
        context = self.default_step if step is None else step
        # Gradient accumulation (Method.micro_batches): a short last batch has fewer parts.
        parts = min(self.method.micro_batches(), len(y))
        if parts > 1 and self.seam is not None:
            raise UserError(f"--stages: method {self.method.name!r} runs micro-batches")
        if parts <= 1:
            h, losses = self._pass(x, y, h, context, phase)
        else:  # views of the batch: no copy
            xs, ys = x.tensor_split(parts), y.tensor_split(parts)
            weights = [len(yj) / len(y) for yj in ys]
            passes = [
                self._pass(xj, yj, None, context, phase, w)[1] for xj, yj, w in zip(xs, ys, weights)
            ]
            losses = StepLosses.weighted(passes, weights)
        if self.seam is not None and self.own.stop < self.split.K:
            self.seam.send([x, y, h], context.global_step if step is not None else 0)
        if self.grad_sync is not None:
            with phase("backward", self.split.K - 1):
                self.grad_sync.finish()
        with phase("optimizer_state"):
            self.amp.step(self.optimizer)
            with torch.no_grad():
                self.method.after_step(self.view)
        if tracker is not None:
            tracker.end_step(self.parameters(), self.optimizer)
        return losses

    def _pass(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        h: torch.Tensor | None,
        step: StepContext,
        phase: Callable,
        weight: float = 1.0,
    ) -> tuple[torch.Tensor, StepLosses]:
        """Forward and backward of the trainer's modules on one (micro-)batch: gradients
        accumulate, weighted by ``weight``, its share of the step's batch. Returns the last
        module's output and the pass's losses."""
        batch = Batch(x, y, step, self.gradient_scale())
        last = self.split.K - 1
        local: list[torch.Tensor] = []
        h = x if h is None else h
        loss = None
        rerun = None  # what the next module reruns of this one (declared overlap)
        for k in self.own:
            h, loss, rerun = self.module_step(k, h, batch, phase, weight, rerun)
            if k < last and loss is not None:
                local.append(loss)
            elif k < last and self.seam is not None:
                raise UserError(  # its gradient would have to cross to the stage before
                    f"--stages: module {k} has no local loss (local_loss returned None)"
                )
        with_head = self.own.stop == self.split.K
        correct = (h.argmax(1) == y).sum() if with_head else None
        return h, StepLosses(local, loss if with_head else None, correct)

    def module_step(
        self,
        k: int,
        h: torch.Tensor,
        batch: Batch,
        phase: Callable = _no_phase,
        weight: float = 1.0,
        rerun: tuple[nn.Module, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[nn.Module, torch.Tensor] | None]:
        """Module k's part of a training step: forward, its loss (local, or the output loss
        for the last module) and that loss's backward (of ``weight`` x the loss: a
        micro-batch's share). Returns module k+1's input (the boundary; for the last module
        its detached logits) and the detached, unweighted loss (None when the method has no
        local loss there). Pipeline stages (locbench.harness.stages) run the same.

        Declared overlap (``Method.overlap``): ``rerun`` is module k-1's last units and their
        detached input, which module k's forward starts from instead of ``h``; the third value
        returned is what module k+1 reruns of this one (or None)."""
        amp, module = self.amp, self.modules[k]
        n = self.overlaps[k + 1] if k + 1 < self.split.K else 0
        passed = greedy = None
        with phase("backbone", k), amp.autocast():
            if rerun is not None:
                if self.method.capabilities.greedy_path:  # module k on its own input too
                    greedy = module(h)
                tail, start = rerun
                h = tail(start)
            if n:  # module k+1 reruns the last n units: keep their input
                start = module[:-n](h)
                out = module[-n:](start)
                passed = (module[-n:], start.detach())
            else:
                out = self.method.forward_module(k, module, h, batch)
        if greedy is not None:
            out = Paths(greedy, out)
        own = out if greedy is None else greedy  # what crosses the boundary
        if k < self.split.K - 1:
            with phase("aux", k), amp.autocast():
                loss = self.method.local_loss(k, out, batch)
            if loss is not None:
                weighted = loss if weight == 1.0 else loss * weight
                if self.local_backward_apart:  # counting FLOPs: never data-parallel
                    self._backward_apart(k, out, weighted, phase)
                else:
                    with phase("backward", k):
                        amp.backward(weighted)
                        if self.grad_sync is not None:
                            self.grad_sync.after_backward()
                self._after_backward(k, phase)
            detached = None if loss is None else loss.detach()
            return self.method.boundary(k, own, batch), detached, passed
        with phase("other", k), amp.autocast():
            loss = self.method.output_loss(out, batch)
        with phase("backward", k):
            amp.backward(loss if weight == 1.0 else loss * weight)
        self._after_backward(k, phase)
        return own.detach(), loss.detach(), None

    def gradient_scale(self) -> torch.Tensor | float:
        """``Batch.loss_scale``: the fp16 loss scale, times the global batch over this rank's
        share in a data-parallel run (a rank's loss is its share's mean, and GradSync weights
        the parameters' gradients by the share only after the backward)."""
        scale = self.amp.loss_scale()
        if self.grad_sync is not None and self.grad_sync.weight > 0:
            scale = scale / self.grad_sync.weight
        return scale

    def _after_backward(self, k: int, phase: Callable) -> None:
        with phase("backward", k), torch.no_grad():
            self.method.after_backward(k, self.view)

    def _backward_apart(
        self, k: int, out: torch.Tensor | Paths, loss: torch.Tensor, phase: Callable
    ) -> None:
        """``loss.backward()`` as two backward passes: to ``out`` (both paths' outputs) and
        the method's own parameters (phase "aux"), then from ``out`` through module k (phase
        "backward"): the backbone's parameters (module k's, and those of module k-1 a declared
        overlap reruns) are reached through ``out``. Each node of the graph runs once, as in
        one pass; only for counting (the first pass keeps the graph, which a measured step
        never does)."""
        outs = [t for t in (out if isinstance(out, Paths) else [out]) if t.requires_grad]
        inputs = [p for p in self.method.parameters() if p.requires_grad] + outs
        with phase("aux", k):
            self.amp.backward(loss, inputs=inputs, retain_graph=True)
        reached = [t for t in outs if t.grad is not None]
        if reached:
            with phase("backward", k):
                torch.autograd.backward(reached, [t.grad for t in reached])
            for t in reached:
                t.grad = None

    def parameters(self) -> list[nn.Parameter]:
        """What the optimizer steps: every parameter, or a pipeline stage's own (its modules'
        and their auxiliary nets')."""
        if self.seam is None:
            return list(self.modules.parameters()) + list(self.method.parameters())
        K = self.split.K
        params = [p for k in self.own for p in self.modules[k].parameters()]
        params += [p for k in self.own if k < K - 1 for m in self.method.aux_modules(k)
                   for p in m.parameters()]  # fmt: skip
        return list({id(p): p for p in params}.values())

    def state_tensors(self) -> dict[str, list[torch.Tensor]]:
        """What is resident between steps, by memory category (frozen parameters apart)."""
        buffers = list(self.modules.buffers()) + list(self.method.buffers())
        params = self.parameters()
        optimizer_state = [
            v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v)
        ]
        optimizer_state += self.amp.state_tensors()  # the fp16 loss scaler's scale
        return {
            "parameters": [p for p in params if p.requires_grad] + buffers,
            "frozen": [p for p in params if not p.requires_grad],
            "gradients": [p.grad for p in params if p.grad is not None],
            "optimizer_state": optimizer_state,
        }

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.modules.eval()
        h = channels_last_input(x) if self.channels_last else x
        with self.amp.autocast():
            for module in self.modules:
                h = module(h)
        # logits in the run's dtype: a loss summed over the test set in bf16 would round
        return h.to(self.dtype)

    @torch.no_grad()
    def evaluate(self, loader: Loader) -> tuple[float | None, float | None]:
        """Top-1 accuracy (%) and mean cross entropy of the output head on ``loader``; in a
        pipeline stage, the forward through the stages (``None`` but in the last)."""
        if self.seam is not None:
            return self._evaluate_stage(loader, self.seam)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        n = torch.zeros((), device=self.device, dtype=torch.long)
        if self.ranks is not None:  # every rank evaluates rank 0's running statistics
            self.ranks.same_buffers([self.modules, self.method])
        for x, y in loader:
            if self.ranks is not None:
                x, y, _ = self.ranks.share(x, y)
            x, y = self.to_device(x, y)
            if not len(y):
                continue
            logits = self.predict(x)
            correct += (logits.argmax(1) == y).sum()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
            n += len(y)
        if self.ranks is not None:
            self.ranks.sum_(correct, loss_sum, n)
        total = max(int(n.item()), 1)
        return 100.0 * correct.item() / total, loss_sum.item() / total

    def _evaluate_stage(self, loader: Loader, seam: Seam) -> tuple[float | None, float | None]:
        self.modules.eval()
        correct = seen = 0
        loss_sum = 0.0
        batches = iter(loader) if seam.first else None
        for _ in range(len(loader)):
            if seam.first:
                h, y = self.to_device(*next(batches))
            else:
                y, h = seam.recv(None)
            with self.amp.autocast():
                for k in self.own:
                    h = self.modules[k](h)
            if not seam.last:
                seam.send([y, h], None)
                continue
            logits = h.to(self.dtype)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            seen += len(y)
        if not seam.last:
            return None, None
        return 100.0 * correct / max(seen, 1), loss_sum / max(seen, 1)

    def share(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of a global batch (the batch itself outside a data-parallel run);
        the next step's gradients are weighted by the share's size."""
        if self.ranks is None:
            return x, y
        x, y, total = self.ranks.share(x, y)
        if self.grad_sync is not None:
            self.grad_sync.begin_step(len(y), total)
        return x, y

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # channels-last in the same copy, so that train_step finds the layout it wants
        cl = self.channels_last and x.dim() == 4
        layout = torch.channels_last if cl else torch.preserve_format
        return (
            x.to(self.device, self.dtype, non_blocking=True, memory_format=layout),
            y.to(self.device, non_blocking=True),
        )
