"""``locbench data-bench``: images/s of one training epoch through each loader.

Each loader is built first (decoding, or reading the tensor cache, is not timed: a run pays it
once), then one pass over the training split is timed, augmentation included, with every batch
moved to the device as the trainer would and CUDA synchronised before the clock stops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from locbench.data.base import DataRequest
from locbench.data.catalog import load_dataset
from locbench.errors import UserError

LOADERS = ("tensor", "torchvision")
DATASETS = ("cifar10", "stl10", "svhn")  # those with a torchvision loader


@dataclass(frozen=True)
class LoaderSpeed:
    loader: str
    images: int  # training images in the epoch
    seconds: float  # the epoch
    load_seconds: float  # building the loaders, before the epoch

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def check_args(dataset: str, data_root: Path | None, batch: int, workers: int) -> None:
    """One-line errors for input that no loader could use."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r} for data-bench; known: {', '.join(DATASETS)}")
    if data_root is None:
        raise UserError(f"--data-root is required: the folder holding {dataset}")
    if not Path(data_root).expanduser().is_dir():
        raise UserError(f"--data-root {data_root} does not exist or is not a folder")
    if batch < 1:
        raise UserError(f"--batch must be an integer >= 1, got {batch}")
    if workers < 0:
        raise UserError(f"--workers must be an integer >= 0, got {workers}")


def epoch_speed(
    dataset: str,
    loader: str,
    data_root: Path,
    batch: int,
    device: torch.device,
    workers: int = 0,
    seed: int = 0,
    download: bool = False,
) -> LoaderSpeed:
    """Time one training epoch of ``dataset`` through ``loader`` (augmentation on)."""
    from locbench.data.torchvision_sets import _SPECS

    request = DataRequest(
        image_shape=_SPECS[dataset].image_shape,
        batch_size=batch,
        seed=seed,
        data_root=Path(data_root).expanduser(),
        download=download,
        num_workers=workers,
        loader=loader,
        device=device,
    )
    t0 = time.perf_counter()
    bundle = load_dataset(dataset, request)
    load_seconds = time.perf_counter() - t0
    seen = 0
    _synchronize(device)
    t0 = time.perf_counter()
    for x, y in bundle.train:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        seen += len(y)
    _synchronize(device)
    return LoaderSpeed(loader, seen, time.perf_counter() - t0, load_seconds)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_speeds(
    dataset: str, speeds: list[LoaderSpeed], batch: int, device: str, workers: int
) -> str:
    n = speeds[0].images
    lines = [
        f"{dataset}: one training epoch of {n:,} images, batch {batch}, on {device} "
        f"(torch threads: {torch.get_num_threads()}), {workers} DataLoader workers for torchvision"
    ]
    for s in speeds:
        lines.append(
            f"  {s.loader:<12} {s.images_per_s:>12,.0f} images/s  "
            f"(epoch {s.seconds:.2f} s, loaders built in {s.load_seconds:.2f} s)"
        )
    by_name = {s.loader: s for s in speeds}
    if set(LOADERS) <= set(by_name):
        ratio = by_name["tensor"].images_per_s / by_name["torchvision"].images_per_s
        lines.append(f"  tensor / torchvision: {ratio:.1f}x")
    return "\n".join(lines)
