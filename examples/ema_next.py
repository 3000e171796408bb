"""An auxiliary net that follows the next block: a method with state kept across steps.

Module k's auxiliary net starts with a copy of module k+1's first unit, then pools and
classifies. The copy is never trained by the optimizer (its parameters are frozen,
``requires_grad=False``); instead, right after module k's backward, it moves towards that
unit's current weights as an exponential moving average::

    ema = momentum * ema + (1 - momentum) * current

This is the idea of MAN (Momentum Auxiliary Network, ECCV 2024), reduced to its state: MAN also
adds a trainable copy beside the moving one. The file is written only against the documented
contract (``locbench/methods/base.py``, "State kept across steps"): the ``after_backward``
hook, the read-only :class:`~locbench.methods.base.ModulesView` and the declared
``Capabilities(reads_modules=True)``, which ``--stages`` refuses before training. Run it by
path::

    locbench run --method examples/ema_next.py:EmaNext --net smallnet --K 4 --dataset digits
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from locbench import Capabilities, Cut, Method, ModulesView, param


@dataclass(frozen=True)
class Params:
    momentum: float = param(0.9, "EMA momentum of the copied unit's weights", low=0, high=1)


class EmaNext(Method):
    Params = Params
    capabilities = Capabilities(reads_modules=True)

    def build_aux(self, backbone, cut: Cut) -> nn.Module:
        follower = copy.deepcopy(backbone.units[cut.unit + 1])  # module k+1's first unit
        follower.requires_grad_(False)  # frozen: moved by the EMA, never by the optimizer
        channels = backbone.shapes[cut.unit + 1][0]
        head = nn.Linear(channels, self.data.num_classes)
        return nn.Sequential(follower, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)

    def after_backward(self, k: int, view: ModulesView) -> None:
        if k == self.split.K - 1:  # the last module has no auxiliary net
            return
        current = view.named_parameters(k + 1)  # "0.<name>": module k+1's first unit
        m = self.params.momentum
        for name, ema in self.aux[k][0].named_parameters():
            ema.mul_(m).add_(current[f"0.{name}"], alpha=1 - m)

    # local_loss (cross entropy of the auxiliary net), boundary and output_loss: the defaults.
