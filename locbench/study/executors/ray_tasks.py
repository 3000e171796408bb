"""``locbench sweep --executor ray``: each run a Ray task, on a local Ray or an existing cluster.

The sweep (:func:`locbench.study.sweep.run_plan`) still plans, claims and counts on this machine;
Ray only runs configurations. A task returns its record as a plain dict and the driver writes it
(:func:`locbench.study.sweep.keep_record`): a run's record exists once, written atomically, by one
process, whichever node ran it. A task whose worker process or node dies is run again by Ray
(``max_retries``); one that fails for good leaves a ``worker_died`` row, rerun by the next sweep.
Tasks need locbench importable on every node (the driver's environment locally).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from locbench.errors import UserError
from locbench.harness.build import resolve
from locbench.records import RunRecord
from locbench.settings.run_config import RunConfig
from locbench.study.executors.base import ExecutorKind, RunExecutor, register_executor
from locbench.study.executors.options import RayOptions, import_extra
from locbench.study.sweep import died_record, keep_record, now_utc


def locbench_run(config: dict, threads: int) -> dict:
    """A Ray task: one configuration, run as ``locbench.study.executors.worker`` runs it. Its name
    is the worker
    process's title (``ray::locbench_run``)."""
    import torch

    from locbench.study.executors.worker import run_config

    torch.set_num_threads(threads)  # its CPU share: runs sharing a node don't oversubscribe it
    return dataclasses.asdict(run_config(RunConfig.from_dict(config)))


class RayExecutor(RunExecutor):
    """Runs a sweep's configurations as Ray tasks, each in a fresh worker process
    (``max_calls=1``: clean CUDA peaks, as the local executor's one process per run)."""

    def __init__(self, options: RayOptions) -> None:
        self.ray = ray = import_extra("ray", "ray", "--executor ray")
        self.options = options
        self._owns = not ray.is_initialized()  # a Ray this process already had stays up
        if self._owns:
            self._init()
        gpus = options.gpus_per_run
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
        self.gpus_per_run = gpus
        # A task sees only the GPUs it reserved: "auto" must resolve to what it gets, not to
        # this machine's device, for the run id planned here to be the task's.
        self.device = "cuda" if gpus else "cpu"
        if self._owns and not options.address:
            self._check_fits()
        self.task = ray.remote(max_calls=1)(locbench_run).options(
            num_cpus=options.cpus_per_run,
            num_gpus=gpus,
            max_retries=options.max_retries,
            retry_exceptions=False,  # a run's own failures are records already
        )
        self.lock = threading.Lock()
        self.running: set[Any] = set()  # object refs of the tasks in flight
        self.stopping = False
        self._stopped: list[Any] = []

    def _init(self) -> None:
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        address = self.options.address
        if address:
            check_address(address)  # before ray.init, which waits forever for a silent one
        try:
            if address:
                self.ray.init(address=address, **quiet)
            else:
                # "local": a new Ray even where RAY_ADDRESS or a `ray start` on this machine
                # (or its stale address file) would have ray.init() connect to that instead.
                self.ray.init(
                    "local", num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet
                )
        except (Exception, SystemExit) as e:  # Ray exits the process when a GCS never answers
            where = f"connect to the Ray cluster at {address}" if address else "start a local Ray"
            # Ray sends its token only when asked to, to an address given explicitly.
            hint = " (a cluster with token authentication needs RAY_AUTH_MODE=token)"
            raise UserError(
                f"--executor ray: could not {where}: {_one_line(e)}{hint if address else ''}"
            ) from None

    def _check_fits(self) -> None:
        # On the Ray started here no node joins later: a run that fits no node would wait
        # forever.
        have = self.ray.cluster_resources()
        needs = (("cpus", self.options.cpus_per_run, "CPU"), ("gpus", self.gpus_per_run, "GPU"))
        for flag, need, name in needs:
            if need > have.get(name, 0):
                self.close()
                raise UserError(
                    f"--ray-{flag}-per-run {need:g} exceeds the {have.get(name, 0):g} "
                    f"{name}s of this machine's Ray"
                )

    def slots(self, todo: int) -> list[dict[str, str]]:
        total = self.ray.cluster_resources()
        fit = total.get("CPU", 0) / self.options.cpus_per_run
        if self.gpus_per_run:
            fit = min(fit, total.get("GPU", 0) / self.gpus_per_run)
        return [{} for _ in range(max(1, min(todo, int(fit))))]

    def run(self, config: RunConfig, out: Path, slot: dict[str, str]) -> RunRecord | None:
        threads = max(1, int(self.options.cpus_per_run))
        started_at, t0 = now_utc(), time.perf_counter()
        with self.lock:  # checked under the lock: a stop never misses a task submitted now
            if self.stopping:
                return None
            ref = self.task.remote(config.to_dict(), threads)
            self.running.add(ref)
        try:
            record = RunRecord.from_dict(self.ray.get(ref), "a Ray task's record")
        except self.ray.exceptions.RayError as e:
            if self.stopping:  # cancelled by stop() or kill(): it runs on resume
                return None
            tries = self.options.max_retries + 1
            message = f"Ray task failed ({tries} attempt{'s' if tries > 1 else ''}): {_one_line(e)}"
            record = died_record(resolve(config), message, started_at, time.perf_counter() - t0)
        finally:
            with self.lock:
                self.running.discard(ref)
        keep_record(record, out)  # also when stopped right after it finished
        return record

    def stop(self) -> int:
        with self.lock:
            self.stopping = True
            self._stopped = list(self.running)
        self._cancel(force=False)  # a KeyboardInterrupt in the task: no record comes back
        return len(self._stopped)

    def kill(self) -> None:
        self._cancel(force=True)

    def _cancel(self, force: bool) -> None:
        for ref in self._stopped:
            with contextlib.suppress(Exception):  # already finished or gone
                self.ray.cancel(ref, force=force)

    def close(self) -> None:
        if self._owns:  # stops a Ray this executor started; only disconnects from a cluster
            self.ray.shutdown()


#: Seconds a Ray address has to accept a connection before the sweep gives up on it.
CONNECT_TIMEOUT_S = 5.0
RAY_CLIENT_PORT = 10001  # Ray Client's default (ray://HOST)
ADDRESSES = (
    "auto, HOST:PORT (a Ray head's GCS, e.g. 10.0.0.1:6379) or ray://HOST[:PORT] (Ray Client)"
)


def check_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A ``--ray-address`` Ray can connect to: its form, and something listening there within
    ``timeout_s`` (``auto`` is Ray's to find)."""
    if address == "auto":
        return
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else _one_line(e)
        raise UserError(
            f"--ray-address {address}: nothing answers at {host}:{port} within {timeout_s:g} s "
            f"({why}); start the cluster there (ray start --head), or leave --ray-address out "
            "to start a local Ray"
        ) from None


def _host_port(address: str) -> tuple[str, int]:
    scheme, sep, rest = address.rpartition("://")
    if sep and scheme != "ray":
        raise UserError(f"--ray-address must be {ADDRESSES}, got {address!r}")
    host, colon, port = rest.rpartition(":")
    if not colon and sep:  # ray://HOST: Ray Client's port
        host, port = rest, str(RAY_CLIENT_PORT)
    host = host.strip("[]")  # [IPv6]:PORT
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or "/" in host:
        raise UserError(f"--ray-address must be {ADDRESSES}, got {address!r}")
    return host, int(port)


def _one_line(e: BaseException) -> str:
    """A Ray error in one line: a task's own exception rather than Ray's traceback of it."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


register_executor(
    ExecutorKind(
        "ray", "Ray tasks, on a Ray started for the sweep or a cluster", RayOptions, RayExecutor
    )
)
