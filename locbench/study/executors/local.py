"""``locbench sweep --executor local`` (the default): each run a child process of this machine,
``python -m locbench.study.executors.worker``, so that CUDA peaks start clean and a crash takes
down one run, not the sweep. N workers run at once: one per visible GPU (each child sees only
its own), or N CPU processes sharing the cores. A child that dies without writing its record
(killed, segfault) leaves a ``worker_died`` ``error`` row, written here; one stopped by the
sweep (SIGTERM, then SIGKILL) leaves nothing, so that its configuration runs on resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from locbench.errors import UserError
from locbench.harness.build import resolve
from locbench.harness.children import start_child, terminate_all
from locbench.harness.environment import TIMED_THREADS_ENV, cores
from locbench.records import RunRecord, read_record, save_record
from locbench.settings.run_config import RunConfig
from locbench.settings.schema import check, specs
from locbench.study.executors.base import ExecutorKind, RunExecutor, register_executor
from locbench.study.executors.options import LocalOptions
from locbench.study.sweep import (
    died_record,
    keep_only,
    now_utc,
    record_files,
    stat_key,
)


def worker_slots(workers: int, gpus: int, serial_threads: int) -> list[dict[str, str]]:
    """The environment of each worker slot: one GPU each on a GPU machine; else the CPU cores
    shared out (torch's thread count) so N processes don't oversubscribe them while they
    train side by side. Their timed windows, which have the machine to themselves (the timing
    lock), run at ``serial_threads``: a serial run's count, so that step times do not depend
    on ``--workers``."""
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(min(workers, gpus))]
    threads = max(1, (os.cpu_count() or 1) // workers)
    slot = {"OMP_NUM_THREADS": str(threads), TIMED_THREADS_ENV: str(serial_threads)}
    return [dict(slot) for _ in range(workers)]


def check_workers_fit(workers: int) -> None:
    """On a machine without GPUs, at most one worker per core: more only queue for the cores
    (and thousands of processes exhaust the memory). GPU machines run one per GPU, whatever
    ``workers`` asks beyond that."""
    import torch

    if not torch.cuda.device_count() and workers > cores():
        raise UserError(
            f"{KIND.flag(WORKERS)} {workers}: a CPU machine runs a worker per core, this one "
            f"gives locbench {cores()}; use {KIND.flag(WORKERS)} 1..{cores()}"
        )


class _Children:
    """The worker processes running now, and whether the sweep is stopping."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen] = set()
        self.stopping = False

    def start(self, command: list[str], env: dict[str, str]) -> subprocess.Popen | None:
        with self.lock:  # checked under the lock: a stop never misses a child started now
            if self.stopping:
                return None
            # Ends with the sweep, however it ends: no orphan writes a record later.
            proc = start_child(
                command,
                {**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
            self.running.add(proc)
            return proc

    def done(self, proc: subprocess.Popen) -> bool:
        """Forget ``proc``; True if the sweep was stopping when it ended."""
        with self.lock:
            self.running.discard(proc)
            return self.stopping

    def stop(self) -> list[subprocess.Popen]:
        with self.lock:
            self.stopping = True
            return list(self.running)


def _died_message(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        how = f"killed by {name} (exit status {returncode})"
    else:
        how = f"exited with status {returncode}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = f": {lines[-1]}" if lines else ""
    return f"worker {how} without writing its record{last}"


class LocalExecutor(RunExecutor):
    """Each run a child process (``python -m locbench.study.executors.worker``) of this machine:
    one per visible GPU, or ``workers`` CPU processes sharing the cores (:func:`worker_slots`)."""

    device = None  # runs here: "auto" is this machine's device

    def __init__(self, workers: int = 1) -> None:
        check(WORKERS, workers, KIND.flag(WORKERS))  # the flag's rule, for API callers too
        check_workers_fit(workers)
        self.workers = workers
        self.children = _Children()
        self._stopped: list[subprocess.Popen] = []

    def slots(self, todo: int) -> list[dict[str, str]]:
        import torch

        slots = worker_slots(self.workers, torch.cuda.device_count(), torch.get_num_threads())
        return slots[: max(1, todo)]

    def run(self, config: RunConfig, out: Path, slot: dict[str, str]) -> RunRecord | None:
        return run_child(config, out, slot, self.children)

    def stop(self) -> int:
        self._stopped = self.children.stop()
        terminate_all(self._stopped, signal.SIGTERM)
        return len(self._stopped)

    def kill(self) -> None:
        terminate_all(self._stopped, signal.SIGKILL)


def run_child(
    config: RunConfig, out: Path, env: dict[str, str], children: _Children | None = None
) -> RunRecord | None:
    """Run one configuration in a child process and return its record: the child's own, or a
    ``worker_died`` ``error`` row written here if it died without writing one. Older records
    of the run id are removed once the new one is in place. None when the sweep stopped the
    child (``children.stopping``): nothing is written."""
    children = children or _Children()
    run = resolve(config)
    run_id = run.run_id
    before = {stat_key(p) for p in record_files(out, run_id)}
    command = [
        sys.executable,
        "-m",
        "locbench.study.executors.worker",
        json.dumps(config.to_dict()),
        str(out),
    ]
    started_at = now_utc()
    t0 = time.perf_counter()
    proc = children.start(command, env)
    if proc is None:
        return None
    try:
        _, stderr = proc.communicate()
    finally:
        stopping = children.done(proc)
    fresh = [p for p in record_files(out, run_id) if stat_key(p) not in before]
    if fresh:  # the worker wrote its record (also if it was stopped right after)
        newest = max(fresh, key=lambda p: (p.stat().st_mtime_ns, p.name))
        keep_only(out, run_id, newest)
        return read_record(newest)
    if stopping:
        return None
    record = died_record(
        run, _died_message(proc.returncode, stderr), started_at, time.perf_counter() - t0
    )
    keep_only(out, run_id, save_record(record, out))
    return record


(WORKERS,) = specs(LocalOptions)
KIND = register_executor(
    ExecutorKind(
        "local",
        "processes of this machine",
        LocalOptions,
        lambda options: LocalExecutor(options.workers),
        prefix="",  # --workers
    )
)
