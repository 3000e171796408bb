"""ImageNet from a tiny ImageFolder of random JPEGs: sizes, transforms, errors, presets, a run.

Nothing here downloads; the fixture has 3 classes x 4 train and 3 x 2 val images of 64x48.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

from locbench.cli.main import main
from locbench.data.base import DataRequest
from locbench.data.catalog import DATASETS, load_dataset
from locbench.errors import UserError
from locbench.settings.run_config import TrainPreset
from locbench.study.presets import PRESETS
from tests.data_files import IMAGENET_CLASSES, IMAGENET_TRAIN, IMAGENET_VAL, write_imagenet

CLASSES = IMAGENET_CLASSES
N_TRAIN, N_VAL = IMAGENET_TRAIN, IMAGENET_VAL
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_imagenet(tmp_path / "imagenet")


def request(root: Path | None, **kw) -> DataRequest:
    return DataRequest(image_shape=(3, 224, 224), batch_size=4, data_root=root, **kw)


def test_sizes_shapes_and_labels(root: Path) -> None:
    bundle = load_dataset("imagenet", request(root))
    assert bundle.train_size == 12
    assert bundle.info.num_classes == 3
    assert bundle.info.image_shape == (3, 224, 224)
    assert (bundle.info.mean, bundle.info.std) == (MEAN, STD)
    assert len(bundle.train) == 3 and len(bundle.test) == 2  # 12/4 and ceil(6/4)
    labels = []
    for x, y in bundle.train:
        assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32
        assert x.device == torch.device("cpu")
        labels += y.tolist()
    assert sorted(labels) == [0] * 4 + [1] * 4 + [2] * 4  # every image once per epoch


def test_val_batch_is_resize_centercrop_normalise(root: Path) -> None:
    bundle = load_dataset("imagenet", request(root))
    x, y = next(iter(bundle.test))  # not shuffled: ImageFolder order, class 0 first
    assert y.tolist() == [0, 0, 1, 1]
    expect = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    files = [root / "val" / c / f"{c}_{i}.JPEG" for c in CLASSES[:2] for i in range(N_VAL)]
    wanted = torch.stack([expect(Image.open(f).convert("RGB")) for f in files])
    assert torch.equal(x, wanted)


def test_tensor_loader_means_the_dataloader(root: Path) -> None:
    # --loader tensor (the default) is accepted and gives the same batches as torchvision.
    a = load_dataset("imagenet", request(root, loader="tensor"))
    b = load_dataset("imagenet", request(root, loader="torchvision"))
    assert torch.equal(next(iter(a.test))[0], next(iter(b.test))[0])


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^--data-root is required for imagenet: .*train/"):
        load_dataset("imagenet", request(None))
    with pytest.raises(UserError, match=r"^--data-root .*nowhere does not exist$"):
        load_dataset("imagenet", request(tmp_path / "nowhere"))


def test_missing_val_folder(root: Path) -> None:
    shutil.rmtree(root / "val")
    with pytest.raises(UserError) as err:
        load_dataset("imagenet", request(root))
    assert str(err.value) == f"imagenet not found under {root}: missing folder {root / 'val'}"


def test_mismatched_classes(root: Path) -> None:
    (root / "val" / CLASSES[2]).rename(root / "val" / "n99999999")
    with pytest.raises(UserError) as err:
        load_dataset("imagenet", request(root))
    text = str(err.value)
    assert "\n" not in text
    assert text == (
        f"imagenet: train/ and val/ under {root} hold different class folders (3 vs 3; "
        f"only in one: {CLASSES[2]}, n99999999)"
    )


def test_download_refused(root: Path) -> None:
    with pytest.raises(UserError, match="^imagenet cannot be downloaded"):
        load_dataset("imagenet", request(root, download=True))


def test_presets(capsys) -> None:
    assert DATASETS.get("imagenet").preset == TrainPreset(200, 1024, 0.4, 0)
    for net, K in (("resnet34", 17), ("resnet101", 34)):
        grid = PRESETS.get(f"imagenet-{net}")
        assert (grid.nets, grid.K, grid.aux_depth, grid.seeds) == ((net,), (K,), (4,), (0,))
        assert grid.run == {"dataset": "imagenet"}
        assert len(grid.methods) == 6
    assert main(["list"]) == 0
    presets = capsys.readouterr().out.split("presets:")[1]
    assert "imagenet-resnet34" in presets and "imagenet-resnet101" in presets


def test_one_epoch_run(root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs"
    argv = ["run", "--net", "resnet34", "--K", "2", "--method", "bp", "--batch-size", "4"]
    argv += ["--epochs", "1", "--measure-steps", "1", "--warmup-steps", "1", "--track-steps", "1"]
    argv += ["--dataset", "imagenet", "--data-root", str(root), "--out", str(out)]
    start = time.perf_counter()
    assert main([*argv, "--no-progress"]) == 0, capsys.readouterr()
    print(f"one-epoch imagenet run: {time.perf_counter() - start:.1f} s")
    assert len(list(out.glob("*.json"))) == 1


def test_two_classes_are_enough_one_is_not(tmp_path: Path) -> None:
    two = write_imagenet(tmp_path / "two", classes=CLASSES[:2])
    assert load_dataset("imagenet", request(two)).info.num_classes == 2
    one = write_imagenet(tmp_path / "one", classes=CLASSES[:1])
    with pytest.raises(UserError) as err:
        load_dataset("imagenet", request(one))
    assert str(err.value) == (
        f"imagenet: {one / 'train'} holds 1 class folders (only {CLASSES[0]}); accepted: at "
        "least 2, one per class"
    )


@pytest.mark.parametrize("workers", [0, 1])
def test_an_undecodable_image_stops_the_run_in_one_line(
    root: Path, tmp_path: Path, capsys, workers: int
) -> None:
    # Found when the DataLoader reads it (in a worker process with --num-workers 1): the run's
    # record is kept with status error, and the file is named in one line.
    bad = root / "train" / CLASSES[1] / f"{CLASSES[1]}_3.JPEG"
    bad.write_bytes(bad.read_bytes()[:300])
    out = tmp_path / "runs"
    argv = ["run", "--dataset", "imagenet", "--data-root", str(root), "--net", "smallnet"]
    argv += ["--epochs", "1", "--batch-size", "4", "--num-workers", str(workers)]
    assert main([*argv, "--device", "cpu", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    message = f"imagenet: cannot decode {bad} (Truncated File Read); accepted: image files PIL"
    assert err.startswith(f"locbench: error: {message}") and err.count("\n") == 1, err
    (path,) = out.glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "error" and record["message"].startswith(message)
