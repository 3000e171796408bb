"""Tracked memory: the peak of live tensor-storage bytes, on any device, with a breakdown.

A :class:`MemoryTracker` is a ``TorchDispatchMode``: every tensor an op returns is looked up by
its storage; a storage seen for the first time is an allocation, and a weak reference on it
reports its release. Views and in-place results share their base's storage, so they cost nothing.
The same tracker runs on real tensors (CPU or CUDA) and on fake ones (``FakeTensorMode``: no
kernels, no allocation), which is how :mod:`locbench.analysis.estimate` predicts GPU memory without
a GPU.

The harness tells the tracker what it is doing (:meth:`MemoryTracker.phase`): a backbone
module's forward, a local loss (the auxiliary nets), a backward, the optimizer step. New
storages are tagged with the phase that made them; at the end, the live set at the peak is
rebuilt from the event log and classified with what the storages turned out to be:

* ``parameters``: parameters and buffers (BatchNorm statistics);
* ``gradients``: storages that are a parameter's ``.grad`` at the end of their step;
* ``optimizer_state``: storages held in ``optimizer.state`` (momentum buffers);
* ``backbone_activations``: made during a backbone module's forward (kept for backward, or
  the boundary tensor handed to the next module);
* ``aux_activations``: made while computing a local loss (auxiliary nets, decoders, losses);
* ``other``: the input batch, backward temporaries (activation gradients) and the rest.

The tracker also keeps the step's course: live bytes after every allocation and release, with
the phase that was running (:meth:`MemoryTracker.timeline`, the ``timeline`` of
:class:`TrackedPeak`): BP's one mountain, a local method's saw-tooth of K forward/backward pairs.

No module hooks are used: forward and backward interleave across modules in this harness,
which confuses hook-based trackers such as ``torch.distributed._tools.mem_tracker``.
"""

from __future__ import annotations

import bisect
import contextlib
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from locbench.records import CATEGORIES, PHASE_CODES  # what the records hold, said once

CUDA_BLOCK = 512  # the CUDA caching allocator rounds every allocation up to 512 bytes
#: At most this many points of a timeline are kept (records stay a few tens of KB).
TIMELINE_POINTS = 2000


def round_up(nbytes: int, block: int = CUDA_BLOCK) -> int:
    return -(-nbytes // block) * block


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views counted once)."""
    storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


@dataclass
class TrackedPeak:
    """The tracked peak of a window of steps. Bytes throughout."""

    peak_bytes: int
    peak_bytes_rounded: int  # with CUDA's 512-byte rounding of every storage
    breakdown: dict[str, int]
    module_peaks: list[int]  # peak live bytes while each module's phases ran
    module_activation_peaks: list[int]  # peak activation bytes made by each module
    resident_bytes: int  # parameters + gradients + optimizer state, at their full size
    steps: int
    # The same peak for the module's backbone forward and its local loss (auxiliary net) apart;
    # the two peaks may fall at different moments, so their sum can exceed the one above.
    module_backbone_activation_peaks: list[int] = field(default_factory=list)
    module_aux_activation_peaks: list[int] = field(default_factory=list)
    # Live bytes over the last tracked step's allocations and releases (see
    # MemoryTracker.timeline); its maximum is peak_bytes. Empty when nothing was tracked.
    timeline: dict = field(default_factory=dict)

    @property
    def floor_bytes(self) -> int:
        """Parameters, gradients and optimizer state, plus the largest single module's own
        activations with its auxiliary net: what no schedule of these modules can go below."""
        return self.resident_bytes + max(self.module_activation_peaks, default=0)

    def as_dict(self) -> dict:
        d = {k: v for k, v in vars(self).items()}
        d["floor_bytes"] = self.floor_bytes
        d["peak_over_floor"] = self.peak_bytes / self.floor_bytes if self.floor_bytes else None
        return d


@dataclass
class _Storage:
    uid: int
    nbytes: int
    tag: str
    module: int | None
    step: int


@dataclass
class _StepRoles:
    gradients: set[int] = field(default_factory=set)
    optimizer_state: set[int] = field(default_factory=set)


class LimitExceeded(RuntimeError):
    """Raised by a tracker given ``stop_above`` as soon as live rounded bytes go above it."""


class MemoryTracker(TorchDispatchMode):
    """Counts live tensor-storage bytes between :meth:`begin` and :meth:`end`.

    ``stop_above``: raise :class:`LimitExceeded` from the allocation that takes the live rounded
    bytes above it. Knowing that a step does not fit a budget needs only the step's events up to
    that allocation, not the rest (``locbench.analysis.estimate.max_batch``); the step is left
    half done and its tracker's results describe only that part."""

    def __init__(self, stop_above: int | None = None) -> None:
        super().__init__()
        self.stop_above = stop_above
        self._live: dict[int, _Storage] = {}  # storage pointer -> record
        self._refs: dict[int, weakref.ref] = {}
        self._next_uid = 0
        self._tag, self._module = "other", None
        self._phase_key: tuple[str, int | None] = (self._tag, self._module)
        self.current = 0
        self.current_rounded = 0
        self._events: list[tuple[int, int]] = []  # (+uid | -uid - 1, running total)
        self._event_phases: list[tuple[str, int | None]] = []  # the phase of each event
        self._step_starts: list[int] = []  # the first event of each step
        self._records: dict[int, _Storage] = {}
        self._roles = _StepRoles()
        self._params: set[int] = set()
        self._frozen: set[int] = set()  # parameters never optimised
        self._module_peaks: dict[int, int] = {}
        self._module_activation: dict[int, int] = {}
        self._module_activation_peaks: dict[int, int] = {}
        # the same by (module, "backbone" | "aux")
        self._module_tag_activation: dict[tuple[int, str], int] = {}
        self._module_tag_activation_peaks: dict[tuple[int, str], int] = {}
        self.peak = self.peak_rounded = 0
        self._peak_event = -1
        self._steps = 0

    # -- what the harness tells the tracker -------------------------------------------------

    def register(self, tensors: Iterable[torch.Tensor], tag: str) -> None:
        """Storages that exist already (parameters, buffers, grads, optimizer state, inputs)."""
        for t in tensors:
            record = self._add(t, tag, None)
            if record is not None and tag == "parameters":
                self._params.add(record.uid)
            elif record is not None and tag == "frozen":
                self._frozen.add(record.uid)

    def begin_step(self) -> None:
        """A training step starts (before its batch is registered): the timeline's start."""
        self._step_starts.append(len(self._events))

    @contextlib.contextmanager
    def phase(self, tag: str, module: int | None = None) -> Iterator[None]:
        previous = self._phase_key
        self._tag, self._module = self._phase_key = tag, module
        try:
            yield
        finally:
            self._tag, self._module = self._phase_key = previous

    def end_step(
        self, params: Iterable[torch.nn.Parameter], optimizer: torch.optim.Optimizer
    ) -> None:
        """Note which live storages are gradients and optimizer state after a step."""
        self._steps += 1
        self._module_activation.clear()
        self._module_tag_activation.clear()
        for p in params:
            if p.grad is not None:
                uid = self._uid_of(p.grad)
                if uid is not None:
                    self._roles.gradients.add(uid)
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    uid = self._uid_of(value)
                    if uid is not None:
                        self._roles.optimizer_state.add(uid)

    # -- results ------------------------------------------------------------------------------

    def result(self, resident_bytes: int, n_modules: int) -> TrackedPeak:
        breakdown = dict.fromkeys(CATEGORIES, 0)
        for uid in self._live_at(self._peak_event):
            record = self._records[uid]
            breakdown[self._category(record)] += record.nbytes
        return TrackedPeak(
            peak_bytes=self.peak,
            peak_bytes_rounded=self.peak_rounded,
            breakdown=breakdown,
            module_peaks=[self._module_peaks.get(k, 0) for k in range(n_modules)],
            module_activation_peaks=[
                self._module_activation_peaks.get(k, 0) for k in range(n_modules)
            ],
            resident_bytes=resident_bytes,
            steps=self._steps,
            module_backbone_activation_peaks=[
                self._module_tag_activation_peaks.get((k, "backbone"), 0) for k in range(n_modules)
            ],
            module_aux_activation_peaks=[
                self._module_tag_activation_peaks.get((k, "aux"), 0) for k in range(n_modules)
            ],
            timeline=self.timeline(),
        )

    def timeline(self, max_points: int = TIMELINE_POINTS) -> dict:
        """Live tracked bytes over the last tracked step, event by event: the step over time.

        An event is one storage allocated or released, in op order; the timeline counts them
        from the last step's :meth:`begin_step` (before its batch) to the last event so far.
        When the window's peak was reached only in an earlier step, it starts at that step
        instead, so that its maximum is always the tracked peak; without :meth:`begin_step`,
        it covers every event. At most ``max_points`` events are kept (:func:`downsample`):
        the global maximum, the first event of each phase and the one before it among them
        (only the first when that is too many; neither when even that is).

        A dict: ``steps`` covered, ``events`` in them; ``event`` (kept event indices, the
        first event 0) and ``bytes`` (live bytes after each); ``phases``, run-length encoded
        as ``[first event, code, module]`` (:data:`PHASE_CODES`; module None outside a
        module's phases). Empty when nothing was tracked."""
        if not self._events:
            return {}
        totals = np.fromiter((total for _, total in self._events), np.int64, len(self._events))
        starts = self._step_starts
        latest_peak = len(totals) - 1 - int(np.argmax(totals[::-1]))
        first = bisect.bisect_right(starts, latest_peak) - 1  # the step holding that peak
        if first < 0:  # no step began (or the peak came before one): every event
            lo, steps = 0, max(len(starts), self._steps)
        else:
            lo, steps = starts[first], len(starts) - first
        phases: list[list] = []
        previous = None
        for i, key in enumerate(self._event_phases[lo:]):
            if key != previous:
                phases.append([i, PHASE_CODES.get(key[0], "-"), key[1]])
                previous = key
        values = totals[lo:]
        changes = [i for start, _, _ in phases for i in (start - 1, start)]
        if len(changes) + 3 > max_points:  # many phases (many modules or micro-batches)
            changes = changes[1::2] if len(changes) // 2 + 3 <= max_points else []
        kept = downsample(values, changes, max_points)
        return {
            "steps": steps,
            "events": len(values),
            "event": kept,
            "bytes": values[kept].tolist(),
            "phases": phases,
        }

    def mark(self) -> int:
        """The number of allocation and release events so far: an index into the event log,
        for :meth:`deltas`."""
        return len(self._events)

    def deltas(
        self, start: int, stop: int | None = None, skip: Iterable[int] = ()
    ) -> list[tuple[int, int]]:
        """Events ``start .. stop-1`` as signed bytes, as is and with CUDA's rounding (an
        allocation positive, a release negative). ``skip``: storage uids (:meth:`uid`) whose
        events are left out (scaffolding of a measurement, not the step's own tensors)."""
        skipped = set(skip)
        out = []
        for code, _ in self._events[start:stop]:
            uid = code if code >= 0 else -code - 1
            if uid in skipped:
                continue
            n = self._records[uid].nbytes
            sign = 1 if code >= 0 else -1
            out.append((sign * n, sign * round_up(n)))
        return out

    def uid(self, t: torch.Tensor) -> int | None:
        """The uid of the live storage behind ``t`` (None if it is not tracked)."""
        return self._uid_of(t)

    def event_log(self) -> tuple[np.ndarray, np.ndarray]:
        """Every allocation and release so far, to replay at other storage sizes: the events'
        codes in order (a storage's uid when it is allocated, ``-uid - 1`` when released; uids
        count from 0 in allocation order) and the bytes of each uid's storage. The live bytes
        after event i are the sum over events up to i of +bytes or -bytes; the rounded ones the
        same sum of :func:`round_up` of them."""
        codes = np.fromiter((code for code, _ in self._events), np.int64, len(self._events))
        sizes = (self._records[uid].nbytes for uid in range(self._next_uid))
        return codes, np.fromiter(sizes, np.int64, self._next_uid)

    # -- bookkeeping ----------------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.record(out)
        return out

    def record(self, out: object) -> None:
        """Count the tensors an op returned (what this mode does with every op's output), for a
        mode that sees the ops itself and hands them on instead of stacking this one on it."""
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t, self._tag, self._module)

    def _uid_of(self, t: torch.Tensor) -> int | None:
        record = self._live.get(t.untyped_storage()._cdata)
        return record.uid if record is not None else None

    def _add(self, t: torch.Tensor, tag: str, module: int | None) -> _Storage | None:
        if t.is_sparse:  # a COO tensor owns no storage; its indices and values do
            self._add(t._indices(), tag, module)
            return self._add(t._values(), tag, module)
        if t.layout != torch.strided:  # other sparse layouts: not counted
            return None
        storage = t.untyped_storage()
        key = storage._cdata
        known = self._live.get(key)
        if known is not None:
            if storage.nbytes() == known.nbytes:
                return known
            # grown (or shrunk) in place, e.g. by an out= argument or resize_: recount it
            self._change(known, -1)
            del self._live[key]
            tag, module = known.tag, known.module
        record = _Storage(self._next_uid, storage.nbytes(), tag, module, self._steps)
        self._next_uid += 1
        self._live[key] = self._records[record.uid] = record
        if key not in self._refs:
            self._refs[key] = weakref.ref(storage, lambda _, key=key: self._release(key))
        self._change(record, +1)
        return record

    def _release(self, key: int) -> None:
        record = self._live.pop(key, None)
        self._refs.pop(key, None)
        if record is not None:
            self._change(record, -1)

    def _change(self, record: _Storage, sign: int) -> None:
        self.current += sign * record.nbytes
        self.current_rounded += sign * round_up(record.nbytes)
        self._events.append((record.uid if sign > 0 else -record.uid - 1, self.current))
        self._event_phases.append(self._phase_key)
        # A module's own activations: what its phases made in the current step.
        if (
            record.module is not None
            and record.tag in ("backbone", "aux")
            and (record.step == self._steps)
        ):
            k = record.module
            self._module_activation[k] = self._module_activation.get(k, 0) + sign * record.nbytes
            self._module_activation_peaks[k] = max(
                self._module_activation_peaks.get(k, 0), self._module_activation[k]
            )
            key = (k, record.tag)
            own = self._module_tag_activation.get(key, 0) + sign * record.nbytes
            self._module_tag_activation[key] = own
            self._module_tag_activation_peaks[key] = max(
                self._module_tag_activation_peaks.get(key, 0), own
            )
        if sign > 0:
            if self.current > self.peak:
                self.peak, self._peak_event = self.current, len(self._events) - 1
            self.peak_rounded = max(self.peak_rounded, self.current_rounded)
            if self.stop_above is not None and self.current_rounded > self.stop_above:
                raise LimitExceeded(f"live rounded bytes above {self.stop_above}")
            if self._module is not None:
                k = self._module
                self._module_peaks[k] = max(self._module_peaks.get(k, 0), self.current)

    def _live_at(self, event: int) -> set[int]:
        live: set[int] = set()
        for code, _ in self._events[: event + 1]:
            if code >= 0:
                live.add(code)
            else:
                live.discard(-code - 1)
        return live

    def _category(self, record: _Storage) -> str:
        if record.uid in self._frozen:
            return "frozen"
        if record.uid in self._params:
            return "parameters"
        if record.uid in self._roles.gradients:
            return "gradients"
        if record.uid in self._roles.optimizer_state:
            return "optimizer_state"
        if record.tag == "backbone":
            return "backbone_activations"
        if record.tag == "aux":
            return "aux_activations"
        if record.tag in ("gradients", "optimizer_state"):
            return record.tag
        return "other"


def downsample(
    values: Sequence[int] | np.ndarray, keep: Iterable[int] = (), max_points: int = TIMELINE_POINTS
) -> list[int]:
    """Sorted indices of at most ``max_points`` of ``values`` that keep their shape: all of them
    when few enough; else the indices of ``keep``, the first, the last and the global maximum,
    and over the rest, split into equal buckets, the lowest and the highest of each bucket
    (min/max decimation: every peak and trough wider than a bucket survives, the highest
    exactly). Raises ValueError when ``keep`` alone holds more than ``max_points``."""
    values = np.asarray(values)
    n = len(values)
    if n <= max_points:
        return list(range(n))
    must = {0, n - 1, int(np.argmax(values)), *(int(i) for i in keep if 0 <= i < n)}
    if len(must) > max_points:
        raise ValueError(f"{len(must)} points must be kept, more than max_points={max_points}")
    edges = np.linspace(0, n, (max_points - len(must)) // 2 + 1).astype(int)
    chosen = set(must)
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):  # ints: the record is JSON
        if b > a:
            part = values[a:b]
            chosen.update((a + int(part.argmin()), a + int(part.argmax())))
    return sorted(chosen)
