"""The tensor pipeline (locbench.data.tensor_loader) against torchvision's transforms, on the
fixture folders
of test_torchvision_data (each dataset's real on-disk format). Nothing downloads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from test_torchvision_data import (
    N_TEST,
    N_TRAIN,
    SHAPES,
    TEST_LABELS,
    TRAIN_LABELS,
    WRITERS,
    Fixture,
    fixture,  # noqa: F401 - the parametrised fixture folder
    images,
    normalised,
)
from torch.utils.data import DataLoader

from locbench.cli.main import main
from locbench.data import torchvision_sets as torchvision_data
from locbench.data.base import DataRequest
from locbench.data.catalog import load_dataset
from locbench.data.tensor_loader import (
    Augment,
    ImageLoader,
    augment_of,
    cache_path,
    crop_flip,
    normalise,
)
from locbench.errors import UserError
from locbench.harness.run import prepare
from locbench.settings.run_config import RunConfig

CPU = torch.device("cpu")
# The torchvision transforms as tests/test_torchvision_data.py pins them: crop size, padding,
# padding mode and flip probability.
AUGMENT = {
    "cifar10": Augment((32, 32), 4, "reflect", 0, 0.5),
    "svhn": Augment((32, 32), 2, "constant", 0, 0.0),
    "stl10": Augment((96, 96), 4, "constant", 0, 0.5),
}
STATS = {name: (s.mean, s.std) for name, s in torchvision_data._SPECS.items()}


def request(name: str, root: Path, **kw: object) -> DataRequest:
    args = {"image_shape": SHAPES[name], "batch_size": 4, "data_root": root, "device": CPU}
    return DataRequest(**(args | kw))  # type: ignore[arg-type]


def reference(name: str, image: np.ndarray, top: int, left: int, flip: bool) -> torch.Tensor:
    """torchvision's pieces with the given draws: pad, crop, flip (PIL), ToTensor, Normalize."""
    aug = AUGMENT[name]
    img = Image.fromarray(image.transpose(1, 2, 0))  # (C, H, W) -> PIL's (H, W, C)
    img = TF.pad(img, aug.pad, fill=0, padding_mode=aug.padding_mode)
    img = TF.crop(img, top, left, *aug.size)
    if flip:
        img = TF.hflip(img)
    return TF.normalize(TF.to_tensor(img), *STATS[name])


def test_augment_is_read_off_the_torchvision_transforms() -> None:
    for name, aug in AUGMENT.items():
        assert augment_of(torchvision_data._SPECS[name].train_augment()) == aug


def test_every_offset_and_flip_equals_torchvision(fixture: Fixture) -> None:  # noqa: F811
    name, root, train, _ = fixture
    aug = AUGMENT[name]
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in STATS[name])
    span = range(2 * aug.pad + 1)
    flips = (False, True) if aug.flip else (False,)
    # Every (top, left, flip), each on one of the images in turn, as one batch.
    draws = [(t, le, f) for t in span for le in span for f in flips]
    index = torch.arange(len(draws)) % len(train)
    top, left, flip = (torch.tensor(v) for v in zip(*draws))
    out = normalise(crop_flip(torch.from_numpy(train), index, top, left, flip, aug), mean, std)
    assert out.shape == (len(draws), *SHAPES[name]) and out.dtype == torch.float32
    for k, (i, (t, le, f)) in enumerate(zip(index.tolist(), draws)):
        # Same operations in the same order: equal to the bit, not just close.
        assert torch.equal(out[k], reference(name, train[i], t, le, f)), (name, i, t, le, f)


@pytest.mark.parametrize("width", [32, 30, 29])  # 8-, 2- and 1-byte words
@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "symmetric"])
def test_crop_flip_equals_numpy_padding(width: int, mode: str) -> None:
    x = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (4, 2, 6, width), np.uint8))
    aug = Augment((5, width - 1), 3, mode, 7, 0.5)
    draws = [(t, le, f) for t in range(8) for le in range(8) for f in (False, True)]
    index = torch.arange(len(draws)) % len(x)
    top, left, flip = (torch.tensor(v) for v in zip(*draws))
    out = crop_flip(x, index, top, left, flip, aug)
    pad = ((0, 0), (3, 3), (3, 3))
    for k, (i, (t, le, f)) in enumerate(zip(index.tolist(), draws)):
        kw = {"constant_values": 7} if mode == "constant" else {}
        padded = np.pad(x[i].numpy(), pad, mode=mode, **kw)[:, t : t + 5, le : le + width - 1]
        want = torch.from_numpy(padded.copy()).flip(-1) if f else torch.from_numpy(padded)
        assert torch.equal(out[k], want), (mode, width, t, le, f)


def test_loader_batches_are_the_documented_draws(fixture: Fixture) -> None:  # noqa: F811
    name, root, train, _ = fixture
    aug = AUGMENT[name]
    bundle = load_dataset(name, request(name, root, seed=7))
    # The draw order the loader documents: permutation, top, left, flip, all from one generator.
    g = torch.Generator().manual_seed(7)
    expected = []
    for _ in range(2):  # each pass draws anew
        order = torch.randperm(N_TRAIN, generator=g)
        top = torch.randint(0, 2 * aug.pad + 1, (N_TRAIN,), generator=g)
        left = torch.randint(0, 2 * aug.pad + 1, (N_TRAIN,), generator=g)
        flip = torch.rand(N_TRAIN, generator=g) < aug.flip
        draws = zip(order.tolist(), top.tolist(), left.tolist(), flip.tolist())
        expected.append(
            [(reference(name, train[i], t, le, f), TRAIN_LABELS[i]) for i, t, le, f in draws]
        )
    for want in expected:
        batches = list(bundle.train)
        assert [len(y) for _, y in batches] == [4, 2]
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        assert y.tolist() == [label for _, label in want]
        assert torch.equal(x, torch.stack([img for img, _ in want]))


def test_same_seed_same_batches_other_seed_others(fixture: Fixture) -> None:  # noqa: F811
    name, root, _, _ = fixture

    def passes(seed: int, global_seed: int) -> list[torch.Tensor]:
        loader = load_dataset(name, request(name, root, seed=seed)).train
        torch.manual_seed(global_seed)  # the loader must not draw from the global generator
        return [t for _ in range(2) for batch in loader for t in batch]

    a, b, other = passes(3, 0), passes(3, 1), passes(4, 0)
    assert len(a) == len(b) == 8  # 2 passes x 2 batches x (x, y)
    assert all(torch.equal(ta, tb) for ta, tb in zip(a, b))
    assert not all(torch.equal(ta, to) for ta, to in zip(a, other))


def test_test_split_and_unaugmented_train_equal_torchvision(fixture: Fixture) -> None:  # noqa: F811
    name, root, train, test = fixture
    tensor = load_dataset(name, request(name, root, augment=False, seed=5))
    tv = load_dataset(name, request(name, root, augment=False, loader="torchvision"))
    assert isinstance(tensor.train, ImageLoader) and isinstance(tv.train, DataLoader)
    assert (tensor.train_size, len(tensor.train), len(tensor.test)) == (N_TRAIN, 2, 1)
    assert tensor.info == tv.info
    (x, y), *rest = list(tensor.test)
    assert rest == [] and y.tolist() == TEST_LABELS and y.dtype == torch.int64
    assert x.dtype == torch.float32 and x.shape == (N_TEST, *SHAPES[name])
    (x_tv, _), *_ = list(tv.test)
    assert torch.equal(x, x_tv)  # decoding and normalisation to the bit
    torch.testing.assert_close(x, normalised(name, test))
    # Unaugmented training batches are shuffled whole images with their labels.
    xs, ys = zip(*tensor.train)
    order = [TRAIN_LABELS.index(v) for v in torch.cat(ys).tolist()]
    assert sorted(order) == list(range(N_TRAIN)) and order != list(range(N_TRAIN))
    expected = torch.stack([tv.train.dataset[i][0] for i in order])
    assert torch.equal(torch.cat(xs), expected)


def test_batches_land_on_the_requested_device(fixture: Fixture) -> None:  # noqa: F811
    name, root, _, _ = fixture
    bundle = load_dataset(name, request(name, root, device=CPU))
    for loader in (bundle.train, bundle.test):
        for x, y in loader:
            assert (x.device, y.device) == (CPU, CPU)


@pytest.mark.cuda
def test_batches_on_cuda_equal_the_cpu_ones(fixture: Fixture) -> None:  # noqa: F811
    name, root, _, _ = fixture
    cuda = torch.device("cuda", torch.cuda.current_device())
    on_gpu = load_dataset(name, request(name, root, device=cuda, seed=2))
    on_cpu = load_dataset(name, request(name, root, seed=2))
    for (xg, yg), (xc, yc) in zip(on_gpu.train, on_cpu.train):
        assert xg.device == yg.device == cuda
        assert torch.equal(yg.cpu(), yc)
        # The same draws; CUDA may round x / 255 differently in the last bit.
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)


def test_cache_is_written_once_and_reused(tmp_path: Path, monkeypatch) -> None:
    WRITERS["cifar10"](tmp_path, images("cifar10", N_TRAIN, 0), images("cifar10", N_TEST, 1))
    first = load_dataset("cifar10", request("cifar10", tmp_path, augment=False))
    paths = [tmp_path / ".locbench-cache" / f"cifar10-{s}.pt" for s in ("train", "test")]
    assert [cache_path(tmp_path, "cifar10", s) for s in ("train", "test")] == paths
    assert sorted(os.listdir(paths[0].parent)) == ["cifar10-test.pt", "cifar10-train.pt"]
    stamps = [p.stat().st_mtime_ns for p in paths]

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(torchvision_data, "_decode", no_decoding)
    again = load_dataset("cifar10", request("cifar10", tmp_path, augment=False))
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    assert torch.equal(again.train.images, first.train.images)
    assert torch.equal(again.test.labels, first.test.labels)


def test_cache_is_rebuilt_when_a_source_file_changes(tmp_path: Path, monkeypatch) -> None:
    write = WRITERS["svhn"]
    write(tmp_path, images("svhn", N_TRAIN, 0), images("svhn", N_TEST, 1))
    load_dataset("svhn", request("svhn", tmp_path))
    decoded = []
    real = torchvision_data._decode
    monkeypatch.setattr(torchvision_data, "_decode", lambda *a: decoded.append(a[2]) or real(*a))
    # New training images in a file of the same size: only the mtime tells.
    new = images("svhn", N_TRAIN, 9)
    (tmp_path / "train_32x32.mat").unlink()
    (tmp_path / "test_32x32.mat").rename(tmp_path / "keep.mat")
    write(tmp_path, new, images("svhn", N_TEST, 1))
    (tmp_path / "keep.mat").replace(tmp_path / "test_32x32.mat")
    stat = (tmp_path / "train_32x32.mat").stat()
    os.utime(tmp_path / "train_32x32.mat", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    bundle = load_dataset("svhn", request("svhn", tmp_path))
    assert decoded == [True]  # the training split only
    assert torch.equal(bundle.train.images, torch.from_numpy(new))
    # A damaged cache file is rebuilt too, not an error.
    cache_path(tmp_path, "svhn", "test").write_bytes(b"not a tensor file")
    bundle = load_dataset("svhn", request("svhn", tmp_path))
    assert decoded == [True, False]
    assert torch.equal(bundle.test.images, torch.from_numpy(images("svhn", N_TEST, 1)))
    assert sorted(os.listdir(tmp_path / ".locbench-cache")) == ["svhn-test.pt", "svhn-train.pt"]


def test_prepare_passes_loader_and_device(tmp_path: Path) -> None:
    WRITERS["cifar10"](tmp_path, images("cifar10", N_TRAIN, 0), images("cifar10", N_TEST, 1))
    common = {"dataset": "cifar10", "data_root": str(tmp_path), "batch_size": 4, "device": "cpu"}
    data = prepare(RunConfig(**common)).data
    assert isinstance(data.train, ImageLoader) and data.train.device == CPU
    assert data.train_size == N_TRAIN
    assert isinstance(prepare(RunConfig(**common, loader="torchvision")).data.train, DataLoader)


def test_bad_loader_and_batch_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^--loader must be one of tensor, torchvision, got"):
        RunConfig(loader="dali")
    with pytest.raises(UserError, match=r"^--loader must be one of tensor, torchvision, got"):
        load_dataset("digits", DataRequest((3, 8, 8), 8, loader="dali"))
    WRITERS["stl10"](tmp_path, images("stl10", N_TRAIN, 0), images("stl10", N_TEST, 1))
    with pytest.raises(UserError, match=r"^batch size 7 is larger than the 6 training images"):
        load_dataset("stl10", request("stl10", tmp_path, batch_size=7))


def test_data_bench_prints_both_loaders(tmp_path: Path, capsys) -> None:
    WRITERS["cifar10"](tmp_path, images("cifar10", N_TRAIN, 0), images("cifar10", N_TEST, 1))
    argv = ["data-bench", "--dataset", "cifar10", "--data-root", str(tmp_path), "--batch", "4"]
    assert main([*argv, "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "cifar10: one training epoch of 6 images, batch 4, on cpu (torch threads: "
        f"{torch.get_num_threads()}), 0 DataLoader workers for torchvision"
    )
    assert [line.split()[0] for line in lines[1:3]] == ["tensor", "torchvision"]
    assert all("images/s" in line for line in lines[1:3])
    assert lines[3].startswith("  tensor / torchvision: ") and lines[3].endswith("x")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "digits"], "unknown dataset 'digits' for data-bench; known: cifar10,"),
        (["--dataset", "svhn", "--data-root", "{root}/nowhere"], "/nowhere does not exist"),
        (["--dataset", "svhn", "--batch", "0"], "--batch must be an integer >= 1, got 0"),
        (["--dataset", "svhn", "--workers", "-1"], "--workers must be an integer >= 0, got -1"),
        (["--dataset", "svhn", "--loaders", "dali"], "--loaders must name some of tensor,"),
        (["--dataset", "svhn"], "svhn not found under"),
    ],
)
def test_data_bench_bad_input(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    args = [a.replace("{root}", str(tmp_path)) for a in args]
    if "--data-root" not in args:
        args += ["--data-root", str(tmp_path)]
    assert main(["data-bench", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
