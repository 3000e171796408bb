"""One steady-state training step on fake tensors (``FakeTensorMode``: shapes only, nothing
allocated) under the memory tracker: what ``locbench estimate`` reports and what the search for
balanced cuts (:mod:`locbench.harness.balance`) confirms its choice with."""

from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from locbench.harness.build import Resolved, build
from locbench.harness.trainer import LocalTrainer, StepLosses, probe_config
from locbench.harness.windows import MemoryWindow, steady_state_peak
from locbench.measure.memory import TrackedPeak

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


def fake_step_peak(
    run: Resolved, batch_size: int, image_size: int | None = None, num_classes: int = 10
) -> TrackedPeak:
    """Tracked peak of one steady-state training step of ``run`` on fake tensors (the batch
    size already checked). Errors of the step propagate as raised."""
    with FakeTensorMode(allow_non_fake_inputs=True), KernelDtypes():
        backbone, method = build(run, num_classes=num_classes, image_size=image_size)
        config = probe_config(run.config)
        trainer = LocalTrainer.for_config(
            config, backbone, method.split, method, torch.device("cpu")
        )
        x = torch.empty(batch_size, *backbone.input_shape)
        y = torch.zeros(batch_size, dtype=torch.long)
        x, y = trainer.to_device(x, y)  # as a run's batches arrive: e.g. already channels-last
        return steady_state_peak(trainer, x, y)


class FakeStepper:
    """One fake build of ``run``, stepped at any batch size: :meth:`step` is the tracked
    steady-state step at that batch, equal to :func:`fake_step_peak`'s to the byte, but the
    build and the warm-up step are made once. What a step leaves for the next (gradients,
    momentum, BatchNorm statistics, the 0-dim losses the caller still holds) has the same
    storages whatever the batch, so a tracked step after one at another batch starts from the
    state a steady-state step at its own batch starts from. Use it as a context manager: the
    fake mode stays entered until it closes."""

    def __init__(self, run: Resolved, image_size: int | None = None, num_classes: int = 10):
        self.run, self.image_size, self.num_classes = run, image_size, num_classes
        self._stack = contextlib.ExitStack()
        self._previous: StepLosses | None = None

    def __enter__(self) -> FakeStepper:
        self._stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        self._stack.enter_context(KernelDtypes())
        try:
            backbone, method = build(
                self.run, num_classes=self.num_classes, image_size=self.image_size
            )
            config = probe_config(self.run.config)
            self.trainer = LocalTrainer.for_config(
                config, backbone, method.split, method, torch.device("cpu")
            )
        except BaseException:
            self._stack.close()
            raise
        self.input_shape = backbone.input_shape
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def step(self, batch_size: int) -> tuple[TrackedPeak, list[tuple[int, int]]]:
        """The tracked peak of a steady-state step at ``batch_size``, and its event log: the
        signed bytes of every allocation and release, as is and rounded
        (:meth:`~locbench.measure.memory.MemoryTracker.deltas`). Errors of the step propagate."""
        x = torch.empty(batch_size, *self.input_shape)
        y = torch.zeros(batch_size, dtype=torch.long)
        x, y = self.trainer.to_device(x, y)
        if self._previous is None:  # the warm-up step: gradients and optimizer state
            self._previous = self.trainer.train_step(x, y)
        window = MemoryWindow(self.trainer, self._previous)
        self._previous = window.step(x, y)
        events = window.tracker.deltas(0)
        return window.close(), events
