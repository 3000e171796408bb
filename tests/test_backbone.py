import pytest
import torch
from torch import nn

from locbench.errors import UserError
from locbench.nets.backbone import (
    BACKBONES,
    Backbone,
    UnitSpec,
    build_unit,
    cifar_resnet,
    get_backbone,
)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "net, params",
    # Published sizes of the InfoPro/AugLocal CIFAR ResNets with 1x1-conv projection shortcuts.
    [("resnet32", 466_906), ("resnet110", 1_730_714)],
)
def test_cifar_resnet_parameter_counts(net, params):
    assert get_backbone(net, num_classes=10).num_params() == params


def test_resnet_parameter_count_by_hand():
    # ResNet-20: stem 3*16*9 + BN 32; stage blocks of (c_in*c*9 + c*c*9 + 4c);
    # projections 16*32 + 64 and 32*64 + 128; head 64*10 + 10.
    stem = 3 * 16 * 9 + 32
    stage1 = 3 * (2 * 16 * 16 * 9 + 4 * 16)
    stage2 = (16 * 32 * 9 + 32 * 32 * 9 + 4 * 32 + 16 * 32 + 64) + 2 * (2 * 32 * 32 * 9 + 4 * 32)
    stage3 = (32 * 64 * 9 + 64 * 64 * 9 + 4 * 64 + 32 * 64 + 128) + 2 * (2 * 64 * 64 * 9 + 4 * 64)
    head = 64 * 10 + 10
    assert get_backbone("resnet20").num_params() == stem + stage1 + stage2 + stage3 + head


def test_resnet32_units_and_probed_shapes():
    net = get_backbone("resnet32")
    assert net.n_hidden == 16  # stem + 15 blocks; the head is unit 16
    expected = [(16, 32, 32)] * 6 + [(32, 16, 16)] * 5 + [(64, 8, 8)] * 5 + [(10,)]
    assert net.shapes == expected
    assert [s.stride for s in net.specs[:-1]] == [1] * 6 + [2, 1, 1, 1, 1, 2, 1, 1, 1, 1]


def test_probe_matches_a_real_forward_and_keeps_train_mode():
    net = get_backbone("smallnet", num_classes=7)
    assert net.shapes == [(16, 16, 16), (16, 16, 16), (32, 8, 8), (64, 4, 4), (7,)]
    assert all(u.training for u in net.units)
    h = torch.randn(3, *net.input_shape)
    for unit, shape in zip(net.units, net.shapes):
        h = unit(h)
        assert tuple(h.shape) == (3, *shape)


def test_build_unit_gives_fresh_weights_of_the_same_structure():
    spec = UnitSpec("basic", 16, 32, 2)
    a, b = build_unit(spec), build_unit(spec)
    assert count(a) == count(b) == 16 * 32 * 9 + 32 * 32 * 9 + 4 * 32 + 16 * 32 + 64
    assert not torch.equal(a.conv1.weight, b.conv1.weight)


def test_user_sequential_works_unregistered():
    seq = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)),
    )
    net = Backbone.from_sequential(seq, (1, 12, 12))
    assert net.n_hidden == 2
    assert net.shapes == [(4, 12, 12), (8, 6, 6), (5,)]
    assert net.num_classes == 5
    assert net.specs == [None, None, None]


def test_registry_names_and_bad_depth():
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "smallnet"} <= set(
        BACKBONES.names()
    )
    with pytest.raises(UserError, match="6n\\+2"):
        cifar_resnet(33)
    with pytest.raises(UserError, match="unknown net 'resnet33'; known: resnet101, resnet110"):
        get_backbone("resnet33")


def test_subsampled_projection_equals_a_strided_1x1_conv():
    from locbench.nets.backbone import projection

    proj = projection(16, 32, 2)
    strided = nn.Conv2d(16, 32, 1, stride=2, bias=False)
    strided.weight.data.copy_(proj[1].weight.data)
    x = torch.randn(2, 16, 9, 9)  # odd size: both keep rows/cols 0, 2, 4, 6, 8
    assert torch.equal(proj[1](proj[0](x)), strided(x))
    assert proj[0](x).shape == (2, 16, 5, 5)
