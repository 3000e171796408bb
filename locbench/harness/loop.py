"""The one step loop, :func:`fit`: epochs of steps, the learning-rate schedule, the step
context, the loss sums, divergence, evaluation and the curve, for the sequential harness and,
through a :class:`~locbench.harness.trainer.Seam`, for every pipeline stage."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from locbench.data.base import Loader
from locbench.errors import UserError
from locbench.harness.distributed import Ranks
from locbench.harness.optim import set_lr, warmup_cosine
from locbench.harness.trainer import LocalTrainer, Seam, StepLosses
from locbench.harness.windows import MeasuredSteps, Windows, steady_after
from locbench.measure.isolation import TimingLock, WindowTiming, paused
from locbench.measure.memory import TrackedPeak
from locbench.measure.meters import CudaPeaks, DataWait, StepTimer
from locbench.methods.base import StepContext
from locbench.settings.run_config import MeasureSettings


class EpochSums:
    """Training loss, local losses and accuracy of one epoch, summed on the device (no sync
    per step)."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.local: torch.Tensor | float = 0.0  # a tensor once a method reports local losses
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0

    def add(self, losses: StepLosses, n: int) -> None:
        if losses.output is not None:  # a pipeline stage without the head has none
            self.loss += losses.output.double() * n
            self.correct += losses.correct
        if losses.local:
            # sized on first use: end-to-end methods report no local losses
            self.local = self.local + torch.stack(losses.local).double() * n
        self.seen += n

    def reduce(self, ranks: Ranks) -> None:
        """The sums of every rank's share: the epoch's figures for the global batches."""
        seen = torch.tensor(self.seen, device=self.loss.device)
        self.local = torch.as_tensor(self.local, device=self.loss.device, dtype=torch.float64)
        ranks.sum_(self.loss, self.correct, seen, self.local)
        self.seen = int(seen.item())
        if not self.local.dim():  # no local losses on any rank
            self.local = 0.0

    def finite(self) -> bool:
        return bool(torch.isfinite(self.loss)) and bool(
            torch.isfinite(torch.as_tensor(self.local)).all()
        )


@dataclass
class FitResult:
    curve: list[dict] = field(default_factory=list)
    step_times: StepTimer | None = None
    module_times: dict | None = None  # PhaseClock.summary of the timed steps
    cuda: CudaPeaks | None = None
    memory: TrackedPeak | None = None
    timing: WindowTiming | None = None  # what the timed window ran under
    diverged: bool = False


def fit(
    trainer: LocalTrainer,
    train: Loader,
    test: Loader,
    measure: MeasureSettings,
    on_step: Callable[[int, dict], None] | None = None,
    max_steps: int | None = None,
    lock: TimingLock | None = None,
    timed_threads: int | None = None,
    held: bool = False,
) -> FitResult:
    """Train for the epochs of the trainer's train section, evaluating after each.

    The measure section places the windows: after ``warmup_steps``, ``track_steps`` steps run
    under the memory tracker (``memory`` "tracked" or "both"), then ``measure_steps`` steps are
    timed (and on CUDA, with ``memory`` "cuda" or "both", the allocator peaks cover exactly them);
    both windows are clipped to the run (:class:`Windows`). Every step's method sees its
    :class:`~locbench.methods.base.StepContext`. A non-finite loss ends the run after its
    epoch (``diverged``).

    The one step loop: a pipeline stage (the trainer's :class:`Seam`) runs it too, over its
    own modules, its input received from the stage before (only the first stage reads
    ``train``); the stages agree on divergence, and only the last evaluates. ``max_steps``:
    stop after that many steps, without evaluating (the stages' equality test).

    ``lock`` and ``timed_threads``: the timed window has the machine to itself and runs with
    that many threads (:class:`~locbench.harness.windows.MeasuredSteps`); ``held``: a launcher
    holds the machine for this process already. What the window ran under is the result's
    ``timing``."""
    seam = trainer.seam
    if measure.memory not in ("tracked", "cuda", "both"):
        raise UserError(f"fit needs a resolved configuration; memory is {measure.memory!r}")
    total = trainer.train.epochs * len(train)
    if max_steps is not None:
        total = min(total, max_steps)
    windows = Windows.for_run(measure, total, track=seam is None, steady=steady_after(trainer))
    cuda_peaks = measure.memory in ("cuda", "both")
    steps = MeasuredSteps(trainer, windows, cuda_peaks, lock, timed_threads, held)
    try:
        result = _fit_steps(trainer, train, test, on_step, total, steps, max_steps)
    finally:
        steps.close()
    result.memory, result.cuda, result.timing = steps.memory, steps.cuda, steps.timing
    result.module_times = steps.clock.summary()
    return result


def _fit_steps(
    trainer: LocalTrainer,
    train: Loader,
    test: Loader,
    on_step: Callable[[int, dict], None] | None,
    total: int,
    steps: MeasuredSteps,
    max_steps: int | None,
) -> FitResult:
    schedule, device, seam = trainer.train, trainer.device, trainer.seam
    steps_per_epoch = len(train)
    result = FitResult(step_times=steps.timer)
    if seam is not None:
        seam.start(steps.windows.timed)
    global_step = 0
    for epoch in range(schedule.epochs):
        if global_step >= total:
            break
        epoch_timer = StepTimer(device)
        epoch_timer.start()
        sums = EpochSums(device)
        lr = schedule.lr
        data = DataWait(train, lambda x, y: trainer.to_device(*trainer.share(x, y)))
        later_stage = seam is not None and not seam.first
        batches = received(seam, steps_per_epoch, global_step) if later_stage else data
        for i, (x, y, *h) in enumerate(batches):
            lr = warmup_cosine(
                epoch + i / steps_per_epoch,
                schedule.lr,
                schedule.epochs,
                schedule.warmup_epochs,
                schedule.warmup_start_lr,
            )
            set_lr(trainer.optimizer, lr)
            context = StepContext(
                global_step, epoch, steps_per_epoch, schedule.epochs * steps_per_epoch, lr
            )
            if seam is not None:
                seam.begin(global_step)
            sums.add(steps.measured_step(context, x, y, *h), len(y))
            if seam is not None:
                seam.end(global_step)
            global_step += 1
            if on_step is not None:
                on_step(global_step, {"epoch": epoch + 1})
            if global_step >= total:
                break
        epoch_timer.stop()
        if trainer.ranks is not None:
            sums.reduce(trainer.ranks)
        test_acc, test_loss = (None, None)
        if max_steps is None:
            test_acc, test_loss = trainer.evaluate(paused(test, steps.lock) if steps.lock else test)
        result.curve.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": sums.loss.item() / sums.seen,
                "train_acc": 100.0 * sums.correct.item() / sums.seen,
                "local_losses": (
                    (sums.local / sums.seen).tolist()
                    if isinstance(sums.local, torch.Tensor)
                    else []
                ),
                "test_loss": test_loss,
                "test_acc": test_acc,
                "epoch_time_s": epoch_timer.times[-1],
                # the part of the epoch the loop waited for data; the rest is training
                "data_wait_s": data.seconds,
            }
        )
        diverged = not sums.finite()
        if seam is not None:  # every stage stops after the same epoch
            diverged = seam.any(diverged)
        if diverged:
            result.diverged = True
            break
    return result


def received(seam: Seam, steps: int, first_step: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """A later pipeline stage's batches: ``(x, y, h)`` from the stage before, ``steps`` times."""
    for i in range(steps):
        yield tuple(seam.recv(first_step + i))
