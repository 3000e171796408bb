"""What ``describe`` and ``estimate`` share: they count one configuration without data, at
their own batch size and class count."""

from __future__ import annotations

import argparse
import sys

from locbench.errors import UserError

# Run settings that change what describe and estimate count: the step's dtypes and layout.
SHAPE = ("precision", "channels_last")


def dataset_classes(dataset: str | None) -> int:
    """The class count of a registered dataset, without reading it (10 when none is named)."""
    from locbench.data.catalog import DATASETS

    if dataset is None:
        return 10
    return DATASETS.get(dataset).num_classes


def check_probe(args: argparse.Namespace) -> None:
    """``describe``/``estimate``'s own batch and class count."""
    from locbench.settings.run_config import BY_NAME
    from locbench.settings.schema import check

    if args.batch_size is not None:  # plan's is optional
        check(BY_NAME["batch_size"], args.batch_size, "--batch-size")  # the run setting's rule
    if not 2 <= args.classes <= 1_000_000:
        raise UserError(f"--classes must be between 2 and 1000000, got {args.classes}")


def add_methods_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods", default=None, help="comma-separated methods (default: all registered)"
    )
    parser.add_argument(
        "--jobs", type=int, default=None,
        help="methods worked on side by side, each in a process of its own (default: one per "
        "core, at most one per method, where each method's answer is a search, as with "
        "--max-batch; otherwise 1: starting a process costs more than one estimate)",
    )  # fmt: skip


def jobs_from(args: argparse.Namespace, methods: list[str], search: bool) -> int:
    """``--jobs``, checked, or its default for these methods (``search``: each method's answer
    takes several fake steps)."""
    from locbench.analysis.side_by_side import default_jobs

    if args.jobs is None:
        return default_jobs(len(methods)) if search else 1
    if not 1 <= args.jobs <= 1024:
        raise UserError(f"--jobs must be between 1 and 1024, got {args.jobs}")
    return args.jobs


def methods_from(args: argparse.Namespace, command: str) -> list[str]:
    """The methods a comparing command (estimate, plan) was given, BP first (the others are
    compared with it); every registered one by default."""
    from locbench.methods import METHODS

    if args.method is not None:
        raise UserError(f"{command} compares methods: use --methods a,b,c instead of --method")
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else METHODS.names()
    if not all(methods):
        raise UserError(f"--methods has an empty name in {args.methods!r}; e.g. bp,dgl")
    return ["bp"] + [m for m in methods if m != "bp"] if "bp" in methods else methods


def report_failures(failed: list[dict]) -> int:
    """One line on stderr per method (row) that could not be estimated; exit status 2 if any."""
    for r in failed:
        print(f"locbench: error: {r['method']}: {r['error']}", file=sys.stderr)
    return 2 if failed else 0
