"""Child processes that end with their parent, however it ends: the ranks of ``locbench run
--nproc N`` (:func:`locbench.harness.distributed.launch`) and a sweep's worker processes
(:mod:`locbench.study.executors.local`).

Two guards, so that no child trains on (and writes records) after its parent is gone:

* Linux: the child asks the kernel for SIGKILL when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``), also when the parent is SIGKILLed.
* Everywhere: the child polls its parent's pid from a daemon thread (:func:`end_with_parent`)
  and kills itself once the parent is gone; the only guard on macOS and where ``prctl`` cannot
  be loaded (a second or so late, but safe).

Each child gets its own process group: a Ctrl-C at the terminal reaches the parent only, which
stops its children itself (and knows it did) instead of every child dying on its own.

Standard library only: a sweep's worker imports this before torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

#: The parent's pid, as the child's environment carries it (for :func:`end_with_parent`).
PARENT_ENV = "LOCBENCH_PARENT_PID"
POLL_S = 0.5  # how often a child without prctl looks for its parent

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    # Looked up here, once: the child runs it between fork and exec, where loading a library
    # (or importing) could deadlock on a lock another thread of the parent held at fork time.
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _child_setup(parent: int) -> None:
    # Runs in the child between fork and exec: nothing here may import or allocate much.
    os.setpgid(0, 0)
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)


def start_child(command: Sequence[str], env: dict[str, str], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(command, env=env, **popen)``, the child in its own process group and
    ending when this process dies by any signal (see the module's docstring). The command
    should call :func:`end_with_parent` early."""
    parent = os.getpid()
    return subprocess.Popen(
        list(command),
        env={**env, PARENT_ENV: str(parent)},
        preexec_fn=functools.partial(_child_setup, parent),
        **popen,
    )


def end_with_parent() -> None:
    """In a process started by :func:`start_child`: watch the parent from a daemon thread and
    SIGKILL this process once it is gone (the kernel does it first on Linux). Does nothing in a
    process that was not (no :data:`PARENT_ENV`). The variable is taken out of the
    environment, so that no process started from here inherits it as its own."""
    try:
        parent = int(os.environ.pop(PARENT_ENV, ""))
    except ValueError:
        return
    if os.getppid() != parent:  # the parent died while this process was starting
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=_watch, args=(parent,), name="end-with-parent", daemon=True).start()


def _watch(parent: int) -> None:
    stop = threading.Event()
    while not stop.wait(POLL_S):
        if os.getppid() != parent:  # re-parented: the parent has died
            os.kill(os.getpid(), signal.SIGKILL)


def terminate_all(procs: Sequence[subprocess.Popen], sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to each child still running (never to a reaped child's recycled pid)."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
