"""Meters around the measured window of training steps (wall time and the CUDA allocator) and
around each epoch (the time spent waiting for data).

Both are the same for every method: the harness opens the window after the same number of
warm-up steps and closes it after the same number of measured steps.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DataWait:
    """The batches of ``loader`` moved by ``to_device``, timing how long the training loop
    waited for each: fetching it (decoding, augmentation, collation) and moving it to the
    device. A loader-bound run shows up as a large share of the epoch spent here; the step
    timer's window never sees it."""

    def __init__(
        self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], to_device: Callable
    ) -> None:
        self.loader, self.to_device = loader, to_device
        self.seconds = 0.0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                x, y = next(batches)
            except StopIteration:
                self.seconds += time.perf_counter() - t0
                return
            batch = self.to_device(x, y)
            self.seconds += time.perf_counter() - t0
            yield batch


class StepTimer:
    """Per-step wall time; synchronises CUDA before reading the clock so queued kernels count."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self._t0 = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        synchronize(self.device)
        self.times.append(time.perf_counter() - self._t0)

    def summary(self, batch_size: int) -> dict[str, float | int | None]:
        if not self.times:
            return {
                "measured_steps": 0,
                "step_time_median_s": None,
                "step_time_p10_s": None,
                "step_time_p90_s": None,
                "images_per_s": None,
            }
        t = sorted(self.times)
        median = statistics.median(t)
        return {
            "measured_steps": len(t),
            "step_time_median_s": median,
            "step_time_p10_s": quantile(t, 0.1),
            "step_time_p90_s": quantile(t, 0.9),
            "images_per_s": batch_size / median,
        }


class PhaseClock:
    """Per-module time of the timed steps: each module's forward, local loss and backward, and
    the optimizer step, read at the phase points of ``LocalTrainer.train_step`` (those the
    memory tracker labels).

    On CUDA each phase is a pair of CUDA events recorded on the current stream, with no
    synchronisation per phase: :meth:`end_step` reads them after the step timer's own
    end-of-step synchronisation. Elsewhere ``time.perf_counter`` at the same points.
    ``reading`` replaces the clock by any monotone counter (``locbench describe`` reads a
    ``FlopCounterMode``'s total: FLOPs per phase)."""

    # tracker phase -> part; "other" is the output head's loss, the last module's local loss
    PARTS = {
        "backbone": "forward_s",
        "aux": "local_s",
        "other": "local_s",
        "backward": "backward_s",
        "optimizer_state": "optimizer_s",
    }

    def __init__(
        self, K: int, device: torch.device, reading: Callable[[], float] | None = None
    ) -> None:
        self.K = K
        self.events = reading is None and device.type == "cuda"
        self.reading = reading or time.perf_counter
        self._marks: list[tuple[str, int | None, object, object]] = []
        self.steps: list[dict] = []  # per step: the parts, and ``step_s``

    @contextlib.contextmanager
    def phase(self, tag: str, module: int | None = None) -> Iterator[None]:
        start = self._now()
        try:
            yield
        finally:
            self._marks.append((tag, module, start, self._now()))

    def _now(self) -> object:
        if self.events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return self.reading()

    def end_step(self, step_s: float | None = None) -> dict:
        """The parts of the step just ended (device synchronised), kept with its ``step_s``."""
        parts: dict = {name: [0.0] * self.K for name in ("forward_s", "local_s", "backward_s")}
        parts["optimizer_s"] = 0.0
        for tag, module, start, end in self._marks:
            value = start.elapsed_time(end) / 1e3 if self.events else end - start
            name = self.PARTS[tag]
            if name == "optimizer_s":
                parts[name] += value
            else:  # a phase may recur in one step (a data-parallel run's last all-reduce)
                parts[name][module] += value
        self._marks = []
        self.steps.append({**parts, "step_s": step_s})
        return parts

    def summary(self) -> dict | None:
        """Medians over the steps: per module ``forward_s``, ``local_s``, ``backward_s``;
        ``optimizer_s``; ``other_s``, the step time's median less the parts' medians (zeroing
        gradients, hand-offs between modules, the clock's own cost); ``parts_s``, the median
        of each step's sum of parts, to compare with ``step_s``, the step time's median."""
        if not self.steps:
            return None

        def median(get: Callable[[dict], float]) -> float:
            return statistics.median(get(s) for s in self.steps)

        out: dict = {
            name: [median(lambda s, k=k, name=name: s[name][k]) for k in range(self.K)]
            for name in ("forward_s", "local_s", "backward_s")
        }
        out["optimizer_s"] = median(lambda s: s["optimizer_s"])
        out["parts_s"] = median(lambda s: sum(map(sum, part_lists(s))) + s["optimizer_s"])
        out["step_s"] = median(lambda s: s["step_s"])
        parts = sum(map(sum, part_lists(out))) + out["optimizer_s"]
        out["other_s"] = out["step_s"] - parts
        out["steps"] = len(self.steps)
        return out

    @staticmethod
    def module_times(summary: dict) -> list[float]:
        """m_k = forward + local loss + backward of module k, from :meth:`summary`."""
        return [sum(parts) for parts in zip(*part_lists(summary))]


def part_lists(parts: dict) -> list[list[float]]:
    return [parts["forward_s"], parts["local_s"], parts["backward_s"]]


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class CudaPeaks:
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    allocated_at_start_bytes: int
    cudnn_benchmark: bool


class CudaWindow:
    """``torch.cuda.max_memory_allocated`` over the window, after the reset protocol the
    README's "What the numbers mean" states: collect garbage, empty the cache, reset the peak
    statistics.

    ``allocated_at_start_bytes`` is everything allocated when the window opens: parameters,
    gradients, optimizer state, buffers, the batch and the last step's losses, and the dataset
    splits when a loader holds them on the GPU (the tensor pipeline)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_bytes = 0

    def open(self) -> None:
        torch.cuda.synchronize(self.device)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.start_bytes = torch.cuda.memory_allocated(self.device)

    def close(self) -> CudaPeaks:
        torch.cuda.synchronize(self.device)
        return CudaPeaks(
            peak_allocated_bytes=torch.cuda.max_memory_allocated(self.device),
            peak_reserved_bytes=torch.cuda.max_memory_reserved(self.device),
            allocated_at_start_bytes=self.start_bytes,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
