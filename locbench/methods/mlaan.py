"""MLAAN (Zhang et al., "MLAAN: Scaling Supervised Local Learning with Multilaminar Leap
Augmented Auxiliary Network", AAAI 2025; authors' code Wendy231015/MLAAN,
``CIFAR-SVHN-STL/networks/resnetMLAAN.py``, ``networks/auxMLAAN.py``,
``networks/config2.py``, ``networks/configAuxPlus_new.py``, ``train.py``).

MLAAN is HPFF's cascade (:class:`locbench.methods.hpff.Cascade`: module k reruns all of module
k-1 and trains it; module 0 has no loss of its own) with AugLocal-like auxiliary nets:

* the greedy path's classifier ("net_classifier"): global pooling + ``Linear(C, classes)``;
* the cascade path's auxiliary net: copies of later blocks of the backbone (deep copies, so
  with the backbone's initial weights), then pooling + ``Linear(C_last, classes)``. The first
  copy is doubled by a frozen copy ("EMA_Net") and the two outputs are summed, as MAN's
  ``LB(h) + EMA(h)`` (:class:`locbench.methods.man.MomentumAux`);
* module k's loss ``wx * CE(greedy) + wy * CE(cascade)`` (``wx = 0.001``, ``wy = 0.999``, the
  model's defaults); no reconstruction; the last module's loss is the cross entropy of the
  cascade path's logits alone (their code overwrites the greedy term);
* after the last module's backward, before the optimizer step, the frozen copy moves towards
  the weights of the backbone unit it copies: ``ema = m * ema + (1 - m) * current``. The
  authors' code does this for the *last* auxiliary net only (``ema="last"``, the default);
  the others stay at their initial weights. ``ema="every"`` moves every one.

Which blocks each auxiliary net copies: the authors' table (``InfoPro_Aux``) where they have
one (ResNet-32 at their K = 8 and 15: here K = 8 and 16, whose splits equal theirs); elsewhere
every later unit that changes the shape (so the copies chain) plus the last units up to
``depth`` copies, always ending at the last hidden unit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from locbench.errors import UserError
from locbench.methods.base import Batch, Capabilities, Cut, ModulesView, Paths, register
from locbench.methods.hpff import Cascade
from locbench.methods.man import MomentumAux
from locbench.methods.params import param
from locbench.nets.backbone import Backbone

EMA_MODES = ("last", "every")

# The authors' InfoPro_Aux (configAuxPlus_new.py) for ResNet-32, as hidden units (stem 0,
# layer1[j] = 1 + j, layer2[j] = 6 + j, layer3[j] = 11 + j), by module ends of the split they
# belong to: {cut unit: copied units}. The first module and the last have no auxiliary net.
AUTHORS_LAYERS = {
    ("resnet32", (1, 3, 5, 7, 9, 11, 13)): {
        3: [6, 11, 13, 15],
        5: [6, 11, 14, 15],
        7: [11, 13, 14, 15],
        9: [11, 13, 14, 15],
        11: [13, 14, 15],
        13: [14, 15],
    },
    ("resnet32", tuple(range(1, 15))): {
        2: [6, 11, 13, 15],
        3: [6, 11, 14, 15],
        4: [6, 11, 13, 15],
        5: [6, 11, 14, 15],
        **{j: [11, 13, 14, 15] for j in range(6, 11)},
        11: [12, 13, 15],
        12: [13, 14, 15],
        13: [14, 15],
        14: [15],
    },
}


@dataclass(frozen=True)
class MLAANParams:
    # README and run32-cifar10.txt (momentum 0.995); wx, wy: the model's defaults.
    momentum: float = param(0.995, "EMA momentum of the frozen copy's weights", low=0, high=1)
    ema: str = param(
        "last",
        "which frozen copies move: last: the last auxiliary net's (the authors' code); every",
        choices=EMA_MODES,
    )
    wx: float = param(0.001, "weight of the greedy path's classifier loss", low=0)
    wy: float = param(0.999, "weight of the cascade path's loss", low=0)
    depth: int = param(4, "copied blocks per auxiliary net (without the authors' table)", low=1)
    merge_stem: bool = param(True, "a first module of the stem alone trains with the next")


def reshaping_rule(backbone: Backbone, cut_unit: int, depth: int) -> list[int]:
    """Units copied after ``cut_unit`` without the authors' table: every later unit whose
    output shape differs from its input's, the last hidden unit, then the last units until
    ``depth`` are chosen."""
    n = backbone.n_hidden
    later = range(cut_unit + 1, n)
    chosen = {u for u in later if backbone.shapes[u] != backbone.shapes[u - 1]} | {n - 1}
    for u in reversed(later):
        if len(chosen) >= depth:
            break
        chosen.add(u)
    return sorted(chosen)


@register("mlaan")
class MLAAN(Cascade):
    Params = MLAANParams
    capabilities = Capabilities(reads_modules=True, greedy_path=True)

    def __init__(self, backbone, split, data, params: MLAANParams) -> None:
        cuts = tuple(split.last_unit(k) for k in range(split.K - 1))
        self._table = AUTHORS_LAYERS.get((backbone.name, cuts))
        #: hidden units each auxiliary net copies (None for module 0), filled by build_aux
        self.copied: list[list[int] | None] = []
        greedy: list[nn.Module] = []
        self._new_greedy = greedy
        super().__init__(backbone, split, data, params)
        del self._new_greedy, self._table
        self.greedy = nn.ModuleList(greedy)

    def build_aux(self, backbone: Backbone, cut: Cut) -> nn.Module:
        classes = self.data.num_classes
        if cut.k == 0:  # module 0 learns only through module 1's cascade
            self.copied.append(None)
            self._new_greedy.append(nn.Sequential())
            return nn.Sequential()
        p: MLAANParams = self.params
        if self._table is not None:
            units = self._table[cut.unit]
        else:
            units = reshaping_rule(backbone, cut.unit, p.depth)
        self.copied.append(units)
        self._new_greedy.append(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cut.shape[0], classes))
        )
        first, *rest = (copy.deepcopy(backbone.units[u]) for u in units)
        ema = copy.deepcopy(first)
        channels = backbone.shapes[units[-1]][0]
        if len(backbone.shapes[units[-1]]) != 3:
            raise UserError("mlaan copies convolutional units; the last hidden unit is not one")
        head = nn.Sequential(
            *rest, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)
        )
        return MomentumAux(first, ema, head, scale=False)

    def aux_modules(self, k: int) -> list[nn.Module]:
        if k == 0:
            return []
        aux = self.aux[k]
        return [self.greedy[k], aux.lb, aux.ema, aux.head]

    def local_loss(self, k: int, out: Paths | torch.Tensor, batch: Batch) -> torch.Tensor | None:
        if k == 0:  # no overlap, no loss: one tensor
            return None
        p: MLAANParams = self.params
        aux = self.aux[k]
        greedy = F.cross_entropy(self.greedy[k](out.greedy), batch.y)
        cascade = F.cross_entropy(aux.head(aux.features(out.cascade)), batch.y)
        return p.wx * greedy + p.wy * cascade

    def output_loss(self, logits: Paths, batch: Batch) -> torch.Tensor:
        # the cascade path's alone, as the authors' (their greedy logits are computed, unused)
        return F.cross_entropy(logits.cascade, batch.y)

    def module_of(self, unit: int) -> int:
        return max(k for k in range(self.split.K) if self.split.starts[k] <= unit)

    def after_backward(self, k: int, view: ModulesView) -> None:
        K = self.split.K
        if k != K - 1 or K < 3:  # after the last backward, before the optimizer step
            return
        p: MLAANParams = self.params
        paths = range(1, K - 1) if p.ema == "every" else [K - 2]
        m = p.momentum
        for path in paths:
            unit = self.copied[path][0]
            owner = self.module_of(unit)
            current = view.named_parameters(owner)
            prefix = f"{unit - self.split.starts[owner]}."
            for name, ema in self.aux[path].ema.named_parameters():
                ema.mul_(m).add_(current[prefix + name], alpha=1 - m)
