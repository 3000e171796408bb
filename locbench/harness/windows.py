"""The measured windows of a run: which steps are tracked for memory and which timed
(:class:`Windows`), and the steps run under each (:class:`MeasuredSteps`, :class:`MemoryWindow`:
the one memory measurement that runs, ``locbench estimate`` and the regression figures make).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from locbench.harness.trainer import LocalTrainer, StepLosses
from locbench.measure.isolation import TimingLock, WindowLoad, WindowTiming
from locbench.measure.memory import MemoryTracker, TrackedPeak, storage_bytes
from locbench.measure.meters import CudaPeaks, CudaWindow, PhaseClock, StepTimer
from locbench.methods.base import StepContext
from locbench.settings.run_config import MeasureSettings


class MemoryWindow:
    """Tracked steps: the peak of live tensor bytes over consecutive training steps.

    Opened between steps, it first counts what is resident then: parameters, buffers,
    gradients, optimizer state and ``previous`` (the last step's losses, still referenced by
    the caller); each :meth:`step` also counts its batch. This is the one measurement that
    ``fit``'s tracked window, ``locbench estimate`` and the regression figures all make.
    ``stop_above``: see :class:`~locbench.measure.memory.MemoryTracker`. ``sees_ops``: how the
    tracker is shown the step's ops; by default it is entered as a dispatch mode of its own."""

    def __init__(
        self,
        trainer: LocalTrainer,
        previous: StepLosses | None = None,
        stop_above: int | None = None,
        sees_ops: Callable[[MemoryTracker], AbstractContextManager] | None = None,
    ) -> None:
        self.trainer = trainer
        self.tracker = MemoryTracker(stop_above)
        self._sees_ops = sees_ops or (lambda tracker: tracker)
        for tag, tensors in trainer.state_tensors().items():
            self.tracker.register(tensors, tag)
        if previous is not None:
            self.tracker.register(previous.tensors(), "other")

    def step(self, x: torch.Tensor, y: torch.Tensor, step: StepContext | None = None) -> StepLosses:
        self.tracker.begin_step()
        self.tracker.register([x, y], "other")
        with self._sees_ops(self.tracker):
            return self.trainer.train_step(x, y, self.tracker, step)

    def close(self) -> TrackedPeak:
        trainer = self.trainer
        resident = storage_bytes(t for ts in trainer.state_tensors().values() for t in ts)
        return self.tracker.result(resident, trainer.split.K)


def steady_state_peak(trainer: LocalTrainer, x: torch.Tensor, y: torch.Tensor) -> TrackedPeak:
    """Tracked peak of one steady-state step on ``(x, y)``: untracked steps first (one, or the
    method's ``capabilities.steady_after``) make the gradients, optimizer state and the
    method's state; the last one's losses stay referenced through the tracked step, as in a
    run's tracked window after its warm-up."""
    previous = warm_up(trainer, x, y)  # referenced through the tracked step, as in a run
    window = MemoryWindow(trainer, previous)
    window.step(x, y)
    return window.close()


def steady_after(trainer: LocalTrainer) -> int:
    """How many steps come before a steady one (``Capabilities.steady_after``)."""
    return trainer.method.capabilities.steady_after


def warm_up(trainer: LocalTrainer, x: torch.Tensor, y: torch.Tensor) -> StepLosses:
    """The untracked steps before a steady one (:func:`steady_after` of them), on ``(x, y)``;
    the last one's losses, which a caller keeps referenced as a run's loop does."""
    for _ in range(steady_after(trainer)):
        losses = trainer.train_step(x, y)
    return losses


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

    @classmethod
    def for_run(
        cls, measure: MeasureSettings, total: int, track: bool = True, steady: int = 1
    ) -> Windows:
        """The windows of a run of ``total`` steps: tracked steps only when ``measure.memory``
        asks for tracked memory ("tracked" or "both") and ``track`` (not in pipeline stages,
        whose memory is not recorded); both after the warm-up, and no earlier than ``steady``
        steps (the method's ``capabilities.steady_after``)."""
        tracked = track and measure.memory in ("tracked", "both")
        warmup = max(measure.warmup_steps, steady)
        return cls.plan(total, warmup, measure.track_steps * tracked, measure.measure_steps)


class MeasuredSteps:
    """Runs every training step of a run as the :class:`Windows` plan says: tracked (memory),
    timed (wall time, and on CUDA the allocator's peaks over exactly these steps) or plain.

    With a ``lock`` (:class:`~locbench.measure.isolation.TimingLock`), the timed window has
    the machine to itself: it waits until every other locbench run is at a pause point and
    keeps them there until its last step; before every other step is a pause point. The timed steps
    run with ``timed_threads`` intra-op threads (the count a serial run uses; default: the
    process's own), and what the window ran under is :attr:`timing`; ``held``: the launcher of
    this process holds the machine for it (its ranks or stages run at once). Call :meth:`close` when
    the loop ends, however it ends."""

    def __init__(
        self,
        trainer: LocalTrainer,
        windows: Windows,
        cuda_peaks: bool,
        lock: TimingLock | None = None,
        timed_threads: int | None = None,
        held: bool = False,
    ) -> None:
        self.trainer, self.windows, self.lock, self.held = trainer, windows, lock, held
        device = trainer.device
        self.timer = StepTimer(device)
        self.clock = PhaseClock(trainer.split.K, device)
        self.cuda_window = CudaWindow(device) if device.type == "cuda" and cuda_peaks else None
        self.memory: TrackedPeak | None = None
        self.cuda: CudaPeaks | None = None
        self.timing: WindowTiming | None = None
        self._memory_window: MemoryWindow | None = None
        self._timed_threads = timed_threads or torch.get_num_threads()
        self._load: WindowLoad | None = None  # set while the timed window is open
        self._threads_before = 0
        # The last step's losses: the caller still holds them while the next step runs.
        self._previous: StepLosses | None = None

    def measured_step(
        self, step: StepContext, x: torch.Tensor, y: torch.Tensor, h: torch.Tensor | None = None
    ) -> StepLosses:
        i, timed = step.global_step, self.windows.timed
        if i in timed:
            if i == timed.start:
                self._open_timed()
            self.timer.start()
            losses = self.trainer.train_step(x, y, step=step, clock=self.clock, h=h)
            self.timer.stop()  # synchronises: the clock's CUDA events are complete
            self.clock.end_step(self.timer.times[-1])
            if i == timed[-1]:
                self._close_timed()
        else:
            if self.lock is not None:
                self.lock.pause()
            losses = self._untimed_step(i, step, x, y, h)
        self._previous = losses
        return losses

    def _untimed_step(self, i: int, step: StepContext, x, y, h) -> StepLosses:
        tracked = self.windows.tracked
        if i not in tracked:
            return self.trainer.train_step(x, y, step=step, h=h)
        if i == tracked.start:
            self._memory_window = MemoryWindow(self.trainer, self._previous)
        losses = self._memory_window.step(x, y, step)
        if i == tracked[-1]:
            self.memory, self._memory_window = self._memory_window.close(), None
        return losses

    def _open_timed(self) -> None:
        if self.lock is not None:
            self.lock.acquire_window()  # may wait: another process is timing
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(self._timed_threads)
        self._load = WindowLoad(self._timed_threads, exclusive=self.lock is not None or self.held)
        self._load.start()
        if self.cuda_window is not None:
            self.cuda_window.open()

    def _close_timed(self) -> None:
        if self.cuda_window is not None:
            self.cuda = self.cuda_window.close()
        self.timing = self._load.stop()
        self._release()

    def _release(self) -> None:
        if self._load is None:
            return
        self._load = None
        torch.set_num_threads(self._threads_before)
        if self.lock is not None:
            self.lock.release_window()

    def close(self) -> None:
        """The loop has ended (or failed): a timed window still open gives the machine back."""
        self._release()
