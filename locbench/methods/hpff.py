"""HPFF (Su et al., "HPFF: Hierarchical Locally Supervised Learning with Patch Feature Fusion",
ECCV 2024; authors' code Zeudfish/HPFF, ``Exp on CIFAR_SVHN_STL/network/resnetInfoPro_HPFF.py``,
``network/auxiliary_net.py``, ``network/config.py``, ``train.py``).

HPFF trains every local module twice over, along two paths through the same blocks:

* the *greedy* path ("x" in their code): module k on module k-1's detached output, scored by
  a classifier of its own ("net_classifier");
* the *cascade* path ("y"): module k-1 rerun from *its* detached input, then module k, so that
  module k's loss also trains module k-1 (the hierarchy). On that output: a patch-split
  reconstruction (below) and a second classifier ("aux_classifier").

Module k's loss is ``wx * CE(greedy) + wy * (lambda1_k * patch BCE + lambda2_k * CE(cascade))``
(``wx = 0.001``, ``wy = 0.999``, the model's defaults; ``train.py`` never changes them), with
the lambdas interpolated from ``(ixx_1, ixy_1) = (5, 0.5)`` towards ``(ixx_2, ixy_2) = (0, 0)``
at the authors' ratio. The first module has no loss of its own: it learns only through module
1's cascade. The last module's loss is ``wx * CE(head(x)) + wy * CE(head(y))``.

Here the cascade is the declared overlap: ``overlap(k)`` = every unit of module k-1, so the
harness reruns module k-1 from its kept (detached) input in module k's forward and module k's
loss trains both. With ``Capabilities(greedy_path=True)`` the harness also runs module k on
its own (detached) input, the greedy path, and the losses get both outputs (``Paths``): the
greedy term's gradient stops at module k's input, as in the authors' code, and each block
runs three times per step as there.

The patch-split decoder: the features are cut into four quadrants (top-left, top-right,
bottom-left, bottom-right), each upsampled bilinearly (``align_corners``) to the size of the
image's matching quadrant and decoded by its own InfoPro decoder (conv 3x3 to 12 + BN + ReLU,
conv 3x3 to 3, sigmoid); the loss is the sum of the four BCEs against the de-normalised
image's quadrants.

Module count: the authors' modules start after the stem (their ``Encoder_Net`` holds the
blocks; the stem trains with the first). A split whose first module is the stem alone has it
merged into the next (``merge_stem``): ResNet-32 at K=16 trains the authors' 15 modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from locbench.errors import UserError
from locbench.methods.base import Batch, Capabilities, Cut, Method, Paths, register
from locbench.methods.infopro import Decoder
from locbench.methods.man import classifier
from locbench.methods.params import param
from locbench.nets.backbone import Backbone
from locbench.nets.split import Split


@dataclass(frozen=True)
class HPFFParams:
    # The authors' README commands (ResNet-32 K=16 and ResNet-110 K=55 on CIFAR-10) and the
    # model's defaults (wx, wy; train.py does not pass them).
    wx: float = param(0.001, "weight of the greedy path's classifier loss", low=0)
    wy: float = param(0.999, "weight of the cascade path's loss", low=0)
    lambda1_first: float = param(5.0, "reconstruction weight at ratio 0 (ixx_1)", low=0)
    lambda2_first: float = param(0.5, "cascade cross-entropy weight at ratio 0 (ixy_1)", low=0)
    lambda1_last: float = param(0.0, "reconstruction weight at ratio 1 (ixx_2)", low=0)
    lambda2_last: float = param(0.0, "cascade cross-entropy weight at ratio 1 (ixy_2)", low=0)
    head_convs: int = param(2, "3x3 convs of the classifiers (2: 2c2f; 1: 1c2f)", low=1, high=8)
    hidden_dim: int = param(128, "classifier MLP width", low=1, high=1_000_000)
    decoder_width: int = param(12, "decoder channels", low=1, high=100_000)
    merge_stem: bool = param(True, "a first module of the stem alone trains with the next")


def halves(n: int) -> list[tuple[int, int]]:
    """The two halves ``[0, n//2)`` and ``[n//2, n)`` of a side, as the authors slice it."""
    return [(0, n // 2), (n // 2, n)]


class PatchDecoder(nn.Module):
    """HPFF's reconstruction: one InfoPro decoder per quadrant of the features, each against
    the image's matching quadrant; ``loss`` is the sum of the four BCEs."""

    def __init__(self, shape: tuple[int, ...], image_shape: tuple[int, ...], width: int) -> None:
        super().__init__()
        channels, height, breadth = shape
        if height < 2 or breadth < 2:
            raise UserError(
                f"the patch-split decoder needs features of at least 2x2; a cut has "
                f"{height}x{breadth}"
            )
        image_channels, image_height, image_width = image_shape
        self.quadrants = [
            (rows, cols, image_rows, image_cols)
            for rows, image_rows in zip(halves(height), halves(image_height))
            for cols, image_cols in zip(halves(breadth), halves(image_width))
        ]
        self.decoders = nn.ModuleList(
            Decoder(
                (channels, r[1] - r[0], c[1] - c[0]),
                (image_channels, ir[1] - ir[0], ic[1] - ic[0]),
                width,
            )
            for r, c, ir, ic in self.quadrants
        )

    def loss(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        total = features.new_zeros((), dtype=torch.float32)
        for (r, c, ir, ic), decoder in zip(self.quadrants, self.decoders):
            patch = features[:, :, r[0] : r[1], c[0] : c[1]]
            target = image[:, :, ir[0] : ir[1], ic[0] : ic[1]]
            total = total + F.binary_cross_entropy(decoder(patch), target)
        return total


class HPFFAux(nn.Module):
    """Module k's auxiliary nets: the greedy path's classifier, the cascade path's classifier
    and its patch-split decoder."""

    def __init__(self, greedy: nn.Module, cascade: nn.Module, decoder: PatchDecoder) -> None:
        super().__init__()
        self.greedy, self.cascade, self.decoder = greedy, cascade, decoder


def ratio(k: int, K: int) -> float:
    """Where module k's lambdas are: the authors' ``i / (local_module_num - 2)``, with their
    local_module_num = K + 1 (their modules start after the stem): ``k / (K - 1)``."""
    return k / (K - 1) if K > 1 else 0.0


def lambda_pairs(p, K: int) -> list[tuple[float, float]]:
    """``(lambda1_k, lambda2_k)`` for every module k < K - 1 (module 0's unused: no loss)."""
    rs = [ratio(k, K) for k in range(K - 1)]
    return [
        (
            p.lambda1_first * (1 - r) + p.lambda1_last * r,
            p.lambda2_first * (1 - r) + p.lambda2_last * r,
        )
        for r in rs
    ]


def merged_stem(split: Split) -> Split:
    """``split`` with a first module of unit 0 alone merged into module 1."""
    if split.K > 1 and len(split.unit_range(0)) == 1:
        return Split(split.n_hidden, (0, *split.starts[2:]))
    return split


class Cascade(Method):
    """HPFF's hierarchy, shared with MLAAN: module k reruns all of module k-1 (the declared
    overlap) and also runs on its own input (the greedy path), so that its losses get both
    :class:`Paths`; with ``params.merge_stem``, a first module of the stem alone is merged
    into the next. Module 0's local loss is the subclass's to leave out (``None``)."""

    capabilities = Capabilities(greedy_path=True)

    @classmethod
    def plan_split(cls, split: Split, params) -> Split:
        return merged_stem(split) if params.merge_stem else split

    def overlap(self, k: int) -> int:
        # the cascade reruns the whole of module k-1 from its input
        return len(self.split.unit_range(k - 1))


@register("hpff")
class HPFF(Cascade):
    Params = HPFFParams

    def __init__(self, backbone, split, data, params: HPFFParams) -> None:
        super().__init__(backbone, split, data, params)
        self.lambdas = lambda_pairs(params, split.K)
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(data.mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(data.std).view(shape), persistent=False)

    def build_aux(self, backbone: Backbone, cut: Cut) -> nn.Module:
        if cut.k == 0:  # module 0 learns only through module 1's cascade
            return nn.Sequential()
        p: HPFFParams = self.params
        widest = max(s[0] for s in backbone.shapes[:-1])
        channels, classes = cut.shape[0], self.data.num_classes

        def head() -> nn.Module:
            return classifier(channels, widest, p.head_convs, p.hidden_dim, classes)

        decoder = PatchDecoder(cut.shape, self.data.image_shape, p.decoder_width)
        return HPFFAux(head(), head(), decoder)

    def aux_modules(self, k: int) -> list[nn.Module]:
        if k == 0:
            return []
        aux = self.aux[k]
        return [aux.greedy, aux.cascade, aux.decoder]

    def image(self, batch: Batch) -> torch.Tensor:
        # Real images de-normalise into [0, 1]; the clamp only guards synthetic data.
        return (batch.x * self.std + self.mean).clamp(0.0, 1.0)

    def local_loss(self, k: int, out: Paths | torch.Tensor, batch: Batch) -> torch.Tensor | None:
        if k == 0:  # no overlap, no loss: one tensor
            return None
        p: HPFFParams = self.params
        aux = self.aux[k]
        lambda1, lambda2 = self.lambdas[k]
        greedy = F.cross_entropy(aux.greedy(out.greedy), batch.y)
        z = out.cascade
        reconstruction = aux.decoder.loss(z, self.image(batch))
        cascade = lambda1 * reconstruction + lambda2 * F.cross_entropy(aux.cascade(z), batch.y)
        return p.wx * greedy + p.wy * cascade

    def output_loss(self, logits: Paths, batch: Batch) -> torch.Tensor:
        p: HPFFParams = self.params
        greedy = F.cross_entropy(logits.greedy, batch.y)
        return p.wx * greedy + p.wy * F.cross_entropy(logits.cascade, batch.y)
