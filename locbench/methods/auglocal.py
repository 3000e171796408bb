"""AugLocal (Ma et al., "Scaling Supervised Local Learning with Augmented Auxiliary Networks",
ICLR 2024; authors' code ChenxiangMA/AugLocal).

The auxiliary net of the module that ends at hidden layer j is built from *fresh copies* of a
uniformly selected subset of the layers after j (structure only, new weights), then global
average pooling, a BatchNorm1d (only when the depth is <= 1) and a linear classifier:

* selection (docs/reference.md): with n hidden layers and depth d, copy layers
  ``round(j + (n - j - 1) / d * i)`` for i = 1..d, or every later layer if ``d >= n - 1 - j``;
  the last copy is always the final hidden layer;
* a stride-2 step goes wherever the backbone downsamples between copied layers (the authors
  track width doublings, which is the same thing on their ResNets; strides generalise it to
  VGG and bottleneck nets); at most one stride-2 per copy, the rest carried to the next copy;
* pyramidal depth: with L local modules, module i gets
  ``max(1, round(d * (1 - i*tau/(L-2)) + i*tau/(L-2)))``, a ramp from d to about (d+1)/2;
* module count (the authors' convention): asked for K modules with depth d, AugLocal trains
  K - d modules: the last d + 1 modules of the requested split merge into the output module
  (with one module per layer, the last d + 1 layers train with the output head).

``round`` is Python's (half to even), as in the authors' code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from locbench.errors import UserError
from locbench.methods.base import Cut, Method, register
from locbench.methods.params import param
from locbench.nets.backbone import Backbone, build_unit
from locbench.nets.split import Split


@dataclass(frozen=True)
class AugLocalParams:
    # README of the authors' code: d = 2; tau 0.5 and --pyramid in all published runs.
    depth: int = param(2, "d: layers per auxiliary net", low=1, high=1000)
    tau: float = param(0.5, "pyramid coefficient", low=0, high=1)
    pyramid: bool = param(True, "shrink the auxiliary depth linearly over the modules")
    widen: float = param(1.0, "width multiplier of the copied layers", above=0, high=64)


def selected_layers(j: int, n: int, depth: int) -> list[int]:
    """Hidden layers whose structure the auxiliary net of layer ``j`` copies."""
    if depth >= n - 1 - j:
        return list(range(j + 1, n))
    return [round(j + (n - j - 1) / depth * i) for i in range(1, depth + 1)]


def pyramid_depths(depth: int, n_local: int, tau: float) -> list[int]:
    """Depth of each of the ``n_local - 1`` auxiliary nets (``n_local`` = L local modules)."""
    span = n_local - 2
    ramp = [i * tau / span if span > 0 else 0.0 for i in range(n_local - 1)]
    return [max(1, round(depth * (1 - r) + r)) for r in ramp]


@register("auglocal")
class AugLocal(Method):
    Params = AugLocalParams

    @classmethod
    def plan_split(cls, split: Split, params: AugLocalParams) -> Split:
        if split.K - params.depth < 1:
            raise UserError(
                f"auglocal with depth {params.depth} trains K - depth modules, so K must be "
                f"greater than {params.depth}; got K={split.K}"
            )
        return Split(split.n_hidden, split.starts[: split.K - params.depth])

    def __init__(self, backbone, split, data, params: AugLocalParams) -> None:
        p = params
        #: layers each auxiliary net copies, filled as they are built (for describe and tests)
        self.selections: list[list[int]] = []
        self.depths = (
            pyramid_depths(p.depth, split.K, p.tau) if p.pyramid else [p.depth] * (split.K - 1)
        )
        if split.K > 1 and any(s is None for s in backbone.specs[1:-1]):
            raise UserError(
                "auglocal copies later units from their specs; this backbone has units "
                "without a spec (a plain nn.Sequential)"
            )
        super().__init__(backbone, split, data, params)

    def build_aux(self, backbone: Backbone, cut: Cut) -> nn.Module:
        depth = self.depths[cut.k]
        channels = cut.shape[0]
        pending_downsamples = 0
        layers: list[nn.Module] = []
        previous = cut.unit
        self.selections.append(selected_layers(cut.unit, backbone.n_hidden, depth))
        for index in self.selections[-1]:
            strides = [backbone.specs[u].stride for u in range(previous + 1, index + 1)]
            pending_downsamples += sum(int(math.log2(s)) for s in strides)
            stride = 1
            if pending_downsamples >= 1:
                stride, pending_downsamples = 2, pending_downsamples - 1
            spec = backbone.specs[index]
            width = int(spec.out_channels * self.params.widen)
            layers.append(build_unit(spec.with_io(channels, width, stride)))
            channels, previous = width, index
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if depth <= 1:
            layers.append(nn.BatchNorm1d(channels))
        layers.append(nn.Linear(channels, self.data.num_classes))
        return nn.Sequential(*layers)
