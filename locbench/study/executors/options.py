"""Settings of the sweep executors beyond this machine (Ray, SLURM through submitit),
declared once with :func:`locbench.settings.schema.setting`: their ``--ray-*`` and ``--slurm-*``
flags
are generated from these fields (:func:`add_option_flags`)."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from locbench.errors import UserError
from locbench.settings.schema import convert, setting, specs

EXECUTORS = ("local", "ray", "slurm")


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


def add_option_flags(parser: argparse.ArgumentParser, cls: type, prefix: str) -> None:
    """``--PREFIX-FIELD`` for every field of ``cls`` (dest ``PREFIX_FIELD``)."""
    for spec in specs(cls):
        shown = "none" if spec.default is None else str(spec.default)
        flag = f"--{prefix}-{spec.name.replace('_', '-')}"
        help_text = f"{spec.help}; {spec.accepted()}; default {shown}"
        if spec.base is bool:
            parser.add_argument(
                flag, dest=f"{prefix}_{spec.name}", default=None, action="store_true",
                help=help_text,
            )  # fmt: skip
        else:
            parser.add_argument(flag, dest=f"{prefix}_{spec.name}", default=None, help=help_text)


def options_from_args(args: argparse.Namespace, cls: type, prefix: str) -> Any:
    """The ``cls`` the ``--PREFIX-*`` flags describe, each value converted and checked."""
    values = vars(args)
    given = {}
    for spec in specs(cls):
        value = values.get(f"{prefix}_{spec.name}")
        if value is not None:
            flag = f"--{prefix}-{spec.name.replace('_', '-')}"
            given[spec.name] = convert(spec, value, flag)
    return cls(**given)


def given_option_flags(args: argparse.Namespace, prefix: str) -> list[str]:
    """The ``--PREFIX-*`` flags given on the command line."""
    return [
        "--" + k.replace("_", "-")
        for k, v in vars(args).items()
        if k.startswith(prefix + "_") and v not in (None, False)
    ]


def import_extra(module: str, extra: str, what: str) -> ModuleType:
    """``import module``, or one line saying which extra of locbench installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"{what} needs the {module} package: pip install 'locbench[{extra}]' "
            f"(in a clone: pip install -e '.[{extra}]')"
        ) from None
