"""Timed windows with the machine to themselves, and what a window ran under.

Two training processes on one machine slow each other's steps unevenly (seen on 2 cores: DGL's
step 2.8x, BP's 1.6x), so step times measured side by side are not comparable. Every locbench
run on a machine therefore shares one :class:`TimingLock`, a reader/writer lock: a run holds it
*shared* from its start (before it loads data or builds anything) to its end, and lets go only
at *pause points*, between two training steps or two evaluation batches. A timed window takes
it *exclusively* from its first step to its last: it waits until every other run has reached a
pause point, and they wait there until it ends. So only one run computes while one times, and
outside timed windows they all run at once: a parallel sweep stays faster than a serial one.

The lock is two ``flock`` files in the system's temporary folder: a *gate*, held by a timed
window throughout (so that a waiting window is not starved by a stream of pause points), and
the lock itself. The kernel releases both when a process dies. Where ``fcntl`` is missing
(Windows) there is no lock, and records say the window was not exclusive.

:class:`WindowLoad` measures what a timed window actually ran under: its threads, the CPU time
this process used against wall time x threads, the CPU time every *other* process used against
wall time x cores (``/proc/stat``, Linux: the contention figure), and the 1-minute load
average at its end.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

try:
    import fcntl
except ImportError:  # Windows: no machine-wide lock
    fcntl = None

#: Where every locbench process on this machine finds the lock.
LOCK_FOLDER = Path(tempfile.gettempdir())
LOCK_NAME = "locbench-timing"

T = TypeVar("T")


class TimingLock:
    """The machine-wide timing lock of one process (see the module docstring): held shared
    from construction to :meth:`close`, but at :meth:`pause`; exclusive inside
    :meth:`window`. One per process, passed to whatever runs in it (two in one process would
    wait for each other)."""

    def __init__(self, folder: Path = LOCK_FOLDER, name: str = LOCK_NAME) -> None:
        if fcntl is None:
            raise OSError("no fcntl on this platform")
        self._gate = _open_shared(folder / f"{name}.gate")
        self._lock = _open_shared(folder / f"{name}.lock")
        self._in_window = False
        self._take_shared()

    @classmethod
    def available(cls, folder: Path = LOCK_FOLDER) -> TimingLock | None:
        """The lock, or None where it cannot be had (no ``fcntl``, an unwritable folder)."""
        try:
            return cls(folder)
        except OSError:
            return None

    def _take_shared(self) -> None:
        # Through the gate: a timed window that holds it (or waits for it) goes first.
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def pause(self) -> None:
        """A pause point: if another process is waiting to time (or timing), wait for it.
        Inside this process's own window (e.g. an evaluation the window spans), nothing."""
        if self._in_window:
            return
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._take_shared()

    def acquire_window(self) -> None:
        """Wait until every other process is at a pause point, and keep them there."""
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._in_window = True

    def release_window(self) -> None:
        """The timed window has ended: the others go on, and so does this process, shared."""
        self._in_window = False
        fcntl.flock(self._lock, fcntl.LOCK_SH)  # a conversion: never unlocked in between
        fcntl.flock(self._gate, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def window(self) -> Iterator[None]:
        self.acquire_window()
        try:
            yield
        finally:
            self.release_window()

    def close(self) -> None:
        os.close(self._gate)
        os.close(self._lock)


def paused(batches: Iterable[T], lock: TimingLock | None) -> Iterator[T]:
    """``batches``, with a pause point before each (evaluation)."""
    for batch in batches:
        if lock is not None:
            lock.pause()
        yield batch


def _open_shared(path: Path) -> int:
    # Readable and writable by every user: processes of several users share one machine.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(OSError):  # not the owner: its mode is already set
        os.fchmod(fd, 0o666)
    return fd


@dataclass
class WindowTiming:
    """What one timed window ran under (the record's ``timing``)."""

    threads: int  # intra-op threads of the timed steps
    exclusive: bool  # held the machine-wide lock: no other locbench process stepped meanwhile
    start: float  # wall-clock start and end (seconds since the epoch)
    end: float
    # this process's CPU seconds / (wall seconds x threads): how busy its threads kept
    cpu_utilisation: float | None
    # every other process's CPU seconds / (wall seconds x cores), from /proc/stat (Linux):
    # the contention figure; 0 on an idle machine
    others_cpu_share: float | None
    load_average: float | None  # 1-minute load average at the window's end

    def as_dict(self) -> dict:
        return asdict(self)


class WindowLoad:
    """Measures a timed window from :meth:`start` to :meth:`stop`."""

    def __init__(self, threads: int, exclusive: bool) -> None:
        self.threads, self.exclusive = threads, exclusive

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._start = time.time()
        self._machine = machine_cpu_seconds()

    def stop(self) -> WindowTiming:
        wall = time.perf_counter() - self._wall
        own = time.process_time() - self._cpu
        machine = machine_cpu_seconds()
        others = None
        if machine is not None and self._machine is not None and wall > 0:
            used = machine - self._machine - own
            others = max(used, 0.0) / (wall * machine_cores())
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return WindowTiming(
            threads=self.threads,
            exclusive=self.exclusive,
            start=self._start,
            end=time.time(),
            cpu_utilisation=own / (wall * self.threads) if wall > 0 else None,
            others_cpu_share=others,
            load_average=load,
        )


def machine_cores() -> int:
    return os.cpu_count() or 1


def machine_cpu_seconds() -> float | None:
    """CPU seconds every process of the machine has used since boot (``/proc/stat``), or None
    where it cannot be read."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        ticks = [int(v) for v in fields[1:]]
    except (OSError, ValueError, IndexError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    busy = sum(ticks[:8]) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")
