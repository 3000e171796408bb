"""Each method's answer in a process of its own: a fake-tensor step is single-threaded Python, so
on n cores, n methods planned side by side take about the time of one. ``jobs=1`` is a plain
loop in this process; the CLI passes the cores the machine gives (``--jobs``)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from locbench.harness.environment import cores

T = TypeVar("T")


def default_jobs(tasks: int) -> int:
    """One process per core this process may use, at most one per task."""
    return max(1, min(cores(), tasks))


def side_by_side(fn: Callable[..., T], calls: Sequence[tuple], jobs: int = 1) -> list[T]:
    """``[fn(*args) for args in calls]``, in ``jobs`` processes when above 1 (``fn`` a module-level
    function; arguments and results picklable). Results keep the calls' order; the first call's
    error, in order, is raised as it was raised in the worker (a one-line
    :class:`~locbench.errors.UserError` stays one)."""
    if jobs <= 1 or len(calls) <= 1:
        return [fn(*args) for args in calls]
    # spawned, not forked: a fork of a process that has run torch's thread pools can hang
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(calls)), mp_context=context) as pool:
        futures = [pool.submit(fn, *args) for args in calls]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
