"""Datasets: what a loader returns (:class:`DataBundle`) and the registry of datasets, each
registered once with its classes, image shape and training preset (:func:`register_dataset`).

``digits`` (scikit-learn's bundled 8x8 handwritten digits, real and offline) and ``synthetic``
(deterministic class templates plus noise) live in memory. ``cifar10``, ``svhn`` and ``stl10`` are
read from ``--data-root`` (see :mod:`locbench.data.torchvision_sets`): by default decoded once into
cached uint8 tensors and batched on the run's device (:mod:`locbench.data.tensor_loader`), or with
``loader="torchvision"`` through torchvision's per-image transforms. ``imagenet``
(:mod:`locbench.data.imagenet`) always goes through a DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from locbench.errors import UserError
from locbench.registry import Registry
from locbench.settings.run_config import DataSettings, TrainPreset

Shape = tuple[int, ...]
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class DataInfo:
    """What methods may know about the data: classes, image shape and normalisation statistics."""

    name: str
    num_classes: int
    image_shape: Shape
    mean: tuple[float, ...]
    std: tuple[float, ...]


class Loader(Protocol):
    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...


@dataclass
class DataBundle:
    info: DataInfo
    train: Loader
    test: Loader
    train_size: int  # images in the training split

    def __post_init__(self) -> None:
        # A batch larger than the training set would silently train on smaller batches than
        # the record says.
        batch = getattr(self.train, "batch_size", None)
        if batch is not None and batch > self.train_size:
            raise UserError(
                f"batch size {batch} is larger than the {self.train_size} training images of "
                f"{self.info.name}; use a batch size of at most {self.train_size}"
            )


@dataclass(frozen=True)
class DataRequest:
    """Everything a dataset factory may use. ``image_shape`` is the backbone's input shape."""

    image_shape: Shape
    batch_size: int
    seed: int = 0
    data_root: Path | None = None
    download: bool = False
    augment: bool = True
    num_workers: int = 0
    # cifar10/svhn/stl10: "tensor" (locbench.data.tensor_loader) or "torchvision"; digits and
    # synthetic are in-memory tensors either way, imagenet a DataLoader either way.
    loader: str = "tensor"
    device: torch.device = torch.device("cpu")  # where the loaders' batches land

    @classmethod
    def of(
        cls,
        data: DataSettings,
        image_shape: Shape,
        batch_size: int,
        seed: int,
        device: torch.device,
    ) -> DataRequest:
        """A run's request: its data section, and what the other sections fix (the backbone's
        input shape, the batch size, the seed, the device)."""
        root = Path(data.data_root) if data.data_root else None
        return cls(
            image_shape, batch_size, seed, root, data.download, data.augment,
            data.num_workers, data.loader, device,
        )  # fmt: skip


@dataclass(frozen=True)
class Dataset:
    """One registered dataset and what is known of it without reading its files: its classes,
    its images' native shape (C, H, W; ``None`` when it makes images of any shape; a loader
    always delivers the backbone's input shape), and the training preset that fills a run's
    unset epochs, batch size and learning rate."""

    name: str
    num_classes: int
    image_shape: Shape | None
    preset: TrainPreset
    load: Callable[[DataRequest], DataBundle]


DATASETS: Registry[Dataset] = Registry("dataset")


def register_dataset(
    name: str, *, num_classes: int, image_shape: Shape | None, preset: TrainPreset
) -> Callable[[Callable[[DataRequest], DataBundle]], Callable[[DataRequest], DataBundle]]:
    """Register ``load(request) -> DataBundle`` as dataset ``name``, with its metadata. A
    dataset is this one registration (and an import in :mod:`locbench.data.catalog`)."""

    def decorate(load: Callable[[DataRequest], DataBundle]):
        DATASETS.add(name, Dataset(name, num_classes, image_shape, preset, load))
        return load

    return decorate


class TensorLoader:
    """Batches of in-memory tensors; reshuffled each pass from a seeded generator, so two runs
    with the same seed see the same batches in the same order."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | None = None,
    ) -> None:
        self.x, self.y = (x, y) if device is None else (x.to(device), y.to(device))
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.x.device)  # drawn on the CPU: one seed, one order on any device
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


def fit_images(images: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Resize (N, C0, H0, W0) images to ``shape`` = (C, H, W): bilinear resampling, and the
    channels tiled (grey -> RGB) when C0 divides C."""
    c, h, w = shape
    if images.shape[1] != c:
        if c % images.shape[1]:
            raise UserError(f"cannot tile {images.shape[1]}-channel images to {c} channels")
        images = images.repeat(1, c // images.shape[1], 1, 1)
    if images.shape[2:] != (h, w):
        images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
    return images


def in_memory_bundle(
    name: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    request: DataRequest,
) -> DataBundle:
    """Normalise with the training set's per-channel statistics and wrap in loaders."""
    mean = x_train.mean(dim=(0, 2, 3))
    std = x_train.std(dim=(0, 2, 3))

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean[:, None, None]) / std[:, None, None]).contiguous()

    info = DataInfo(
        name, num_classes, tuple(x_train.shape[1:]), tuple(mean.tolist()), tuple(std.tolist())
    )
    device = torch.device(request.device)
    train = TensorLoader(
        norm(x_train), y_train, request.batch_size, True, request.seed, device=device
    )
    test = TensorLoader(norm(x_test), y_test, request.batch_size, False, device=device)
    return DataBundle(info, train, test, len(x_train))
