"""``locbench sweep``: a grid of runs, each in its own process, resumable, never losing a row.

* The grid is methods x nets x K x auxiliary depth x batch size x seeds, over shared run
  settings (dataset, epochs, ...), from flags, a preset (:mod:`bench.presets`) or a TOML file.
  Auxiliary depth applies only to methods that have a ``depth`` parameter (AugLocal).
* Every run is a child process (``python -m bench.worker``): CUDA peaks start clean, and a
  crash takes down one run, not the sweep. N workers run at once: one per visible GPU (each
  child sees only its own), or N CPU processes sharing the cores.
* A finished configuration is recognised by the hash of its resolved configuration (the
  ``run_id`` ending its record's file name) and skipped, so an interrupted sweep started again
  runs each configuration exactly once. A child that dies without writing its record (killed,
  segfault) leaves an ``error`` row written by the sweep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.config import RunConfig
from bench.errors import UserError
from bench.grid import Grid
from bench.records import RunRecord, environment, read_record, save_record


def finished_ids(out: Path) -> set[str]:
    """Run ids with a record in ``out`` (the id is the last dash-separated part of the name)."""
    return {p.stem.rsplit("-", 1)[-1] for p in out.glob("*.json")}


def resolved_id(config: RunConfig) -> str:
    return config.resolved().run_id()


@dataclass
class SweepResult:
    total: int
    skipped: int
    ran: int
    failed: list[str]


def worker_slots(workers: int, gpus: int) -> list[dict[str, str]]:
    """The environment of each worker slot: one GPU each on a GPU machine; else the CPU cores
    shared out (torch's thread count) so N processes don't oversubscribe them."""
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(min(workers, gpus))]
    threads = max(1, (os.cpu_count() or 1) // workers)
    return [{"OMP_NUM_THREADS": str(threads)} for _ in range(workers)]


def _die_with_parent() -> None:
    # Linux: a child gets SIGKILL when the sweep dies, so no orphan writes a record later.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def run_child(config: RunConfig, out: Path, env: dict[str, str]) -> RunRecord:
    """Run one configuration in a child process and return its record: the child's own, or
    an ``error`` record written here if the child died without writing one."""
    command = [sys.executable, "-m", "bench.worker", json.dumps(config.to_dict()), str(out)]
    proc = subprocess.run(
        command,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    run_id = resolved_id(config)
    written = sorted(out.glob(f"*-{run_id}.json"))
    if written:
        return read_record(written[0])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    message = lines[-1] if lines else f"worker exited with status {proc.returncode}"
    cfg = config.resolved()
    record = RunRecord(
        run_id=run_id,
        config=cfg.to_dict(),
        env=environment(cfg.device),
        status="error",
        message=message,
        K=config.K,
    )
    save_record(record, out)
    return record


def sweep(
    grid: Grid,
    out: Path,
    workers: int = 1,
    progress: bool = True,
) -> SweepResult:
    """Run every configuration of ``grid`` not already finished in ``out``."""
    import torch
    from tqdm import tqdm

    from bench.run import prepare  # noqa: F401 - fail fast on an unknown method/net below

    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configs = grid.configs()
    ids = [resolved_id(c) for c in configs]  # checks every config before anything runs
    done = finished_ids(out)
    todo = [c for c, i in zip(configs, ids) if i not in done]
    slots = worker_slots(workers, torch.cuda.device_count())
    free = list(range(len(slots)))
    lock = threading.Lock()
    failed: list[str] = []

    with tqdm(
        total=len(configs), initial=len(configs) - len(todo), disable=not progress, unit="run"
    ) as bar:

        def one(config: RunConfig) -> None:
            with lock:
                slot = free.pop()
            try:
                record = run_child(config, out, slots[slot])
                if record.status != "ok":
                    with lock:
                        failed.append(
                            f"{config.method} {config.net}: {record.status}, {record.message}"
                        )
            finally:
                with lock:
                    free.append(slot)
                    bar.update(1)

        with ThreadPoolExecutor(max_workers=len(slots)) as pool:
            list(pool.map(one, todo))
    return SweepResult(len(configs), len(configs) - len(todo), len(todo), failed)
