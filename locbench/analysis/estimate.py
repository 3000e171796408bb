"""``locbench estimate``: peak training memory predicted without running a kernel.

The same training step the harness runs is replayed on fake tensors (``FakeTensorMode``: every op
computes only shapes, nothing is allocated) under the
:class:`~locbench.measure.memory.MemoryTracker`, for any method, backbone, K, batch size and image
size. The first step creates gradients and optimizer state; the second, steady-state step is
measured, as a run's tracked window is. The peak is reported as is and with CUDA's 512-byte rounding
of every allocation.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import torch

from locbench.errors import UserError
from locbench.harness.build import Resolved, build, resolve
from locbench.harness.fake import KernelDtypes, fake_step_peak  # noqa: F401 - KernelDtypes: moved
from locbench.measure.memory import TrackedPeak
from locbench.settings.run_config import BY_NAME, RunConfig
from locbench.settings.schema import check

UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30}
UNITS |= {"kb": 10**3, "mb": 10**6, "gb": 10**9}


def parse_bytes(text: str) -> int:
    """``24GiB``, ``512 MiB``, ``8GB`` or a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9]{1,20}(\.[0-9]{1,20})?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(3).lower() not in UNITS:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise UserError(f"cannot read {shown!r} as a size; use e.g. 24GiB, 512MiB, 8GB or bytes")
    size = int(float(match.group(1)) * UNITS[match.group(3).lower()])
    if not 1 <= size <= 2**60:
        raise UserError(f"--budget must be between 1 byte and 1 EiB, got {text!r}")
    return size


class StepFails(UserError):
    """One training step of the configuration cannot run at that batch size (e.g. BatchNorm1d
    given a batch of one), or not on fake tensors (see ``locbench/methods/base.py``)."""


def estimate(
    run: Resolved,
    batch_size: int,
    image_size: int | None = None,
    num_classes: int = 10,
) -> TrackedPeak:
    """Tracked peak of one steady-state training step of the resolved ``run``, on fake
    tensors."""
    check(BY_NAME["batch_size"], batch_size, "--batch-size")  # the run setting's rule
    try:
        return fake_step_peak(run, batch_size, image_size, num_classes)
    except UserError:
        raise
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        text = str(e).strip()
        message = text.splitlines()[0] if text else type(e).__name__
        raise StepFails(f"one training step at batch {batch_size} fails: {message}") from None


#: The batches ``max_batch`` tries first, in order: it searches upwards from the first that
#: trains (BatchNorm1d, as in DGL's auxiliary nets, refuses a batch of one in training).
SMALLEST_BATCHES = (1, 2, 3, 4)


def smallest_batch(peak: Callable[[int], TrackedPeak]) -> int:
    """The first of :data:`SMALLEST_BATCHES` whose ``peak`` (an :func:`estimate`) runs."""
    failure: StepFails | None = None
    for b in SMALLEST_BATCHES:
        try:
            peak(b)
        except StepFails as e:
            failure = e
            continue
        return b
    raise UserError(f"no batch of {SMALLEST_BATCHES[-1]} or fewer trains: {failure}")


def max_batch(
    run: Resolved,
    budget: int,
    image_size: int | None = None,
    num_classes: int = 10,
    limit: int = 2**20,
) -> tuple[int, TrackedPeak | None]:
    """The largest batch whose rounded peak fits ``budget`` bytes, and its estimate; (0, None)
    if not even the smallest batch that trains (:func:`smallest_batch`) fits.

    Memory grows almost linearly with the batch: a line through the estimates at two small
    batches predicts the answer, a widening step brackets it, and bisection settles it
    exactly."""
    cache: dict[int, TrackedPeak] = {}

    def peak(b: int) -> TrackedPeak:
        if b not in cache:
            cache[b] = estimate(run, b, image_size, num_classes)
        return cache[b]

    def fits(b: int) -> bool:
        return peak(b).peak_bytes_rounded <= budget

    least = smallest_batch(peak)
    if not fits(least):
        return 0, None
    a = max(least, 2)
    slope = max((peak(a + 2).peak_bytes_rounded - peak(a).peak_bytes_rounded) / 2, 1.0)
    guess = int(min(max(a + (budget - peak(a).peak_bytes_rounded) / slope, least), limit))
    step = max(guess // 32, 1)
    if fits(guess):
        lo, hi = guess, min(guess + step, limit + 1)
        while hi <= limit and fits(hi):
            lo, step = hi, step * 2
            hi = min(lo + step, limit + 1)
    else:
        lo, hi = max(guess - step, least), guess
        while not fits(lo):
            hi, step = lo, step * 2
            lo = max(hi - step, least)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, peak(lo)


MIB = 2**20


def estimate_methods(
    config: RunConfig,
    methods: list[str],
    batch_size: int,
    image_size: int | None = None,
    num_classes: int = 10,
    budget: int | None = None,
    timeline: bool = False,
) -> list[dict]:
    """One row per method: its estimated peak at ``batch_size`` (or, with ``budget``, at the
    largest batch that fits), the breakdown, and the saving versus BP when BP is among them; with
    ``timeline``, also the step's ``timeline``
    (:meth:`~locbench.measure.memory.MemoryTracker.timeline`,
    bytes without CUDA's rounding: its maximum is ``peak_bytes_unrounded``)."""
    rows = []
    for name in methods:
        run = resolve(for_method(config, name))
        if budget is None:
            batch, peak = batch_size, estimate(run, batch_size, image_size, num_classes)
        else:
            batch, peak = max_batch(run, budget, image_size, num_classes)
        with torch.device("meta"):
            K = build(run, num_classes=num_classes)[1].split.K
        row = {"method": name, "K": K, "batch_size": batch}
        if peak is not None:
            row |= {
                "peak_bytes": peak.peak_bytes_rounded,
                "peak_bytes_unrounded": peak.peak_bytes,
                "floor_bytes": peak.floor_bytes,
                "breakdown": peak.breakdown,
            }
            if timeline:
                row["timeline"] = peak.timeline
        rows.append(row)
    bp = next((r for r in rows if r["method"] == "bp" and "peak_bytes" in r), None)
    for r in rows:
        if bp is not None and "peak_bytes" in r and budget is None:
            r["saving_vs_bp"] = 1 - r["peak_bytes"] / bp["peak_bytes"]
    return rows


def for_method(config: RunConfig, name: str) -> RunConfig:
    """``config`` for method ``name``, keeping only the hyperparameters that method has."""
    from locbench.methods.loading import resolve_method
    from locbench.methods.params import has_param

    method = resolve_method(name)
    params = {k: v for k, v in config.method_params.items() if has_param(method, k)}
    return dataclasses.replace(config, method=name, method_params=params)


def format_estimates(rows: list[dict], title: str) -> str:
    import pandas as pd

    table = []
    for r in rows:
        line = {"method": r["method"], "K": r["K"], "batch": r["batch_size"]}
        if "peak_bytes" in r:
            line["peak (MiB)"] = r["peak_bytes"] / MIB
            if "saving_vs_bp" in r:
                line["saving vs bp (%)"] = 100 * r["saving_vs_bp"]
            for key, value in r["breakdown"].items():
                line[f"{key.replace('_', ' ')} (MiB)"] = value / MIB
        table.append(line)
    text = pd.DataFrame(table).to_string(index=False, float_format=lambda v: f"{v:.1f}")
    return f"{title}\n{text}"
