"""``locbench estimate``: each method's peak training memory on fake tensors, without a GPU."""

from __future__ import annotations

import argparse
from pathlib import Path

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
from locbench.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_flags(
        parser, ("model", "method"), defaults={"net": "resnet32"}, also=SHAPE, hidden=("method",)
    )
    add_methods_flag(parser)
    parser.add_argument("--batch", "--batch-size", dest="batch_size", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: net's)")
    parser.add_argument("--classes", type=int, default=10, help="number of classes")
    parser.add_argument("--max-batch", action="store_true", help="find the largest batch that fits")
    parser.add_argument("--budget", default="24GiB", help="memory budget for --max-batch")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object each")
    parser.add_argument(
        "--timeline",
        nargs="?",
        type=Path,
        const=Path("estimate_timeline"),
        default=None,
        metavar="STEM",
        help="also write each method's live memory over one training step, allocation by "
        "allocation, with its phases and modules: chart STEM.png and STEM.svg, points STEM.json "
        "(default STEM: estimate_timeline)",
    )


def run(args: argparse.Namespace) -> int:
    import json

    from locbench.analysis.estimate import estimate_methods, format_estimates, parse_bytes

    methods = methods_from(args, "estimate")
    check_probe(args)
    if args.image_size is not None and not 1 <= args.image_size <= 8192:
        raise UserError(f"--image-size must be between 1 and 8192, got {args.image_size}")
    budget = parse_bytes(args.budget) if args.max_batch else None
    if args.timeline:  # before any estimate: the files it will write
        check_timeline(args.timeline)
    config = config_from_args(args, methods)
    jobs = jobs_from(args, methods, search=args.max_batch)
    rows = estimate_methods(
        config, methods, args.batch_size, args.image_size, args.classes, budget, args.timeline, jobs
    )
    written = write_timeline(rows, config.net, args.timeline) if args.timeline else []
    failed = [r for r in rows if "error" in r]  # each costs only its own row
    if args.json:
        print(json.dumps(rows))
        return report_failures(failed)
    size = f", image {args.image_size}" if args.image_size else ""
    what = f"largest batch within {args.budget}" if budget else f"batch {args.batch_size}"
    title = (
        f"estimated peak memory of one training step: {config.net}, K={config.K or 'every unit'}"
        f", {what}{size}, {config.precision} (fake tensors, CUDA 512-byte rounding)"
    )
    print(format_estimates(rows, title))
    for path in written:
        print(path)
    return report_failures(failed)


def check_timeline(stem: Path) -> None:
    """``--timeline STEM``: its folder takes the three files, whose names the file system
    accepts."""
    from locbench.outputs import check_folder, check_names
    from locbench.reports.charts import CHART_BYTES

    check_folder(stem.parent, "--timeline", 2 * CHART_BYTES)
    check_names(Path(f"{stem}.json"), "--timeline")


def write_timeline(rows: list[dict], net: str, stem: Path) -> list[Path]:
    """The estimate rows' timelines as ``<stem>.json`` (the rows) and a chart
    (``<stem>.png``, ``<stem>.svg``) with one panel per method that has a peak."""
    import json

    from locbench.outputs import Outputs, write_atomic
    from locbench.reports.charts import save, timelines_figure

    panels = [
        (f"{net}, batch {r['batch_size']}, estimated\n{r['method']} K={r['K']}", r["method"], tl)
        for r in rows
        if (tl := r.get("timeline"))
    ]
    with Outputs.collect() as outputs:  # the rows and the chart, or none of them
        outputs.add(write_atomic(Path(f"{stem}.json"), json.dumps(rows, indent=1)))
        if panels:
            outputs.add(*save(timelines_figure(panels), stem))
    return outputs.paths


COMMAND = Command(
    "estimate", "predicted peak training memory per method, without a GPU", add_arguments, run
)
