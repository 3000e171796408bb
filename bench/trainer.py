"""The local-learning harness: K gradient-isolated modules trained by one loop for every method.

The harness, never the model's ``forward``, calls ``backward()``: module k runs forward, its
local loss is backpropagated at once (freeing its graph), and a detached output feeds module
k+1. The last module ends in the output head and trains on the task loss. With K = 1 this is
plain end-to-end backpropagation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.backbone import Backbone
from bench.data import Loader
from bench.memory import MemoryTracker, TrackedPeak, storage_bytes
from bench.meters import CudaPeaks, CudaWindow, StepTimer
from bench.optim import make_sgd, set_lr, warmup_cosine
from bench.split import Split
from methods.base import Batch, Method


@dataclass(frozen=True)
class OptimSettings:
    lr: float
    epochs: int
    warmup_epochs: float = 0.0
    warmup_start_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True


@dataclass
class StepLosses:
    """Detached per-step losses: the local losses (of the modules that have one) and the
    output loss."""

    local: list[torch.Tensor]
    output: torch.Tensor
    correct: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        return [*self.local, self.output, self.correct]


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


def build_modules(backbone: Backbone, split: Split) -> nn.ModuleList:
    """Module k = its hidden units in order; the last module also ends in the output head."""
    modules = []
    for k in range(split.K):
        units = [backbone.units[i] for i in split.unit_range(k)]
        if k == split.K - 1:
            units.append(backbone.units[-1])
        modules.append(nn.Sequential(*units))
    return nn.ModuleList(modules)


class LocalTrainer:
    """Owns the device, the optimizer and the step; the method only supplies losses."""

    def __init__(
        self,
        backbone: Backbone,
        split: Split,
        method: Method,
        optim: OptimSettings,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.split, self.method, self.optim = split, method, optim
        self.device, self.dtype = device, dtype
        self.modules = place(build_modules(backbone, split), device, dtype)
        place(self.method, device, dtype)
        self.optimizer = make_sgd(
            self.parameters(), optim.lr, optim.momentum, optim.weight_decay, optim.nesterov
        )

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, tracker: MemoryTracker | None = None
    ) -> StepLosses:
        """One training step on a batch already on the device.

        With a ``tracker`` (entered by the caller), each part of the step is labelled for the
        memory breakdown; the computation is the same either way."""
        phase = tracker.phase if tracker is not None else _no_phase
        self.modules.train()
        self.method.train()
        self.optimizer.zero_grad(set_to_none=True)
        batch = Batch(x, y)
        last = self.split.K - 1
        local: list[torch.Tensor] = []
        h = x
        for k, module in enumerate(self.modules):
            with phase("backbone", k):
                out = self.method.forward_module(k, module, h)
            if k < last:
                with phase("aux", k):
                    loss = self.method.local_loss(k, out, batch)
                if loss is not None:
                    with phase("backward", k):
                        loss.backward()
                    local.append(loss.detach())
                h = self.method.boundary(k, out)
            else:
                with phase("other", k):
                    loss = self.method.output_loss(out, batch)
                with phase("backward", k):
                    loss.backward()
                correct = (out.detach().argmax(1) == y).sum()
        with phase("optimizer_state"):
            self.optimizer.step()
        if tracker is not None:
            tracker.end_step(self.parameters(), self.optimizer)
        return StepLosses(local, loss.detach(), correct)

    def start_tracking(self, previous: StepLosses | None = None) -> MemoryTracker:
        """A tracker that already counts what is resident between steps: parameters, buffers,
        gradients, optimizer state, and the last step's losses (still referenced)."""
        tracker = MemoryTracker()
        for tag, tensors in self.state_tensors().items():
            tracker.register(tensors, tag)
        if previous is not None:
            tracker.register(previous.tensors(), "other")
        return tracker

    def tracked_step(self, tracker: MemoryTracker, x: torch.Tensor, y: torch.Tensor) -> StepLosses:
        tracker.register([x, y], "other")
        with tracker:
            return self.train_step(x, y, tracker)

    def tracked_result(self, tracker: MemoryTracker) -> TrackedPeak:
        resident = storage_bytes(t for ts in self.state_tensors().values() for t in ts)
        return tracker.result(resident, self.split.K)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.modules.parameters()) + list(self.method.parameters())

    def state_tensors(self) -> dict[str, list[torch.Tensor]]:
        """What is resident between steps, by memory category."""
        buffers = list(self.modules.buffers()) + list(self.method.buffers())
        params = self.parameters()
        optimizer_state = [
            v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v)
        ]
        return {
            "parameters": params + buffers,
            "gradients": [p.grad for p in params if p.grad is not None],
            "optimizer_state": optimizer_state,
        }

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.modules.eval()
        h = x
        for module in self.modules:
            h = module(h)
        return h

    @torch.no_grad()
    def evaluate(self, loader: Loader) -> tuple[float, float]:
        """Top-1 accuracy (%) and mean cross entropy of the output head on ``loader``."""
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        n = 0
        for x, y in loader:
            x, y = self.to_device(x, y)
            logits = self.predict(x)
            correct += (logits.argmax(1) == y).sum()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
            n += len(y)
        return 100.0 * correct.item() / max(n, 1), loss_sum.item() / max(n, 1)

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            x.to(self.device, self.dtype, non_blocking=True),
            y.to(self.device, non_blocking=True),
        )


@dataclass
class FitResult:
    curve: list[dict] = field(default_factory=list)
    step_times: StepTimer | None = None
    cuda: CudaPeaks | None = None
    memory: TrackedPeak | None = None
    diverged: bool = False


@dataclass(frozen=True)
class Windows:
    """Global step indices measured for memory (tracked) and for time and CUDA peaks (timed).

    Both follow the warm-up; the tracked steps come first and are never timed, since the
    tracker slows a step."""

    tracked: range
    timed: range

    @classmethod
    def plan(cls, total: int, warmup: int, track: int, measure: int) -> Windows:
        start = min(warmup, max(total - 1, 0))
        tracked = range(start, min(start + track, total))
        return cls(tracked, range(tracked.stop, min(tracked.stop + measure, total)))


def fit(
    trainer: LocalTrainer,
    train: Loader,
    test: Loader,
    warmup_steps: int,
    measure_steps: int,
    on_step: Callable[[int, dict], None] | None = None,
    track_steps: int = 0,
    cuda_peaks: bool = True,
) -> FitResult:
    """Train for ``trainer.optim.epochs`` epochs, evaluating after each.

    After ``warmup_steps``, ``track_steps`` steps run under the memory tracker, then
    ``measure_steps`` steps are timed (and on CUDA the allocator peaks cover exactly them);
    both windows are clipped to the run (:class:`Windows`)."""
    optim, device = trainer.optim, trainer.device
    steps_per_epoch = len(train)
    windows = Windows.plan(optim.epochs * steps_per_epoch, warmup_steps, track_steps, measure_steps)
    timer = StepTimer(device)
    cuda_window = CudaWindow(device) if device.type == "cuda" and cuda_peaks else None
    result = FitResult(step_times=timer)
    tracker: MemoryTracker | None = None
    losses: StepLosses | None = None
    step = 0
    for epoch in range(optim.epochs):
        timer_epoch = StepTimer(device)
        timer_epoch.start()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        local_sums: torch.Tensor | float = 0.0  # a tensor once a method reports local losses
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        lr = optim.lr
        for i, (x, y) in enumerate(train):
            lr = warmup_cosine(
                epoch + i / steps_per_epoch,
                optim.lr,
                optim.epochs,
                optim.warmup_epochs,
                optim.warmup_start_lr,
            )
            set_lr(trainer.optimizer, lr)
            x, y = trainer.to_device(x, y)
            if step in windows.tracked:
                if step == windows.tracked.start:
                    tracker = trainer.start_tracking(previous=losses)
                losses = trainer.tracked_step(tracker, x, y)
                if step == windows.tracked[-1]:
                    result.memory, tracker = trainer.tracked_result(tracker), None
            elif step in windows.timed:
                if step == windows.timed.start and cuda_window is not None:
                    cuda_window.open()
                timer.start()
                losses = trainer.train_step(x, y)
                timer.stop()
                if step == windows.timed[-1] and cuda_window is not None:
                    result.cuda = cuda_window.close()
            else:
                losses = trainer.train_step(x, y)
            loss_sum += losses.output.double() * len(y)
            if losses.local:
                # sized on first use: end-to-end methods report no local losses
                local_sums = local_sums + torch.stack(losses.local).double() * len(y)
            correct += losses.correct
            seen += len(y)
            step += 1
            if on_step is not None:
                on_step(step, {"epoch": epoch + 1})
        timer_epoch.stop()
        train_loss = loss_sum.item() / seen
        test_acc, test_loss = trainer.evaluate(test)
        result.curve.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": train_loss,
                "train_acc": 100.0 * correct.item() / seen,
                "local_losses": (
                    (local_sums / seen).tolist() if isinstance(local_sums, torch.Tensor) else []
                ),
                "test_loss": test_loss,
                "test_acc": test_acc,
                "epoch_time_s": timer_epoch.times[-1],
            }
        )
        if not torch.isfinite(loss_sum) or not torch.isfinite(torch.as_tensor(local_sums)).all():
            result.diverged = True
            break
    return result
