"""``locbench plot KIND RUNS``: one chart of the report from a folder of records; the kinds and
their lines in ``--help`` are those of :data:`locbench.reports.charts.CHARTS`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from locbench.cli.command import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from locbench.reports.charts import CHARTS

    width = max(len(kind) for kind in CHARTS.kinds())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the epilog's table as is
    parser.epilog = "chart kinds:\n" + "\n".join(
        f"  {chart.kind:<{width}}  {chart.title}" for chart in CHARTS
    )
    # no argparse choices: a bad kind is one error line (from CHARTS.get), like bad records
    parser.add_argument("kind", help="the chart to draw: one of the chart kinds below")
    parser.add_argument("runs", type=Path, help="a results folder (records *.json)")
    parser.add_argument("--out", type=Path, default=None, help="default: RUNS/report")


def run(args: argparse.Namespace) -> int:
    from locbench.errors import UserError
    from locbench.outputs import check_folder
    from locbench.reports.charts import CHART_BYTES, CHARTS, save
    from locbench.reports.page import load_runs

    chart = CHARTS.get(args.kind)
    results, curves, skipped = load_runs(args.runs, what="plot")
    out = check_folder(args.out or args.runs / "report", "--out", CHART_BYTES)
    for path, reason in skipped:
        print(f"locbench: skipped {path}: {reason}", file=sys.stderr)
    fig = chart.draw(results, curves, None)
    if fig is None:
        raise UserError(f"the records in {args.runs} hold no data for the {args.kind} chart")
    for path in save(fig, out / chart.name):
        print(path)
    return 0


COMMAND = Command("plot", "one chart of the report from stored records", add_arguments, run)
