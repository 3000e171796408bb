"""CIFAR-10, SVHN and STL-10 from tiny fixtures written in each dataset's real on-disk format.

Nothing here downloads: every request has ``download=False``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from locbench.data.base import DataRequest
from locbench.data.catalog import DATASETS, load_dataset
from locbench.errors import UserError
from tests.data_files import (  # noqa: F401 - test_pipeline and test_precision import them here
    N_TEST,
    N_TRAIN,
    SHAPES,
    TEST_LABELS,
    TRAIN_LABELS,
    WRITERS,
    images,
    write_cifar,
    write_stl,
    write_svhn,
)

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
STATS = {
    "cifar10": (CIFAR_MEAN, CIFAR_STD),
    "svhn": ((0.5,) * 3, (0.5,) * 3),
    "stl10": ((0.5,) * 3, (0.5,) * 3),
}
FIRST_FILE = {
    "cifar10": "cifar-10-batches-py/data_batch_1",
    "svhn": "train_32x32.mat",
    "stl10": "stl10_binary/train_X.bin",
}


Fixture = tuple[str, Path, np.ndarray, np.ndarray]  # name, root, train, test images


@pytest.fixture(params=sorted(WRITERS))
def fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Fixture:
    name = request.param
    train, test = images(name, N_TRAIN, 0), images(name, N_TEST, 1)
    WRITERS[name](tmp_path, train, test)
    return name, tmp_path, train, test


def make_request(name: str, root: Path | None, **kw: object) -> DataRequest:
    # These tests look into the torchvision datasets; tests/test_pipeline.py covers "tensor".
    args = {"image_shape": SHAPES[name], "batch_size": 4, "data_root": root}
    args |= {"loader": "torchvision", **kw}
    return DataRequest(**args)  # type: ignore[arg-type]


def normalised(name: str, x: np.ndarray) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in STATS[name])
    return ((torch.from_numpy(x).float() / 255 - mean) / std).float()


def test_registered() -> None:
    assert {"cifar10", "svhn", "stl10"} <= set(DATASETS.names())


def test_loads_fixture(fixture: Fixture) -> None:
    name, root, _, test = fixture
    bundle = load_dataset(name, make_request(name, root))
    assert bundle.info.name == name
    assert bundle.info.num_classes == 10
    assert bundle.info.image_shape == SHAPES[name]
    assert bundle.info.mean == pytest.approx(STATS[name][0])
    assert bundle.info.std == pytest.approx(STATS[name][1])
    assert len(bundle.train.dataset) == N_TRAIN
    assert len(bundle.test.dataset) == N_TEST
    assert (len(bundle.train), len(bundle.test)) == (2, 1)

    (x, y), *rest = list(bundle.test)
    assert rest == []
    assert x.shape == (N_TEST, *SHAPES[name]) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == TEST_LABELS
    # One written pixel by hand, then all of them.
    c, h, w = 2, 5, 7
    mean, std = STATS[name]
    assert x[1, c, h, w].item() == pytest.approx((test[1, c, h, w] / 255 - mean[c]) / std[c])
    torch.testing.assert_close(x, normalised(name, test))


def test_train_labels_and_pixels_without_augmentation(
    fixture: Fixture,
) -> None:
    name, root, train, _ = fixture
    dataset = load_dataset(name, make_request(name, root, augment=False)).train.dataset
    xs = torch.stack([dataset[i][0] for i in range(N_TRAIN)])
    assert [dataset[i][1] for i in range(N_TRAIN)] == TRAIN_LABELS
    torch.testing.assert_close(xs, normalised(name, train))


def test_same_seed_same_batches(fixture: Fixture) -> None:
    name, root, train, _ = fixture

    def first_batches(seed: int, augment: bool, torch_seed: int) -> list[torch.Tensor]:
        loader = load_dataset(name, make_request(name, root, seed=seed, augment=augment)).train
        # With 0 workers the random crops draw from the global generator, the order must not.
        torch.manual_seed(torch_seed)
        return [t for _ in range(2) for t in next(iter(loader))]  # (x, y) of two passes

    same = [first_batches(3, False, 0), first_batches(3, False, 1)]
    same += [first_batches(3, True, 0), first_batches(3, True, 0)]
    for a, b in (same[:2], same[2:]):
        for ta, tb in zip(a, b):
            torch.testing.assert_close(ta, tb)
    other = first_batches(4, False, 0)
    assert any(not torch.equal(ta, tb) for ta, tb in zip(same[0], other))
    # Shuffled: not the file's order, images travel with their labels, each pass reshuffles.
    loader = load_dataset(name, make_request(name, root, seed=3, augment=False)).train
    passes = [[(x, y) for x, y in loader] for _ in range(2)]
    labels = [torch.cat([y for _, y in p]).tolist() for p in passes]
    assert sorted(labels[0]) == sorted(TRAIN_LABELS)
    assert labels[0] != TRAIN_LABELS and labels[0] != labels[1]
    x = torch.cat([x for x, _ in passes[0]])
    order = [TRAIN_LABELS.index(v) for v in labels[0]]
    torch.testing.assert_close(x, normalised(name, train[order]))


def test_augmentation_on_train_only(fixture: Fixture) -> None:
    name, root, train, _ = fixture
    bundle = load_dataset(name, make_request(name, root, augment=True))
    steps = bundle.train.dataset.transform.transforms
    crop = steps[0]
    expected = {
        "cifar10": ((32, 32), 4, "reflect", True),
        "svhn": ((32, 32), 2, "constant", False),
        "stl10": ((96, 96), 4, "constant", True),
    }[name]
    assert (tuple(crop.size), crop.padding, crop.padding_mode) == expected[:3]
    flip = any(type(s).__name__ == "RandomHorizontalFlip" for s in steps)
    assert flip == expected[3]
    assert [type(s).__name__ for s in steps[-2:]] == ["ToTensor", "Normalize"]
    assert [type(s).__name__ for s in bundle.test.dataset.transform.transforms] == [
        "ToTensor",
        "Normalize",
    ]
    torch.manual_seed(0)
    xs = torch.stack([bundle.train.dataset[i][0] for i in range(N_TRAIN)])
    assert xs.shape == (N_TRAIN, *SHAPES[name])
    assert not torch.allclose(xs, normalised(name, train))


def test_other_spatial_size_is_accepted(tmp_path: Path) -> None:
    write_stl(tmp_path, images("stl10", N_TRAIN, 0), images("stl10", N_TEST, 1))
    request = DataRequest(image_shape=(3, 32, 32), batch_size=4, data_root=tmp_path)
    bundle = load_dataset("stl10", request)
    assert bundle.info.image_shape == (3, 96, 96)
    assert next(iter(bundle.test))[0].shape == (4, 3, 96, 96)


def test_channel_mismatch_is_an_error(fixture: Fixture) -> None:
    name, root, _, _ = fixture
    request = DataRequest(image_shape=(1, 28, 28), batch_size=4, data_root=root)
    with pytest.raises(UserError, match=rf"expects 1-channel .* but {name} gives \(3, "):
        load_dataset(name, request)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_missing_data_root(name: str) -> None:
    with pytest.raises(UserError, match=rf"^--data-root is required for {name}: .*--download"):
        load_dataset(name, make_request(name, None))


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_nonexistent_folder(name: str, tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(UserError) as err:
        load_dataset(name, make_request(name, root))
    assert str(root) in str(err.value) and "does not exist" in str(err.value)
    assert "--download" in str(err.value)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_folder_without_files(name: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        load_dataset(name, make_request(name, tmp_path))
    assert str(tmp_path / FIRST_FILE[name]) in str(err.value)
    assert "--download" in str(err.value)


def test_one_missing_file_is_named(tmp_path: Path) -> None:
    write_cifar(tmp_path, images("cifar10", N_TRAIN, 0), images("cifar10", N_TEST, 1))
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", make_request("cifar10", tmp_path))
    message = str(err.value)
    assert f"missing {tmp_path / 'cifar-10-batches-py' / 'batches.meta'};" in message
    assert "data_batch_1" not in message


def test_unreadable_file_is_a_user_error(tmp_path: Path) -> None:
    write_svhn(tmp_path, images("svhn", N_TRAIN, 0), images("svhn", N_TEST, 1))
    (tmp_path / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError, match="could not load svhn from"):
        load_dataset("svhn", make_request("svhn", tmp_path))
