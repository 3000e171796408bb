"""``locbench sweep``: a grid of runs, one process each, resumable; ``--status`` follows one."""

from __future__ import annotations

import argparse
from pathlib import Path

from locbench.cli.command import Command
from locbench.cli.flags import add_setting_flags, axes_from_args, depth_axis, hp_axes_from_args
from locbench.errors import UserError
from locbench.settings.schema import SECTIONS
from locbench.study.executors.options import (
    EXECUTORS,
    RayOptions,
    SlurmOptions,
    add_option_flags,
    given_option_flags,
    options_from_args,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None, help="a named grid (see `locbench list`)")
    source.add_argument(
        "--config", type=Path, default=None, help="a TOML file: [grid], [run], [method.NAME]"
    )
    add_setting_flags(parser, SECTIONS, lists=True)
    parser.add_argument(
        "--executor",
        default="local",
        choices=EXECUTORS,
        help="where the runs execute: processes of this machine, a Ray cluster, or SLURM jobs "
        "(through submitit); default local",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="--executor local: runs at once (one per GPU, or CPU processes); default 1",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="results folder")
    parser.add_argument(
        "--status",
        action="store_true",
        help="show each configuration of --out: done, failed, running or pending; run nothing",
    )
    add_option_flags(parser, RayOptions, "ray")
    add_option_flags(parser, SlurmOptions, "slurm")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again every configuration whose record is not ok (oom, diverged, error)",
    )
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from locbench.study.grid import Grid, load_grid
    from locbench.study.presets import PRESETS
    from locbench.study.sweep import LocalExecutor, sweep

    if args.status:
        from locbench.study.status import print_status

        return print_status(args.out)
    own_flags = {  # the flags each executor takes, as given
        "local": ["--workers"] if args.workers is not None else [],
        "ray": given_option_flags(args, "ray"),
        "slurm": given_option_flags(args, "slurm"),
    }
    for executor, given in own_flags.items():
        if given and executor != args.executor:
            raise UserError(f"{given[0]} applies to --executor {executor}, not {args.executor}")
    ray_options = options_from_args(args, RayOptions, "ray")
    slurm_options = options_from_args(args, SlurmOptions, "slurm")
    if args.preset:
        grid = PRESETS.get(args.preset)
    elif args.config:
        grid = load_grid(args.config)
    else:
        grid = Grid()
    grid = grid.override(
        axes=axes_from_args(args), hp=hp_axes_from_args(args), aux_depth=depth_axis(args)
    )
    progress, retry = not args.no_progress, args.retry_failed
    if args.executor == "slurm":
        from locbench.study.executors.slurm import sweep_slurm

        result = sweep_slurm(grid, args.out, slurm_options, progress=progress, retry_failed=retry)
    else:
        if args.executor == "ray":
            from locbench.study.executors.ray_tasks import RayExecutor

            executor = RayExecutor(ray_options)
        else:
            executor = LocalExecutor(1 if args.workers is None else args.workers)
        result = sweep(grid, args.out, progress=progress, retry_failed=retry, executor=executor)
    print(result.summary(args.out))
    for line in result.failed:
        print(f"  failed: {line}")
    return 0


COMMAND = Command("sweep", "a grid of runs, one process each, resumable", add_arguments, run)
