"""``locbench sweep``: a grid of runs, resumable, on any registered executor
(:data:`locbench.study.executors.base.EXECUTORS`: its choices and flags come from there);
``--status`` follows one."""

from __future__ import annotations

import argparse
from pathlib import Path

from locbench.cli.command import Command
from locbench.cli.executor_flags import (
    add_executor_flags,
    executor_options,
    given_executor_flags,
)
from locbench.cli.flags import add_setting_flags, axes_from_args, depth_axis, hp_axes_from_args
from locbench.errors import UserError
from locbench.settings.schema import SECTIONS
from locbench.study.executors.builtin import EXECUTORS
from locbench.study.grid import BASELINES

DEFAULT_EXECUTOR = "local"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None, help="a named grid (see `locbench list`)")
    source.add_argument(
        "--config", type=Path, default=None, help="a TOML file: [grid], [run], [method.NAME]"
    )
    add_setting_flags(parser, SECTIONS, lists=True)
    kinds = [EXECUTORS.get(name) for name in EXECUTORS.names()]
    parser.add_argument(
        "--executor",
        default=DEFAULT_EXECUTOR,
        choices=[kind.name for kind in kinds],
        help="where the runs execute: "
        + "; ".join(f"{kind.name}, {kind.help}" for kind in kinds)
        + f"; default {DEFAULT_EXECUTOR}",
    )
    parser.add_argument(
        "--baselines",
        choices=BASELINES,
        default=None,
        help="equal-memory: with every local method's configuration, bp-ckpt and bp-accum "
        "configured to at most its estimated peak (fewest segments / micro-batches that fit)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="results folder")
    parser.add_argument(
        "--status",
        action="store_true",
        help="show each configuration of --out: done, failed, running or pending; run nothing",
    )
    for kind in kinds:
        add_executor_flags(parser, kind)
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again every configuration whose record is not ok (oom, diverged, error)",
    )
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from locbench.study.grid import Grid, load_grid
    from locbench.study.presets import PRESETS
    from locbench.study.sweep import sweep

    if args.status:
        from locbench.study.status import print_status

        return print_status(args.out)
    for name in EXECUTORS.names():  # each executor's own flags, with that executor only
        given = given_executor_flags(args, EXECUTORS.get(name))
        if given and name != args.executor:
            raise UserError(f"{given[0]} applies to --executor {name}, not {args.executor}")
    kind = EXECUTORS.get(args.executor)
    options = executor_options(args, kind)
    if args.preset:
        grid = PRESETS.get(args.preset)
    elif args.config:
        grid = load_grid(args.config)
    else:
        grid = Grid()
    grid = grid.override(
        axes=axes_from_args(args),
        hp=hp_axes_from_args(args),
        aux_depth=depth_axis(args),
        baselines=args.baselines,
    )
    result = sweep(
        grid,
        args.out,
        progress=not args.no_progress,
        retry_failed=args.retry_failed,
        executor=kind.make(options),
    )
    print(result.summary(args.out))
    for line in result.failed:
        print(f"  failed: {line}")
    return 0


COMMAND = Command("sweep", "a grid of runs, one process each, resumable", add_arguments, run)
