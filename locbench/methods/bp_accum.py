"""End-to-end backpropagation with gradient accumulation over M micro-batches.

The other standard way to cut BP's memory (besides activation checkpointing, ``bp-ckpt``): the
same global batch and the same single update per step, but only 1/M of the batch's activations
alive at a time. The harness runs the micro-batches (see "Micro-batches" in
:mod:`locbench.methods.base`): gradients equal plain BP's on the same batch, except that
BatchNorm normalises each micro-batch with its own statistics (and updates its running
statistics once per micro-batch), as gradient accumulation does in any training script.
"""

from __future__ import annotations

from dataclasses import dataclass

from locbench.methods.base import register
from locbench.methods.bp import BP
from locbench.methods.params import param


@dataclass(frozen=True)
class AccumParams:
    micro_batches: int = param(
        2, "micro-batches per step: the same batch and update, 1/M of its activations", low=1,
        high=2**20,
    )  # fmt: skip


@register("bp-accum")
class BPAccum(BP):
    Params = AccumParams

    def micro_batches(self) -> int:
        return self.params.micro_batches
