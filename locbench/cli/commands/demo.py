"""``locbench demo``: BP against DGL on the bundled digits data, a table and a chart."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from locbench.cli.command import Command
from locbench.cli.commands.run import run_one, summary_line

DEMO_METHODS = (("bp", None), ("dgl", 4))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="results folder")
    parser.add_argument("--epochs", type=int, default=None, help="default: the digits preset")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from locbench.records import check_out_dir, curves_frame, results_frame
    from locbench.reports.charts import plot_curves
    from locbench.reports.tables import format_table, summary_table
    from locbench.settings.run_config import RunConfig

    check_out_dir(args.out, len(DEMO_METHODS))  # the records and the chart, before training
    records = []
    for method, K in DEMO_METHODS:
        config = RunConfig(method=method, K=K, net="smallnet", dataset="digits", epochs=args.epochs)
        record, path = run_one(config, args.out, not args.no_progress)
        print(summary_line(record, path), file=sys.stderr)
        records.append(record)
    print(format_table(summary_table(results_frame(records))))
    chart = plot_curves(curves_frame(records), args.out / "demo_curves.png")
    print(f"chart: {chart}")
    return 0 if all(r.status == "ok" for r in records) else 1


COMMAND = Command(
    "demo", "BP vs DGL on the bundled digits data, table and chart", add_arguments, run
)
