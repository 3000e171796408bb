"""Sweep executors: where a sweep's runs execute, and the one registry of them.

Whatever executes it, a sweep is planned by :func:`locbench.study.sweep.plan_sweep` (every
configuration resolved and checked, what needs a run listed) and counted in a
:class:`locbench.study.sweep.SweepResult` (its summary line). An executor takes a plan and runs
it: a :class:`RunExecutor` runs one configuration at a time per slot under
:func:`locbench.study.sweep.run_plan`, which claims, runs, counts and stops them (local
processes, Ray tasks); an executor whose runs outlive the sweep (SLURM jobs) runs the plan its
own way and counts with the same :class:`~locbench.study.sweep.SweepResult`.

:data:`EXECUTORS` maps each ``--executor NAME`` to its :class:`ExecutorKind`: its options
dataclass (:mod:`locbench.study.executors.options`, from which its flags are generated), its
factory and, for runs that outlive the sweep, its :class:`JobTracker` (``sweep --status``).
Each executor module registers itself; :mod:`locbench.study.executors.builtin` imports the
built-in ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from locbench.registry import Registry
from locbench.settings.schema import Spec

if TYPE_CHECKING:
    from locbench.records import RunRecord
    from locbench.settings.run_config import RunConfig
    from locbench.study.sweep import SweepPlan, SweepResult


class Executor(Protocol):
    """What a sweep needs from where its runs execute."""

    #: The device its runs get for ``device = "auto"`` when they run elsewhere ("cuda" or
    #: "cpu"); None when they run on this machine. The plan's run ids are resolved with it, so
    #: that they are the ids the runs' records carry.
    device: str | None

    def execute(self, plan: SweepPlan, progress: bool) -> SweepResult:
        """Run the plan's configurations that need a run; the sweep's counts (each planned
        configuration counted once: run, skipped or claimed). Raises KeyboardInterrupt after
        stopping on SIGINT or SIGTERM."""
        ...

    def close(self) -> None:
        """Release what the executor started (called once, after :meth:`execute`)."""
        ...


class JobTracker(Protocol):
    """What an executor whose runs outlive the sweep (SLURM jobs) knows of them in a results
    folder, for ``locbench sweep --status``."""

    def run_ids(self) -> set[str]:
        """The run ids it has a job of."""
        ...

    def config(self, run_id: str) -> dict:
        """The configuration its job of ``run_id`` runs ({} without one)."""
        ...

    def live(self, run_id: str, has_record: bool) -> tuple[str, str] | None:
        """``("running" | "pending", detail)`` while its job of ``run_id`` may still run."""
        ...

    def ended_without_record(self, run_id: str) -> str | None:
        """Why ``run_id``, which has no record and no live job or claim, failed."""
        ...

    def ended(self) -> set[str]:
        """The claim owners (job tags) that ended: their claims are stale."""
        ...


class RunExecutor(ABC):
    """An executor that runs one configuration at a time per slot: the sweep
    (:func:`locbench.study.sweep.run_plan`) claims each configuration, hands it to :meth:`run`
    and counts its record, and on a signal asks the runs to :meth:`stop`.

    Guarantees the sweep relies on: :meth:`run` returns the run's record, already written to
    ``out`` as its run id's only record file (or a ``worker_died`` row when the process running
    it died), or None when :meth:`stop` was called while it ran (nothing written; the
    configuration runs on resume)."""

    device: str | None = None

    def execute(self, plan: SweepPlan, progress: bool) -> SweepResult:
        from locbench.study.sweep import run_plan  # the sweep's module imports this one

        return run_plan(plan, self, progress)

    @abstractmethod
    def slots(self, todo: int) -> list[dict[str, str]]:
        """The runs to keep going at once (at most ``todo``, at least one), each with its
        environment."""

    @abstractmethod
    def run(self, config: RunConfig, out: Path, slot: dict[str, str]) -> RunRecord | None: ...

    @abstractmethod
    def stop(self) -> int:
        """Ask every running run to stop; how many were running."""

    @abstractmethod
    def kill(self) -> None:
        """Stop them at once (the grace period is over, or a second signal came)."""

    def close(self) -> None:  # noqa: B027 - most release nothing
        """Release what the executor started (called once, after the last run)."""


@dataclass(frozen=True)
class ExecutorKind:
    """One ``--executor NAME``, declared once: ``locbench sweep`` (its choices, its flags and
    their checks), ``sweep --status`` and the docs' tables read it from :data:`EXECUTORS`."""

    name: str
    help: str  # one line: what runs the configurations
    options: type  # a dataclass of settings (locbench.settings.schema.setting fields)
    make: Callable[[Any], Executor]  # an ``options`` -> the executor (a missing extra: UserError)
    # The flags' prefix: --PREFIX-FIELD; None: the name; "": --FIELD (local's --workers).
    prefix: str | None = None
    # Its runs outlive the sweep: what ``sweep --status`` asks about them in a results folder.
    tracker: Callable[[Path], JobTracker] | None = None

    def flag(self, spec: Spec) -> str:
        """The command-line flag of one of its options."""
        return "--" + self.dest(spec).replace("_", "-")

    def dest(self, spec: Spec) -> str:
        """The option's attribute in the parsed arguments."""
        prefix = self.name if self.prefix is None else self.prefix
        return f"{prefix}_{spec.name}" if prefix else spec.name


EXECUTORS: Registry[ExecutorKind] = Registry("executor")


def register_executor(kind: ExecutorKind) -> ExecutorKind:
    """Make ``--executor kind.name`` known; its module calls this once."""
    EXECUTORS.add(kind.name, kind)
    return kind
