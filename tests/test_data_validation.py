"""The checks of a loaded split (locbench.data.validate) at their edges, and the tensor cache
never trusted over its source: a poisoned cache is rebuilt, a valid one reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from locbench.cli.main import main
from locbench.data import torchvision_sets
from locbench.data.base import DataRequest
from locbench.data.catalog import load_dataset
from locbench.data.tensor_loader import cache_path, checksum
from locbench.data.validate import check_split, describe_files
from locbench.errors import UserError
from tests.bad_inputs_data import CIFAR_TRAIN_FILES, poison_cache
from tests.data_files import N_TEST, N_TRAIN, TEST_LABELS, TRAIN_LABELS, images, write_cifar

SHAPE = (3, 4, 4)


def check(images: np.ndarray, labels: list[int] | np.ndarray, classes: int = 10) -> None:
    check_split(
        images, np.asarray(labels), num_classes=classes, image_shape=SHAPE, source="the files"
    )


def pixels(n: int, dtype=np.uint8) -> np.ndarray:
    return np.zeros((n, *SHAPE), dtype=dtype)


def test_labels_up_to_classes_minus_1_are_accepted_classes_is_not() -> None:
    check(pixels(3), [0, 5, 9])
    check(pixels(2), np.array([0, 1], dtype=np.uint8), classes=2)
    with pytest.raises(UserError) as err:
        check(pixels(3), [0, 10, 9])
    assert str(err.value) == ("the files: label 10 of image 1 is not a class; accepted: 0..9")
    with pytest.raises(UserError, match=r"label -1 of image 0 is not a class \(and 1 more\)"):
        check(pixels(3), [-1, 2, 10])
    with pytest.raises(UserError, match="label 2 of image 2 .*; accepted: 0..1$"):
        check(pixels(3), [0, 1, 2], classes=2)


def test_exactly_one_label_per_image() -> None:
    check(pixels(4), [1, 2, 3, 4])
    for n in (3, 5):
        with pytest.raises(UserError, match=rf"^the files: {n} labels for 4 images; accepted: one"):
            check(pixels(4), list(range(n)))


def test_images_must_be_uint8_of_the_dataset_shape() -> None:
    for dtype in (np.int16, np.float32, np.float64):
        with pytest.raises(UserError, match=f"the images are {np.dtype(dtype)}; accepted: uint8"):
            check(pixels(2, dtype), [0, 1])
    with pytest.raises(UserError, match=r"shape \(2, 3, 4, 5\); accepted: \(N, 3, 4, 4\)$"):
        check(np.zeros((2, 3, 4, 5), dtype=np.uint8), [0, 1])
    with pytest.raises(UserError, match=r"shape \(2, 48\); accepted"):
        check(np.zeros((2, 48), dtype=np.uint8), [0, 1])


def test_labels_must_be_integers() -> None:
    for labels in (np.array([0.0, 1.0]), np.array(["a", "b"]), np.array([True, False])):
        with pytest.raises(UserError, match="accepted: one integer label per image"):
            check(pixels(2), labels)
    # Tensors (a cache's contents) are checked alike.
    check_split(
        torch.zeros((1, *SHAPE), dtype=torch.uint8), torch.tensor([9]),
        num_classes=10, image_shape=SHAPE, source="cache",
    )  # fmt: skip


def test_files_named_in_one_phrase(tmp_path: Path) -> None:
    assert describe_files([tmp_path / "a.mat"]) == f"{tmp_path}/a.mat"
    assert describe_files([tmp_path / "a", tmp_path / "b"]) == f"{tmp_path}/{{a, b}}"
    assert describe_files([tmp_path / "a", tmp_path / "x" / "b"]) == (
        f"{tmp_path}/a, {tmp_path}/x/b"
    )


# ---- the tensor cache


def request(root: Path) -> DataRequest:
    return DataRequest(image_shape=(3, 32, 32), batch_size=2, data_root=root, augment=False)


@pytest.fixture
def cifar(tmp_path: Path) -> Path:
    write_cifar(tmp_path, images("cifar10", N_TRAIN, 0), images("cifar10", N_TEST, 1))
    return tmp_path


@pytest.fixture
def decodes(monkeypatch) -> list[bool]:
    """The splits decoded from the source files (True: train), in order."""
    seen: list[bool] = []
    real = torchvision_sets._decode
    monkeypatch.setattr(torchvision_sets, "_decode", lambda *a: seen.append(a[2]) or real(*a))
    return seen


SOURCE = torch.from_numpy(images("cifar10", N_TRAIN, 0))
SOURCE_LABELS = torch.tensor(TRAIN_LABELS)
SOURCE_CRC = checksum(SOURCE, SOURCE_LABELS)
OVERWRITTEN = SOURCE.clone().index_fill_(0, torch.tensor(0), 7)  # image 0 all 7
POISONS = {
    # Altered after the cache was written (the checksum is the source's): the checksum tells.
    "swapped labels": (SOURCE, SOURCE_LABELS.flip(0), SOURCE_CRC),
    "labels all 0": (SOURCE, torch.zeros_like(SOURCE_LABELS), SOURCE_CRC),
    "fewer images": (SOURCE[:4], SOURCE_LABELS[:4], SOURCE_CRC),
    "one image overwritten": (OVERWRITTEN, SOURCE_LABELS, SOURCE_CRC),
    # Written with checksums of their own: the dataset's checks of the contents tell.
    "label out of range": (SOURCE, torch.tensor([*TRAIN_LABELS[:-1], 10]), None),
    "negative label": (SOURCE, torch.tensor([-1, *TRAIN_LABELS[1:]]), None),
    "fewer labels": (SOURCE, SOURCE_LABELS[:-1], None),
    "smaller images": (SOURCE[:, :, :16, :16].contiguous(), SOURCE_LABELS, None),
    "float images": (SOURCE.float(), SOURCE_LABELS, None),
    "grey images": (SOURCE[:, :1].contiguous(), SOURCE_LABELS, None),
}


@pytest.mark.parametrize("poison", POISONS, ids=POISONS)
def test_a_poisoned_cache_is_rebuilt_from_the_source(
    cifar: Path, decodes: list[bool], poison: str
) -> None:
    poison_cache(cifar, "cifar10", "train", CIFAR_TRAIN_FILES, *POISONS[poison])
    bundle = load_dataset("cifar10", request(cifar))
    assert decodes == [True, False]  # the poisoned train split, and the test split never cached
    assert torch.equal(bundle.train.images, SOURCE)
    assert bundle.train.labels.tolist() == TRAIN_LABELS
    # Rebuilt: the next load reads the cache, and gets the source's split.
    again = load_dataset("cifar10", request(cifar))
    assert decodes == [True, False]
    assert again.train.labels.tolist() == TRAIN_LABELS


def test_a_valid_cache_is_reused_not_rebuilt(cifar: Path, decodes: list[bool]) -> None:
    load_dataset("cifar10", request(cifar))
    paths = [cache_path(cifar, "cifar10", split) for split in ("train", "test")]
    stamps = [p.stat().st_mtime_ns for p in paths]
    for _ in range(2):
        bundle = load_dataset("cifar10", request(cifar))
    assert decodes == [True, False]  # decoded once, by the first load
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    assert bundle.test.labels.tolist() == TEST_LABELS


def test_a_run_over_a_poisoned_cache_trains_on_the_source_labels(
    cifar: Path, tmp_path: Path, capsys
) -> None:
    # Every label the cache holds is 0: a run trusting it would learn one class.
    zeros = torch.zeros(N_TRAIN, dtype=torch.int64)
    poison_cache(cifar, "cifar10", "train", CIFAR_TRAIN_FILES, SOURCE, zeros, SOURCE_CRC)
    out = tmp_path / "runs"
    argv = ["run", "--dataset", "cifar10", "--data-root", str(cifar), "--net", "smallnet"]
    argv += ["--epochs", "1", "--batch-size", "2", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    (path,) = out.glob("*.json")
    assert json.loads(path.read_text())["status"] == "ok"
    blob = torch.load(cache_path(cifar, "cifar10", "train"), weights_only=True)
    assert blob["labels"].tolist() == TRAIN_LABELS
