"""One steady-state training step on fake tensors (``FakeTensorMode``: shapes only, nothing
allocated) under the memory tracker: what ``locbench estimate`` reports and what the search for
balanced cuts (:mod:`locbench.harness.balance`) confirms its choice with."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from locbench.harness.build import Resolved, build
from locbench.harness.trainer import LocalTrainer, probe_config
from locbench.harness.windows import steady_state_peak
from locbench.measure.memory import MemoryTracker, TrackedPeak

LOW_PRECISION = (torch.bfloat16, torch.float16)


class KernelDtypes(TorchDispatchMode):
    """Gives fake outputs the dtypes the real CPU kernels give, where PyTorch's fake kernels
    differ (entered inside ``FakeTensorMode``, below the memory tracker, which sees the result).

    ``native_batch_norm`` on a bf16/fp16 input (autocast) with float32 parameters or running
    statistics: the CPU kernel saves the batch mean and inverse std for backward in float32
    (as CUDA's does for any half input), but the decomposition fake tensors run casts them to
    the input's dtype: half the bytes, once per BatchNorm, until its backward."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.native_batch_norm.default:
            x, params = args[0], args[1:5]
            mixed = any(isinstance(p, torch.Tensor) and p.dtype == torch.float32 for p in params)
            if x.dtype in LOW_PRECISION and mixed:
                y, mean, invstd = out
                as_float = [t.new_empty(t.shape, dtype=torch.float32) for t in (mean, invstd)]
                out = (y, *as_float)
        return out


def fake_modes(run: Resolved, mode: FakeTensorMode | None = None) -> contextlib.ExitStack:
    """``mode`` (a new ``FakeTensorMode`` by default) and, where the step can compute in half
    precision, the :class:`KernelDtypes` fix under it. An fp32 run makes no half tensors, so
    there the fix would change nothing and only cost a dispatch layer on every op (a quarter of
    a fake step)."""
    stack = contextlib.ExitStack()
    stack.enter_context(_quiet_fake_tensor_log())
    stack.enter_context(mode or FakeTensorMode(allow_non_fake_inputs=True))
    if run.config.precision != "fp32":
        stack.enter_context(KernelDtypes())
    return stack


@contextlib.contextmanager
def _quiet_fake_tensor_log() -> Iterator[None]:
    """PyTorch logs a traceback for every op fake tensors cannot run before raising it (and
    warns where a copy reads a fake data pointer); the error raised is what a user sees, as one
    line."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Accessing the data pointer of FakeTensor")
            yield
    finally:
        log.setLevel(level)


class TrackingFakeMode(FakeTensorMode):
    """``FakeTensorMode`` that also hands every op's outputs to a tracker (:meth:`tracking`):
    what the tracker sees entered as a mode on top of it, the same ops with the same outputs,
    without a second Python dispatch layer on every op (a tenth of a tracked fake step).

    Only the ops the step calls are handed on, not those this mode runs inside an op of its own
    (decompositions), which a tracker above it never sees."""

    def __init__(self) -> None:
        super().__init__(allow_non_fake_inputs=True)
        self._tracker: MemoryTracker | None = None
        self._depth = 0

    @contextlib.contextmanager
    def tracking(self, tracker: MemoryTracker) -> Iterator[None]:
        self._tracker = tracker
        try:
            yield
        finally:
            self._tracker = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._depth += 1
        try:
            out = super().__torch_dispatch__(func, types, args, kwargs)
        finally:
            self._depth -= 1
        if self._tracker is not None and self._depth == 0:
            self._tracker.record(out)
        return out


class DeepcopyAsClone(TorchFunctionMode):
    """``copy.deepcopy`` of a fake tensor as a clone (same dtype, shape, ``requires_grad``).
    PyTorch's own copies the storage, which fails for some fake tensors (integer ones such as
    BatchNorm's ``num_batches_tracked``) and can leave the process's memory corrupt. Entered
    while a configuration is built, where a method's ``__init__`` may copy units: on every op
    of a step it would only cost time."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__deepcopy__ and isinstance(args[0], FakeTensor):
            t = args[0]
            twin = t.detach().clone()
            return twin.requires_grad_(t.requires_grad) if t.is_leaf else twin
        return func(*args, **(kwargs or {}))


def fake_trainer(
    run: Resolved, image_size: int | None, num_classes: int
) -> tuple[LocalTrainer, tuple[int, ...]]:
    """The run's trainer, built inside :func:`fake_modes`, and its input shape."""
    with DeepcopyAsClone():
        backbone, method = build(run, num_classes=num_classes, image_size=image_size)
    config = probe_config(run.config)
    trainer = LocalTrainer.for_config(config, backbone, method.split, method, torch.device("cpu"))
    return trainer, tuple(backbone.input_shape)


def fake_batch(
    trainer: LocalTrainer, shape: tuple[int, ...], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of ``batch_size`` inputs of ``shape`` and labels, as a run's batches arrive on
    the trainer's device (e.g. already channels-last)."""
    x = torch.empty(batch_size, *shape)
    y = torch.zeros(batch_size, dtype=torch.long)
    return trainer.to_device(x, y)


def fake_step_peak(
    run: Resolved, batch_size: int, image_size: int | None = None, num_classes: int = 10
) -> TrackedPeak:
    """Tracked peak of one steady-state training step of ``run`` on fake tensors (the batch
    size already checked). Errors of the step propagate as raised."""
    with fake_modes(run):
        trainer, shape = fake_trainer(run, image_size, num_classes)
        return steady_state_peak(trainer, *fake_batch(trainer, shape, batch_size))
