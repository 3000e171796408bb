"""Where a run runs: its device (picked and checked on this machine) and the environment
every record carries (versions, device and CPU names, the git commit)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch
import torchvision

from locbench.errors import UserError


def pick_device(device: str) -> str:
    """``auto`` as this machine's device (CUDA if available); any other device as given, its
    name checked. Whether this machine has it is :func:`check_device`'s question: a
    configuration resolved here may run elsewhere (a SLURM job, a Ray task on a GPU node)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (device == "cpu" or device == "cuda" or _cuda_index(device)):
        raise UserError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N")
    return device


def check_device(device: str) -> None:
    """A run about to start on this machine: CUDA must be there when asked for."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available; use --device cpu")


def _cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def environment(device: str = "cpu") -> dict:
    """Where a number was measured: versions, the run's device, CPU and the git commit."""
    on_cuda = device.startswith("cuda")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "device_name": torch.cuda.get_device_name(torch.device(device)) if on_cuda else "cpu",
        "git_commit": git_commit(),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


#: Set by a launcher that shares the cores out among its processes (the local sweep's workers):
#: the intra-op thread count of a serial run here, which their timed windows use.
TIMED_THREADS_ENV = "LOCBENCH_TIMED_THREADS"


def timed_threads() -> int:
    """Intra-op threads of a run's timed window: a serial run's count, as the launcher that
    shared the cores out says (:data:`TIMED_THREADS_ENV`), else this process's own."""
    given = os.environ.get(TIMED_THREADS_ENV, "")
    return int(given) if given.isdigit() and int(given) > 0 else torch.get_num_threads()


#: Set by a launcher that holds the machine-wide timing lock for the processes it starts
#: (data-parallel ranks, pipeline stages): they run, and time, with the machine to themselves.
MACHINE_HELD_ENV = "LOCBENCH_MACHINE_HELD"


def machine_held() -> bool:
    """Whether this process's launcher holds the timing lock for it (:data:`MACHINE_HELD_ENV`)."""
    return os.environ.get(MACHINE_HELD_ENV) == "1"
