"""``locbench sweep``: a grid of runs, resumable, never losing a row, whatever executes it.

* The grid is methods x nets x K x auxiliary depth x batch size x seeds, over shared run
  settings (dataset, epochs, ...), from flags, a preset (:mod:`locbench.study.presets`) or a TOML
  file. Auxiliary depth applies only to methods that have a ``depth`` parameter (AugLocal).
* :func:`plan_sweep` resolves and checks every configuration before anything runs and lists
  those that need a run; an executor (:mod:`locbench.study.executors`: local processes, Ray
  tasks, SLURM jobs) runs them, and every sweep counts them in one :class:`SweepResult`.
* A configuration is known by its run id (the hash of its resolved configuration, ending its
  record's file name); one run id has one record file. A configuration with a record is
  skipped, so a sweep started again runs each configuration once. A run whose process died
  without writing its record (killed, segfault) leaves an ``error`` row with ``worker_died``
  set, written by the sweep; the next sweep runs that configuration again (and, with
  ``retry_failed``, every configuration whose record is not ``ok``), replacing the row.
* Sweeps on the same ``--out`` (other processes, other machines on a shared filesystem) share
  the work: a sweep claims a configuration before running it by creating
  ``OUT/.claims/<run_id>.claim`` exclusively, keeps the claim's mtime fresh while it runs and
  removes it once the record is written. A claim whose owner is gone is taken over
  (:mod:`locbench.study.claims`).
* SIGINT or SIGTERM stops the sweep (:func:`run_plan`): its runs are asked to stop (SIGKILL
  after :data:`TERM_GRACE_S`), the configurations they were running get no record (so they
  run on resume), and :func:`sweep` raises :class:`KeyboardInterrupt`.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locbench.errors import UserError
from locbench.harness.build import Resolved, resolve
from locbench.records import RunRecord, check_out_dir, save_record
from locbench.settings.run_config import RunConfig
from locbench.study.claims import CLAIMS, Claims
from locbench.study.grid import Grid

if TYPE_CHECKING:  # the executors' modules import this one
    from locbench.study.executors.base import Executor, RunExecutor

TERM_GRACE_S = 10.0  # after SIGTERM, how long an interrupted sweep waits before SIGKILL


def record_files(out: Path, run_id: str) -> list[Path]:
    """The record files of one run id in ``out`` (normally one, none before it ran)."""
    return sorted(Path(out).glob(f"*-{run_id}.json"))


def finished_ids(out: Path) -> set[str]:
    """Run ids with a record in ``out`` (the id is the last dash-separated part of the name)."""
    return {p.stem.rsplit("-", 1)[-1] for p in Path(out).glob("*.json")}


def resolved_id(config: RunConfig) -> str:
    return resolve(config).run_id


@dataclass(frozen=True)
class Existing:
    """The record files of one run id as a sweep saw them: their outcome, and a snapshot
    (name, inode, mtime of each) that changes whenever anyone writes or replaces one."""

    status: str | None = None  # None: no record; "unreadable": a file that is not valid JSON
    worker_died: bool = False
    snapshot: frozenset = frozenset()
    best: Path | None = None  # the file ``status`` is read from

    def needs_run(self, retry_failed: bool) -> bool:
        if self.status is None or self.worker_died:
            return True
        return retry_failed and self.status not in ("ok", "unreadable")


def _outcome(path: Path) -> tuple[int, str, bool]:
    """(rank, status, worker_died) of a record file: ok above other outcomes above a died
    worker's row. Read as plain JSON: any record schema counts."""
    try:
        data = json.loads(path.read_text())
        status, died = str(data.get("status", "error")), bool(data.get("worker_died", False))
    except (OSError, ValueError, AttributeError, RecursionError):
        # Unknown content is never rerun nor replaced: it may be someone's result.
        return 2, "unreadable", False
    return (3 if status == "ok" else 1 if died else 2), status, died


def stat_key(path: Path) -> tuple[str, int, int] | None:
    """(name, inode, mtime) of a record file, None once it is gone: a new or replaced file
    has a new key."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return path.name, st.st_ino, st.st_mtime_ns


def existing(
    out: Path, run_id: str, tidy: bool = False, files: list[Path] | None = None
) -> Existing:
    """What ``out`` holds for ``run_id`` (``files``: its record files, if already listed).
    ``tidy``: remove rows superseded by an ``ok`` record (left only when a sweep died between
    writing a new record and removing the old row)."""
    files = record_files(out, run_id) if files is None else files
    if not files:
        return Existing()
    ranked = []
    for path in files:
        key = stat_key(path)
        if key is not None:
            ranked.append((_outcome(path), key, path))
    if not ranked:
        return Existing()
    (rank, status, died), _, best = max(ranked, key=lambda r: (r[0][0], r[1][2], r[2].name))
    keys = set()
    for (_, other, _), key, path in ranked:
        if tidy and rank == 3 and path != best and other != "unreadable":
            path.unlink(missing_ok=True)
        else:
            keys.add(key)
    return Existing(status, died, frozenset(keys), best)


@dataclass
class SweepResult:
    total: int  # distinct configurations (run ids) in the grid
    skipped: int  # already had a record (also when another sweep wrote it meanwhile)
    ran: int  # run by this sweep (ok or not)
    failed: list[str]  # one line per run of this sweep that did not end ``ok``
    claimed: int = 0  # being run by another sweep on the same --out: left to it
    retried: int = 0  # of ``ran``: had a record before (a died worker, or retry_failed)

    def add_run(self, config: RunConfig, record: RunRecord, seen: Existing) -> None:
        """Count one configuration this sweep ran, by its record (``seen``: what ``out`` held
        for it when planned)."""
        self.ran += 1
        self.retried += int(seen.status is not None)
        if record.status != "ok":
            self.failed.append(f"{config.method} {config.net}: {record.status}, {record.message}")

    def summary(self, out: Path | str) -> str:
        """The sweep's one-line summary, e.g. for the CLI."""
        retried = f" ({self.retried} retried)" if self.retried else ""
        claimed = f", {self.claimed} claimed by another sweep" if self.claimed else ""
        return (
            f"sweep: {self.total} configurations, {self.skipped} already done, "
            f"{self.ran} run{retried}, {len(self.failed)} failed{claimed}; records in {out}"
        )


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def died_record(run: Resolved, message: str, started_at: str, wall_time_s: float) -> RunRecord:
    """The ``error`` row of a run whose process (worker, Ray task, SLURM job) died without
    writing its record. The next sweep runs the configuration again."""
    return run.record(
        status="error",
        message=message,
        K=None,  # the split was built, if at all, in the process that died
        started_at=started_at,
        wall_time_s=wall_time_s,
        worker_died=True,
    )


def keep_only(out: Path, run_id: str, keep: Path) -> None:
    """Remove every record file of ``run_id`` but ``keep``: one run id, one record file."""
    for path in record_files(out, run_id):
        if path != keep:
            path.unlink(missing_ok=True)


def keep_record(record: RunRecord, out: Path) -> Path:
    """Write ``record`` (atomically) as its run id's only record file in ``out``: how a
    driver that gets records back from remote runs (Ray) stores them."""
    path = save_record(record, out)
    keep_only(out, path.stem.rsplit("-", 1)[-1], path)
    return path


@dataclass
class _State:
    """What the sweep's threads share."""

    out: Path
    claims: Claims
    executor: RunExecutor
    retry_failed: bool
    bar: Any  # a tqdm bar
    result: SweepResult
    queue: deque
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[BaseException] = field(default_factory=list)
    stopping: bool = False

    def work(self, slot: dict[str, str]) -> None:
        while True:
            with self.lock:
                if self.errors or self.stopping or not self.queue:
                    return
                item = self.queue.popleft()
            try:
                self.one(*item, slot)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                with self.lock:
                    self.errors.append(e)
                return

    def one(self, config: RunConfig, run_id: str, seen: Existing, slot: dict[str, str]) -> None:
        if not self.claims.acquire(run_id):
            self.count(claimed=1)
            return
        try:
            # Between listing and claiming, another sweep may have run it: any change to its
            # records means someone did, whatever the outcome.
            now = existing(self.out, run_id)
            if now.snapshot != seen.snapshot or not now.needs_run(self.retry_failed):
                self.count(skipped=1)
                return
            record = self.executor.run(config, self.out, slot)
        finally:
            self.claims.release(run_id)
        if record is None:  # stopped: no record, it runs again on resume
            return
        self.count(ran=(config, record, seen))

    def count(self, skipped: int = 0, claimed: int = 0, ran: tuple | None = None) -> None:
        """Count one configuration: skipped, claimed, or ``ran`` (see
        :meth:`SweepResult.add_run`)."""
        with self.lock:
            self.result.skipped += skipped
            self.result.claimed += claimed
            if ran is not None:
                self.result.add_run(*ran)
            self.bar.update(1)


@dataclass
class SweepPlan:
    """A grid checked against ``out``: every configuration by run id, and those to run."""

    out: Path
    configs: dict[str, RunConfig]  # run id -> configuration, the whole grid
    todo: deque  # (config, run id, Existing) of the configurations that need a run
    retry_failed: bool

    def result(self) -> SweepResult:
        """The summary before anything runs: the configurations not to run count as done."""
        return SweepResult(len(self.configs), len(self.configs) - len(self.todo), 0, [])


def plan_sweep(
    grid: Grid, out: Path, retry_failed: bool = False, device: str | None = None
) -> SweepPlan:
    """Resolve and check every configuration of ``grid`` (before anything runs), check ``out``
    and list what needs a run: no record yet, a died worker's row, or (``retry_failed``) any
    record but ``ok``. Clears claims left by sweeps that died.

    ``device``: where the runs execute when that is not this machine (a remote executor's
    :attr:`~locbench.study.executors.base.Executor.device`): configurations with device
    ``auto`` get it, so that the run id planned here is the one the remote run resolves to.
    None: they run here."""
    from locbench.harness.environment import check_device
    from locbench.harness.run import prepare  # noqa: F401 - fail fast on an unknown method/net below

    out = check_out_dir(out)
    configs: dict[str, RunConfig] = {}
    for config in grid.configs(device):  # checks every config before anything runs
        if config.nproc > 1:
            raise UserError(
                f"nproc {config.nproc}: a sweep runs each configuration in one process; "
                "start data-parallel runs with `locbench run --nproc N`"
            )
        if config.stages > 1:  # a pipeline's stages are processes too
            raise UserError(
                f"stages {config.stages}: a sweep runs each configuration in one process; "
                "start pipeline runs with `locbench run --stages P`"
            )
        if device is None:
            check_device(config.device)
        configs.setdefault(resolved_id(config), config)
    listed: dict[str, list[Path]] = {}
    for path in sorted(out.glob("*.json")):
        listed.setdefault(path.stem.rsplit("-", 1)[-1], []).append(path)
    todo = deque()
    for run_id, config in configs.items():
        seen = existing(out, run_id, tidy=True, files=listed.get(run_id, []))
        if seen.needs_run(retry_failed):
            todo.append((config, run_id, seen))
    if (out / CLAIMS).is_dir():
        Claims(out).clear_stale(set(configs) - {run_id for _, run_id, _ in todo})
    check_out_dir(out, len(todo))  # room for every record to come
    return SweepPlan(out, configs, todo, retry_failed)


def sweep(
    grid: Grid,
    out: Path,
    workers: int = 1,
    progress: bool = True,
    retry_failed: bool = False,
    executor: Executor | None = None,
) -> SweepResult:
    """Run every configuration of ``grid`` that has no record in ``out`` yet, or whose record
    is a died worker's row (with ``retry_failed``: any record but ``ok``), unless another sweep
    is running it. ``executor``: where the runs execute (default: ``workers`` local
    processes); it gets the plan and is closed after it. Raises KeyboardInterrupt after
    stopping cleanly on SIGINT or SIGTERM."""
    if executor is None:
        from locbench.study.executors.local import LocalExecutor

        executor = LocalExecutor(workers)
    try:
        plan = plan_sweep(grid, out, retry_failed, device=executor.device)
        return executor.execute(plan, progress)
    finally:
        executor.close()


def run_plan(plan: SweepPlan, executor: RunExecutor, progress: bool = True) -> SweepResult:
    """Run a plan's configurations on ``executor``, a slot at a time: each claimed, run,
    counted (see :func:`sweep`)."""
    from tqdm import tqdm

    out, todo, result = plan.out, plan.todo, plan.result()
    if not todo:
        return result
    slots = executor.slots(len(todo))
    signals: list[int] = []
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Only noted here; the main loop below acts on it, outside any lock.
            handlers[sig] = signal.signal(sig, lambda signum, frame: signals.append(signum))
    try:
        with (
            Claims(out) as claims,
            tqdm(
                total=result.total, initial=result.skipped, disable=not progress, unit="run"
            ) as bar,
        ):
            state = _State(out, claims, executor, plan.retry_failed, bar, result, todo)
            threads = [
                threading.Thread(target=state.work, args=(slot,), name=f"sweep-slot-{i}")
                for i, slot in enumerate(slots)
            ]
            for t in threads:
                t.start()
            try:
                while _wait_any(threads, 0.1) and not signals:
                    pass
            finally:
                if signals or any(t.is_alive() for t in threads):  # interrupted, or an error
                    _stop_runs(state, threads, signals, announce=bool(signals))
                for t in threads:
                    t.join()
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
    if signals:
        raise KeyboardInterrupt
    if state.errors:
        error = state.errors[0]
        if isinstance(error, OSError):  # the filesystem of --out, not a bug: one line
            where = error.filename or out
            raise UserError(f"sweep stopped: {where}: {error.strerror or error}") from None
        raise error
    return result


def _stop_runs(
    state: _State, threads: list[threading.Thread], signals: list[int], announce: bool
) -> None:
    """Stop every running run (SIGTERM to local workers), at once after TERM_GRACE_S or at a
    second signal."""
    with state.lock:
        state.stopping = True
    n = state.executor.stop()
    if announce:
        what = f"{n} running worker{'s' if n != 1 else ''}" if n else "(no worker running)"
        print(
            f"locbench: interrupted; stopping {what} (SIGKILL after {TERM_GRACE_S:g} s); "
            "their configurations run on resume ...",
            file=sys.stderr,
            flush=True,
        )
    first = len(signals)
    deadline = time.monotonic() + TERM_GRACE_S
    while _wait_any(threads, 0.1):
        if time.monotonic() > deadline or len(signals) > first:
            state.executor.kill()
            break


def _wait_any(threads: list[threading.Thread], timeout: float) -> bool:
    """Wait up to ``timeout`` on a live thread; False when none is alive."""
    alive = [t for t in threads if t.is_alive()]
    if alive:
        alive[0].join(timeout)
    return bool(alive)
