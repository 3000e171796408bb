"""The method contract: what a training method defines, and what the harness guarantees it.

A *method* turns a backbone cut into K modules into a local-learning scheme. It is an
``nn.Module`` that owns only its auxiliary networks (heads, decoders, ...). It never owns the
training loop, the device, the optimizer, timing or memory measurement: the harness
(:mod:`locbench.harness.trainer`) does, identically for every method, so their numbers are
comparable.

The harness runs one training step like this::

    batch = Batch(x, y, step)                     # step: a StepContext (where training is)
    h = x
    for k in range(K):
        with autocast:                            # bf16/fp16 runs only; see "Precision"
            out = method.forward_module(k, modules[k], h, batch)   # default: modules[k](h)
        if k < K - 1:
            with autocast:
                loss = method.local_loss(k, out, batch)
            if loss is not None:
                scaled(loss).backward()           # frees module k's graph
                method.after_backward(k, view)    # no_grad; default: nothing
            h = method.boundary(k, out, batch)    # default: out.detach()
        else:
            with autocast:
                loss = method.output_loss(out, batch) # out = logits of the output head
            scaled(loss).backward()
            method.after_backward(k, view)
    optimizer.step()                              # one SGD step over the trainable parameters
                                                  # (fp16: unscale, skip if inf/NaN, update)
    method.after_step(view)                       # no_grad; default: nothing

Guarantees the harness gives every hook:
  * ``__init__`` runs on the CPU in float32 after the global seed is set; the harness then moves
    the whole method (its parameters and buffers) to the run's device and dtype with ``.to()``.
    Never call ``.cuda()`` or pick a device yourself. It may run more than once per process
    (``locbench run`` builds the configuration a second time on the ``meta`` device to count
    FLOPs), so it must not depend on being the only instance.
  * ``forward_module(k, module, h, batch)`` runs module k (the backbone's units, in train mode)
    on ``h``; the default just calls it. ``batch`` is the step's batch (its labels ``batch.y``
    and ``batch.step``), for methods whose forward pass needs the targets (e.g. target
    propagation). Override it to change *how* module k runs (e.g. activation checkpointing) or
    what it sees; the parameters it trains remain the module's. ``module`` is an
    ``nn.Sequential`` of module k's units (the last module's ends in the output head), and the
    units are the backbone's own objects: training them trains the backbone. A hook reads
    another module only through the :class:`ModulesView` (below), never ``backbone.units``.
  * ``local_loss(k, ...)`` is called for k = 0 .. K-2 in order, once per step, in train mode,
    with ``out`` still attached to module k's graph; the returned 0-dim tensor is
    backpropagated immediately by the harness. ``None`` means "no local loss": nothing is
    backpropagated (end-to-end methods that keep the graph across modules).
  * ``boundary(k, out, batch)`` is called right after that backward. Whatever it returns is module
    k+1's input. Returning a tensor attached to module k's graph breaks gradient isolation.
  * ``output_loss`` sees the output head's logits of the last module.
  * All trainable parameters of ``self`` are optimised by the same optimizer as the backbone.
    Frozen state (parameters with ``requires_grad=False``, and buffers) is never optimised and,
    in a data-parallel run, never averaged as a gradient: every rank updates it alike.
  * Every hook of one step sees the same :class:`Batch`, hence the same ``batch.step``.

State kept across steps (an exponential moving average of weights, as MAN's auxiliary nets):
  * ``after_backward(k, view)`` runs under ``torch.no_grad()`` right after module k's backward
    (its local loss's; the output loss's for the last module; with micro-batches, after each
    part's), once that backward's gradients are accumulated and before module k+1 runs.
    ``after_step(view)`` runs under ``torch.no_grad()`` after the optimizer step, on the
    updated parameters. Both default to nothing.
  * ``view`` (a :class:`ModulesView`) reads the current parameters of any module, detached:
    read them, never write them. A method that reads a module through it declares
    ``capabilities = Capabilities(reads_modules=True)``; the view refuses a method that does
    not. ``--stages`` refuses a method that reads modules (the one it reads may train in
    another stage), in one line, before training.
  * Keep the state in buffers or frozen parameters of ``self``: the memory tracker and
    ``locbench estimate`` count them as resident (category ``parameters``). The estimate's
    and the FLOP count's measured step follows ``capabilities.steady_after`` steps (default 1:
    the first makes whatever a method creates lazily); declare more when the state appears
    or grows later (e.g. a buffer of the last step's activations, first kept at step 2),
    and a run's tracked window also starts no earlier.

Overlap (``overlap(k)`` = n > 0 for a module k >= 1; e.g. HPFF's cascade):
  * Module k's forward also runs module k-1's last n units: the harness keeps their input from
    module k-1's forward (detached), and module k starts there, rerunning those units with
    their current parameters before its own; module k's input from ``boundary`` is not used.
    Module k's loss then trains those units too: their gradients are the sum of module k-1's
    loss's and module k's, accumulated in order (module k-1's backward first). Nothing else
    crosses: gradient isolation holds for every other unit.
  * The rerun is a second forward of those units (FLOPs, and BatchNorm statistics updated
    twice per step); the memory is what the harness keeps: their input until module k runs.
  * Needs the default ``forward_module`` (the harness splits module k-1 at the overlap) and
    0 < n <= module k-1's hidden units; ``--stages`` refuses a method with any overlap, in
    one line, before training. A data-parallel run averages such parameters' gradients once
    per step, after the last backward that reaches them.
  * Both paths (``Capabilities(greedy_path=True)``; HPFF, MLAAN): every module k with an
    overlap also runs once more, whole, on its own input (``boundary``'s output: the greedy
    path, whose gradients stop at that input), before the rerun. Its ``local_loss`` (or
    ``output_loss``) then gets ``out`` as :class:`Paths` (``out.greedy``, ``out.cascade``:
    the overlap's output, as above), one graph each, backpropagated together; ``boundary``
    gets ``out.greedy``, and module k+1's rerun starts from the cascade path's kept input.
    The values of the two paths agree within a step; the extra forward costs its FLOPs and
    keeps its graph until the backward, as the authors' code of those methods does.

Precision (the ``precision`` setting) belongs to the harness, like the device:
  * The harness alone enters ``torch.autocast`` (bf16 or fp16) around ``forward_module`` and
    around ``local_loss`` / ``output_loss``, and runs every backward and ``boundary`` outside
    it. A method never calls ``torch.autocast`` itself, never scales a loss and never touches
    the loss scaler: in fp16 the harness multiplies each returned loss by one
    ``torch.amp.GradScaler``'s scale before its backward, unscales all gradients once, and
    skips the whole optimizer step (every module) when any gradient is inf or NaN.
  * Inside autocast a method sees low precision: ops on autocast's lists (convolutions,
    linear layers, matmuls) return bf16/fp16, so ``out``, ``h`` and activations of the
    auxiliary nets usually are (``h`` stays so across the ``boundary``), while reductions and
    losses autocast runs in float32 (``cross_entropy``, ``mse_loss``, ...) return float32.
    Parameters, buffers, gradients and the input batch ``batch.x`` stay in the run's dtype
    (float32). Do not assume ``out.dtype == torch.float32``: build new tensors with
    ``out.dtype`` (or let autocast cast), and keep the returned loss a 0-dim tensor; the
    harness reports losses as returned, unscaled.
  * A kernel without a low-precision version (or an op CUDA autocast refuses, e.g.
    ``F.binary_cross_entropy``: use ``binary_cross_entropy_with_logits``) stops the run with
    one line naming ``--precision``.
  * With ``channels_last``, 4-D parameters of the backbone and of the method (convolution
    weights) and the 4-D input are in channels-last memory format; the shapes are unchanged.

Micro-batches (``micro_batches()`` > 1, gradient accumulation; e.g. ``bp-accum``):
  * The harness splits each training batch into M = ``micro_batches()`` consecutive parts
    (``tensor_split``: sizes differ by at most one; a batch smaller than M has one part per
    example) and runs the whole loop above on each part in turn, every hook seeing the part as
    ``batch`` (the same ``batch.step``). Each returned loss is backpropagated multiplied by its
    part's share of the batch, so gradients accumulate to those of the mean loss over the whole
    batch; the optimizer steps once, after the last part. Reported losses are the same
    weighted means.
  * Only one part's activations are alive at a time: that is the memory it saves. Layers that
    look at the batch see a part: BatchNorm normalises each part with its own statistics, and
    its running statistics are updated once per part.
  * Not in pipeline stages (``--stages``).

The step context (``batch.step``, a :class:`StepContext`) of a training run:
  * ``global_step`` runs 0, 1, ..., ``total_steps`` - 1: every training step exactly once, in
    order, across epochs. A run that diverges stops early and never reaches the end.
  * ``total_steps == epochs * steps_per_epoch``, both fixed for the whole run;
    ``epoch`` is 0-based and ``global_step == epoch * steps_per_epoch + step_in_epoch``.
  * ``lr`` is the learning rate the optimizer applies in this step (warm-up, then cosine).
  * Steps measured by the harness (tracked for memory, timed) get their context like any other:
    a method cannot tell, and must not try to tell, whether it is being measured.
  * Its fields are Python numbers, never tensors, so branching on them is safe everywhere,
    including on meta and fake tensors (below).
  * Outside a run (``locbench describe``, FLOPs, ``locbench estimate``, the regression figures)
    every step is step 0 of 1 at the configuration's learning rate (0.1 when it sets none):
    a method whose computation changes with the step is counted and estimated as at step 0.

Hooks also run on tensors without values. ``locbench describe`` and the FLOPs of every run
record run one training step on the ``meta`` device (``__init__`` included: the configuration
is built there afresh), and ``locbench estimate`` runs two under ``FakeTensorMode`` (fake
tensors: shapes, dtypes and devices only). There, anything that needs a tensor's *values*
raises: ``.item()``, ``.tolist()``, ``float(t)``/``int(t)``/``bool(t)``, Python ``if``/``while``
or ``assert`` on a tensor, data-dependent shapes (``nonzero``, boolean-mask indexing,
``unique``), ``.numpy()`` and any NumPy conversion; printing or logging a tensor shows no
values (``tensor(..., device='meta', size=(8,))``). A method that does such things still trains
and its run records everything measured while training (time, accuracy, tracked and CUDA
memory), but the record has no FLOPs (its ``message`` says "FLOPs not counted: ...") and
``locbench describe``/``estimate`` refuse it with a one-line error. Shapes (``t.shape``,
``t.size(0)``, ``t.dim()``), ``t.device``, ``t.dtype`` and the step context work everywhere.
Keep value-dependent bookkeeping (logging a loss, early stopping) out of the hooks.
``copy.deepcopy`` of a module in ``__init__`` (e.g. a later unit of the backbone as an auxiliary
net's layer) works everywhere: on fake tensors, where PyTorch's own fails for integer buffers
such as BatchNorm's ``num_batches_tracked``, the harness makes it a clone. In a multi-method
``estimate``, a method that cannot be estimated costs only its own row.

A new method is one file: subclass :class:`Method`, declare its hyperparameters as a dataclass
in ``Params``, override the hooks you need, and register it with ``@register("name")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from locbench.data.base import DataInfo
from locbench.errors import UserError
from locbench.nets.backbone import Backbone, Shape
from locbench.nets.split import Split
from locbench.registry import Registry


@dataclass(frozen=True)
class NoParams:
    """A method without hyperparameters."""


@dataclass(frozen=True)
class Cut:
    """Where module ``k`` ends: the index of its last hidden unit and that unit's output shape."""

    k: int
    unit: int
    shape: Shape


@dataclass(frozen=True)
class StepContext:
    """Where training is at the current step. See "The step context" in the module docstring
    for what the harness guarantees; outside a run, the default: step 0 of 1."""

    global_step: int = 0  # 0 .. total_steps - 1, each training step once, in order
    epoch: int = 0  # 0-based
    steps_per_epoch: int = 1
    total_steps: int = 1  # epochs * steps_per_epoch
    lr: float = 0.0  # the learning rate of this step's optimizer update

    @property
    def step_in_epoch(self) -> int:
        return self.global_step - self.epoch * self.steps_per_epoch

    @property
    def progress(self) -> float:
        """Fraction of training done before this step: 0 at the first, < 1 at the last."""
        return self.global_step / self.total_steps


@dataclass(frozen=True)
class Batch:
    """One training batch as the method sees it: normalised inputs, integer labels, and where
    training is (``step``; filled by the harness for every training step)."""

    x: torch.Tensor
    y: torch.Tensor
    step: StepContext = StepContext()
    #: What every gradient of this step's backwards is multiplied by, against one process's
    #: fp32 gradients of the whole batch's mean loss: 1.0, or in fp16 the loss scaler's
    #: current scale (a 0-dim tensor on the device: no synchronisation to read it), times the
    #: global batch over this rank's share in a data-parallel run (each rank's loss is its
    #: share's mean). A method that reads gradients (of its module's output, say) divides
    #: them by it, and declares ``Capabilities(reads_gradients=True)``.
    loss_scale: torch.Tensor | float = 1.0


@dataclass(frozen=True)
class Capabilities:
    """What a method does beyond the seeds' shape, declared so that the harness can refuse a
    mode that cannot run it exactly, in one line and before training."""

    #: Its hooks read other modules' current parameters through the :class:`ModulesView`.
    reads_modules: bool = False
    #: Each module with an overlap also runs on its own input: its losses get :class:`Paths`.
    greedy_path: bool = False
    #: Its hooks read gradients (tensor hooks, ``autograd.grad`` of activations); they divide
    #: them by ``batch.loss_scale``, which makes them one process's fp32 gradients of the
    #: whole batch's mean loss under fp16, micro-batches and ``--nproc`` alike.
    reads_gradients: bool = False
    #: Steps after which every step allocates and computes the same: 1 when the first step
    #: makes all that is kept (gradients, optimizer state, the method's own state); more when
    #: the method's state appears or grows over later steps. ``locbench estimate``, the FLOP
    #: count and a run's tracked window all measure a step after that many.
    steady_after: int = 1


class Paths(NamedTuple):
    """Module k's output along both paths of a declared overlap, for a method that declares
    ``Capabilities(greedy_path=True)`` (see "Overlap" in the module docstring)."""

    #: Module k on its own input (``boundary``'s output): its gradients stop there.
    greedy: torch.Tensor
    #: Module k after the rerun of module k-1's last units: its gradients train them too.
    cascade: torch.Tensor


class ModulesView:
    """The backbone's modules as the harness trains them, read-only: what a state hook
    (``after_backward``, ``after_step``) may read of modules other than its own arguments."""

    def __init__(self, modules: nn.ModuleList, method: Method) -> None:
        self._modules, self._method = modules, method

    def named_parameters(self, k: int) -> dict[str, torch.Tensor]:
        """Module ``k``'s current parameters, detached, by name: ``"<i>.<name>"`` for its i-th
        unit (counted from the module's first; the last module's head is its last unit)."""
        if not self._method.capabilities.reads_modules:
            name = type(self._method).__name__
            raise UserError(
                f"method {name} reads module {k}'s parameters but does not declare it; set "
                "capabilities = Capabilities(reads_modules=True) in its class"
            )
        return {n: p.detach() for n, p in self._modules[k].named_parameters()}


class Method(nn.Module):
    """Base class of every training method. See the module docstring for the contract."""

    #: Short registry name, set by ``METHODS.register``.
    name: ClassVar[str] = ""
    #: Dataclass of hyperparameters; instances are stored in run records.
    Params: ClassVar[type] = NoParams
    #: What it does beyond the seeds' shape (see :class:`Capabilities`).
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, backbone: Backbone, split: Split, data: DataInfo, params: object) -> None:
        super().__init__()
        self.backbone_name = backbone.name
        self.split = split
        self.data = data
        self.params = params
        last_units = [split.last_unit(k) for k in range(split.K - 1)]
        cuts = [Cut(k, u, backbone.shapes[u]) for k, u in enumerate(last_units)]
        self.aux = nn.ModuleList(self.build_aux(backbone, cut) for cut in cuts)

    @classmethod
    def plan_split(cls, split: Split, params: object) -> Split:
        """The split this method actually trains, given the one the user asked for.

        Default: unchanged. End-to-end methods return a single module."""
        return split

    def build_aux(self, backbone: Backbone, cut: Cut) -> nn.Module:
        """The auxiliary network of local module ``cut.k`` (called once per cut, k < K-1).

        ``backbone.specs[cut.unit + 1:]`` are the specs of the later units, for methods that
        copy their structure. Default: a linear classifier on globally pooled features."""
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cut.shape[0], self.data.num_classes)
        )

    def forward_module(
        self, k: int, module: nn.Module, h: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        """Output of module ``k`` on input ``h``; ``batch`` is the step's batch (labels, step
        context) for methods whose forward pass needs it. Default: ``module(h)``."""
        return module(h)

    def local_loss(self, k: int, out: torch.Tensor | Paths, batch: Batch) -> torch.Tensor | None:
        """Local loss of module ``k`` from its output ``out`` (attached to its graph; both
        :class:`Paths` for a module with an overlap under ``greedy_path``).

        Default: cross entropy of the auxiliary network's prediction."""
        return F.cross_entropy(self.aux[k](out), batch.y)

    def aux_modules(self, k: int) -> list[nn.Module]:
        """Every auxiliary network local module ``k`` uses (for parameter counts and
        ``locbench describe``). Default: ``[self.aux[k]]``; add decoders and the like."""
        return [self.aux[k]]

    def boundary(self, k: int, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Input of module ``k+1``, from module k's output and the step's batch; detached, so
        no gradient crosses the cut."""
        return out.detach()

    def output_loss(self, logits: torch.Tensor | Paths, batch: Batch) -> torch.Tensor:
        """Loss of the last module, which ends in the backbone's output head (its logits; both
        :class:`Paths` when it has an overlap under ``greedy_path``)."""
        return F.cross_entropy(logits, batch.y)

    def after_backward(self, k: int, view: ModulesView) -> None:
        """After module ``k``'s backward, under ``no_grad`` (see "State kept across steps").
        Default: nothing."""

    def after_step(self, view: ModulesView) -> None:
        """After the optimizer step, under ``no_grad`` (see "State kept across steps").
        Default: nothing."""

    def overlap(self, k: int) -> int:
        """How many of module k-1's last units module ``k``'s forward reruns and its loss
        also trains (k >= 1; see "Overlap"). Default: 0, no overlap."""
        return 0

    def micro_batches(self) -> int:
        """Micro-batches per training step (gradient accumulation; see "Micro-batches" in the
        module docstring). Default: 1, the whole batch in one pass."""
        return 1


METHODS: Registry[type[Method]] = Registry("method")


def register(name: str):
    """Class decorator: ``@register("dgl")`` adds the method under its short name."""

    def decorate(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS.add(name, cls)
        return cls

    return decorate
