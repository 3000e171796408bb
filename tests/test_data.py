import pytest
import torch

from locbench.data.base import DataRequest, fit_images
from locbench.data.catalog import load_dataset
from locbench.errors import UserError


def test_digits_split_shapes_and_normalisation():
    data = load_dataset("digits", DataRequest((3, 32, 32), batch_size=100))
    x_train, y_train = data.train.x, data.train.y
    assert len(x_train) == 1437 and len(data.test.x) == 360
    assert data.info.num_classes == 10 and data.info.image_shape == (3, 32, 32)
    assert len(data.train) == 15 and len(data.test) == 4
    assert torch.bincount(data.test.y).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]
    assert torch.allclose(x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x_train.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)
    assert torch.equal(x_train[:, 0], x_train[:, 2])  # grey tiled to RGB
    assert set(y_train.unique().tolist()) == set(range(10))


def test_fit_images_tiles_and_resamples():
    grey = torch.arange(4.0).reshape(1, 1, 2, 2)
    out = fit_images(grey, (3, 2, 2))
    assert out.shape == (1, 3, 2, 2) and torch.equal(out[0, 1], grey[0, 0])
    assert fit_images(grey, (1, 4, 4)).shape == (1, 1, 4, 4)
    with pytest.raises(UserError, match="cannot tile 2-channel"):
        fit_images(torch.zeros(1, 2, 2, 2), (3, 2, 2))


def test_loader_order_follows_the_seed():
    first = lambda seed: next(  # noqa: E731
        iter(load_dataset("synthetic", DataRequest((3, 8, 8), 32, seed=seed)).train)
    )
    a, b, c = first(0), first(0), first(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_synthetic_is_deterministic_and_balanced():
    a = load_dataset("synthetic", DataRequest((3, 8, 8), 64))
    b = load_dataset("synthetic", DataRequest((3, 8, 8), 64, seed=5))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert torch.bincount(a.train.y).tolist() == [52, 52] + [51] * 8
    assert len(a.train) == 8


def test_every_pass_reshuffles_but_covers_all_samples():
    data = load_dataset("synthetic", DataRequest((3, 8, 8), 100))
    pass1 = torch.cat([y for _, y in data.train])
    pass2 = torch.cat([y for _, y in data.train])
    assert len(pass1) == 512 and torch.equal(pass1.sort().values, pass2.sort().values)
    assert not torch.equal(pass1, pass2)


@pytest.mark.parametrize("bs", [0, -3])
def test_batch_size_below_one(bs):
    with pytest.raises(UserError, match="--batch-size must be an integer >= 1"):
        load_dataset("digits", DataRequest((3, 8, 8), bs))


def test_unknown_dataset_lists_known():
    with pytest.raises(
        UserError, match="unknown dataset 'mnist'; known: cifar10, digits, imagenet, stl10"
    ):
        load_dataset("mnist", DataRequest((3, 8, 8), 8))


def test_a_new_dataset_is_one_registration_carrying_classes_shape_and_preset(monkeypatch, tmp_path):
    """The worked example of docs/extending.md: a dataset is one ``register_dataset`` call
    (in a module imported by locbench.data.catalog); a run of it gets its classes and preset."""
    from locbench.data.base import DATASETS, in_memory_bundle, register_dataset
    from locbench.harness.run import execute
    from locbench.nets.backbone import get_backbone
    from locbench.settings.run_config import RunConfig, TrainPreset

    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))  # undone after the test

    @register_dataset(
        "three-blobs", num_classes=3, image_shape=None, preset=TrainPreset(2, 16, 0.02, 0)
    )
    def three_blobs(request: DataRequest):
        g = torch.Generator().manual_seed(0)
        y = torch.arange(48) % 3
        x = y[:, None, None, None] + torch.rand(48, *request.image_shape, generator=g)
        return in_memory_bundle("three-blobs", x[:36], y[:36], x[36:], y[36:], 3, request)

    record = execute(RunConfig(dataset="three-blobs", method="dgl", K=2, device="cpu"))
    assert record.status == "ok", record.message
    config = record.config
    assert (config["epochs"], config["batch_size"], config["lr"]) == (2, 16, 0.02)
    assert len(record.curve) == 2  # the preset's epochs
    # The output head has the 3 classes the dataset gives: 7 x (64 features + 1) fewer
    # parameters than smallnet's 10-class head.
    ten_classes = get_backbone("smallnet", 10).num_params()
    assert record.params_backbone == ten_classes - 7 * (64 + 1)


def test_an_unknown_dataset_is_one_line_before_any_work():
    from locbench.harness.build import resolve
    from locbench.settings.run_config import RunConfig

    with pytest.raises(UserError, match=r"^unknown dataset 'mnist'; known: cifar10, digits, "):
        resolve(RunConfig(dataset="mnist"))
