"""``locbench plan``: what fits a memory budget, for each method, predicted on fake tensors.

Two questions, one table:

* Without a batch size: the largest batch each method trains at within the budget
  (:func:`~locbench.analysis.estimate.max_batch`), at the configuration's K or cuts
  (``--cuts balanced``: each local method's balanced cuts at the configuration's batch size;
  BP's variants keep uniform ones).
* With a batch size: whether each method fits at that batch; for ``bp-ckpt`` and ``bp-accum``,
  the fewest checkpoint segments and micro-batches that fit
  (:func:`~locbench.analysis.equal_memory.bp_baselines`).

Every row has the predicted peak (tracked bytes with CUDA's 512-byte rounding, the figure
``--max-batch`` fits) and the FLOPs of one training step at its batch.
"""

from __future__ import annotations

import dataclasses

import torch

from locbench.analysis.equal_memory import bp_baselines
from locbench.analysis.estimate import estimate, for_method, max_batch
from locbench.analysis.side_by_side import side_by_side
from locbench.errors import UserError
from locbench.harness.build import Resolved, build, resolve
from locbench.harness.flops import config_flops
from locbench.measure.memory import TrackedPeak
from locbench.records import END_TO_END
from locbench.settings.run_config import BALANCED, RunConfig

SEARCHED = ("bp-ckpt", "bp-accum")  # their segments / micro-batches are what the plan picks


def plan(
    config: RunConfig,
    methods: list[str],
    budget: int,
    batch_size: int | None = None,
    num_classes: int = 10,
    jobs: int = 1,
) -> list[dict]:
    """One row per method (see the module docstring): ``method``, ``K``, ``cuts`` (the last
    unit of each module but the last), ``micro_batches`` (bp-accum), ``batch_size``,
    ``peak_bytes`` (rounded), ``fits``, ``flops`` (one training step). ``jobs``: methods
    planned side by side in that many processes (:mod:`locbench.analysis.side_by_side`). A
    method that cannot be estimated has its row, with ``error`` and no peak."""
    if batch_size is not None:  # balanced cuts are searched at the batch planned for
        config = dataclasses.replace(config, batch_size=batch_size)
    calls = [(config, name, budget, batch_size, num_classes) for name in methods]
    return side_by_side(plan_row, calls, jobs)


def plan_row(
    config: RunConfig, name: str, budget: int, batch_size: int | None, num_classes: int
) -> dict:
    """:func:`plan`'s row for method ``name``."""
    base = for_method(config, name)
    if name in END_TO_END and base.cuts == BALANCED:  # nothing local to balance: uniform
        base = dataclasses.replace(base, cuts=None)
    if batch_size is not None and name in SEARCHED:
        options = bp_baselines(base, budget, num_classes=num_classes, rounded=True)
        found = [c for c in options if c.method == name]
        chosen = found[0] if found else base
    else:
        chosen = base
    run = resolve(chosen)
    error = None
    try:
        if batch_size is None:
            batch, peak = max_batch(run, budget, num_classes=num_classes)
        else:
            batch, peak = batch_size, estimate(run, batch_size, num_classes=num_classes)
    except UserError as e:  # StepFails, or the method not building on fake tensors
        batch, peak, error = batch_size or 0, None, str(e)
    row = _row(name, run, batch, peak, budget, num_classes)
    return row | {"error": error} if error else row


def _row(
    name: str, run: Resolved, batch: int, peak: TrackedPeak | None, budget: int, num_classes: int
) -> dict:
    with torch.device("meta"):
        split = build(run, num_classes=num_classes)[1].split
    row = {
        "method": name,
        "K": split.K,
        "cuts": [split.last_unit(k) for k in range(split.K - 1)],
        "micro_batches": getattr(run.params, "micro_batches", None),
        "batch_size": batch,
        "peak_bytes": peak.peak_bytes_rounded if peak is not None else None,
        "fits": peak is not None and batch > 0 and peak.peak_bytes_rounded <= budget,
        "flops": None,
    }
    if batch and peak is not None:
        row["flops"] = config_flops(run, None, batch, num_classes)[0]
    return row
