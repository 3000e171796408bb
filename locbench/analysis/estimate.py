"""``locbench estimate``: peak training memory predicted without running a kernel.

The same training step the harness runs is replayed on fake tensors (``FakeTensorMode``: every op
computes only shapes, nothing is allocated) under the
:class:`~locbench.measure.memory.MemoryTracker`, for any method, backbone, K, batch size and image
size. The first step creates gradients and optimizer state; the second, steady-state step is
measured, as a run's tracked window is. The peak is reported as is and with CUDA's 512-byte rounding
of every allocation. ``--max-batch`` predicts the largest batch that fits from two small steps
(memory is affine in the batch, allocation by allocation) and confirms it with two more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from locbench.errors import UserError
from locbench.harness.build import Resolved, build, resolve
from locbench.harness.fake import FakeStepper, KernelDtypes, fake_step_peak  # noqa: F401 - KernelDtypes: moved
from locbench.measure.memory import CUDA_BLOCK, TrackedPeak
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
    with step_errors(batch_size):
        return fake_step_peak(run, batch_size, image_size, num_classes)


@contextlib.contextmanager
def step_errors(batch_size: int) -> Iterator[None]:
    """A step that cannot run (at this batch, or on fake tensors) as one :class:`StepFails`."""
    try:
        yield
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

    Memory is affine in the batch, storage by storage: every allocation of a step is
    ``alpha + beta * batch`` bytes, in the same order at every batch. Two steps at batches a and
    a + 1 give each event's line, so the rounded peak at any batch is a replay of the event log
    (:class:`AffineSteps`), and the answer is predicted without a step; steps at the predicted
    batch b and at b + 1 confirm it (b fits, b + 1 does not, and b's peak is the predicted
    one). Every step reuses one fake build (:class:`~locbench.harness.fake.FakeStepper`).
    When the events are not affine (a step that depends on the batch otherwise, e.g. micro-
    batches of ceil(batch / M)) or a confirmation disagrees, a widening search and bisection
    over real steps settle it, from the prediction."""
    with FakeStepper(run, image_size, num_classes) as stepper:
        cache: dict[int, tuple[TrackedPeak, list[tuple[int, int]]]] = {}

        def traced(b: int) -> tuple[TrackedPeak, list[tuple[int, int]]]:
            if b not in cache:
                with step_errors(b):
                    cache[b] = stepper.step(b)
            return cache[b]

        def peak(b: int) -> TrackedPeak:
            return traced(b)[0]

        def fits(b: int) -> bool:
            return peak(b).peak_bytes_rounded <= budget

        least = smallest_batch(peak)
        if not fits(least):
            return 0, None
        a = max(least, 2)
        model = AffineSteps.fit(a, traced(a)[1], traced(a + 1)[1])
        if model is not None:
            b = model.largest_fitting(budget, a, limit)
            predicted = fits(b) and peak(b).peak_bytes_rounded == model.peak(b)[1]
            if predicted and (b == limit or not fits(b + 1)):
                return b, peak(b)
            guess = b
        else:
            slope = max(peak(a + 1).peak_bytes_rounded - peak(a).peak_bytes_rounded, 1)
            guess = int(min(max(a + (budget - peak(a).peak_bytes_rounded) / slope, least), limit))
        return _search(guess, least, limit, fits, peak)


def _search(guess, least, limit, fits, peak) -> tuple[int, TrackedPeak]:
    """The largest batch that fits, from ``guess``: a widening step brackets it, bisection
    settles it (every answer a real step's)."""
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


@dataclass(frozen=True)
class AffineSteps:
    """A step's event log as lines in the batch: event i allocates (or releases)
    ``base[i] + slope[i] * batch`` bytes (negative: a release)."""

    base: np.ndarray
    slope: np.ndarray

    @classmethod
    def fit(
        cls, a: int, at_a: list[tuple[int, int]], at_next: list[tuple[int, int]]
    ) -> AffineSteps | None:
        """The lines through the event logs at batches ``a`` and ``a + 1``; None when the two
        logs do not pair up (another number of events, or an event changing sign)."""
        if len(at_a) != len(at_next) or not at_a:
            return None
        first = np.array([n for n, _ in at_a], dtype=np.int64)
        second = np.array([n for n, _ in at_next], dtype=np.int64)
        if np.any(np.sign(first) != np.sign(second)):
            return None
        slope = second - first
        return cls(first - slope * a, slope)

    def peak(self, batch: int) -> tuple[int, int]:
        """The predicted peak at ``batch``: unrounded and with every storage rounded."""
        sizes = self.base + self.slope * batch
        rounded = np.sign(sizes) * (-(-np.abs(sizes) // CUDA_BLOCK) * CUDA_BLOCK)
        return int(np.cumsum(sizes).max()), int(np.cumsum(rounded).max())

    def largest_fitting(self, budget: int, least: int, limit: int) -> int:
        """The largest batch in ``least .. limit`` whose predicted rounded peak fits (``least``
        when none does): memory never falls as the batch grows, so a widening search and
        bisection over the prediction."""
        fits = lambda b: self.peak(b)[1] <= budget  # noqa: E731
        lo, step = least, 1
        while lo + step <= limit and fits(lo + step):
            lo, step = lo + step, step * 2
        hi = min(lo + step, limit + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo


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
