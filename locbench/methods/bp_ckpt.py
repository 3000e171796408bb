"""End-to-end backpropagation with activation (gradient) checkpointing over K segments.

The memory baseline the seed paper's reviewers asked for (InfoPro reports it too): the split's
K modules become K checkpoint segments. Each segment but the last keeps only its input during
the forward pass and recomputes its activations in the backward pass. No local loss, no
detach: the only loss is the output loss, so gradients equal plain BP's.

Recomputation runs BatchNorm forward a second time; its running statistics are frozen
(momentum 0) during the recompute, so they are updated exactly once per step, as in BP.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from locbench.methods.base import Batch, Method, register


@contextlib.contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    tracked = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in tracked]
    for m in tracked:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(tracked, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


@register("bp-ckpt")
class BPCheckpoint(Method):
    def build_aux(self, backbone, cut) -> nn.Module:
        return nn.Identity()  # no auxiliary network: one global loss

    def aux_modules(self, k: int) -> list[nn.Module]:
        return []

    def forward_module(
        self, k: int, module: nn.Module, h: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        if k == self.split.K - 1 or not torch.is_grad_enabled():
            return module(h)
        return checkpoint(
            module,
            h,
            use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), frozen_batchnorm_stats(module)),
        )

    def local_loss(self, k: int, out: torch.Tensor, batch: Batch) -> None:
        return None

    def boundary(self, k: int, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        return out  # stay attached: the output loss backpropagates through every segment
