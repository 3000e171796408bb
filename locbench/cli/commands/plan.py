"""``locbench plan``: for each method, what fits a memory budget (K, cuts, batch, and for BP's
memory-saving variants the segments or micro-batches), with the predicted peak and FLOPs."""

from __future__ import annotations

import argparse

from locbench.cli.command import Command
from locbench.cli.flags import add_setting_flags, config_from_args
from locbench.cli.probe import (
    SHAPE,
    add_methods_flag,
    check_probe,
    jobs_from,
    methods_from,
    report_failures,
)  # fmt: skip

MIB = 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_flags(
        parser, ("model", "method"), defaults={"net": "resnet32"}, also=SHAPE, hidden=("method",)
    )
    add_methods_flag(parser)
    parser.add_argument("--budget", default="24GiB", help="memory budget, e.g. 24GiB, 8GB")
    parser.add_argument(
        "--batch", "--batch-size", dest="batch_size", type=int, default=None,
        help="plan at this batch: which methods fit, and bp-ckpt's segments and bp-accum's "
        "micro-batches that do (default: the largest batch each method fits)",
    )  # fmt: skip
    parser.add_argument("--classes", type=int, default=10, help="number of classes")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object each")


def run(args: argparse.Namespace) -> int:
    import json

    import pandas as pd

    from locbench.analysis.estimate import parse_bytes
    from locbench.analysis.plan import plan

    methods = methods_from(args, "plan")
    check_probe(args)
    budget = parse_bytes(args.budget)
    config = config_from_args(args, methods)
    jobs = jobs_from(args, methods, search=True)
    rows = plan(config, methods, budget, args.batch_size, args.classes, jobs)
    failed = [r for r in rows if "error" in r]  # each costs only its own row
    if args.json:
        print(json.dumps(rows))
        return report_failures(failed)
    table = pd.DataFrame(
        {
            "method": r["method"],
            "K": r["K"],
            "cuts": ",".join(map(str, r["cuts"])) or "-",
            "micro-batches": r["micro_batches"] or "-",
            "batch": r["batch_size"],
            "peak (MiB)": r["peak_bytes"] / MIB if r["peak_bytes"] is not None else None,
            "fits": "yes" if r["fits"] else "no",
            "GFLOP / step": r["flops"] / 1e9 if r["flops"] else None,
        }
        for r in rows
    )
    what = f"batch {args.batch_size}" if args.batch_size else "the largest batch that fits"
    print(
        f"what fits {args.budget}: {config.net}, {what}, {config.precision} "
        "(fake tensors, CUDA 512-byte rounding)"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    return report_failures(failed)


COMMAND = Command(
    "plan", "what fits a memory budget: K, cuts, batch, BP's segments or micro-batches",
    add_arguments, run,
)  # fmt: skip
