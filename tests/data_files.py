"""Tiny dataset folders in each dataset's real on-disk format: CIFAR-10 pickles, SVHN ``.mat``
files, STL-10 binaries and an ImageNet-style folder of JPEGs. The labels are given as the
loaders should return them (0..9); each writer stores them as its format does, so a test can
also write labels a loader must refuse."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

N_TRAIN, N_TEST = 6, 4
TRAIN_LABELS = [3, 1, 4, 0, 5, 9]  # 0..9 as the loaders should return them
TEST_LABELS = [2, 6, 0, 8]
SHAPES = {"cifar10": (3, 32, 32), "svhn": (3, 32, 32), "stl10": (3, 96, 96)}

IMAGENET_CLASSES = ("n01440764", "n01443537", "n01484850")
IMAGENET_TRAIN, IMAGENET_VAL = 4, 2  # images per class


def images(name: str, n: int, seed: int) -> np.ndarray:
    """(n, C, H, W) uint8, the layout the loaders should hand back."""
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPES[name]), dtype=np.uint8)


def write_cifar(
    root: Path,
    train: np.ndarray,
    test: np.ndarray,
    train_labels: Sequence[int] = TRAIN_LABELS,
    test_labels: Sequence[int] = TEST_LABELS,
) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(path: Path, x: np.ndarray, labels: Sequence[int]) -> None:
        entry = {
            "batch_label": path.name,
            "labels": list(labels),
            "data": x.reshape(len(x), 3072),  # rows of 1024 R, then G, then B, row-major
            "filenames": [f"img_{i}.png" for i in range(len(x))],
        }
        path.write_bytes(pickle.dumps(entry))

    # 2 + 1 + 1 + 1 + 1 images over the five training batches; extra labels go to the last.
    bounds = [0, 2, 3, 4, 5, len(train)]
    label_bounds = [0, 2, 3, 4, 5, len(train_labels)]
    for k in range(5):
        images_k = train[bounds[k] : bounds[k + 1]]
        batch(
            folder / f"data_batch_{k + 1}",
            images_k,
            train_labels[label_bounds[k] : label_bounds[k + 1]],
        )
    batch(folder / "test_batch", test, test_labels)
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    meta = {"num_cases_per_batch": 10000, "label_names": names, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def write_svhn(
    root: Path,
    train: np.ndarray,
    test: np.ndarray,
    train_labels: Sequence[int] = TRAIN_LABELS,
    test_labels: Sequence[int] = TEST_LABELS,
) -> None:
    def mat(path: Path, x: np.ndarray, labels: Sequence[int]) -> None:
        stored = [10 if v == 0 else v for v in labels]  # digit 0 is stored as 10
        dtype = np.uint8 if min(stored, default=0) >= 0 else np.int16
        y = np.array(stored, dtype=dtype).reshape(-1, 1)
        scipy.io.savemat(path, {"X": x.transpose(2, 3, 1, 0), "y": y})  # (H, W, C, N)

    root.mkdir(parents=True, exist_ok=True)
    mat(root / "train_32x32.mat", train, train_labels)
    mat(root / "test_32x32.mat", test, test_labels)


def write_stl(
    root: Path,
    train: np.ndarray,
    test: np.ndarray,
    train_labels: Sequence[int] = TRAIN_LABELS,
    test_labels: Sequence[int] = TEST_LABELS,
) -> None:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split, x, labels in (("train", train, train_labels), ("test", test, test_labels)):
        # Column-major images: each channel is stored as (W, H); labels as bytes 1..10.
        (folder / f"{split}_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())
        stored = (np.array(labels, dtype=np.int64) + 1).astype(np.uint8)
        (folder / f"{split}_y.bin").write_bytes(stored.tobytes())
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")


WRITERS = {"cifar10": write_cifar, "svhn": write_svhn, "stl10": write_stl}


def write_imagenet(
    root: Path,
    classes: Sequence[str] = IMAGENET_CLASSES,
    val_classes: Sequence[str] | None = None,
    per_class: tuple[int, int] = (IMAGENET_TRAIN, IMAGENET_VAL),
) -> Path:
    """``root/{train,val}/<class>/*.JPEG``, random RGB 64 wide and 48 high."""
    rng = np.random.default_rng(0)
    splits = (("train", classes, per_class[0]), ("val", val_classes or classes, per_class[1]))
    for split, names, n in splits:
        for c in names:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{c}_{i}.JPEG", format="JPEG")
    return root
