"""``locbench data-bench``: images/s of one training epoch through each data loader."""

from __future__ import annotations

import argparse
from pathlib import Path

from locbench.cli.command import Command
from locbench.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="cifar10, svhn or stl10")
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding its files")
    parser.add_argument("--batch", "--batch-size", dest="batch", type=int, default=1024)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:N")
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes (torchvision)"
    )
    parser.add_argument(
        "--loaders", default="tensor,torchvision", help="comma-separated: tensor, torchvision"
    )
    parser.add_argument("--download", action="store_true", help="download the dataset if missing")


def run(args: argparse.Namespace) -> int:
    import torch

    from locbench.analysis.data_speed import LOADERS, check_args, epoch_speed, format_speeds
    from locbench.harness.environment import check_device, pick_device

    check_args(args.dataset, args.data_root, args.batch, args.workers)
    loaders = [s.strip() for s in args.loaders.split(",")]
    if not loaders or any(s not in LOADERS for s in loaders):
        raise UserError(f"--loaders must name some of {', '.join(LOADERS)}, got {args.loaders!r}")
    device = pick_device(args.device)
    check_device(device)
    speeds = [
        epoch_speed(
            args.dataset,
            loader,
            args.data_root,
            args.batch,
            torch.device(device),
            args.workers,
            download=args.download,
        )
        for loader in dict.fromkeys(loaders)
    ]
    print(format_speeds(args.dataset, speeds, args.batch, device, args.workers))
    return 0


COMMAND = Command(
    "data-bench",
    "images/s of one training epoch through each data loader",
    add_arguments,
    run,
)
