"""FLOPs of one training step, counted with ``torch.utils.flop_counter`` on the ``meta``
device: shapes only, no kernels, so even ResNet-110 at batch 1024 takes seconds. A FLOP is one
multiply or one add (a multiply-add is 2), as ``FlopCounterMode`` counts; the optimizer step is
not counted. Every run's record and ``locbench describe`` count them here."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from locbench.data.base import DataInfo
from locbench.harness.build import Resolved, build
from locbench.harness.trainer import LocalTrainer, probe_config
from locbench.harness.windows import warm_up
from locbench.measure.meters import PhaseClock
from locbench.methods import Method
from locbench.nets.backbone import Backbone
from locbench.settings.run_config import RunConfig

META = torch.device("meta")
#: What a method's hooks raise on the meta device when they need tensor values (see the
#: contract in ``locbench/methods/base.py``): such a step cannot be traced, so it has no FLOPs.
TRACE_ERRORS = (RuntimeError, ValueError, TypeError, NotImplementedError)


def step_flops(
    method: Method,
    backbone: Backbone,
    batch_size: int,
    config: RunConfig,
    per_module: list[int] | None = None,
) -> tuple[int, list[int]]:
    """FLOPs of one steady-state training step, and of each local module's auxiliary part of
    it; moves ``method`` and ``backbone`` to the meta device.

    Uncounted steps first (one, or the method's ``capabilities.steady_after``) make the
    gradients and whatever state the method carries across steps; the next is counted. The
    auxiliary part of module k is its local loss: forward, and backward down to the cut (to the
    module's output and to the method's own parameters), read on that same step
    (``LocalTrainer(local_backward_apart=True)``); what
    remains of the step is the backbone's (incl. the output head). So every part is a sum of
    counted ops, never negative, and the parts add up to the total. A ``per_module`` list
    receives each module's forward + local loss + backward FLOPs, read at the step's phase
    points as a run's :class:`~locbench.measure.meters.PhaseClock` reads time."""
    config = probe_config(config)
    trainer = LocalTrainer.for_config(
        config, backbone, method.split, method, META, local_backward_apart=True
    )
    x = torch.empty(batch_size, *backbone.input_shape, device=META)
    y = torch.zeros(batch_size, dtype=torch.long, device=META)
    warm_up(trainer, x, y)
    with FlopCounterMode(display=False) as counter:
        clock = PhaseClock(method.split.K, META, reading=counter.get_total_flops)
        trainer.train_step(x, y, clock=clock)
    parts = clock.end_step()
    total = counter.get_total_flops()
    aux = [int(f) for f in parts["local_s"][: method.split.K - 1]]
    if per_module is not None:
        per_module[:] = [int(m) for m in PhaseClock.module_times(parts)]
    check_flops(total, aux)
    return total, aux


def check_flops(total: int, aux: list[int]) -> None:
    """The parts of a step's FLOPs are counts: none negative, none above the step's total."""
    if total < 0 or any(a < 0 for a in aux) or sum(aux) > total:
        raise RuntimeError(f"inconsistent FLOP count: total {total}, auxiliary parts {aux}")


def config_flops(
    run: Resolved,
    data: DataInfo | None = None,
    batch_size: int = 64,
    num_classes: int = 10,
    net: Callable[[int], Backbone] | None = None,
    per_module: list[int] | None = None,
) -> tuple[int, list[int]]:
    """:func:`step_flops` of the resolved ``run``, built afresh on the meta device (``build``'s
    arguments): nothing is allocated, and a run's own modules are never touched or copied.

    Raises what the method raises when it cannot run on meta tensors (``TRACE_ERRORS``, see
    ``locbench/methods/base.py``). The global random state is left as it was: ``build`` reseeds."""
    with torch.random.fork_rng(devices=[]), torch.device(META):
        backbone, method = build(run, data, num_classes=num_classes, net=net)
        return step_flops(method, backbone, batch_size, run.config, per_module)


def meta_backbone(backbone: Backbone) -> Callable[[int], Backbone]:
    """A ``net`` factory for :func:`config_flops` giving ``backbone``'s structure on the meta
    device (call it under ``torch.device("meta")``): a run's FLOPs are those of the backbone
    it trains, which need not be a registered net (``prepare(config, net=...)``). No parameter
    or buffer data is copied."""

    def factory(num_classes: int) -> Backbone:
        memo: dict[int, torch.Tensor] = {}
        for t in [*backbone.units.parameters(), *backbone.units.buffers()]:
            empty = torch.empty_like(t, device=META)
            memo[id(t)] = (
                nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
            )
        units = copy.deepcopy(list(backbone.units), memo)
        return Backbone(backbone.name, units, backbone.input_shape, backbone.specs)

    return factory
