"""The seed methods against docs/reference.md: AugLocal's selection and depth formulas, InfoPro's
lambdas, PredSim's pooling, pinned auxiliary sizes, gradient isolation, bp-ckpt == bp."""

import copy

import pytest
import torch
from torch import nn

from locbench.data.base import DataInfo
from locbench.errors import UserError
from locbench.harness.trainer import LocalTrainer
from locbench.methods import METHODS, Method, make_params
from locbench.methods.predsim import pool_to_fit, similarity_matrix
from locbench.nets.backbone import Backbone, get_backbone
from locbench.nets.split import Split
from locbench.settings.run_config import RunConfig

CIFAR = DataInfo("cifar10", 10, (3, 32, 32), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
SMALL = DataInfo("synthetic", 10, (3, 16, 16), (0.5,) * 3, (0.25,) * 3)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(name, net, K, data=CIFAR, **params) -> Method:
    backbone = get_backbone(net)
    cls = METHODS.get(name)
    p = make_params(cls, params)
    split = cls.plan_split(Split.uniform(backbone.n_hidden, K), p)
    return cls(backbone, split, data, p)


# --- AugLocal: tables written by hand from docs/reference.md's formulas (round half to even)

# ResNet-32, K=16, d=2: L = K - d = 14 modules; depth round(2 - i/24) = 2 for i = 0..12;
# layer j copies round((j + 15) / 2) and 15.
RESNET32_SELECTION = [
    [8, 15], [8, 15], [8, 15], [9, 15], [10, 15], [10, 15], [10, 15],
    [11, 15], [12, 15], [12, 15], [12, 15], [13, 15], [14, 15],
]  # fmt: skip

# ResNet-110, K=55, d=3: L = 52; depth round(3 - 0.02 i): 3 for i <= 24, 2.5 -> 2 at i = 25,
# 2 after. Layer j copies round(j + (54 - j) / d * i), i = 1..d.
RESNET110_DEPTHS = [3] * 25 + [2] * 26
RESNET110_SELECTION = [
    [18, 36, 54], [19, 36, 54], [19, 37, 54], [20, 37, 54], [21, 37, 54], [21, 38, 54],
    [22, 38, 54], [23, 38, 54], [23, 39, 54], [24, 39, 54], [25, 39, 54], [25, 40, 54],
    [26, 40, 54], [27, 40, 54], [27, 41, 54], [28, 41, 54], [29, 41, 54], [29, 42, 54],
    [30, 42, 54], [31, 42, 54], [31, 43, 54], [32, 43, 54], [33, 43, 54], [33, 44, 54],
    [34, 44, 54],
    [40, 54], [40, 54], [40, 54], [41, 54], [42, 54], [42, 54], [42, 54], [43, 54],
    [44, 54], [44, 54], [44, 54], [45, 54], [46, 54], [46, 54], [46, 54], [47, 54],
    [48, 54], [48, 54], [48, 54], [49, 54], [50, 54], [50, 54], [50, 54], [51, 54],
    [52, 54], [52, 54],
]  # fmt: skip


def test_auglocal_resnet32_K16_d2_matches_the_table():
    m = build("auglocal", "resnet32", 16, depth=2)
    assert m.split.K == 14  # the authors' K - d modules
    assert m.split.starts == tuple(range(14))
    assert list(m.split.unit_range(13)) == [13, 14, 15]  # last d+1 layers train with the head
    assert m.depths == [2] * 13
    assert m.selections == RESNET32_SELECTION


def test_auglocal_resnet110_K55_d3_matches_the_table():
    m = build("auglocal", "resnet110", 55, depth=3)
    assert m.split.K == 52
    assert m.depths == RESNET110_DEPTHS
    assert m.selections == RESNET110_SELECTION


def test_auglocal_copies_have_the_structure_of_the_selected_layers():
    m = build("auglocal", "resnet32", 16, depth=2)
    aux0 = m.aux[0]  # layer 0 (16 ch, 32x32) copies layers 8 (32 ch) and 15 (64 ch)
    assert [type(u).__name__ for u in aux0[:2]] == ["BasicBlock", "BasicBlock"]
    assert (aux0[0].conv1.in_channels, aux0[0].conv1.out_channels) == (16, 32)
    assert (aux0[0].conv1.stride, aux0[1].conv1.stride) == ((2, 2), (2, 2))
    assert (aux0[1].conv1.in_channels, aux0[1].conv1.out_channels) == (32, 64)
    assert [type(u).__name__ for u in aux0[2:]] == ["AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert m.aux[7][0].conv1.stride == (2, 2) and m.aux[7][1].conv1.stride == (1, 1)
    # fresh weights, not shared with the backbone
    backbone_ids = {id(p) for p in get_backbone("resnet32").units.parameters()}
    assert not backbone_ids & {id(p) for p in m.parameters()}
    assert m.aux[0](torch.randn(2, 16, 32, 32)).shape == (2, 10)


def test_auglocal_depth_one_adds_batchnorm_and_no_pyramid_keeps_depth():
    m = build("auglocal", "resnet32", 16, depth=1, pyramid=False)
    assert m.split.K == 15 and m.depths == [1] * 14
    assert isinstance(m.aux[0][-2], torch.nn.BatchNorm1d)
    # d = 1: round(j + (15 - j)) = 15, every layer copies only the final hidden layer
    assert m.selections == [[15]] * 14


def test_auglocal_needs_K_above_depth():
    with pytest.raises(UserError, match="K must be greater than 3"):
        build("auglocal", "resnet32", 3, depth=3)


# --- pinned auxiliary sizes, ResNet-32 K=16, the authors' settings


def basic(cin, cout, stride):
    projection = cin * cout + 2 * cout if stride != 1 or cin != cout else 0
    return cin * cout * 9 + cout * cout * 9 + 4 * cout + projection


def test_aux_parameters_resnet32_K16_every_method():
    head = 64 * 10 + 10
    a16 = basic(16, 32, 2) + basic(32, 64, 2) + head  # 16-ch layers copy a 32 and a 64 block
    auglocal = [a16] * 6 + [basic(32, 32, 1) + basic(32, 64, 2) + head]
    auglocal += [basic(32, 64, 2) + basic(64, 64, 1) + head] * 4
    auglocal += [2 * basic(64, 64, 1) + head] * 2
    m = build("auglocal", "resnet32", 16, depth=2)
    assert [count(a) for a in m.aux] == auglocal
    assert count(m) == 1_341_058

    def infopro_aux(c, out):
        return c * out * 9 + 2 * out + out * 128 + 128 + 128 * 10 + 10

    def decoder(c):
        return c * 12 * 9 + 12 + 24 + 12 * 3 * 9 + 3

    info = [infopro_aux(16, 32) + decoder(16)] * 6 + [infopro_aux(32, 64) + decoder(32)] * 5
    info += [infopro_aux(64, 64) + decoder(64)] * 4
    m = build("infopro", "resnet32", 16)
    assert sum(info) == count(m) == 449_115

    # PredSim: pooled to 512 features -> Linear(512, 10); a C->C 3x3 similarity conv
    pred = [512 * 10 + 10 + c * c * 9 for c in [16] * 6 + [32] * 5 + [64] * 4]
    m = build("predsim", "resnet32", 16)
    assert sum(pred) == count(m) == 284_310

    assert count(build("dgl", "resnet32", 16)) == 838_294
    assert count(build("bp", "resnet32", 16)) == count(build("bp-ckpt", "resnet32", 16)) == 0


# --- InfoPro


def test_infopro_lambdas_interpolate_from_the_published_endpoints():
    m = build("infopro", "resnet32", 16)
    assert len(m.lambdas) == 15
    assert m.lambdas[0] == (5.0, 0.05) and m.lambdas[14] == pytest.approx((0.2, 0.5))
    assert m.lambdas[7] == pytest.approx((5 - 4.8 / 2, 0.05 + 0.45 / 2))
    m = build("infopro", "resnet110", 55)
    assert m.lambdas[0] == (5.0, 0.0) and m.lambdas[-1] == pytest.approx((0.5, 1.0))
    m = build("infopro", "resnet32", 4, lambda1_last=1.0)
    assert m.lambdas[-1] == pytest.approx((1.0, 0.5))


def test_infopro_reconstructs_the_denormalised_image_with_the_datasets_statistics():
    m = build("infopro", "smallnet", 4, data=SMALL)
    assert m.mean.flatten().tolist() == [0.5] * 3 and m.std.flatten().tolist() == [0.25] * 3
    x = torch.rand(4, 3, 16, 16) * 0.5 + 0.25  # an image in [0.25, 0.75]
    normalised = (x - 0.5) / 0.25
    seen = {}
    m.decoders[0].register_forward_hook(lambda mod, a, out: seen.setdefault("rec", out))
    h = torch.randn(4, 16, 16, 16, requires_grad=True)
    from locbench.methods.base import Batch

    loss = m.local_loss(0, h, Batch(normalised, torch.zeros(4, dtype=torch.long)))
    lam1, lam2 = m.lambdas[0]
    ce = torch.nn.functional.cross_entropy(m.aux[0](h), torch.zeros(4, dtype=torch.long))
    rec = torch.nn.functional.binary_cross_entropy(seen["rec"], x)
    assert loss.item() == pytest.approx((lam1 * rec + lam2 * ce).item(), rel=1e-5)


# --- PredSim


@pytest.mark.parametrize(
    "shape, kernel, features",
    [((16, 32, 32), (8, 4), 512), ((32, 16, 16), (4, 4), 512), ((64, 8, 8), (4, 2), 512)],
)
def test_predsim_pooling_reaches_512_features(shape, kernel, features):
    pool = pool_to_fit(*shape, 512)
    assert pool.kernel_size == kernel
    assert pool(torch.zeros(1, *shape)).numel() == features


def test_predsim_similarity_of_one_hot_labels():
    y = torch.tensor([0, 1, 0])
    s = similarity_matrix(torch.nn.functional.one_hot(y, 3).float())
    # centred one-hots of equal classes are identical (1), of different classes -1/2
    assert torch.allclose(s, torch.tensor([[1, -0.5, 1], [-0.5, 1, -0.5], [1, -0.5, 1]]))


# --- every method: isolation, learning, bp-ckpt equals bp


def trainer_for(method_cls, K=4, net=None, **params):
    torch.manual_seed(0)
    net = get_backbone("smallnet") if net is None else net()
    p = make_params(method_cls, params)
    split = method_cls.plan_split(Split.uniform(net.n_hidden, K), p)
    return LocalTrainer(
        net,
        split,
        method_cls(net, split, SMALL, p),
        RunConfig(lr=0.1, epochs=1),
        torch.device("cpu"),
    )


def grads(module):
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", ["dgl", "infopro", "predsim", "auglocal", "man"])
def test_gradient_isolation_every_local_method(name):
    base_cls = METHODS.get(name)
    changed_cls = type(
        "Changed",
        (base_cls,),
        {
            "local_loss": lambda self, k, out, batch: (
                base_cls.local_loss(self, k, out, batch) * (3.0 if k == 1 else 1.0)
            )
        },
    )
    # three modules each; auglocal with d = 1 trains K - 1 of the K asked for
    K, extra = (4, {"depth": 1}) if name == "auglocal" else (3, {})
    if name == "man":  # at K=3 module 1's ratio is 1: the default last lambdas (0, 0) are no loss
        extra = {"lambda1_last": 1.0, "lambda2_last": 0.5}
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    a, b = trainer_for(base_cls, K, **extra), trainer_for(changed_cls, K, **extra)
    a.train_step(x, y)
    b.train_step(x, y)
    assert a.split.K == 3
    assert all(map(torch.equal, grads(a.modules[0]), grads(b.modules[0])))
    assert all(map(torch.equal, grads(a.method.aux[0]), grads(b.method.aux[0])))
    assert not all(map(torch.equal, grads(a.modules[1]), grads(b.modules[1])))


def test_bp_ckpt_gives_the_gradients_and_running_stats_of_bp():
    bp, ckpt = trainer_for(METHODS.get("bp")), trainer_for(METHODS.get("bp-ckpt"), K=4)
    assert ckpt.split.K == 4 and bp.split.K == 1
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    before = copy.deepcopy(ckpt.modules.state_dict())
    out_bp, out_ckpt = bp.train_step(x, y), ckpt.train_step(x, y)
    assert out_ckpt.local == [] and torch.equal(out_bp.output, out_ckpt.output)
    got, want = grads(ckpt.modules), grads(bp.modules)
    assert len(got) == len(want) == 29
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(got, want))
    # BatchNorm statistics move once per step, exactly as in BP
    for key, value in ckpt.modules.state_dict().items():
        reference = dict(zip(ckpt.modules.state_dict(), bp.modules.state_dict().values()))
        assert torch.allclose(value.float(), reference[key].float(), atol=1e-6), key
    assert ckpt.modules.state_dict()["0.0.1.num_batches_tracked"] == 1
    assert not torch.equal(
        before["0.0.1.running_mean"], ckpt.modules.state_dict()["0.0.1.running_mean"]
    )


def without_batchnorm() -> Backbone:
    seq = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)),
    )
    return Backbone.from_sequential(seq, (3, 16, 16), name="plain")


@pytest.mark.parametrize("micro_batches, sizes", [(2, [4, 4]), (3, [3, 3, 2]), (8, [1] * 8)])
def test_bp_accum_gives_the_gradients_of_bp_on_the_same_batch(micro_batches, sizes):
    """Without BatchNorm, M micro-batches (uneven ones too) give BP's gradients, losses and
    correct count on the same global batch of 8, and one optimizer update."""
    bp = trainer_for(METHODS.get("bp"), K=1, net=without_batchnorm)
    accum = trainer_for(METHODS.get("bp-accum"), K=1, net=without_batchnorm,
                        micro_batches=micro_batches)  # fmt: skip
    seen = []
    first = accum.modules[0][0][0]
    first.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    out_bp, out_accum = bp.train_step(x, y), accum.train_step(x, y)
    assert seen == sizes
    assert torch.allclose(out_accum.output, out_bp.output, atol=1e-6)
    assert torch.equal(out_accum.correct, out_bp.correct)
    got, want = grads(accum.modules), grads(bp.modules)
    assert len(got) == len(want) == 6
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(got, want))
    params = zip(accum.modules.parameters(), bp.modules.parameters())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in params)  # one identical update


def test_bp_accum_with_batchnorm_normalises_each_micro_batch():
    """With BatchNorm, the gradients are close to BP's but not equal (statistics per
    micro-batch), and the running statistics move once per micro-batch."""
    bp = trainer_for(METHODS.get("bp"))
    accum = trainer_for(METHODS.get("bp-accum"), micro_batches=2)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 10, (32,), generator=g)
    bp.train_step(x, y), accum.train_step(x, y)
    got, want = grads(accum.modules), grads(bp.modules)
    differences = [(a - b).norm() / b.norm() for a, b in zip(got, want)]
    assert max(differences) > 1e-4  # not BP's gradients ...
    cosine = torch.nn.functional.cosine_similarity(
        torch.cat([a.flatten() for a in got]), torch.cat([b.flatten() for b in want]), dim=0
    )
    assert cosine > 0.9  # ... but close to them
    assert accum.modules.state_dict()["0.0.1.num_batches_tracked"] == 2


def test_registry_has_every_seed_method():
    assert set(METHODS.names()) >= {"bp", "bp-ckpt", "dgl", "infopro", "predsim", "auglocal"}


def test_predsim_spatial_std_equals_torch_std():
    from locbench.methods.predsim import spatial_std

    x = torch.randn(5, 7, 6, 4, dtype=torch.float64)
    assert torch.allclose(spatial_std(x), x.flatten(2).std(dim=2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [1, 5, 8, 16, 32])
def test_infopro_upsampling_equals_bilinear_align_corners(size):
    from locbench.methods.infopro import Decoder

    decoder = Decoder((4, size, size), (3, 32, 32), width=12)
    f = torch.randn(2, 4, size, size)
    seen = {}
    decoder.net.register_forward_pre_hook(lambda m, a: seen.setdefault("up", a[0]))
    decoder(f)
    want = torch.nn.functional.interpolate(f, size=(32, 32), mode="bilinear", align_corners=True)
    assert torch.allclose(seen["up"], want, rtol=0, atol=1e-5)  # float32 weights
    assert (seen["up"] is f) == (size == 32)


def test_auglocal_needs_unit_specs():
    from torch import nn

    from locbench.nets.backbone import Backbone

    seq = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)),
    )
    net = Backbone.from_sequential(seq, (3, 8, 8))
    cls = METHODS.get("auglocal")
    p = make_params(cls, {"depth": 1})
    split = cls.plan_split(Split.every_unit(3), p)
    with pytest.raises(UserError, match="copies later units from their specs"):
        cls(net, split, SMALL, p)
