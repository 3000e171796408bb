"""End-to-end backpropagation: one module, no auxiliary network, one global loss."""

from __future__ import annotations

from locbench.methods.base import Method, register
from locbench.nets.split import Split


@register("bp")
class BP(Method):
    @classmethod
    def plan_split(cls, split: Split, params: object) -> Split:
        # BP is K = 1 whatever K was asked for; the record says K = 1.
        return Split(split.n_hidden, (0,))
