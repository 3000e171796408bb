"""``locbench compare BASE HEAD``: the regression gate on two pytest-benchmark files."""

from __future__ import annotations

import argparse
from pathlib import Path

from locbench.cli.command import Command
from locbench.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", type=Path, help="baseline pytest-benchmark JSON")
    parser.add_argument("head", type=Path, help="new pytest-benchmark JSON")
    parser.add_argument(
        "--time-factor", type=float, default=1.5, help="fail when a step is this much slower"
    )
    parser.add_argument("--ignore-time", action="store_true", help="gate memory and FLOPs only")


def run(args: argparse.Namespace) -> int:
    from locbench.analysis.regress import compare, format_changes, load_figures

    if not 1 <= args.time_factor < float("inf"):  # NaN fails this too
        raise UserError(f"--time-factor must be a finite number >= 1, got {args.time_factor}")
    base, head = load_figures(args.base), load_figures(args.head)
    if args.ignore_time:
        base = {c: {k: v for k, v in f.items() if k != "step_time_s"} for c, f in base.items()}
    changes = compare(base, head, args.time_factor)
    print(format_changes(changes))
    failed = [c for c in changes if c.failed]
    print(f"{len(failed)} of {sum(len(f) for f in base.values())} figures over their limit")
    return 1 if failed else 0


COMMAND = Command("compare", "gate: figures of HEAD against a BASE baseline", add_arguments, run)
