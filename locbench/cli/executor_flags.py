"""The flags of each sweep executor, generated from its options dataclass
(:class:`locbench.study.executors.base.ExecutorKind`): ``--workers``, ``--ray-*``,
``--slurm-*``. Values arrive as text and are converted and checked by the settings schema, so a
bad value is one line naming the flag and what it accepts."""

from __future__ import annotations

import argparse
from typing import Any

from locbench.settings.schema import convert, specs
from locbench.study.executors.base import ExecutorKind


def add_executor_flags(parser: argparse.ArgumentParser, kind: ExecutorKind) -> None:
    """One flag per option of ``kind``; each defaults to None (not given)."""
    for spec in specs(kind.options):
        shown = "none" if spec.default is None else str(spec.default)
        help_text = f"{spec.help}; {spec.accepted()}; default {shown}"
        action = "store_true" if spec.base is bool else "store"
        parser.add_argument(
            kind.flag(spec), dest=kind.dest(spec), default=None, action=action, help=help_text
        )


def executor_options(args: argparse.Namespace, kind: ExecutorKind) -> Any:
    """The options of ``kind`` the flags describe, each given value converted and checked."""
    values = vars(args)
    given = {}
    for spec in specs(kind.options):
        value = values.get(kind.dest(spec))
        if value is not None:
            given[spec.name] = convert(spec, value, kind.flag(spec))
    return kind.options(**given)


def given_executor_flags(args: argparse.Namespace, kind: ExecutorKind) -> list[str]:
    """The flags of ``kind`` given on the command line."""
    values = vars(args)
    return [
        kind.flag(spec)
        for spec in specs(kind.options)
        if values.get(kind.dest(spec)) not in (None, False)
    ]
