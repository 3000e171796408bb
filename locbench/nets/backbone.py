"""Backbones as ordered lists of units, each rebuildable from a spec, with probed output shapes.

A *unit* is the smallest piece a split may cut after: the stem, one residual block, ... The last
unit is always the output head (pooling + linear classifier). Everything before it is a
*hidden* unit; a split of K modules cuts between hidden units, and the head always trains with
the last module.

Shapes are never tabulated: :meth:`Backbone.probe` runs one dummy image through the units.
Each unit also carries a :class:`UnitSpec`, so methods such as AugLocal can build *fresh* copies
of later units' structure (:func:`build_unit`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from locbench.errors import UserError
from locbench.registry import Registry

Shape = tuple[int, ...]


@dataclass(frozen=True)
class UnitSpec:
    """Enough to rebuild a unit from scratch: its kind, channels and stride."""

    kind: str
    in_channels: int
    out_channels: int
    stride: int = 1

    def with_io(self, in_channels: int, out_channels: int, stride: int) -> UnitSpec:
        return replace(self, in_channels=in_channels, out_channels=out_channels, stride=stride)


UNIT_KINDS: Registry[Callable[[UnitSpec], nn.Module]] = Registry("unit kind")


def build_unit(spec: UnitSpec) -> nn.Module:
    """A freshly initialised unit with the structure ``spec`` describes."""
    unit = UNIT_KINDS.get(spec.kind)(spec)
    init_weights(unit)
    return unit


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions, unit BatchNorm, as in the CIFAR ResNet code of InfoPro/AugLocal."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@UNIT_KINDS.register("stem")
def _stem(spec: UnitSpec) -> nn.Module:
    return conv_bn_relu(spec.in_channels, spec.out_channels, spec.stride)


class Subsample(nn.Module):
    """Every ``stride``-th row and column: ``Subsample(s)`` then a 1x1 conv equals a 1x1 conv
    with stride s exactly, and runs 1.3-3x faster forward + backward on CPU (torch 2.14)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride]


def projection(cin: int, cout: int, stride: int) -> nn.Module:
    """The residual shortcut: identity, or 1x1 conv + BN where the shape changes."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    layers = [Subsample(stride)] if stride > 1 else []
    return nn.Sequential(*layers, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual; a 1x1 conv + BN projection where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place ReLUs and residual add, as torchvision's blocks: fewer live buffers.
        out = torch.relu_(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu_(out.add_(self.shortcut(x)))


@UNIT_KINDS.register("basic")
def _basic(spec: UnitSpec) -> nn.Module:
    return BasicBlock(spec.in_channels, spec.out_channels, spec.stride)


class Bottleneck(nn.Module):
    """torchvision's (v1.5) Bottleneck: 1x1 reduce to ``cout // 4``, 3x3 with the stride, 1x1
    expand to ``cout``; BN after each; a 1x1 conv + BN projection where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        mid = cout // 4
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu_(self.bn1(self.conv1(x)))
        out = torch.relu_(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu_(out.add_(self.shortcut(x)))


@UNIT_KINDS.register("bottleneck")
def _bottleneck(spec: UnitSpec) -> nn.Module:
    if spec.out_channels % 4:
        raise UserError(f"bottleneck out_channels must be a multiple of 4, got {spec.out_channels}")
    return Bottleneck(spec.in_channels, spec.out_channels, spec.stride)


@UNIT_KINDS.register("imagenet-stem")
def _imagenet_stem(spec: UnitSpec) -> nn.Module:
    """The torchvision ResNet stem: conv 7x7 stride 2 + BN + ReLU + max-pool 3x3 stride 2.

    Its spec stride is the total downsampling: 4 (the published stem) = strided conv + max-pool;
    2 = strided conv, no pool; 1 = unstrided conv, no pool.
    """
    if spec.stride not in (1, 2, 4):
        raise UserError(f"imagenet-stem stride must be 1, 2 or 4, got {spec.stride}")
    layers = [
        nn.Conv2d(spec.in_channels, spec.out_channels, 7, min(spec.stride, 2), 3, bias=False),
        nn.BatchNorm2d(spec.out_channels),
        nn.ReLU(inplace=True),
    ]
    if spec.stride == 4:
        layers.append(nn.MaxPool2d(3, stride=2, padding=1))
    return nn.Sequential(*layers)


def _pool_first(stride: int) -> list[nn.Module]:
    """The downsampling at the start of a VGG unit: a ``stride`` x ``stride`` max-pool."""
    return [nn.MaxPool2d(stride)] if stride > 1 else []


@UNIT_KINDS.register("vgg")
def _vgg(spec: UnitSpec) -> nn.Module:
    """One VGG-BN conv: [max-pool 2x2 when stride 2], conv 3x3 (with bias) + BN + ReLU.

    torchvision's "M" pool after a conv is moved to the start of the next unit, which is where
    the AugLocal authors cut their VGGs.
    """
    return nn.Sequential(
        *_pool_first(spec.stride),
        nn.Conv2d(spec.in_channels, spec.out_channels, 3, padding=1),
        nn.BatchNorm2d(spec.out_channels),
        nn.ReLU(inplace=True),
    )


@UNIT_KINDS.register("head")
def _head(spec: UnitSpec) -> nn.Module:
    # out_channels of a head spec is the number of classes. Also the ImageNet ResNet head.
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(spec.in_channels, spec.out_channels)
    )


@UNIT_KINDS.register("vgg-head")
def _vgg_head(spec: UnitSpec) -> nn.Module:
    """[The last "M" max-pool when stride 2] + torchvision's VGG avg-pool 7x7 and classifier."""
    return nn.Sequential(
        *_pool_first(spec.stride),
        nn.AdaptiveAvgPool2d(7),
        nn.Flatten(),
        nn.Linear(spec.in_channels * 7 * 7, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, spec.out_channels),
    )


class Backbone:
    """An ordered list of units; ``units[-1]`` is the output head.

    ``specs[i]`` is the spec of ``units[i]`` or ``None`` for a user's own unit that cannot be
    rebuilt. ``shapes[i]`` is the probed output shape of unit ``i`` (without the batch dim).
    """

    def __init__(
        self,
        name: str,
        units: Sequence[nn.Module],
        input_shape: Shape,
        specs: Sequence[UnitSpec | None] | None = None,
    ) -> None:
        if len(units) < 2:
            raise UserError(f"backbone {name!r} needs at least one hidden unit and a head")
        self.name = name
        self.units = nn.ModuleList(units)
        self.input_shape = tuple(input_shape)
        self.specs = list(specs) if specs is not None else [None] * len(units)
        self.shapes = self.probe()

    @classmethod
    def from_sequential(cls, seq: nn.Sequential, input_shape: Shape, name: str = "custom"):
        """Use a user's own ``nn.Sequential`` of units (last child = head) without registering."""
        return cls(name, list(seq.children()), input_shape)

    @property
    def n_hidden(self) -> int:
        """Number of hidden units: the most modules a split can make."""
        return len(self.units) - 1

    @property
    def num_classes(self) -> int:
        return self.shapes[-1][0]

    @torch.no_grad()
    def probe(self) -> list[Shape]:
        """Output shape of every unit, found by running one zero image through them (eval mode)."""
        was_training = [u.training for u in self.units]
        shapes = []
        h = torch.zeros(1, *self.input_shape)
        try:
            for unit in self.units:
                h = unit.eval()(h)
                shapes.append(tuple(h.shape[1:]))
        finally:
            for unit, mode in zip(self.units, was_training):
                unit.train(mode)
        return shapes

    def num_params(self) -> int:
        return sum(p.numel() for p in self.units.parameters())


BACKBONES: Registry[Callable[[int], Backbone]] = Registry("net")


def from_specs(name: str, specs: Sequence[UnitSpec], input_shape: Shape) -> Backbone:
    return Backbone(name, [build_unit(s) for s in specs], input_shape, specs)


def cifar_resnet(depth: int, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64)):
    """CIFAR ResNet-(6n+2) as in the InfoPro/AugLocal code: 3x3 stem, 3 stages of n BasicBlocks."""
    if (depth - 2) % 6:
        raise UserError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    specs = [UnitSpec("stem", 3, widths[0])]
    cin = widths[0]
    for stage, width in enumerate(widths):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            specs.append(UnitSpec("basic", cin, width, stride))
            cin = width
    specs.append(UnitSpec("head", cin, num_classes))
    return from_specs(f"resnet{depth}", specs, (3, 32, 32))


for _depth in (20, 32, 44, 56, 110):
    BACKBONES.add(
        f"resnet{_depth}", lambda num_classes=10, _d=_depth: cifar_resnet(_d, num_classes)
    )


def imagenet_resnet(depth: int, num_classes: int = 1000) -> Backbone:
    """torchvision's ResNet-34/101 on 3x224x224: the 7x7 stem, then one unit per block."""
    kind, blocks, expansion = IMAGENET_RESNETS[depth]
    specs = [UnitSpec("imagenet-stem", 3, 64, 4)]
    cin = 64
    for stage, n in enumerate(blocks):
        width = 64 * 2**stage * expansion
        for i in range(n):
            specs.append(UnitSpec(kind, cin, width, 2 if stage > 0 and i == 0 else 1))
            cin = width
    specs.append(UnitSpec("head", cin, num_classes))
    return from_specs(f"resnet{depth}", specs, (3, 224, 224))


def vgg(depth: int, num_classes: int = 1000) -> Backbone:
    """torchvision's VGG-BN on 3x224x224, one unit per conv; each "M" opens the next unit."""
    specs, cin, stride = [], 3, 1
    for v in VGG_CONFIGS[depth]:
        if v == "M":
            stride = 2
            continue
        specs.append(UnitSpec("vgg", cin, v, stride))
        cin, stride = v, 1
    specs.append(UnitSpec("vgg-head", cin, num_classes, stride))
    return from_specs(f"vgg{depth}", specs, (3, 224, 224))


# depth -> (block kind, blocks per stage, block output width / stage width), as in torchvision.
IMAGENET_RESNETS = {34: ("basic", (3, 4, 6, 3), 1), 101: ("bottleneck", (3, 4, 23, 3), 4)}
# torchvision's VGG configurations "B" (VGG-13) and "E" (VGG-19).
VGG_CONFIGS: dict[int, list[int | str]] = {
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", *[256] * 4, "M", *[512] * 4, "M", *[512] * 4, "M"],
}
for _depth in IMAGENET_RESNETS:
    BACKBONES.add(
        f"resnet{_depth}", lambda num_classes=1000, _d=_depth: imagenet_resnet(_d, num_classes)
    )
for _depth in VGG_CONFIGS:
    BACKBONES.add(f"vgg{_depth}", lambda num_classes=1000, _d=_depth: vgg(_d, num_classes))

# Published K (number of local modules = hidden units) of the AugLocal paper's configurations
# (ICLR 2024; restated in docs/reference.md, "Published configurations"): CIFAR ResNet-32/110 and
# ImageNet ResNet-34/101, VGG-13/19. Each equals the backbone's n_hidden here.
PUBLISHED_K = {
    "resnet32": 16,
    "resnet110": 55,
    "resnet34": 17,
    "resnet101": 34,
    "vgg13": 10,
    "vgg19": 16,
}


@BACKBONES.register("smallnet")
def smallnet(num_classes: int = 10) -> Backbone:
    """A 4-hidden-unit ResNet on 3x16x16 inputs, fast enough for CPU demos and tests."""
    specs = [
        UnitSpec("stem", 3, 16),
        UnitSpec("basic", 16, 16),
        UnitSpec("basic", 16, 32, 2),
        UnitSpec("basic", 32, 64, 2),
        UnitSpec("head", 64, num_classes),
    ]
    return from_specs("smallnet", specs, (3, 16, 16))


def get_backbone(name: str, num_classes: int | None = None) -> Backbone:
    """The registered net ``name``; ``num_classes=None`` keeps its default (10 for the CIFAR nets
    and smallnet, 1000 for the ImageNet nets)."""
    factory = BACKBONES.get(name)
    return factory() if num_classes is None else factory(num_classes)


def spatial_size(shape: Shape) -> int:
    """Side of a (C, H, W) feature map; 1 for flat features."""
    return shape[1] if len(shape) == 3 else 1
