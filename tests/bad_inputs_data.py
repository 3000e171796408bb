"""Bad datasets (tests/test_bad_inputs.py's group for data files): CIFAR-10, SVHN and STL-10
files in their real formats with labels out of range, negative, fewer or more than the images,
images of the wrong type or shape; poisoned tensor caches over such files; ImageNet folders with
one class, classes that differ between train and val, and files that cannot be decoded.

Each is refused in one line naming the file: before any training step, except an ImageNet image
that cannot be decoded, which is found when the run first reads it (its record is kept, with
status ``error``)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from locbench.data.tensor_loader import CACHE_FORMAT, cache_path, checksum, source_key
from tests.data_files import (
    IMAGENET_CLASSES,
    N_TEST,
    N_TRAIN,
    TEST_LABELS,
    TRAIN_LABELS,
    images,
    write_cifar,
    write_imagenet,
    write_stl,
    write_svhn,
)

FAST = ["--net", "smallnet", "--epochs", "1", "--batch-size", "2", "--no-progress"]
FAST += ["--device", "cpu", "--out", "{out}"]


def run(dataset: str, folder: str, *flags: str) -> list[str]:
    return ["run", "--dataset", dataset, "--data-root", f"{{tmp}}/data/{folder}", *FAST, *flags]


def bench(dataset: str, folder: str) -> list[str]:
    root = f"{{tmp}}/data/{folder}"
    return ["data-bench", "--dataset", dataset, "--data-root", root, "--batch", "2"]


LABEL_RANGE = "accepted: 0..9"
CIFAR_TRAIN = "cifar10 train split in {tmp}/data/cifar-label-10/cifar-10-batches-py/{{data_batch_1"
STL_TRAIN = "stl10_binary/{{train_X.bin, train_y.bin}}"  # braces doubled: str.format
JPEG = "accepted: image files PIL can read"

CASES: dict[str, tuple[list[str], list[str]]] = {
    # ---- CIFAR-10 (pickled batches)
    "cifar10 label 10": (
        run("cifar10", "cifar-label-10"),
        [CIFAR_TRAIN, "label 10 of image 5 is not a class", LABEL_RANGE],
    ),
    "cifar10 negative label": (
        run("cifar10", "cifar-label-negative"),
        ["cifar10 test split in", "test_batch: label -1 of image 1 is not a class", LABEL_RANGE],
    ),
    "cifar10 fewer labels than images": (
        run("cifar10", "cifar-fewer-labels"),
        ["cifar10 train split", "5 labels for 6 images; accepted: one label per image"],
    ),
    "cifar10 float images": (
        run("cifar10", "cifar-float-images"),
        ["cifar10 train split", "the images are float32; accepted: uint8 pixels 0..255"],
    ),
    "cifar10 label 10 through torchvision": (
        run("cifar10", "cifar-label-10", "--loader", "torchvision"),
        [CIFAR_TRAIN, "label 10 of image 5 is not a class", LABEL_RANGE],
    ),
    # A poisoned cache over a bad source: not trusted, so the source's fault is the one named
    # (tests/test_data_validation.py: over a good source it is rebuilt and the run trains).
    "cifar10 cache poisoned labels": (
        run("cifar10", "cifar-cache-poisoned-labels"),
        ["train split in {tmp}/data/cifar-cache-poisoned-labels/cifar-10-", "label 10 of image 5"],
    ),
    "cifar10 cache poisoned shapes": (
        run("cifar10", "cifar-cache-poisoned-shapes"),
        ["train split in {tmp}/data/cifar-cache-poisoned-shapes/cifar-10-", "label 10 of image 5"],
    ),
    "data-bench cifar10 label 10": (
        bench("cifar10", "cifar-label-10"),
        [CIFAR_TRAIN, "label 10 of image 5 is not a class", LABEL_RANGE],
    ),
    # ---- SVHN (.mat files; digit 0 is stored as 10)
    "svhn label 11": (
        run("svhn", "svhn-label-11"),
        ["svhn train split in {tmp}/data/svhn-label-11/train_32x32.mat: label 11 of image 2"],
    ),
    "svhn negative label": (
        run("svhn", "svhn-label-negative"),
        ["svhn test split in", "label -1 of image 3", "0..9, stored as 1..10 (digit 0 as 10)"],
    ),
    "svhn fewer labels than images": (
        run("svhn", "svhn-fewer-labels"),
        ["svhn train split in", "4 labels for 6 images"],
    ),
    "svhn more labels than images": (
        run("svhn", "svhn-more-labels"),
        ["svhn train split in", "7 labels for 6 images"],
    ),
    "svhn float images": (
        run("svhn", "svhn-float-images"),
        ["svhn train split in {tmp}/data/svhn-float-images/train_32x32.mat", "float64", "uint8"],
    ),
    "svhn 28x28 images": (
        run("svhn", "svhn-28x28"),
        ["svhn train split in", "shape (6, 3, 28, 28); accepted: (N, 3, 32, 32)"],
    ),
    # its cache holds float32 images, its source float64: the source is named
    "svhn cache poisoned dtype": (
        run("svhn", "svhn-cache-poisoned-dtype"),
        ["svhn train split in {tmp}/data/svhn-cache-poisoned-dtype/train_32x32.mat", "float64"],
    ),
    "data-bench svhn float images": (
        bench("svhn", "svhn-float-images"),
        ["svhn train split in {tmp}/data/svhn-float-images/train_32x32.mat", "float64"],
    ),
    # ---- STL-10 (binaries; labels stored as bytes 1..10)
    "stl10 label 10": (
        run("stl10", "stl-label-10"),
        [STL_TRAIN, "label 10 of image 0 is not a class", "0..9, stored as bytes 1..10"],
    ),
    "stl10 label byte 0": (
        run("stl10", "stl-label-byte-0"),
        ["stl10 test split in", "label 255 of image 2", "stored as bytes 1..10"],
    ),
    "stl10 fewer labels than images": (
        run("stl10", "stl-fewer-labels"),
        [STL_TRAIN, "5 labels for 6 images"],
    ),
    "stl10 more labels than images": (
        run("stl10", "stl-more-labels"),
        [STL_TRAIN, "8 labels for 6 images"],
    ),
    "stl10 more labels through torchvision": (
        run("stl10", "stl-more-labels", "--loader", "torchvision"),
        [STL_TRAIN, "8 labels for 6 images"],
    ),
    "data-bench stl10 more labels": (
        bench("stl10", "stl-more-labels"),
        [STL_TRAIN, "8 labels for 6 images"],
    ),
    # ---- ImageNet-style folders
    "imagenet one class": (
        run("imagenet", "imagenet-one-class"),
        ["imagenet-one-class/train holds 1 class folders (only n01440764)", "at least 2"],
    ),
    "imagenet train and val classes differ": (
        run("imagenet", "imagenet-val-classes"),
        ["train/ and val/ under", "hold different class folders", "n01484850, n99999999"],
    ),
    "imagenet text as JPEG": (
        run("imagenet", "imagenet-text"),
        ["cannot decode {tmp}/data/imagenet-text/train/n01443537/n01443537_0.JPEG", JPEG],
    ),
    "imagenet truncated JPEG": (
        run("imagenet", "imagenet-truncated"),
        ["cannot decode {tmp}/data/imagenet-truncated/train/n01440764/n01440764_0.JPEG"],
    ),
    "imagenet corrupt JPEG": (
        run("imagenet", "imagenet-corrupt"),
        ["cannot decode {tmp}/data/imagenet-corrupt/train/n01484850/n01484850_0.JPEG"],
    ),
    "imagenet empty file in val": (
        run("imagenet", "imagenet-empty-val"),
        ["cannot decode {tmp}/data/imagenet-empty-val/val/n01440764/n01440764_0.JPEG", JPEG],
    ),
}


def _cifar(root: Path, train_labels=TRAIN_LABELS, test_labels=TEST_LABELS, dtype=np.uint8):
    train = images("cifar10", N_TRAIN, 0).astype(dtype)
    write_cifar(root, train, images("cifar10", N_TEST, 1), train_labels, test_labels)


def _svhn(root: Path, train_labels=TRAIN_LABELS, test_labels=TEST_LABELS, train=None):
    train = images("svhn", N_TRAIN, 0) if train is None else train
    write_svhn(root, train, images("svhn", N_TEST, 1), train_labels, test_labels)


def _stl(root: Path, train_labels=TRAIN_LABELS, test_labels=TEST_LABELS):
    write_stl(
        root, images("stl10", N_TRAIN, 0), images("stl10", N_TEST, 1), train_labels, test_labels
    )


def poison_cache(
    root: Path,
    name: str,
    split: str,
    files: list[str],
    images: torch.Tensor,
    labels: torch.Tensor,
    crc: int | None = None,
) -> None:
    """A cache of ``root``'s ``split`` whose key matches its source files but whose contents
    are ``images`` and ``labels``, with their own checksum (or ``crc``: contents altered after
    the cache was written)."""
    blob = {
        "key": {"format": CACHE_FORMAT, "files": source_key(root, [root / f for f in files])},
        "images": images,
        "labels": labels,
        "checksum": checksum(images, labels) if crc is None else crc,
    }
    path = cache_path(root, name, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)


CIFAR_TRAIN_FILES = [f"cifar-10-batches-py/data_batch_{k}" for k in range(1, 6)]


def _write_all(data: Path) -> None:
    _cifar(data / "cifar-label-10", train_labels=[3, 1, 4, 0, 5, 10])
    _cifar(data / "cifar-label-negative", test_labels=[2, -1, 0, 8])
    _cifar(data / "cifar-fewer-labels", train_labels=TRAIN_LABELS[:5])
    _cifar(data / "cifar-float-images", dtype=np.float32)
    good = torch.from_numpy(images("cifar10", N_TRAIN, 0))
    labels = torch.tensor(TRAIN_LABELS)
    # Caches that would hide the source's label 10 if trusted; each breaks a check of its own.
    root = data / "cifar-cache-poisoned-labels"
    _cifar(root, train_labels=[3, 1, 4, 0, 5, 10])
    poison_cache(
        root, "cifar10", "train", CIFAR_TRAIN_FILES, good, torch.tensor([3, 1, 4, 0, 5, 12])
    )
    root = data / "cifar-cache-poisoned-shapes"
    _cifar(root, train_labels=[3, 1, 4, 0, 5, 10])
    poison_cache(root, "cifar10", "train", CIFAR_TRAIN_FILES, good[:, :, :16, :16], labels)

    _svhn(data / "svhn-label-11", train_labels=[3, 1, 11, 0, 5, 9])
    _svhn(data / "svhn-label-negative", test_labels=[2, 6, 0, -1])
    _svhn(data / "svhn-fewer-labels", train_labels=TRAIN_LABELS[:4])
    _svhn(data / "svhn-more-labels", train_labels=[*TRAIN_LABELS, 7])
    _svhn(data / "svhn-float-images", train=images("svhn", N_TRAIN, 0).astype(np.float64))
    _svhn(data / "svhn-28x28", train=images("svhn", N_TRAIN, 0)[:, :, :28, :28].copy())
    root = data / "svhn-cache-poisoned-dtype"
    _svhn(root, train=images("svhn", N_TRAIN, 0).astype(np.float64))
    poison_cache(root, "svhn", "train", ["train_32x32.mat"], good.float(), labels)

    _stl(data / "stl-label-10", train_labels=[10, 1, 4, 0, 5, 9])
    _stl(data / "stl-label-byte-0", test_labels=[2, 6, -1, 8])  # byte 0: label 255 after -1
    _stl(data / "stl-fewer-labels", train_labels=TRAIN_LABELS[:5])
    _stl(data / "stl-more-labels", train_labels=[*TRAIN_LABELS, 7, 7])

    write_imagenet(data / "imagenet-one-class", classes=IMAGENET_CLASSES[:1])
    write_imagenet(
        data / "imagenet-val-classes",
        val_classes=[*IMAGENET_CLASSES[:2], "n99999999"],
    )
    # (split, class): what its one image holds instead of a JPEG (None: the JPEG's first 300
    # bytes). One image per class and split: the run meets the file within two steps.
    bad_files = {
        "imagenet-text": ("train", 1, b"this is a text file, not a JPEG\n"),
        "imagenet-truncated": ("train", 0, None),
        "imagenet-corrupt": ("train", 2, b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4),
        "imagenet-empty-val": ("val", 0, b""),
    }
    for folder, (split, c, content) in bad_files.items():
        cls = IMAGENET_CLASSES[c]
        root = write_imagenet(data / folder, per_class=(1, 1))
        path = root / split / cls / f"{cls}_0.JPEG"
        path.write_bytes(path.read_bytes()[:300] if content is None else content)


_TEMPLATE: list[Path] = []  # written once per process, then linked into each workspace


def write_fixtures(root: Path) -> None:
    """Every case's dataset under ``root/data/<case folder>``. Written once per process and
    hard-linked into each workspace (the loaders replace files, never change them in place)."""
    if not _TEMPLATE:
        folder = tempfile.mkdtemp(prefix="locbench-bad-data-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _write_all(Path(folder) / "data")
        _TEMPLATE.append(Path(folder) / "data")
    shutil.copytree(_TEMPLATE[0], root / "data", copy_function=_link)


def _link(src: str, dst: str) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:  # a workspace on another file system
        shutil.copy2(src, dst)
