"""The pipeline bound: how much faster K gradient-isolated modules could train if each ran on
its own device (or each group of modules on one of P devices), from per-module costs.

Module k's cost m_k is its forward, its local loss and its backward (seconds from a run's
``module_times``, or FLOPs from ``locbench describe``). In a full pipeline the step rate is set
by the slowest stage, so the bound on the speed-up over running the modules one after another
is ``sum(m) / max(stage sum)``. It ignores transfers between stages, the pipeline's fill and
drain, and the optimizer step.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

#: Stage counts for which records and ``describe`` give the best grouping (those <= K).
STAGES = (2, 4, 8)


def best_grouping(times: Sequence[float], P: int) -> tuple[list[list[int]], float]:
    """The contiguous grouping of the modules into ``P`` non-empty stages whose largest stage
    sum is smallest, and its bound ``sum(times) / largest stage sum`` (``inf`` when every time
    is 0).

    Exact: a dynamic programme over (stages, modules) finds the smallest largest stage sum M;
    among the groupings that reach M, the earliest stages take as many modules as they can
    (leaving one for each later stage). E.g. ``[1, 2, 3, 4]``, P=2 -> ``[[0, 1, 2], [3]]``,
    bound 10/6."""
    K = len(times)
    if not 1 <= P <= K:
        raise ValueError(f"P must be between 1 and the number of modules ({K}), got {P}")
    if any(t < 0 for t in times):
        raise ValueError(f"module times must not be negative: {list(times)}")
    prefix = [0.0, *accumulate(float(t) for t in times)]

    def span(i: int, j: int) -> float:  # modules i..j-1; the one expression both passes compare
        return prefix[j] - prefix[i]

    # best[j]: smallest largest stage sum of modules 0..j-1 in p stages (p = 1 .. P)
    best = [span(0, j) for j in range(K + 1)]
    for p in range(2, P + 1):
        best = [float("inf")] * p + [
            min(max(best[i], span(i, j)) for i in range(p - 1, j)) for j in range(p, K + 1)
        ]
    largest = best[K]
    groups, start = [], 0
    for p in range(P, 0, -1):  # p stages still to fill, this one included
        end = start + 1
        while end < K - (p - 1) and span(start, end + 1) <= largest:
            end += 1
        if p == 1:
            end = K
        groups.append(list(range(start, end)))
        start = end
    return groups, (prefix[K] / largest if largest > 0 else float("inf"))


def pipeline_bounds(times: Sequence[float]) -> dict:
    """``speedup``: ``sum / max`` of the module costs (one stage per module), and ``stages``:
    :func:`best_grouping` for each P of :data:`STAGES` up to K, as ``{"P", "groups",
    "bound"}``."""
    stages = []
    for P in (p for p in STAGES if p <= len(times)):
        groups, bound = best_grouping(times, P)
        stages.append({"P": P, "groups": groups, "bound": bound})
    largest = max(times)
    return {"speedup": sum(times) / largest if largest > 0 else None, "stages": stages}
