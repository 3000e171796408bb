"""Settings of the sweep executors (local processes, Ray, SLURM through submitit), declared once
with :func:`locbench.settings.schema.setting`: their flags (``--workers``, ``--ray-*``,
``--slurm-*``), their checks and the docs' tables are generated from these fields, through each
executor's :class:`locbench.study.executors.base.ExecutorKind`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from locbench.errors import UserError
from locbench.settings.schema import setting


@dataclass(frozen=True)
class LocalOptions:
    workers: int = setting(
        1,
        "--executor local: runs at once (one per GPU, or CPU processes sharing the cores)",
        low=1,
    )


@dataclass(frozen=True)
class RayOptions:
    address: str | None = setting(
        None,
        "the Ray cluster to run on (an address such as auto or ray://HOST:10001); "
        "none starts a local Ray for the sweep",
    )
    cpus_per_run: float = setting(1.0, "CPUs Ray reserves for each run", above=0)
    gpus_per_run: float | None = setting(
        None, "GPUs Ray reserves for each run (none: 1 where the cluster has GPUs, else 0)", low=0
    )
    max_retries: int = setting(
        3, "times Ray runs a configuration again when its worker process or node dies", low=0
    )


@dataclass(frozen=True)
class SlurmOptions:
    cluster: str = setting(
        "slurm",
        "where submitit runs the jobs: slurm, or local processes of this machine "
        "(submitit's local executor, to try a sweep out)",
        choices=("slurm", "local"),
    )
    partition: str | None = setting(None, "SLURM partition (none: the cluster's default)")
    time: int = setting(60, "time limit of each job in minutes", low=1)
    gpus_per_task: int = setting(0, "GPUs of each job", low=0)
    cpus_per_task: int = setting(1, "CPU cores of each job", low=1)
    array_parallelism: int = setting(64, "jobs of the sweep's array running at once", low=1)
    setup: str | None = setting(
        None,
        "a shell line run before each job, e.g. 'module load cuda; source ~/venv/bin/activate'",
    )
    detach: bool = setting(
        False, "submit and return; `locbench sweep --status --out DIR` follows the jobs"
    )


def import_extra(module: str, extra: str, what: str) -> ModuleType:
    """``import module``, or one line saying which extra of locbench installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"{what} needs the {module} package: pip install 'locbench[{extra}]' "
            f"(in a clone: pip install -e '.[{extra}]')"
        ) from None
