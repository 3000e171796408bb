"""``locbench plot KIND RUNS``: one chart of the report from a folder of records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from locbench.cli.command import Command
from locbench.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "kind",
        help="breakdown, modules, timeline, accuracy-memory, memory-k, memory-batch, "
        "step-overhead or curves",
    )
    parser.add_argument("runs", type=Path, help="a results folder (records *.json)")
    parser.add_argument("--out", type=Path, default=None, help="default: RUNS/report")


def run(args: argparse.Namespace) -> int:
    from locbench.reports.charts import save
    from locbench.reports.page import PLOT_KINDS, chart_figure, load_runs

    # checked here, not by argparse choices: a bad kind is one error line, like bad records
    if args.kind not in PLOT_KINDS:
        raise UserError(f"unknown chart kind {args.kind!r}; known: {', '.join(PLOT_KINDS)}")
    results, curves, skipped = load_runs(args.runs, what="plot")
    for path, reason in skipped:
        print(f"locbench: skipped {path}: {reason}", file=sys.stderr)
    name = PLOT_KINDS[args.kind]
    fig = chart_figure(name, results, curves)
    if fig is None:
        raise UserError(f"the records in {args.runs} hold no data for the {args.kind} chart")
    for path in save(fig, (args.out or args.runs / "report") / name):
        print(path)
    return 0


COMMAND = Command("plot", "one chart of the report from stored records", add_arguments, run)
