"""BP baselines at equal memory: the standard ways to cut end-to-end BP's memory, configured to
fit the peak of a local method, so that a memory saving is asked as "how accurate, how fast, at
the same memory" rather than against plain BP.

Two baselines, each at the *least* memory-saving setting that fits (the fastest that fits):

* ``bp-ckpt``: activation checkpointing over K segments (uniform cuts), the fewest segments
  whose estimated peak fits. The peak is not monotone in K (it depends on where uniform cuts
  fall: ResNet-20 at batch 32 needs less at K = 3 than at K = 4), so K = 2, 3, ... are tried
  in turn, after checking that one segment per unit fits at all;
* ``bp-accum``: gradient accumulation over M micro-batches of the same batch, the fewest
  micro-batches whose estimated peak fits. One micro-batch's activations scale with its size,
  ceil(batch / M), which never grows with M: a widening search and bisection find it.

Peaks are the fake-tensor estimates (:func:`locbench.analysis.estimate.estimate`, the tracked
peak of a steady-state step: equal to a run's tracked peak to the byte), at the configuration's
batch size and its dataset's classes. Either baseline may not fit at all (a budget below what
even the most segments or micro-batches reach): it is then left out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from locbench.analysis.estimate import StepFails, estimate
from locbench.data.catalog import DATASETS
from locbench.harness.build import hidden_units, resolve
from locbench.records import END_TO_END
from locbench.settings.run_config import RunConfig


def peak_of(
    config: RunConfig,
    known: dict[str, int] | None = None,
    num_classes: int | None = None,
    rounded: bool = False,
) -> int:
    """Estimated tracked peak (bytes) of one steady-state step of ``config`` at its batch size,
    with ``num_classes`` classes (default: its dataset's); ``rounded``: with CUDA's 512-byte
    rounding of every storage (a GPU budget), else as tracked. ``known``: the peaks estimated
    so far (the searches ask for the same ones again and again)."""
    run = resolve(config)
    classes = num_classes or DATASETS.get(run.config.dataset).num_classes
    key = f"{run.run_id}/{classes}/{rounded}"
    if known is not None and key in known:
        return known[key]
    peak = estimate(run, run.config.batch_size, num_classes=classes)
    bytes_ = peak.peak_bytes_rounded if rounded else peak.peak_bytes
    if known is not None:
        known[key] = bytes_
    return bytes_


def fewest(values: list[int], fits: Callable[[int], bool]) -> int | None:
    """The first of the increasing ``values`` for which ``fits`` holds, assuming it keeps
    holding after (memory falls as micro-batches grow): a widening scan from the smallest
    (the cheap ones: a step of many micro-batches takes long to trace), then bisection. None
    when not even the last fits."""
    lo, i, step = -1, 0, 1  # values[lo] does not fit (lo = -1: none tried)
    while i < len(values) and not fits(values[i]):
        lo = i
        i = len(values) if i == len(values) - 1 else min(i + step, len(values) - 1)
        step *= 2
    if i >= len(values):
        return None
    hi = i
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(values[mid]) else (mid, hi)
    return values[hi]


def bp_baselines(
    config: RunConfig,
    budget: int,
    known: dict[str, int] | None = None,
    num_classes: int | None = None,
    rounded: bool = False,
) -> list[RunConfig]:
    """``bp-ckpt`` and ``bp-accum`` configurations of ``config``'s net, data, batch and
    settings whose estimated peaks are at most ``budget`` bytes (each at its fewest segments
    or micro-batches); those that cannot fit are left out. ``known``, ``num_classes``,
    ``rounded``: see :func:`peak_of`."""
    known = {} if known is None else known

    def fits(candidate: RunConfig) -> bool:
        try:
            return peak_of(candidate, known, num_classes, rounded) <= budget
        except StepFails:  # e.g. a micro-batch of one through BatchNorm1d
            return False

    base = dataclasses.replace(config, K=None, cuts=None, method_params={})
    out = []

    def ckpt(K: int) -> RunConfig:
        return dataclasses.replace(base, method="bp-ckpt", K=K)

    segments = list(range(2, hidden_units(config.net) + 1))
    K = None
    if segments and fits(ckpt(segments[-1])):
        K = next(K for K in segments if fits(ckpt(K)))
    if K is not None:
        out.append(ckpt(K))
    batch = resolve(config).config.batch_size

    def accum(M: int) -> RunConfig:
        return dataclasses.replace(base, method="bp-accum", method_params={"micro_batches": M})

    M = fewest(list(range(2, batch + 1)), lambda M: fits(accum(M)))
    if M is not None:
        out.append(accum(M))
    return out


def equal_memory_baselines(configs: Iterable[RunConfig]) -> list[RunConfig]:
    """For every local method's configuration among ``configs``, the BP baselines at its
    estimated peak (:func:`bp_baselines`), each once, in order, none already in ``configs``."""
    configs = list(configs)
    seen = {resolve(c).run_id for c in configs}
    out, known = [], {}
    for config in configs:
        if config.method in END_TO_END:
            continue
        for baseline in bp_baselines(config, peak_of(config, known), known):
            run_id = resolve(baseline).run_id
            if run_id not in seen:
                seen.add(run_id)
                out.append(baseline)
    return out
