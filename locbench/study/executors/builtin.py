"""The executors ``locbench sweep --executor`` knows: importing this module registers the
built-in ones (each registers itself in :data:`~locbench.study.executors.base.EXECUTORS`). A new
executor is its module plus its line here; one registered elsewhere (a test, a plugin) is known
as soon as its module is imported."""

from __future__ import annotations

from locbench.study.executors import local, ray_tasks, slurm  # noqa: F401 - they register
from locbench.study.executors.base import EXECUTORS

__all__ = ["EXECUTORS"]
