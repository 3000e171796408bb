"""Regression figures and the gate of ``locbench compare BASE HEAD``.

Memory and FLOPs on the CPU are deterministic (exact bytes, exact counts), so they gate hard:
any growth over 1% fails. Time is noisy, so it gates loosely: a step slower than
``time_factor`` x the baseline fails. Figures per method (:func:`figures`):

* ``tracked_peak_bytes``: tracked peak of a steady-state step, smallnet, K=4, batch 32;
* ``estimated_peak_bytes``: fake-tensor estimate at the published configuration, ResNet-32,
  K=16, batch 1024 (CUDA rounding);
* ``flops_per_step``: FLOPs of the smallnet step;
* ``step_time_s``: median step time of the smallnet step (from pytest-benchmark).

Each method is a case in float32 (named by the method, ``dgl``) and under bf16 autocast
(``dgl-bf16``: :data:`CASE_PRECISIONS`); the FLOPs are the same in both, as they count shapes.

Files are pytest-benchmark JSON (``--benchmark-json``): each benchmark's ``extra_info`` holds
the deterministic figures and ``stats.median`` the time. The committed baseline is
``tests/benchmarks/baseline.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from locbench.analysis.estimate import estimate
from locbench.errors import UserError
from locbench.harness.build import Resolved, build, resolve
from locbench.harness.flops import config_flops
from locbench.harness.trainer import LocalTrainer, probe_config
from locbench.harness.windows import steady_state_peak
from locbench.settings.run_config import RunConfig

SMALL = {"net": "smallnet", "K": 4}
SMALL_BATCH = 32
SMALL_LR = 0.05
PUBLISHED = {"net": "resnet32", "K": 16}
PUBLISHED_BATCH = 1024
DETERMINISTIC = ("tracked_peak_bytes", "estimated_peak_bytes", "flops_per_step")
MEMORY_TOLERANCE = 0.01
#: The precisions every method is a regression case in (not fp16: slow on the CPU, and its
#: memory is bf16's plus the loss scaler's few bytes).
CASE_PRECISIONS = ("fp32", "bf16")


def case_name(method: str, precision: str = "fp32") -> str:
    """``dgl`` in fp32 (the names baselines have always used), ``dgl-bf16`` otherwise."""
    return method if precision == "fp32" else f"{method}-{precision}"


def regression_cases(methods: list[str]) -> dict[str, tuple[str, str]]:
    """``case name -> (method, precision)``: every method in every :data:`CASE_PRECISIONS`."""
    return {case_name(m, p): (m, p) for p in CASE_PRECISIONS for m in methods}


def small_run(method: str, precision: str = "fp32") -> Resolved:
    return resolve(probe_config(RunConfig(method=method, precision=precision, **SMALL), SMALL_LR))


def small_trainer(method: str, precision: str = "fp32") -> LocalTrainer:
    run = small_run(method, precision)
    backbone, m = build(run)
    return LocalTrainer.for_config(run.config, backbone, m.split, m, torch.device("cpu"))


def small_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SMALL_BATCH, 3, 16, 16, generator=g)
    return x, torch.randint(0, 10, (SMALL_BATCH,), generator=g)


def figures(method: str, precision: str = "fp32") -> dict[str, int]:
    """The deterministic figures of ``method`` (a name or ``path.py:Class``) at ``precision``."""
    tracked = steady_state_peak(small_trainer(method, precision), *small_batch())
    flops, _ = config_flops(small_run(method, precision), batch_size=SMALL_BATCH)
    published = estimate(
        resolve(RunConfig(method=method, precision=precision, **PUBLISHED)), PUBLISHED_BATCH
    )
    return {
        "tracked_peak_bytes": tracked.peak_bytes,
        "estimated_peak_bytes": published.peak_bytes_rounded,
        "flops_per_step": flops,
    }


def load_figures(path: str | Path) -> dict[str, dict[str, float]]:
    """``case -> figure -> value`` from a pytest-benchmark JSON file.

    Raises :class:`~locbench.errors.UserError`, one line, for a missing or unreadable file, text
    that is not JSON or not pytest-benchmark JSON, a malformed benchmark entry or a figure that
    is not a finite number: a gate must not pass on input it could not read."""
    path = Path(path)
    data = _read_json(path)
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benchmarks, list):
        raise UserError(
            f'{path} is not a pytest-benchmark JSON file (no "benchmarks" list; make one with '
            "--benchmark-json)"
        )
    out: dict[str, dict[str, float]] = {}
    for i, b in enumerate(benchmarks):
        if not isinstance(b, dict):
            raise UserError(f"{path}: benchmark #{i + 1} is not a JSON object")
        name = b.get("name")
        if not isinstance(name, str) or not name:
            raise UserError(f'{path}: benchmark #{i + 1} has no "name"')
        param = b.get("param")
        case = param if isinstance(param, str) and param else name
        if case in out:
            raise UserError(f"{path}: benchmark case {case!r} appears twice")
        extra = b.get("extra_info", {})
        if not isinstance(extra, dict):
            raise UserError(f'{path}: benchmark {name!r}: "extra_info" is not a JSON object')
        values = {
            k: _figure(v, path, name, f"extra_info.{k}", low=0)
            for k, v in extra.items()
            if k in DETERMINISTIC
        }
        stats = b.get("stats")
        if not isinstance(stats, dict):
            raise UserError(f'{path}: benchmark {name!r} has no "stats" object')
        if "median" not in stats:
            raise UserError(f'{path}: benchmark {name!r} has no "stats.median"')
        values["step_time_s"] = _figure(stats["median"], path, name, "stats.median", above=0)
        out[case] = values
    return out


def _read_json(path: Path) -> object:
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise UserError(f"{path} is not pytest-benchmark JSON (nested too deeply)") from None


def _figure(
    value: object, path: Path, name: str, field: str, *, low: float = 0, above: float | None = None
) -> float:
    """``value`` as a figure; a one-line error unless it is a finite number (JSON ``true`` is
    not: Python counts it as 1) ``>= low`` (bytes and FLOPs) or ``> above`` (a step's time: a
    zero or negative time would make every head fail, or pass, the gate)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value):
        shown = json.dumps(value) if ok or isinstance(value, bool) else _short(repr(value))
        raise UserError(f"{path}: benchmark {name!r}: {field} is not a finite number ({shown})")
    if value < low or (above is not None and value <= above):
        bound = f"> {above:g}" if above is not None else f">= {low:g}"
        raise UserError(f"{path}: benchmark {name!r}: {field} must be {bound}, got {value}")
    return value


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


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
    missing from ``head`` fails: a benchmark that stops reporting must not pass silently. A
    case only in ``head`` comes last, one change per figure with ``base`` NaN and not failed:
    reported, never gated (it has nothing to be compared with)."""
    changes = []
    for case, figures_base in sorted(base.items()):
        for figure, value in sorted(figures_base.items()):
            limit = value * (time_factor if figure == "step_time_s" else 1 + MEMORY_TOLERANCE)
            new = head.get(case, {}).get(figure)
            if new is None:
                changes.append(Change(case, figure, value, math.nan, limit, True))
            elif new != value:
                changes.append(Change(case, figure, value, new, limit, new > limit))
    for case in sorted(set(head) - set(base)):
        for figure, value in sorted(head[case].items()) or [("", math.nan)]:
            changes.append(Change(case, figure, math.nan, value, math.nan, False))
    return changes


def format_changes(changes: list[Change]) -> str:
    """The moved figures as a table, then one line per case that is not in the baseline."""
    moved = [c for c in changes if not _is_new(c)]
    new_cases = list(dict.fromkeys(c.case for c in changes if _is_new(c)))
    lines = ["no figure moved"] if not moved else []
    if moved:
        header = f"{'case':<15} {'figure':<22} {'base':>16} {'head':>16} {'change':>8}  verdict"
        lines += [header, "-" * len(header)]
    for c in moved:
        change = f"{100 * (c.ratio - 1):+.1f}%" if c.head == c.head else "missing"
        verdict = f"FAIL (limit {number(c.limit)})" if c.failed else "ok"
        lines.append(
            f"{c.case:<15} {c.figure:<22} {number(c.base):>16} {number(c.head):>16} "
            f"{change:>8}  {verdict}"
        )
    lines += [f"new case {case}: not in the baseline" for case in new_cases]
    return "\n".join(lines)


def _is_new(change: Change) -> bool:
    return change.base != change.base  # NaN: the case is only in HEAD


def number(value: float) -> str:
    """Bytes and FLOPs exactly, with thousands separators; seconds to 4 significant digits."""
    if value != value:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{int(value):,}" if float(value).is_integer() else f"{value:.4g}"
