"""InfoPro (Wang, Ni, Song, Yang & Huang, "Revisiting Locally Supervised Learning", ICLR 2021),
as the AugLocal authors ran it.

Local loss of module k: ``lambda1_k * reconstruction + lambda2_k * cross entropy``.

* reconstruction: the features, bilinearly upsampled to the image size (align_corners), go
  through a small decoder (3x3 conv to 12 channels + BN + ReLU, 3x3 conv to the image's
  channels, sigmoid); binary cross entropy against the *de-normalised* input image, using the
  dataset's own mean and std (no constants tied to CIFAR);
* cross entropy: a 3x3 conv doubling the width with stride 2 (keeping it with stride 1 once the
  backbone's widest hidden width is reached) + BN + ReLU, global pooling, Linear to
  ``hidden_dim`` (128), ReLU, Linear to the classes; on CIFAR ResNets this is exactly the
  authors' 16->32, 32->64, 64->64 table;
* lambdas interpolate linearly from the first local module to the last (module K-2):
  ResNet-32 (5, 0.05) -> (0.2, 0.5), ResNet-110 (5, 0) -> (0.5, 1) (docs/reference.md, run.sh of
  the AugLocal code); other nets use the ResNet-32 values unless given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from locbench.methods.base import Batch, Cut, Method, register
from locbench.methods.params import param
from locbench.nets.backbone import Backbone

# (lambda1, lambda2) at the first and the last local module.
PUBLISHED_LAMBDAS = {
    "resnet32": ((5.0, 0.05), (0.2, 0.5)),
    "resnet110": ((5.0, 0.0), (0.5, 1.0)),
}
DEFAULT_LAMBDAS = PUBLISHED_LAMBDAS["resnet32"]


@dataclass(frozen=True)
class InfoProParams:
    # None: the published value for the backbone.
    lambda1_first: float | None = param(None, "reconstruction weight, first module", low=0)
    lambda2_first: float | None = param(None, "cross-entropy weight, first module", low=0)
    lambda1_last: float | None = param(None, "reconstruction weight, last local module", low=0)
    lambda2_last: float | None = param(None, "cross-entropy weight, last local module", low=0)
    hidden_dim: int = param(128, "classifier MLP width", low=1, high=1_000_000)
    decoder_width: int = param(12, "decoder channels", low=1, high=100_000)


def interpolate(first: float, last: float, k: int, n_local: int) -> float:
    """Linear interpolation over local modules 0 .. n_local-1 (the authors' ratio k/(K-2))."""
    ratio = k / (n_local - 1) if n_local > 1 else 0.0
    return first * (1 - ratio) + last * ratio


def interpolation_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation with ``align_corners=True``."""
    if n_in == 1:
        return torch.ones(n_out, 1)
    position = torch.arange(n_out, dtype=torch.float64) * (n_in - 1) / max(n_out - 1, 1)
    low = position.floor().long().clamp(max=n_in - 2)
    frac = position - low
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights[rows, low] = 1 - frac
    weights[rows, low + 1] += frac
    return weights.float()


class Decoder(nn.Module):
    """Bilinear upsampling to the image size (``align_corners=True``), then the conv decoder.

    The upsampling is written as two products with interpolation matrices, ``R @ f @ C.T``:
    the same operator as ``F.interpolate(..., mode="bilinear", align_corners=True)`` (equal to
    float rounding), 1.2-3x faster forward + backward on CPU, where ``upsample_bilinear2d``
    took a sixth of an InfoPro step; at equal sizes it is skipped (the identity)."""

    def __init__(self, shape: tuple[int, ...], image_shape: tuple[int, ...], width: int) -> None:
        super().__init__()
        channels, height, width_in = shape
        self.same_size = (height, width_in) == tuple(image_shape[1:])
        self.register_buffer("rows", interpolation_matrix(height, image_shape[1]), persistent=False)
        self.register_buffer(
            "cols", interpolation_matrix(width_in, image_shape[2]).t(), persistent=False
        )
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, image_shape[0], 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        up = features if self.same_size else self.rows @ features @ self.cols
        return self.net(up)


@register("infopro")
class InfoPro(Method):
    Params = InfoProParams

    def __init__(self, backbone, split, data, params: InfoProParams) -> None:
        super().__init__(backbone, split, data, params)
        (l1f, l2f), (l1l, l2l) = PUBLISHED_LAMBDAS.get(backbone.name, DEFAULT_LAMBDAS)
        p = params
        self.lambdas_first = (
            l1f if p.lambda1_first is None else p.lambda1_first,
            l2f if p.lambda2_first is None else p.lambda2_first,
        )
        self.lambdas_last = (
            l1l if p.lambda1_last is None else p.lambda1_last,
            l2l if p.lambda2_last is None else p.lambda2_last,
        )
        n_local = split.K - 1
        self.lambdas = [
            (
                interpolate(self.lambdas_first[0], self.lambdas_last[0], k, n_local),
                interpolate(self.lambdas_first[1], self.lambdas_last[1], k, n_local),
            )
            for k in range(n_local)
        ]
        self.decoders = nn.ModuleList(
            Decoder(backbone.shapes[split.last_unit(k)], data.image_shape, p.decoder_width)
            for k in range(n_local)
        )
        # De-normalisation statistics as buffers, so .to(device) moves them with the method.
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(data.mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(data.std).view(shape), persistent=False)

    def build_aux(self, backbone: Backbone, cut: Cut) -> nn.Module:
        channels = cut.shape[0]
        widest = max(shape[0] for shape in backbone.shapes[:-1])
        out, stride = (2 * channels, 2) if channels < widest else (channels, 1)
        hidden = self.params.hidden_dim
        return nn.Sequential(
            nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(out, hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.data.num_classes),
        )

    def aux_modules(self, k: int) -> list[nn.Module]:
        return [self.aux[k], self.decoders[k]]

    def local_loss(self, k: int, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        lambda1, lambda2 = self.lambdas[k]
        # Real images de-normalise into [0, 1]; the clamp only guards synthetic data.
        image = (batch.x * self.std + self.mean).clamp(0.0, 1.0)
        reconstruction = F.binary_cross_entropy(self.decoders[k](out), image)
        return lambda1 * reconstruction + lambda2 * F.cross_entropy(self.aux[k](out), batch.y)
