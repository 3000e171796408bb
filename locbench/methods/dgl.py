"""Decoupled Greedy Learning (Belilovsky, Eickenberg & Oyallon, ICML 2020).

Each module trains with cross entropy through its own auxiliary net, "MLP-SR-aux": average
pooling to ceil(S/4) (S = side of the feature map at the cut), three 1x1 conv + BN + ReLU,
average pooling to at most 2x2, then an MLP.

``variant="auglocal"`` (default) is the AugLocal authors' re-implementation, which every
published AugLocal comparison uses: two hidden Linear(f, f) + BN1d + ReLU layers with
f = C * m * m, m = min(ceil(S/4), 2). ``variant="paper"`` follows eugenium/DGL's deeper MLP:
``mlp_layers`` hidden layers of width ``hidden_dim``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from locbench.methods.base import Cut, Method, register
from locbench.methods.params import param
from locbench.nets.backbone import Backbone, spatial_size

VARIANTS = ("auglocal", "paper")


@dataclass(frozen=True)
class DGLParams:
    variant: str = param(
        "auglocal", "auglocal: the AugLocal authors' MLP; paper: DGL's", choices=VARIANTS
    )
    hidden_dim: int = param(128, "MLP width (variant=paper)", low=1, high=1_000_000)
    mlp_layers: int = param(3, "hidden MLP layers (variant=paper)", low=1, high=100)


def pointwise_bn_relu(channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    ]


def linear_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]


@register("dgl")
class DGL(Method):
    Params = DGLParams

    def build_aux(self, backbone: Backbone, cut: Cut) -> nn.Module:
        p: DGLParams = self.params
        channels, side = cut.shape[0], math.ceil(spatial_size(cut.shape) / 4)
        m = min(side, 2)
        flat = channels * m * m
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(side)]
        for _ in range(3):
            layers += pointwise_bn_relu(channels)
        layers += [nn.AdaptiveAvgPool2d(m), nn.Flatten()]
        if p.variant == "auglocal":
            widths = [flat, flat, flat]
        else:
            widths = [flat] + [p.hidden_dim] * p.mlp_layers
        for cin, cout in zip(widths, widths[1:]):
            layers += linear_bn_relu(cin, cout)
        layers.append(nn.Linear(widths[-1], self.data.num_classes))
        return nn.Sequential(*layers)
