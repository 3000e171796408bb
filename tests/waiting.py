"""Polling for tests that watch other processes (sweep workers, Ray workers, SLURM jobs)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """``condition()``'s first truthy value, polled every 50 ms; fails the test after
    ``timeout`` seconds naming ``what`` it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass(frozen=True)
class Process:
    """A live (not zombie) process of this machine, as /proc shows it."""

    pid: int
    ppid: int
    cmdline: bytes  # its argv, NUL-separated

    @property
    def argv(self) -> list[bytes]:
        return self.cmdline.split(b"\0")

    def environ(self) -> list[bytes]:
        """Its environment, ``NAME=value`` each (OSError once it has gone)."""
        return Path(f"/proc/{self.pid}/environ").read_bytes().split(b"\0")


def live_processes() -> Iterator[Process]:
    """The live processes of this machine (Linux); one that ends while read is left out."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if stat[0] != "Z":
            yield Process(int(proc.name), int(stat[1]), cmdline)
