"""``locbench describe``: what a configuration builds (modules, auxiliary nets, parameters,
FLOPs per step), without training it."""

from __future__ import annotations

import argparse

from locbench.cli.command import Command
from locbench.cli.flags import add_setting_flags, config_from_args
from locbench.cli.probe import SHAPE, check_probe, dataset_classes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_flags(parser, ("model", "method"), defaults={"net": "resnet32"}, also=SHAPE)
    parser.add_argument("--batch-size", type=int, default=64, help="batch for FLOPs per step")
    parser.add_argument(
        "--classes", type=int, default=None, help="number of classes (default: the dataset's)"
    )
    parser.add_argument(
        "--dataset", default=None, help="sets the number of classes only; no data is read"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import json

    from locbench.analysis.describe import describe, format_description

    if args.classes is None:  # an explicit --classes wins over the dataset's count
        args.classes = dataset_classes(args.dataset)
    check_probe(args)
    d = describe(config_from_args(args), args.batch_size, args.classes)
    print(json.dumps(d) if args.json else format_description(d))
    return 0


COMMAND = Command(
    "describe",
    "the split, auxiliary nets, parameters and FLOPs of a configuration",
    add_arguments,
    run,
)
