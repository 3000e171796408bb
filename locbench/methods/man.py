"""MAN (Su et al., "Momentum Auxiliary Network for Supervised Local Learning", ECCV 2024;
authors' code JunhaoSu0/MAN, ``Exp on CIFAR-SVHN-STL/networks/resnetInfoPro_MAN.py``).

MAN is InfoPro whose local losses read the features *after* one more block. The auxiliary path
of the module that ends at hidden unit j:

* two copies of unit j+1 (module k+1's first unit), each freshly initialised as the backbone is
  (the authors deep-copy the block, then re-initialise every convolution and BatchNorm): a
  trainable one ("LB", optimised with the local loss) and a frozen one ("EMA_Net") that never
  sees a gradient; their outputs are summed, ``y = LB(h) + EMA(h)``;
* right after module k's backward, the frozen copy moves towards unit j+1's current weights
  (module k+1 has not stepped yet): ``ema = momentum * ema + (1 - momentum) * current``, over
  its parameters only; its BatchNorm buffers are neither averaged nor copied (its running
  statistics are its own, updated by its forward in train mode);
* on ``y``, InfoPro's two heads: the reconstruction decoder (bilinear upsampling to the image,
  conv 3x3 to 12 + BN + ReLU, conv 3x3 to 3, sigmoid, BCE against the de-normalised image)
  and the classifier "2c2f" (the authors' default ``--aux_net_config``): conv 3x3 doubling the
  width with stride 2 (kept, stride 1, once the widest hidden width is reached) + BN + ReLU,
  conv 3x3 + BN + ReLU, global pooling, Linear to 128, ReLU, Linear to the classes;
* loss ``lambda1 * reconstruction + lambda2 * cross entropy``, the lambdas interpolated from
  (5, 0.5) towards (0, 0) with the authors' ratio ``stage / (K - 2)``, ``stage`` (1, 2, 3 on
  CIFAR ResNets) the stage of unit j+1 (README: ``--ixx_1 5 --ixy_1 0.5 --ixx_2 0 --ixy_2 0
  --momentum 0.995``).

``learnable_scale`` is MAN++ (JunhaoSu0/MAN_PlusPlus, ``resnetInfoPro_MANPP.py``): a trainable
scalar s per auxiliary net, starting at 1, and ``y = s * LB(h) + (2 - s) * EMA(h)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from locbench.methods.base import Batch, Capabilities, Cut, Method, ModulesView, register
from locbench.methods.infopro import Decoder
from locbench.methods.params import param
from locbench.nets.backbone import Backbone, build_unit, spatial_size

RAMPS = ("stage", "module")


@dataclass(frozen=True)
class MANParams:
    # The authors' README command for ResNet-32 (K=16) on CIFAR-10.
    momentum: float = param(0.995, "EMA momentum of the frozen copy's weights", low=0, high=1)
    lambda1_first: float = param(5.0, "reconstruction weight at ratio 0", low=0)
    lambda2_first: float = param(0.5, "cross-entropy weight at ratio 0", low=0)
    lambda1_last: float = param(0.0, "reconstruction weight at ratio 1", low=0)
    lambda2_last: float = param(0.0, "cross-entropy weight at ratio 1", low=0)
    ramp: str = param(
        "stage",
        "ratio of the lambdas: stage: the authors' stage of the copied unit / (K-2); "
        "module: k / (K-2), InfoPro's",
        choices=RAMPS,
    )
    head_convs: int = param(2, "3x3 convs of the classifier (2: 2c2f; 1: 1c2f)", low=1, high=8)
    hidden_dim: int = param(128, "classifier MLP width", low=1, high=1_000_000)
    decoder_width: int = param(12, "decoder channels", low=1, high=100_000)
    learnable_scale: bool = param(False, "MAN++: y = s*LB + (2-s)*EMA with a trainable s")


def stage_of(backbone: Backbone, unit: int) -> int:
    """1 + the downsamplings from the first unit's output to ``unit``'s: the authors' stage
    index (1, 2, 3 on a CIFAR ResNet; the stem's output counts as stage 1)."""
    sides = [spatial_size(s) for s in backbone.shapes[: unit + 1]]
    return 1 + sum(b < a for a, b in zip(sides, sides[1:]))


def fresh_copy(backbone: Backbone, unit: int) -> nn.Module:
    """A new unit shaped like ``backbone.units[unit]``, initialised as the backbone is; a unit
    without a spec (a user's own) is copied with its current weights."""
    spec = backbone.specs[unit]
    return build_unit(spec) if spec is not None else copy.deepcopy(backbone.units[unit])


class MomentumAux(nn.Module):
    """Module k's auxiliary path up to the heads: ``lb(h) + ema(h)`` (MAN++: scaled by s)."""

    def __init__(self, lb: nn.Module, ema: nn.Module, head: nn.Module, scale: bool) -> None:
        super().__init__()
        self.lb, self.ema, self.head = lb, ema, head
        self.ema.requires_grad_(False)  # moved by the moving average, never by the optimizer
        self.scale = Scale() if scale else None

    def features(self, h: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            return self.lb(h) + self.ema(h)
        s = self.scale.s
        return s * self.lb(h) + (2 - s) * self.ema(h)


class Scale(nn.Module):
    """MAN++'s trainable weight s of the two copies, starting at 1 (MAN's plain sum)."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(1.0))


def classifier(channels: int, widest: int, convs: int, hidden: int, classes: int) -> nn.Module:
    """InfoPro's classifier with ``convs`` 3x3 convs ("2c2f" for 2): the first doubles the width
    with stride 2 below the widest hidden width, keeps it with stride 1 there."""
    out, stride = (2 * channels, 2) if channels < widest else (channels, 1)
    layers: list[nn.Module] = []
    cin = channels
    for i in range(convs):
        layers += [
            nn.Conv2d(cin, out, 3, stride=stride if i == 0 else 1, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(),
        ]
        cin = out
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(out, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    ]
    return nn.Sequential(*layers)


@register("man")
class MAN(Method):
    Params = MANParams
    capabilities = Capabilities(reads_modules=True)

    def __init__(self, backbone, split, data, params: MANParams) -> None:
        # Filled by build_aux, one per cut (before nn.Module.__init__: plain lists).
        self.ratios: list[float] = []  # where each module's lambdas are, 0 (first) .. 1 (last)
        decoders: list[nn.Module] = []
        self._new_decoders = decoders
        super().__init__(backbone, split, data, params)
        del self._new_decoders
        self.decoders = nn.ModuleList(decoders)
        p = params
        self.lambdas = [
            (
                p.lambda1_first * (1 - r) + p.lambda1_last * r,
                p.lambda2_first * (1 - r) + p.lambda2_last * r,
            )
            for r in self.ratios
        ]
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(data.mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(data.std).view(shape), persistent=False)

    def build_aux(self, backbone: Backbone, cut: Cut) -> nn.Module:
        p: MANParams = self.params
        follower = cut.unit + 1  # module k+1's first unit
        span = self.split.K - 2
        index = stage_of(backbone, follower) if p.ramp == "stage" else cut.k
        # The authors' ratio is 0 when K <= 2; clamped to 1 (their stage ratio passes 1, making
        # the weights negative, only for K <= 4 on ResNet-32).
        self.ratios.append(min(index / span, 1.0) if span > 0 else 0.0)
        shape = backbone.shapes[follower]
        widest = max(s[0] for s in backbone.shapes[:-1])
        head = classifier(shape[0], widest, p.head_convs, p.hidden_dim, self.data.num_classes)
        self._new_decoders.append(Decoder(shape, self.data.image_shape, p.decoder_width))
        lb, ema = fresh_copy(backbone, follower), fresh_copy(backbone, follower)
        return MomentumAux(lb, ema, head, p.learnable_scale)

    def aux_modules(self, k: int) -> list[nn.Module]:
        aux = self.aux[k]
        scale = [aux.scale] if aux.scale is not None else []
        return [*scale, aux.lb, aux.ema, aux.head, self.decoders[k]]

    def local_loss(self, k: int, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        lambda1, lambda2 = self.lambdas[k]
        y = self.aux[k].features(out)
        # Real images de-normalise into [0, 1]; the clamp only guards synthetic data.
        image = (batch.x * self.std + self.mean).clamp(0.0, 1.0)
        reconstruction = F.binary_cross_entropy(self.decoders[k](y), image)
        return lambda1 * reconstruction + lambda2 * F.cross_entropy(self.aux[k].head(y), batch.y)

    def after_backward(self, k: int, view: ModulesView) -> None:
        if k == self.split.K - 1:  # the last module has no auxiliary net
            return
        current = view.named_parameters(k + 1)  # "0.<name>": module k+1's first unit
        m = self.params.momentum
        for name, ema in self.aux[k].ema.named_parameters():
            ema.mul_(m).add_(current[f"0.{name}"], alpha=1 - m)
