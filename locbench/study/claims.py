"""Claims: how sweeps sharing one results folder split the work, none running a configuration
twice.

A sweep claims a configuration before running it by creating ``OUT/.claims/<run_id>.claim``
exclusively (O_CREAT | O_EXCL: atomic, on NFS v3+ too), keeps the claim's mtime fresh while it
runs (a heartbeat every :data:`HEARTBEAT_S`) and removes it once the record is written. A claim
whose owner is gone (its pid no longer exists on this host, or belongs to a newer process; on
another host, no heartbeat for :data:`STALE_S`) is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

HEARTBEAT_S = 30.0  # how often a sweep touches the claims it holds
STALE_S = 300.0  # a claim from another host untouched this long belongs to a dead sweep
CLAIMS = ".claims"  # the claims folder inside --out


def _pid_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux), to tell it from a later one with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _look(path: Path) -> tuple[bytes, os.stat_result] | None:
    """A file's content and stat, None if it is gone."""
    try:
        return path.read_bytes(), path.stat()
    except FileNotFoundError:
        return None


def _same_file(path: Path, raw: bytes, st: os.stat_result) -> bool:
    look = _look(path)
    return look is not None and look[0] == raw and look[1].st_ino == st.st_ino


def _put_back(aside: Path, path: Path) -> None:
    try:
        os.link(aside, path)  # unless a claim is there again: link never replaces
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links
        if not path.exists():
            os.rename(aside, path)
    aside.unlink(missing_ok=True)


class Claims:
    """The claims of one sweep in ``OUT/.claims``: a claim is the file ``<run_id>.claim``
    holding JSON {host, pid, started_at, token}, created with O_CREAT | O_EXCL (atomic, also on
    NFS v3+), so only one sweep can hold it. A thread touches the held claims every
    ``heartbeat_s`` seconds; use as a context manager."""

    def __init__(
        self,
        out: Path,
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
        job: str | None = None,
    ) -> None:
        self.dir = Path(out) / CLAIMS
        self.dir.mkdir(parents=True, exist_ok=True)
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        # A cluster job holding the claims, written in them (locbench.study.executors.slurm).
        self.job = job
        self.held: dict[str, str] = {}  # run id -> token of our claim
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def path(self, run_id: str) -> Path:
        return self.dir / f"{run_id}.claim"

    def __enter__(self) -> Claims:
        self._beat = threading.Thread(target=self._heartbeat, name="claims-heartbeat", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        for run_id in list(self.held):
            self.release(run_id)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                held = list(self.held)
            for run_id in held:
                with contextlib.suppress(OSError):  # released meanwhile
                    os.utime(self.path(run_id))  # no times given: the file server's clock

    def acquire(self, run_id: str) -> bool:
        """Claim ``run_id``: True when this sweep now holds it, False when another live sweep
        does. A stale claim (its owner is gone) is taken over."""
        path = self.path(run_id)
        for _ in range(5):  # a retry follows a claim vanishing between two looks
            if self._create(path, run_id):
                return True
            look = _look(path)
            if look is None:
                continue  # released meanwhile
            if not self.stale(look[0], look[1].st_mtime):
                return False
            return self._recover(path, run_id)
        return False

    def _create(self, path: Path, run_id: str) -> bool:
        token = uuid.uuid4().hex
        info = {
            "host": self.host,
            "pid": self.pid,
            "pid_start": _pid_start(self.pid),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "token": token,
        }
        if self.job is not None:
            info["job"] = self.job
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        with self._lock:
            self.held[run_id] = token
        return True

    def stale(self, raw: bytes, mtime: float) -> bool:
        """Whether a claim with content ``raw`` and ``mtime`` belongs to a sweep that is gone."""
        try:
            info = json.loads(raw)
            host, pid = str(info["host"]), int(info["pid"])
        except (ValueError, KeyError, TypeError, RecursionError):
            info = None  # empty: its owner is between creating and writing it, or died there
        if info is not None and host == self.host:
            if not _pid_alive(pid):
                return True
            start = info.get("pid_start")
            now = _pid_start(pid)
            return start is not None and now is not None and start != now  # pid reused
        return self._fs_now() - mtime > self.stale_s

    def _fs_now(self) -> float:
        # The file server's clock, the one that stamped the claim's mtime: the hosts' own
        # clocks may disagree with it by more than the timeout.
        try:
            with tempfile.NamedTemporaryFile(dir=self.dir, prefix=".now-") as f:
                return os.fstat(f.fileno()).st_mtime
        except OSError:
            return time.time()

    def _recover(self, path: Path, run_id: str) -> bool:
        """Take over the stale claim ``path``: move it aside (a rename to a unique name, so of
        several recoverers one moves it), then create ours exclusively. Only the holder of the
        guard ``<claim>.recovering`` moves a claim: without it, a recoverer that judged the old
        claim stale could move the new claim another recoverer had just created."""
        guard = path.with_name(f"{path.name}.recovering")
        if not self._guard(guard):
            return False  # another sweep is taking it over
        try:
            look = _look(path)  # again: it may have been released and claimed since
            if look is not None:
                raw, st = look
                if not self.stale(raw, st.st_mtime):
                    return False
                aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
                try:
                    os.rename(path, aside)
                except FileNotFoundError:
                    pass  # released meanwhile
                else:
                    if not _same_file(aside, raw, st):
                        _put_back(aside, path)  # a new claim replaced it between look and move
                        return False
                    aside.unlink(missing_ok=True)
            return self._create(path, run_id)
        finally:
            guard.unlink(missing_ok=True)

    def _guard(self, guard: Path) -> bool:
        for _ in range(2):
            try:
                os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return True
            except FileExistsError:
                pass
            look = _look(guard)
            if look is not None and self._fs_now() - look[1].st_mtime <= self.stale_s:
                return False
            # Held for milliseconds: one this old was left by a sweep that died holding it.
            guard.unlink(missing_ok=True)
        return False

    def clear_stale(self, run_ids: set[str]) -> None:
        """Remove the stale claims of ``run_ids``, configurations already finished: their sweep
        died between writing the record and removing the claim."""
        for path in sorted(self.dir.glob("*.claim")):
            run_id = path.name.removesuffix(".claim")
            if run_id in run_ids and self.acquire(run_id):  # taken over only if stale
                self.release(run_id)

    def release(self, run_id: str) -> None:
        with self._lock:
            token = self.held.pop(run_id, None)
        if token is None:
            return
        path = self.path(run_id)
        try:
            ours = json.loads(path.read_bytes()).get("token") == token
        except (OSError, ValueError, AttributeError):
            return
        if ours:
            path.unlink(missing_ok=True)


class JobClaims(Claims):
    """Claims that know which jobs ended (an executor's job tags, e.g. a SLURM job's): a claim
    held by one of them is stale at once (the job may have run on another host, out of reach
    of the pid check)."""

    def __init__(self, out: Path, ended: set[str]) -> None:
        super().__init__(out)
        self.ended = ended

    def stale(self, raw: bytes, mtime: float) -> bool:
        try:
            job = json.loads(raw).get("job")
        except (ValueError, AttributeError, RecursionError):
            job = None
        return job in self.ended or super().stale(raw, mtime)

    def held_elsewhere(self, run_id: str) -> bool:
        """Whether a live claim on ``run_id`` exists (another sweep is running it)."""
        path = self.path(run_id)
        try:
            raw, mtime = path.read_bytes(), path.stat().st_mtime
        except OSError:  # gone, or not a file a sweep wrote (a folder): no live claim
            return False
        return not self.stale(raw, mtime)
