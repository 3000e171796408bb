"""ImageNet-style ResNet-34/101 and VGG-13/19, checked against torchvision's own models."""

import pytest
import torch
import torchvision
from torch import nn

from locbench.errors import UserError
from locbench.nets.backbone import PUBLISHED_K, UnitSpec, build_unit, get_backbone

# Ours -> torchvision builder, and the parameter counts of torchvision's models (1000 classes).
TORCHVISION = {
    "resnet34": ("resnet34", 21_797_672),
    "resnet101": ("resnet101", 44_549_160),
    "vgg13": ("vgg13_bn", 133_053_736),
    "vgg19": ("vgg19_bn", 143_678_248),
}


@pytest.fixture(scope="module")
def nets():
    # Building (and probing at 224x224) is the expensive part: once per net for the module.
    return {name: get_backbone(name) for name in TORCHVISION}


@pytest.fixture(params=list(TORCHVISION))
def net(request, nets):
    return nets[request.param]


def torchvision_twin(name: str, num_classes: int = 1000) -> nn.Module:
    # Built on the meta device: the structure and sizes without paying for initialisation.
    with torch.device("meta"):
        return getattr(torchvision.models, TORCHVISION[name][0])(num_classes=num_classes)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_equal_torchvision(net):
    published = TORCHVISION[net.name][1]
    assert net.num_params() == count(torchvision_twin(net.name)) == published


def test_n_hidden_is_the_published_k(net):
    assert net.n_hidden == PUBLISHED_K[net.name]
    assert net.input_shape == (3, 224, 224)
    assert net.shapes[-1] == (1000,) and net.num_classes == 1000


def test_cifar_published_k():
    assert PUBLISHED_K["resnet32"] == get_backbone("resnet32").n_hidden == 16
    assert PUBLISHED_K["resnet110"] == get_backbone("resnet110").n_hidden == 55


def test_forward_equals_torchvision_with_copied_weights(net):
    # Our units list their parameters and buffers in torchvision's order, so a zip copies them.
    twin = torchvision_twin(net.name)
    ours, theirs = net.units.state_dict(), twin.state_dict()
    assert [v.shape for v in ours.values()] == [v.shape for v in theirs.values()]
    with torch.no_grad():  # non-trivial BN statistics, so a misplaced BN would show
        for key, v in ours.items():
            if key.endswith(("running_mean", "running_var")):
                v.uniform_(0.5, 1.5)
    twin.load_state_dict(dict(zip(theirs, ours.values())), assign=True)
    net.units.eval()
    twin.eval()
    # 64x64 rather than 224x224 to keep it fast; both nets end in adaptive pooling.
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = x
        for unit in net.units:
            h = unit(h)
        expected = twin(x)
    net.units.train()
    torch.testing.assert_close(h, expected, rtol=1e-4, atol=1e-4)


def test_resnet_probed_shapes(nets):
    r34, r101 = nets["resnet34"], nets["resnet101"]
    stages = [(64, 56, 56)] * 3 + [(128, 28, 28)] * 4 + [(256, 14, 14)] * 6 + [(512, 7, 7)] * 3
    assert r34.shapes == [(64, 56, 56), *stages, (1000,)]
    assert r101.shapes[0] == (64, 56, 56)
    assert r101.shapes[1] == (256, 56, 56) and r101.shapes[4] == (512, 28, 28)
    assert r101.shapes[-2] == (2048, 7, 7)
    strides = [s.stride for s in r101.specs]
    assert strides[0] == 4 and [i for i, s in enumerate(strides[1:-1], 1) if s == 2] == [4, 8, 31]
    assert r101.specs[1] == UnitSpec("bottleneck", 64, 256, 1)
    assert r34.specs[-1] == UnitSpec("head", 512, 1000)


def test_vgg_probed_shapes(nets):
    v13 = nets["vgg13"]
    assert v13.shapes == [
        (64, 224, 224),
        (64, 224, 224),
        (128, 112, 112),
        (128, 112, 112),
        (256, 56, 56),
        (256, 56, 56),
        (512, 28, 28),
        (512, 28, 28),
        (512, 14, 14),
        (512, 14, 14),
        (1000,),
    ]
    assert [s.stride for s in v13.specs] == [1, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2]
    assert v13.specs[-1] == UnitSpec("vgg-head", 512, 1000, 2)


@pytest.mark.parametrize(
    "kind, io, size, shape",
    # A fresh copy of a unit of each kind with other channels and stride, as AugLocal builds.
    [
        ("bottleneck", (64, 256, 2), 8, (256, 4, 4)),
        ("bottleneck", (512, 128, 1), 8, (128, 8, 8)),
        ("vgg", (32, 48, 2), 8, (48, 4, 4)),
        ("vgg", (32, 48, 1), 8, (48, 8, 8)),
        ("imagenet-stem", (8, 16, 4), 32, (16, 8, 8)),
        ("imagenet-stem", (8, 16, 2), 32, (16, 16, 16)),
        ("imagenet-stem", (8, 16, 1), 32, (16, 32, 32)),
        ("vgg-head", (32, 10, 2), 4, (10,)),
        ("vgg-head", (32, 10, 1), 1, (10,)),
        ("head", (32, 10, 1), 4, (10,)),
    ],
)
def test_rebuilt_units_with_other_io_and_stride(nets, kind, io, size, shape):
    template = next(s for net in nets.values() for s in net.specs if s.kind == kind)
    unit = build_unit(template.with_io(*io))
    out = unit(torch.randn(2, io[0], size, size))
    assert tuple(out.shape) == (2, *shape)


def test_bad_unit_specs_are_user_errors():
    with pytest.raises(UserError, match="imagenet-stem stride must be 1, 2 or 4, got 3"):
        build_unit(UnitSpec("imagenet-stem", 3, 64, 3))
    with pytest.raises(UserError, match="multiple of 4, got 30"):
        build_unit(UnitSpec("bottleneck", 64, 30))


def test_bottleneck_projection_and_inner_width():
    unit = build_unit(UnitSpec("bottleneck", 256, 256, 1).with_io(64, 256, 2))
    assert unit.conv1.weight.shape == (64, 64, 1, 1) and unit.conv3.weight.shape == (256, 64, 1, 1)
    assert unit.conv2.weight.shape == (64, 64, 3, 3) and unit.conv2.stride == (2, 2)
    assert isinstance(unit.shortcut, nn.Sequential) and unit.shortcut[0].stride == 2
    assert unit.shortcut[1].weight.shape == (256, 64, 1, 1)
    assert isinstance(build_unit(UnitSpec("bottleneck", 256, 256, 1)).shortcut, nn.Identity)


def test_num_classes_is_respected():
    assert get_backbone("resnet34", num_classes=10).shapes[-1] == (10,)
    vgg = get_backbone("vgg13", num_classes=10)
    assert vgg.shapes[-1] == (10,)
    assert vgg.num_params() == count(torchvision_twin("vgg13", num_classes=10))
    assert get_backbone("resnet32").num_classes == 10  # the CIFAR default is unchanged
