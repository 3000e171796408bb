"""The method contract: what a training method defines, and what the harness guarantees it.

A *method* turns a backbone cut into K modules into a local-learning scheme. It is an
``nn.Module`` that owns only its auxiliary networks (heads, decoders, ...). It never owns the
training loop, the device, the optimizer, timing or memory measurement: the harness
(:mod:`bench.trainer`) does, identically for every method, so their numbers are comparable.

The harness runs one training step like this::

    h = x
    for k in range(K):
        out = method.forward_module(k, modules[k], h)   # default: modules[k](h)
        if k < K - 1:
            loss = method.local_loss(k, out, batch)
            if loss is not None:
                loss.backward()                   # frees module k's graph
            h = method.boundary(k, out)           # default: out.detach()
        else:
            loss = method.output_loss(out, batch) # out = logits of the output head
            loss.backward()
    optimizer.step()                              # one SGD step over backbone + method params

Guarantees the harness gives every hook:
  * ``__init__`` runs on the CPU in float32 after the global seed is set; the harness then moves
    the whole method (its parameters and buffers) to the run's device and dtype with ``.to()``.
    Never call ``.cuda()`` or pick a device yourself.
  * ``forward_module(k, module, h)`` runs module k (the backbone's units, in train mode); the
    default just calls it. Override it to change *how* it runs (e.g. activation checkpointing),
    never what it computes.
  * ``local_loss(k, ...)`` is called for k = 0 .. K-2 in order, once per step, in train mode,
    with ``out`` still attached to module k's graph; the returned 0-dim tensor is
    backpropagated immediately by the harness. ``None`` means "no local loss": nothing is
    backpropagated (end-to-end methods that keep the graph across modules).
  * ``boundary(k, out)`` is called right after that backward. Whatever it returns is module
    k+1's input. Returning a tensor attached to module k's graph breaks gradient isolation.
  * ``output_loss`` sees the output head's logits of the last module.
  * All parameters of ``self`` are optimised by the same optimizer as the backbone.

A new method is one file: subclass :class:`Method`, declare its hyperparameters as a dataclass
in ``Params``, override the hooks you need, and register it with ``@METHODS.register("name")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench.backbone import Backbone, Shape
from bench.data import DataInfo
from bench.registry import Registry
from bench.split import Split


@dataclass(frozen=True)
class NoParams:
    """A method without hyperparameters."""


@dataclass(frozen=True)
class Cut:
    """Where module ``k`` ends: the index of its last hidden unit and that unit's output shape."""

    k: int
    unit: int
    shape: Shape


@dataclass(frozen=True)
class Batch:
    """One training batch as the method sees it: normalised inputs and integer labels."""

    x: torch.Tensor
    y: torch.Tensor


class Method(nn.Module):
    """Base class of every training method. See the module docstring for the contract."""

    #: Short registry name, set by ``METHODS.register``.
    name: ClassVar[str] = ""
    #: Dataclass of hyperparameters; instances are stored in run records.
    Params: ClassVar[type] = NoParams

    def __init__(self, backbone: Backbone, split: Split, data: DataInfo, params: object) -> None:
        super().__init__()
        self.backbone_name = backbone.name
        self.split = split
        self.data = data
        self.params = params
        last_units = [split.last_unit(k) for k in range(split.K - 1)]
        cuts = [Cut(k, u, backbone.shapes[u]) for k, u in enumerate(last_units)]
        self.aux = nn.ModuleList(self.build_aux(backbone, cut) for cut in cuts)

    @classmethod
    def plan_split(cls, split: Split, params: object) -> Split:
        """The split this method actually trains, given the one the user asked for.

        Default: unchanged. End-to-end methods return a single module."""
        return split

    def build_aux(self, backbone: Backbone, cut: Cut) -> nn.Module:
        """The auxiliary network of local module ``cut.k`` (called once per cut, k < K-1).

        ``backbone.specs[cut.unit + 1:]`` are the specs of the later units, for methods that
        copy their structure. Default: a linear classifier on globally pooled features."""
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cut.shape[0], self.data.num_classes)
        )

    def forward_module(self, k: int, module: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """Output of module ``k`` on input ``h``. Default: ``module(h)``."""
        return module(h)

    def local_loss(self, k: int, out: torch.Tensor, batch: Batch) -> torch.Tensor | None:
        """Local loss of module ``k`` from its output ``out`` (attached to its graph).

        Default: cross entropy of the auxiliary network's prediction."""
        return F.cross_entropy(self.aux[k](out), batch.y)

    def aux_modules(self, k: int) -> list[nn.Module]:
        """Every auxiliary network local module ``k`` uses (for parameter counts and
        ``locbench describe``). Default: ``[self.aux[k]]``; add decoders and the like."""
        return [self.aux[k]]

    def boundary(self, k: int, out: torch.Tensor) -> torch.Tensor:
        """Input of module ``k+1``; detached, so no gradient crosses the cut."""
        return out.detach()

    def output_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Loss of the last module, which ends in the backbone's output head."""
        return F.cross_entropy(logits, batch.y)


METHODS: Registry[type[Method]] = Registry("method")


def register(name: str):
    """Class decorator: ``@register("dgl")`` adds the method under its short name."""

    def decorate(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS.add(name, cls)
        return cls

    return decorate
