"""Assembling a configuration: the split it asks for, and its backbone and method, seeded."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from locbench.data.base import DataInfo
from locbench.errors import UserError
from locbench.methods import Method, make_params
from locbench.methods.loading import resolve_method
from locbench.nets.backbone import Backbone, get_backbone
from locbench.nets.split import Split, check_K
from locbench.settings.run_config import RunConfig


def requested_split(config: RunConfig, n_hidden: int) -> Split:
    if config.cuts is not None:
        return Split.from_cuts(n_hidden, config.cuts)
    if config.K is None:
        return Split.every_unit(n_hidden)
    check_K(config.K, n_hidden)
    return Split.uniform(n_hidden, config.K)


def check_split(config: RunConfig) -> None:
    """Raise the one-line error a run of ``config`` would hit when splitting its net (K or
    cuts out of range), building the backbone on the meta device: nothing is allocated."""
    requested_split(config, hidden_units(config.net))


@functools.cache
def hidden_units(net: str) -> int:
    """Hidden units of the registered backbone ``net`` (built once per process, on meta)."""
    with torch.device("meta"):
        return get_backbone(net, 10).n_hidden


def build(
    config: RunConfig,
    data: DataInfo | None = None,
    num_classes: int = 10,
    image_size: int | None = None,
    net: Callable[[int], Backbone] | None = None,
) -> tuple[Backbone, Method]:
    """Backbone and method of ``config`` after seeding, on the CPU (or fake, when called under
    ``FakeTensorMode``).

    ``data``: the dataset's statistics; without it, ``num_classes`` classes and placeholder
    statistics at the net's input shape (enough for shapes, memory and FLOPs).
    ``image_size``: re-probe the backbone at that input side. ``net``: a factory
    ``num_classes -> Backbone`` used instead of the registered ``config.net``."""
    method_cls = resolve_method(config.method)
    params = make_params(method_cls, config.method_params)
    torch.manual_seed(config.seed)
    classes = data.num_classes if data is not None else num_classes
    backbone = (net or (lambda n: get_backbone(config.net, n)))(classes)
    if image_size is not None and image_size != backbone.input_shape[1]:
        shape = (backbone.input_shape[0], image_size, image_size)
        backbone = Backbone(backbone.name, list(backbone.units), shape, backbone.specs)
    if data is None:
        c = backbone.input_shape[0]
        data = DataInfo("placeholder", classes, backbone.input_shape, (0.5,) * c, (0.25,) * c)
    split = method_cls.plan_split(requested_split(config, backbone.n_hidden), params)
    try:
        method = method_cls(backbone, split, data, params)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a method's own bug is one line, not a traceback
        text = str(e).strip().splitlines()
        detail = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
        raise UserError(f"method {config.method!r} failed to build: {detail}") from None
    return backbone, method
