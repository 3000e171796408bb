"""Greedy local learning with linear heads: a new method written outside the ``methods`` package.

Each local module k < K-1 trains with cross entropy through the smallest auxiliary net there
is: global average pooling + one Linear layer to the classes (the "0c1f" configuration of the
AugLocal code: zero conv layers, one fully connected layer). The local loss is multiplied by
``loss_scale``, a hyperparameter that shows how ``--hp`` reaches a method's ``Params``.

The file is deliberately *not* registered (no ``@register``): it is loaded by path, from any
folder, with no install step::

    locbench run --method examples/greedy_linear.py:GreedyLinear --net smallnet --K 4 \\
        --dataset digits --epochs 2
    locbench run --method examples/greedy_linear.py:GreedyLinear --hp loss_scale=0.5 ...

Run records keep ``--method`` as typed (``examples/greedy_linear.py:GreedyLinear``). To ship
a method in a package instead, declare it in that package's ``pyproject.toml``::

    [project.entry-points."locbench.methods"]
    greedy-linear = "mypkg.greedy_linear:GreedyLinear"

and run it with ``--method greedy-linear``. Only ``locbench`` (its public API) and torch are
imported: that is the whole contract a method needs (see ``locbench/methods/base.py``). A method
file may also import modules of its own that sit beside it (``import my_heads`` for
``my_heads.py`` in the same folder): the folder is on ``sys.path`` while the file is imported.

Hooks see where training is through ``batch.step`` (:class:`~locbench.methods.base.StepContext`:
``global_step``, ``epoch``, ``steps_per_epoch``, ``total_steps``, ``lr``), e.g. to anneal a
loss weight over training with ``batch.step.progress``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from locbench import Batch, Cut, Method, param


@dataclass(frozen=True)
class Params:
    #: Multiplies every local loss (the output loss of the last module is unchanged).
    loss_scale: float = param(1.0, "multiplies every local loss", low=0)


class GreedyLinear(Method):
    Params = Params

    def build_aux(self, backbone, cut: Cut) -> nn.Module:
        # cut.shape is the (C, H, W) output of module cut.k's last unit.
        channels = cut.shape[0]
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, self.data.num_classes)
        )

    def local_loss(self, k: int, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        p: Params = self.params
        return p.loss_scale * F.cross_entropy(self.aux[k](out), batch.y)

    # boundary (default: out.detach(), so no gradient crosses a cut), output_loss and
    # plan_split keep the defaults of locbench.methods.base.Method.
