"""Regression figures and the gate of ``locbench compare BASE HEAD``.

Memory and FLOPs on the CPU are deterministic (exact bytes, exact counts), so they gate hard:
any growth over 1% fails. Time is noisy, so it gates loosely: a step slower than
``time_factor`` x the baseline fails. Figures per method (:func:`figures`):

* ``tracked_peak_bytes``: tracked peak of a steady-state step, smallnet, K=4, batch 32;
* ``estimated_peak_bytes``: fake-tensor estimate at the published configuration, ResNet-32,
  K=16, batch 1024 (CUDA rounding);
* ``flops_per_step``: FLOPs of the smallnet step;
* ``step_time_s``: median step time of the smallnet step (from pytest-benchmark).

Files are pytest-benchmark JSON (``--benchmark-json``): each benchmark's ``extra_info`` holds
the deterministic figures and ``stats.median`` the time. The committed baseline is
``tests/benchmarks/baseline.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.build import build
from bench.config import RunConfig
from bench.describe import step_flops
from bench.errors import UserError
from bench.estimate import estimate
from bench.trainer import LocalTrainer, OptimSettings

SMALL = {"net": "smallnet", "K": 4}
SMALL_BATCH = 32
PUBLISHED = {"net": "resnet32", "K": 16}
PUBLISHED_BATCH = 1024
DETERMINISTIC = ("tracked_peak_bytes", "estimated_peak_bytes", "flops_per_step")
MEMORY_TOLERANCE = 0.01


def small_trainer(method: str) -> LocalTrainer:
    backbone, m = build(RunConfig(method=method, **SMALL))
    return LocalTrainer(backbone, m.split, m, OptimSettings(0.05, 1), torch.device("cpu"))


def small_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SMALL_BATCH, 3, 16, 16, generator=g)
    return x, torch.randint(0, 10, (SMALL_BATCH,), generator=g)


def figures(method: str) -> dict[str, int]:
    """The deterministic figures of ``method`` (a name or ``path.py:Class``)."""
    trainer = small_trainer(method)
    x, y = small_batch()
    previous = trainer.train_step(x, y)
    tracker = trainer.start_tracking(previous)
    trainer.tracked_step(tracker, x, y)
    tracked = trainer.tracked_result(tracker).peak_bytes
    backbone, m = build(RunConfig(method=method, **SMALL))
    flops, _ = step_flops(m, backbone, SMALL_BATCH)
    published = estimate(RunConfig(method=method, **PUBLISHED), PUBLISHED_BATCH)
    return {
        "tracked_peak_bytes": tracked,
        "estimated_peak_bytes": published.peak_bytes_rounded,
        "flops_per_step": flops,
    }


def load_figures(path: str | Path) -> dict[str, dict[str, float]]:
    """``case -> figure -> value`` from a pytest-benchmark JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        benchmarks = data["benchmarks"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(
            f"{path} is not a pytest-benchmark JSON file (make one with --benchmark-json)"
        ) from None
    out: dict[str, dict[str, float]] = {}
    for b in benchmarks:
        values = {k: v for k, v in b.get("extra_info", {}).items() if k in DETERMINISTIC}
        if b.get("stats"):
            values["step_time_s"] = b["stats"]["median"]
        out[b["param"] or b["name"]] = values
    return out


@dataclass
class Change:
    case: str
    figure: str
    base: float
    head: float
    limit: float
    failed: bool

    @property
    def ratio(self) -> float:
        return self.head / self.base if self.base else float("inf")


def compare(
    base: dict[str, dict[str, float]], head: dict[str, dict[str, float]], time_factor: float
) -> list[Change]:
    """Every figure that moved, with its limit and whether it broke it. A case or figure
    missing from ``head`` fails: a benchmark that stops reporting must not pass silently."""
    changes = []
    for case, figures_base in sorted(base.items()):
        for figure, value in sorted(figures_base.items()):
            limit = value * (time_factor if figure == "step_time_s" else 1 + MEMORY_TOLERANCE)
            new = head.get(case, {}).get(figure)
            if new is None:
                changes.append(Change(case, figure, value, float("nan"), limit, True))
            elif new != value:
                changes.append(Change(case, figure, value, new, limit, new > limit))
    return changes


def format_changes(changes: list[Change]) -> str:
    if not changes:
        return "no figure moved"
    header = f"{'case':<12} {'figure':<22} {'base':>16} {'head':>16} {'change':>8}  verdict"
    lines = [header, "-" * len(header)]
    for c in changes:
        change = f"{100 * (c.ratio - 1):+.1f}%" if c.head == c.head else "missing"
        verdict = f"FAIL (limit {number(c.limit)})" if c.failed else "ok"
        lines.append(
            f"{c.case:<12} {c.figure:<22} {number(c.base):>16} {number(c.head):>16} "
            f"{change:>8}  {verdict}"
        )
    return "\n".join(lines)


def number(value: float) -> str:
    """Bytes and FLOPs exactly, with thousands separators; seconds to 4 significant digits."""
    if value != value:
        return "-"
    return f"{int(value):,}" if float(value).is_integer() else f"{value:.4g}"
