"""``locbench report``: tables, charts and one HTML page from a folder of records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from locbench.cli.command import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", type=Path, help="a results folder (records *.json)")
    parser.add_argument("--out", type=Path, default=None, help="default: RUNS/report")


def run(args: argparse.Namespace) -> int:
    from locbench.reports.page import build_report

    report = build_report(args.runs, args.out or args.runs / "report")
    for path, reason in report.skipped:
        print(f"locbench: skipped {path}: {reason}", file=sys.stderr)
    print(f"report: {report.path}")
    return 0


COMMAND = Command(
    "report", "tables, charts and an HTML page from stored records", add_arguments, run
)
