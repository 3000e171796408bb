"""Per-run evidence for the report page: one row per run (step-time spread, measured steps,
tracked and CUDA peaks and their ratio, flags), and the measured statements of the page's
"How measured" text, each computed from the runs the page shows, never assumed."""

from __future__ import annotations

import math
import numbers

import pandas as pd

from locbench.reports.tables import CONTENDED_SHARE, MIB, aux_depth, contended, variant_labels

# A run's step-time median is flagged as noisy when its 90th percentile step is more than
# this many times its 10th: the median of such a window moves by tens of percent between
# repeats (a shared or throttled machine, a loader stall), so overheads built on it mislead.
NOISY_SPREAD = 1.5
NOISY_FLAG = "noisy"
SHORT_FLAG = "short"
CONTENDED_FLAG = "contended"
FLAG_NOTES = {
    NOISY_FLAG: f"step time p90 / p10 above {NOISY_SPREAD}: the median is not a stable figure, "
    "nor an overhead built on it.",
    SHORT_FLAG: "the run measured fewer steps than its configuration asked "
    "(<code>measured_steps &lt; config.measure_steps</code>): too short an epoch or a "
    "failed window; its step time rests on fewer samples.",
    CONTENDED_FLAG: f"other processes used more than {CONTENDED_SHARE:.0%} of the machine's "
    "CPU during the timed window (<code>timing.others_cpu_share</code>): the step time is "
    "not the method's alone, however tidy its p90 / p10.",
}
RATIO_COLUMN = "tracked / CUDA"


def numeric(results: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` as floats (NaN where missing or absent)."""
    if name not in results:
        return pd.Series(math.nan, index=results.index, dtype=float)
    return pd.to_numeric(results[name], errors="coerce").astype(float)


def step_spread(results: pd.DataFrame) -> pd.Series:
    """p90 / p10 step time of every run (NaN without both)."""
    return numeric(results, "step_time_p90_s") / numeric(results, "step_time_p10_s")


def tracked_cuda_ratio(results: pd.DataFrame) -> pd.Series:
    """Tracked peak / CUDA allocator peak of every run (NaN unless the run holds both)."""
    return numeric(results, "memory.peak_bytes") / numeric(results, "cuda.peak_allocated_bytes")


def step_flags(results: pd.DataFrame) -> pd.Series:
    """The flags (:data:`NOISY_FLAG`, :data:`SHORT_FLAG`, :data:`CONTENDED_FLAG`) of every
    run, a list each; only runs with status ``ok`` are flagged (a failed run has no step time
    to doubt)."""
    ok = results["status"].eq("ok") if "status" in results else pd.Series(True, results.index)
    noisy = step_spread(results) > NOISY_SPREAD
    measured, asked = numeric(results, "measured_steps"), numeric(results, "config.measure_steps")
    short = measured < asked
    hits = zip(noisy, short, contended(results))
    return pd.Series(
        [
            [f for f, hit in zip((NOISY_FLAG, SHORT_FLAG, CONTENDED_FLAG), h) if hit] if o else []
            for o, h in zip(ok, hits)
        ],
        index=results.index,
        dtype=object,
    )


def flag_texts(results: pd.DataFrame) -> pd.Series:
    """Every run's flags as short cell text: ``noisy (p90/p10 2.2)``, ``short (7 of 20)``."""
    spread = step_spread(results)
    measured, asked = numeric(results, "measured_steps"), numeric(results, "config.measure_steps")
    others = numeric(results, "timing.others_cpu_share")
    texts = {
        NOISY_FLAG: [f"{NOISY_FLAG} (p90/p10 {v:.1f})" for v in spread],
        SHORT_FLAG: [f"{SHORT_FLAG} ({m:.0f} of {a:.0f} steps)" for m, a in zip(measured, asked)],
        CONTENDED_FLAG: [f"{CONTENDED_FLAG} (others {v:.0%} of the CPU)" for v in others],
    }
    return pd.Series(
        ["; ".join(texts[f][i] for f in flags) for i, flags in enumerate(step_flags(results))],
        index=results.index,
        dtype=object,
    )


def run_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per run (``results`` order): its id, settings, outcome, step time with its
    p90/p10 spread and measured steps, tracked and CUDA peaks (MiB), their ratio and its
    flags (``; ``-joined)."""
    params = results.get("config.method_params", pd.Series(None, index=results.index))
    table = pd.DataFrame(
        {
            "run": results["run_id"],
            "variant": variant_labels(results),
            "K": numeric(results, "K"),
            "aux depth": params.map(aux_depth).astype(float),
            "batch size": numeric(results, "config.batch_size"),
            "seed": numeric(results, "config.seed"),
            "status": results["status"],
            "test acc (%)": numeric(results, "final_test_acc"),
            "step (ms)": numeric(results, "step_time_median_s") * 1e3,
            "p90 / p10": step_spread(results),
            "measured steps": numeric(results, "measured_steps"),
            "tracked peak (MiB)": numeric(results, "memory.peak_bytes") / MIB,
            "CUDA peak (MiB)": numeric(results, "cuda.peak_allocated_bytes") / MIB,
            RATIO_COLUMN: tracked_cuda_ratio(results),
            "flags": flag_texts(results),
        }
    )
    for col in ("K", "aux depth", "batch size", "seed", "measured steps"):
        table[col] = table[col].round().astype("Int64")
    # columns no run has (CUDA peaks on a CPU-only results set) say nothing: left out
    empty = [c for c in table if c not in ("run", "flags") and table[c].isna().all()]
    return table.drop(columns=empty).reset_index(drop=True)


def configuration_flags(results: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """For every row of the comparison ``table`` of ``results``: its runs' flags, as
    ``noisy 1/3`` (1 of its 3 runs); empty when none is flagged. A run belongs to the row
    of its net, dataset, variant label, K, aux depth and batch size (labels are unique)."""
    params = results.get("config.method_params", pd.Series(None, index=results.index))
    runs = zip(
        results.get("config.net", pd.Series(None, index=results.index)),
        results.get("config.dataset", pd.Series(None, index=results.index)),
        variant_labels(results),
        numeric(results, "K"),
        params.map(aux_depth),
        numeric(results, "config.batch_size"),
    )
    by_row: dict[tuple, list[list[str]]] = {}
    for run, flags in zip(runs, step_flags(results)):
        by_row.setdefault(_key(run), []).append(flags)
    columns = ["net", "dataset", "variant", "K", "aux depth", "batch size"]
    notes = []
    for row in table[columns].itertuples(index=False):
        flags = by_row.get(_key(row), [])
        counts = {f: sum(f in run for run in flags) for f in FLAG_NOTES}
        notes.append("; ".join(f"{f} {n}/{len(flags)}" for f, n in counts.items() if n))
    return notes


def _key(values) -> tuple:
    """A row key in which 4, 4.0 and Int64 4 agree, and every missing value is one."""

    def one(v):
        if v is None or pd.isna(v):
            return None
        return float(v) if isinstance(v, numbers.Number) else str(v)

    return tuple(one(v) for v in values)


def _range(values: pd.Series, digits: int = 2) -> str:
    lo, hi = values.min(), values.max()
    return (
        f"{lo:.{digits}f}"
        if round(lo, digits) == round(hi, digits)
        else (f"{lo:.{digits}f} to {hi:.{digits}f}")
    )


def memory_sentences(results: pd.DataFrame) -> dict[str, str]:
    """The measured statements about peak memory, as HTML: ``cuda`` (how many runs measured a
    CUDA peak) and ``agreement`` (tracked vs CUDA peak over the runs holding both)."""
    cuda = numeric(results, "cuda.peak_allocated_bytes").notna()
    ratio = tracked_cuda_ratio(results).dropna()
    n = len(results)
    out = {
        "cuda": f"{int(cuda.sum())} of {n} runs here measured a CUDA peak."
        if cuda.any()
        else "No run here measured a CUDA peak (no run ran on a GPU, or none finished).",
    }
    if ratio.empty:
        out["agreement"] = (
            "Tracked vs CUDA peak: <b>not measured</b>: no run here has both a tracked and a "
            "CUDA peak."
        )
    else:
        out["agreement"] = (
            f"Tracked peak / CUDA allocated peak, measured on the {len(ratio)} "
            f"run{'s' if len(ratio) > 1 else ''} here holding both: {_range(ratio)} (column "
            f"<i>{RATIO_COLUMN}</i> of each section's run table)."
        )
    return out


def step_sentence(results: pd.DataFrame) -> str:
    """Measured steps per run (range) and how many runs are flagged, as HTML."""
    ok = results[results["status"].eq("ok")] if "status" in results else results
    measured = numeric(ok, "measured_steps").dropna()
    asked = numeric(ok, "config.measure_steps").dropna()
    flags = step_flags(ok)
    counts = {f: int(flags.map(lambda fs, f=f: f in fs).sum()) for f in FLAG_NOTES}
    text = (
        f"The finished runs measured {_range(measured, 0)} steps each"
        if not measured.empty
        else "No finished run here recorded its measured steps"
    )
    if not asked.empty:
        text += f" (asked for {_range(asked, 0)})"
    text += (
        f". Of the {len(ok)} finished runs, {counts[NOISY_FLAG]} are flagged <i>{NOISY_FLAG}</i>"
        f" (p90 / p10 step time above {NOISY_SPREAD}), {counts[SHORT_FLAG]} "
        f"<i>{SHORT_FLAG}</i> (fewer steps measured than asked) and {counts[CONTENDED_FLAG]} "
        f"<i>{CONTENDED_FLAG}</i> (other processes used over {CONTENDED_SHARE:.0%} of the CPU "
        "while they timed); the tables mark them."
    )
    return text


def baseline_sentence(table: pd.DataFrame) -> str:
    """How many comparison rows (other than BP's own) have a BP row to compare with."""
    others = table[table["method"] != "bp"]
    if others.empty:
        return "No row here but BP's: nothing is compared with BP."
    with_bp = others["saving vs BP (%)"].notna() | others["step overhead vs BP (%)"].notna()
    return f"{int(with_bp.sum())} of {len(others)} non-BP rows here have a BP row to compare with."
