"""SGD with Nesterov momentum and a cosine schedule after a linear warm-up (AugLocal settings)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def make_sgd(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
) -> torch.optim.SGD:
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )


def warmup_cosine(
    epoch: float, base_lr: float, epochs: int, warmup_epochs: float, warmup_start_lr: float
) -> float:
    """Learning rate at a (fractional) epoch: a linear ramp from ``warmup_start_lr`` to
    ``base_lr`` over ``warmup_epochs``, then cosine decay to 0 at ``epochs``.

    AugLocal (docs/reference.md): lr 0.8, 10 warm-up epochs from 0.01, 400 epochs."""
    if epoch < warmup_epochs:
        return warmup_start_lr + (base_lr - warmup_start_lr) * epoch / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min((epoch - warmup_epochs) / span, 1.0)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
