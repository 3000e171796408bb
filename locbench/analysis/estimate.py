"""``locbench estimate``: peak training memory predicted without running a kernel.

The same training step the harness runs is replayed on fake tensors (``FakeTensorMode``: every op
computes only shapes, nothing is allocated) under the
:class:`~locbench.measure.memory.MemoryTracker`, for any method, backbone, K, batch size and image
size. The first step creates gradients and optimizer state; the second, steady-state step is
measured, as a run's tracked window is. The peak is reported as is and with CUDA's 512-byte rounding
of every allocation.

``--max-batch`` (:func:`max_batch`) finds the largest batch whose rounded peak fits a budget. A
fresh estimate per batch tried costs a build and two fake steps (seconds for ResNet-110), and a
search tries about seventeen batches. Instead one trainer is built and warmed up once, and the
tracker's event log of one steady-state step at a prime batch is replayed at any batch: every
storage's bytes are ``scale * batch ** power`` (read off by dividing by that prime) and the
allocations and releases come in the same order at every batch, so the search runs on numpy
cumulative sums. Its answer b is then confirmed by real steps of the same trainer: b's, which must
go exactly as replayed and whose estimate is returned, and b + 1's, stopped as soon as it is over
the budget. Where they disagree, the search runs again on real steps: the answer is always the one
the search on fresh estimates gives (:func:`_max_batch_by_probing`, kept as the tests' reference).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator

import numpy as np

from locbench.analysis.side_by_side import side_by_side
from locbench.errors import UserError
from locbench.harness.build import Resolved, hidden_units, requested_split, resolve
from locbench.harness.fake import (
    TrackingFakeMode,
    fake_batch,
    fake_modes,
    fake_step_peak,
    fake_trainer,
)
from locbench.harness.trainer import LocalTrainer, StepLosses
from locbench.harness.windows import MemoryWindow, warm_up
from locbench.measure.memory import CUDA_BLOCK, LimitExceeded, TrackedPeak
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
    """A step that cannot run (at this batch, or on fake tensors) as one :class:`StepFails`; a
    tracker's :class:`~locbench.measure.memory.LimitExceeded` passes through."""
    try:
        yield
    except UserError:
        raise
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        if isinstance(e, LimitExceeded):
            raise
        text = str(e).strip()
        message = text.splitlines()[0] if text else type(e).__name__
        raise StepFails(f"one training step at batch {batch_size} fails: {message}") from None


#: The batches ``max_batch`` tries first, in order: it searches upwards from the first that
#: trains (BatchNorm1d, as in DGL's auxiliary nets, refuses a batch of one in training).
SMALLEST_BATCHES = (1, 2, 3, 4)


def smallest_batch(peak: Callable[[int], object]) -> int:
    """The first of :data:`SMALLEST_BATCHES` at which ``peak`` (an :func:`estimate`, or a
    trainer's first step) runs without :class:`StepFails`."""
    failure: StepFails | None = None
    for b in SMALLEST_BATCHES:
        try:
            peak(b)
        except StepFails as e:
            failure = e
            continue
        return b
    raise StepFails(f"no batch of {SMALLEST_BATCHES[-1]} or fewer trains: {failure}")


def max_batch(
    run: Resolved,
    budget: int,
    image_size: int | None = None,
    num_classes: int = 10,
    limit: int = 2**20,
) -> tuple[int, TrackedPeak | None]:
    """The largest batch whose rounded peak fits ``budget`` bytes, and its estimate; (0, None)
    if not even the smallest batch that trains (:func:`smallest_batch`) fits.

    The answer is the one :func:`_search` gives on exact estimates (:func:`_max_batch_by_probing`),
    found with four fake steps instead of about seventeen builds and thirty steps: one trainer is
    built and warmed up once (:class:`_Steps`), one steady-state step at :data:`TRACE_BATCH` is
    traced, and the search runs on its replay (:class:`_Replay`) at any batch; the answer b is
    then confirmed by real steps: b's (whose estimate is returned, and whose every storage must be
    the one the replay predicted) and b + 1's, stopped as soon as it is over the budget. Where the
    replay is not confirmed (the step's allocations change with the batch in a way it does not
    model), the search runs again on real steps of the same trainer."""
    with _Steps(run, image_size, num_classes) as steps:
        least = smallest_batch(steps.warm)
        replay = steps.replay(TRACE_BATCH)
        if replay is not None:
            b = _search(replay.rounded_peak, least, budget, limit)
            if b == 0 and steps.exceeds(least, budget):
                return 0, None
            if b > 0:
                peak = steps.peak(b)
                confirmed = peak.peak_bytes_rounded <= budget and replay.predicts(b, *steps.logs[b])
                if confirmed and (b >= limit or steps.exceeds(b + 1, budget)):
                    return b, peak
        b = _search(lambda b: steps.peak(b).peak_bytes_rounded, least, budget, limit)
        return (b, steps.peak(b)) if b > 0 else (0, None)


def _max_batch_by_probing(
    run: Resolved,
    budget: int,
    image_size: int | None = None,
    num_classes: int = 10,
    limit: int = 2**20,
) -> tuple[int, TrackedPeak | None]:
    """:func:`max_batch` with a fresh :func:`estimate` at every batch :func:`_search` asks
    about: the reference the tests hold ``max_batch`` to (a minute or two for ResNet-110)."""
    cache: dict[int, TrackedPeak] = {}

    def peak(b: int) -> TrackedPeak:
        if b not in cache:
            cache[b] = estimate(run, b, image_size, num_classes)
        return cache[b]

    least = smallest_batch(peak)
    b = _search(lambda b: peak(b).peak_bytes_rounded, least, budget, limit)
    return (b, peak(b)) if b > 0 else (0, None)


def _search(rounded_peak: Callable[[int], int], least: int, budget: int, limit: int) -> int:
    """The largest batch from ``least`` to ``limit`` whose ``rounded_peak`` fits ``budget``, or 0
    when ``least``'s does not.

    Memory grows almost linearly with the batch: a line through the peaks at two small
    batches predicts the answer, a widening step brackets it, and bisection settles it
    exactly."""

    def fits(b: int) -> bool:
        return rounded_peak(b) <= budget

    if not fits(least):
        return 0
    a = max(least, 2)
    slope = max((rounded_peak(a + 2) - rounded_peak(a)) / 2, 1.0)
    guess = int(min(max(a + (budget - rounded_peak(a)) / slope, least), limit))
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
    return lo


#: The batch of the step :func:`max_batch` traces: a prime no channel count, image side or
#: class count is a multiple of, so that a storage's bytes factor as ``scale * TRACE_BATCH **
#: power`` with the power of the batch it grows with (1 for activations, 2 for a batch-by-batch
#: similarity matrix, 0 for parameters). Small enough that no shape nears 2**31 elements.
TRACE_BATCH = 1021


class _Replay:
    """A traced step's allocations and releases, replayed at any batch: each storage's bytes
    are ``scale * batch ** power``, and the events come in the same order at every batch (the
    harness's step has no batch-dependent branches; :func:`max_batch` confirms both)."""

    def __init__(self, codes: np.ndarray, nbytes: np.ndarray, batch: int) -> None:
        self.codes = codes
        self.scale, self.power = nbytes.copy(), np.zeros_like(nbytes)
        for _ in range(4):  # no storage grows faster than the batch to the fourth
            divides = (self.scale > 0) & (self.scale % batch == 0)
            self.scale[divides] //= batch
            self.power[divides] += 1
        uids = np.where(codes >= 0, codes, -codes - 1)
        self._uids, self._signs = uids, np.where(codes >= 0, 1, -1)

    def sizes(self, batch: int) -> np.ndarray:
        # Python ints where a storage or the running sum of them all could overflow int64
        largest = batch ** int(self.power.max(initial=0)) * int(self.scale.max(initial=0))
        if largest * (len(self.codes) + 1) >= 2**62:
            return self.scale.astype(object) * batch ** self.power.astype(object)
        return self.scale * batch**self.power

    def rounded_peak(self, batch: int) -> int:
        """The tracker's ``peak_bytes_rounded`` of the step at ``batch``."""
        rounded = -(-self.sizes(batch) // CUDA_BLOCK) * CUDA_BLOCK
        live = np.cumsum(rounded[self._uids] * self._signs)
        return int(max(live.max(initial=0), 0))

    def predicts(self, batch: int, codes: np.ndarray, nbytes: np.ndarray) -> bool:
        """Whether the step traced at ``batch`` (its :meth:`MemoryTracker.event_log`) went as
        replayed: the same events, every storage of the predicted size."""
        return np.array_equal(codes, self.codes) and np.array_equal(nbytes, self.sizes(batch))


class _Steps:
    """Steady-state steps at any batch of one trainer, built once on fake tensors: the tracked
    peak at a batch is :func:`estimate`'s, byte for byte, without its build and warm-up step.

    :meth:`warm` builds the trainer and runs its first, untracked step, which makes the gradients
    and optimizer state, as :func:`~locbench.harness.windows.steady_state_peak` does; every later
    step is a tracked window like its second. Nothing a step leaves behind depends on its batch
    (parameters, gradients, optimizer state, the scalar losses), so the window at batch b opens
    on the same storages as in ``estimate(b)``. The losses the windows see as the last step's
    are always the warm step's: a window's own losses are dropped before it closes, as
    ``steady_state_peak`` drops them, and the warm step's have the same sizes."""

    def __init__(self, run: Resolved, image_size: int | None, num_classes: int) -> None:
        self.run, self.image_size, self.num_classes = run, image_size, num_classes
        # In fp32, the tracker rides on the fake mode; under KernelDtypes, which must come
        # between the two, it is a mode of its own above them.
        self._mode = TrackingFakeMode() if run.config.precision == "fp32" else None
        self._modes = fake_modes(run, self._mode)
        self._trainer: LocalTrainer | None = None
        self._failed: LocalTrainer | None = None  # a trainer whose first step failed
        self._shape: tuple[int, ...] = ()
        self._previous: StepLosses | None = None
        self._warm_batch: int | None = None
        self._peaks: dict[int, TrackedPeak] = {}
        self.logs: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # batch -> event log

    def __enter__(self) -> _Steps:
        self._modes.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._trainer = self._failed = self._previous = None
        self._modes.__exit__(*exc)

    def warm(self, batch_size: int) -> None:
        """Build the trainer and run its first step at ``batch_size``; :class:`StepFails` if it
        fails (the next call builds afresh)."""
        check(BY_NAME["batch_size"], batch_size, "--batch-size")
        trainer, self._failed, self._trainer = self._failed, None, None
        if trainer is None:
            trainer, self._shape = fake_trainer(self.run, self.image_size, self.num_classes)
        x, y = fake_batch(trainer, self._shape, batch_size)
        try:
            with step_errors(batch_size):
                self._previous = warm_up(trainer, x, y)  # one step, or the method's more
        except StepFails:
            # A first step that failed before the optimizer's (e.g. in a BatchNorm1d given one
            # sample) leaves only gradients, which the next step's zero_grad drops: the trainer
            # can take its first step again, without being built again.
            self._failed = None if trainer.optimizer.state else trainer
            raise
        self._trainer, self._warm_batch = trainer, batch_size

    def peak(self, batch_size: int) -> TrackedPeak:
        """``estimate(run, batch_size)``; its event log goes to :attr:`logs`."""
        if batch_size not in self._peaks:
            self._track(batch_size, None)
        return self._peaks[batch_size]

    def replay(self, batch_size: int) -> _Replay | None:
        """The step at ``batch_size`` traced for replay; None if it fails."""
        try:
            self.peak(batch_size)
        except StepFails:
            return None
        return _Replay(*self.logs[batch_size], batch_size)

    def exceeds(self, batch_size: int, budget: int) -> bool:
        """Whether the rounded peak at ``batch_size`` is over ``budget``, stopping the step as
        soon as it is (the trainer is then built again for any later step)."""
        if batch_size not in self._peaks:
            try:
                self._track(batch_size, budget)
            except LimitExceeded:
                return True
        return self._peaks[batch_size].peak_bytes_rounded > budget

    def _track(self, batch_size: int, stop_above: int | None) -> None:
        check(BY_NAME["batch_size"], batch_size, "--batch-size")
        if self._trainer is None:
            self.warm(self._warm_batch)
        x, y = fake_batch(self._trainer, self._shape, batch_size)
        sees_ops = self._mode.tracking if self._mode is not None else None
        window = MemoryWindow(self._trainer, self._previous, stop_above, sees_ops)
        try:
            with step_errors(batch_size):
                window.step(x, y)  # its losses are dropped here, before close(), as in estimate
        except BaseException:
            self._trainer = None  # left mid-step: build again for any later step
            if stop_above is not None and window.tracker.peak_rounded > stop_above:
                raise LimitExceeded(f"batch {batch_size}: over {stop_above} bytes") from None
            raise
        # closed while the batch is still referenced, as in estimate
        self._peaks[batch_size] = window.close()
        self.logs[batch_size] = window.tracker.event_log()


MIB = 2**20


def estimate_methods(
    config: RunConfig,
    methods: list[str],
    batch_size: int,
    image_size: int | None = None,
    num_classes: int = 10,
    budget: int | None = None,
    timeline: bool = False,
    jobs: int = 1,
) -> list[dict]:
    """One row per method: its estimated peak at ``batch_size`` (or, with ``budget``, at the
    largest batch that fits), the breakdown, and the saving versus BP when BP is among them; with
    ``timeline``, also the step's ``timeline``
    (:meth:`~locbench.measure.memory.MemoryTracker.timeline`,
    bytes without CUDA's rounding: its maximum is ``peak_bytes_unrounded``). ``jobs``: methods
    estimated side by side in that many processes (:mod:`locbench.analysis.side_by_side`)."""
    calls = [
        (config, name, batch_size, image_size, num_classes, budget, timeline) for name in methods
    ]
    rows = side_by_side(method_row, calls, jobs)
    bp = next((r for r in rows if r["method"] == "bp" and "peak_bytes" in r), None)
    for r in rows:
        if bp is not None and "peak_bytes" in r and budget is None:
            r["saving_vs_bp"] = 1 - r["peak_bytes"] / bp["peak_bytes"]
    return rows


def method_row(
    config: RunConfig,
    name: str,
    batch_size: int,
    image_size: int | None,
    num_classes: int,
    budget: int | None,
    timeline: bool,
) -> dict:
    """:func:`estimate_methods`' row for method ``name``; a method that cannot be built or
    stepped on fake tensors has its ``error`` instead of a peak."""
    run = resolve(for_method(config, name))
    # the split alone, not a second build of the method on meta (a second per method)
    K = run.method_cls.plan_split(
        requested_split(run.config, hidden_units(run.config.net)), run.params
    ).K
    try:
        if budget is None:
            batch, peak = batch_size, estimate(run, batch_size, image_size, num_classes)
        else:
            batch, peak = max_batch(run, budget, image_size, num_classes)
    except UserError as e:  # StepFails, or the method's __init__ failing there
        return {"method": name, "K": K, "batch_size": None, "error": str(e)}
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
    return row


def for_method(config: RunConfig, name: str) -> RunConfig:
    """``config`` for method ``name``, keeping only the hyperparameters that method takes
    (``KEY`` it has, ``name.KEY``; the command checked them against all its methods)."""
    from locbench.methods.loading import resolve_method
    from locbench.methods.params import assign_hyperparameters

    classes = {name: resolve_method(name)}
    params = assign_hyperparameters(config.method_params, classes, name, required=False)[name]
    return dataclasses.replace(config, method=name, method_params=params)


def format_estimates(rows: list[dict], title: str) -> str:
    import pandas as pd

    table = []
    for r in rows:
        batch = "-" if r["batch_size"] is None else r["batch_size"]
        line = {"method": r["method"], "K": r["K"], "batch": batch}
        if "peak_bytes" in r:
            line["peak (MiB)"] = r["peak_bytes"] / MIB
            if "saving_vs_bp" in r:
                line["saving vs bp (%)"] = 100 * r["saving_vs_bp"]
            for key, value in r["breakdown"].items():
                line[f"{key.replace('_', ' ')} (MiB)"] = value / MIB
        table.append(line)
    text = pd.DataFrame(table).to_string(index=False, float_format=lambda v: f"{v:.1f}")
    return f"{title}\n{text}"
