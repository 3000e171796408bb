"""Meters around the measured window of training steps (wall time and the CUDA allocator) and
around each epoch (the time spent waiting for data).

Both are the same for every method: the harness opens the window after the same number of
warm-up steps and closes it after the same number of measured steps.
"""

from __future__ import annotations

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
