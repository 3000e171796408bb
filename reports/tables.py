"""Tables from the results DataFrame (:func:`bench.records.load_results`).

Bytes in records; MiB (2**20 bytes) here, and every column name carries its unit.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

MIB = 2**20

COLUMNS = {
    "config.method": "method",
    "config.net": "net",
    "K": "K",
    "config.dataset": "dataset",
    "config.epochs": "epochs",
    "status": "status",
    "final_test_acc": "test acc (%)",
    "best_test_acc": "best acc (%)",
    "step_time_median_s": "step (ms)",
    "images_per_s": "images/s",
    "params_aux": "aux params",
}


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per run: method, net, K, accuracy, median step time, the tracked peak in MiB
    and its ratio to the memory floor when tracked, the CUDA peak in MiB when measured on a
    GPU, and GFLOPs per training step when recorded."""
    table = results[[c for c in COLUMNS if c in results]].rename(columns=COLUMNS).copy()
    table["step (ms)"] = table["step (ms)"] * 1e3
    if "memory.peak_bytes" in results:
        table["tracked peak (MiB)"] = results["memory.peak_bytes"] / MIB
        table["peak / floor"] = results["memory.peak_over_floor"]
    if "cuda.peak_allocated_bytes" in results:
        table["CUDA peak (MiB)"] = results["cuda.peak_allocated_bytes"] / MIB
    if "flops.total" in results:
        table["GFLOP / step"] = results["flops.total"] / 1e9
    return table.reset_index(drop=True)


def format_table(table: pd.DataFrame) -> str:
    return table.to_string(index=False, float_format=lambda v: f"{v:.2f}")


# ---------------------------------------------------------------- comparison table

CUDA_SOURCE = "CUDA allocated"
TRACKED_SOURCE = "tracked"

KEYS = ["net", "dataset", "method", "K", "aux depth", "batch size"]
COMPARISON_COLUMNS = [
    *KEYS,
    "seeds",
    "failed runs",
    "test acc (%)",
    "acc mean (%)",
    "acc std (%)",
    "peak (MiB)",
    "memory source",
    "saving vs BP (%)",
    "step (ms)",
    "step overhead vs BP (%)",
    "GFLOP / step",
    "FLOPs overhead vs BP (%)",
]
INTEGER_COLUMNS = ["K", "aux depth", "batch size", "seeds", "failed runs"]


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (net, dataset, method, K, aux depth, batch size), aggregated
    over seeds, for comparing methods against BP.

    Only runs with status ``ok`` enter the numbers; ``failed runs`` counts the others (oom,
    diverged, error) of the configuration, and ``seeds`` the ``ok`` runs averaged.

    * ``test acc (%)``: ``mean ± std`` of the final test top-1 accuracy over the ``ok`` runs
      (sample standard deviation, ddof=1; the mean alone for a single run); the numbers are
      also in ``acc mean (%)`` and ``acc std (%)``.
    * ``peak (MiB)``: the mean peak memory of the ``ok`` runs: the CUDA allocator's peak
      (``cuda.peak_allocated_bytes``) when any of them measured one, otherwise the tracked
      peak of live tensor storage (``memory.peak_bytes``); ``memory source`` names which.
    * ``saving vs BP (%)``: ``100 * (1 - peak / peak of BP)``, BP being the ``bp`` row of the
      same net, dataset and batch size (NaN without one). Both peaks come from the same
      source: the row's own if BP has it, else the other one if both rows have it, else NaN.
    * ``step overhead vs BP (%)`` and ``FLOPs overhead vs BP (%)``: ``100 * (x / x of BP - 1)``
      for the median step time and the FLOPs of one training step (forward + backward,
      backbone and auxiliary nets).
    """
    if results.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    runs = pd.DataFrame(
        {
            "net": _column(results, "config.net"),
            "dataset": _column(results, "config.dataset"),
            "method": _column(results, "config.method"),
            "K": pd.to_numeric(_column(results, "K"), errors="coerce"),
            "aux depth": _column(results, "config.method_params").map(aux_depth),
            "batch size": pd.to_numeric(_column(results, "config.batch_size"), errors="coerce"),
            "ok": _column(results, "status") == "ok",
            "acc": _numeric(results, "final_test_acc"),
            "step": _numeric(results, "step_time_median_s"),
            "flops": _numeric(results, "flops.total"),
            CUDA_SOURCE: _numeric(results, "cuda.peak_allocated_bytes"),
            TRACKED_SOURCE: _numeric(results, "memory.peak_bytes"),
        }
    )
    rows = []
    for key, group in runs.groupby(KEYS, dropna=False, sort=False):
        ok = group[group["ok"]]
        peaks = {src: ok[src].mean() for src in (CUDA_SOURCE, TRACKED_SOURCE)}
        source = next((src for src, v in peaks.items() if not math.isnan(v)), None)
        acc_mean, acc_std = ok["acc"].mean(), ok["acc"].std(ddof=1)
        rows.append(
            {
                **dict(zip(KEYS, key)),
                "seeds": len(ok),
                "failed runs": len(group) - len(ok),
                "test acc (%)": format_mean_std(acc_mean, acc_std),
                "acc mean (%)": acc_mean,
                "acc std (%)": acc_std,
                "peak (MiB)": peaks[source] / MIB if source else math.nan,
                "memory source": source,
                "step (ms)": ok["step"].mean() * 1e3,
                "GFLOP / step": ok["flops"].mean() / 1e9,
                "_peaks": peaks,
            }
        )
    baselines: dict[tuple, dict] = {}
    for row in rows:
        if row["method"] == "bp":
            baselines.setdefault(_baseline_key(row), row)
    for row in rows:
        bp = baselines.get(_baseline_key(row))
        ours, theirs = _common_peaks(row, bp) if bp else (math.nan, math.nan)
        row["saving vs BP (%)"] = _saving(ours, theirs)
        for column, name in (("step (ms)", "step"), ("GFLOP / step", "FLOPs")):
            row[f"{name} overhead vs BP (%)"] = (
                _overhead(row[column], bp[column]) if bp else math.nan
            )
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    for col in INTEGER_COLUMNS:
        table[col] = table[col].astype("Int64")
    table["_bp_first"] = table["method"] != "bp"
    table = table.sort_values(
        ["net", "dataset", "batch size", "_bp_first", "method", "K", "aux depth"],
        na_position="last",
        kind="stable",
    )
    return table.drop(columns="_bp_first").reset_index(drop=True)


def format_mean_std(mean: float, std: float, digits: int = 2) -> str | None:
    """``80.00 ± 1.25``; the mean alone when there is no spread to report (one run); ``None``
    when there is no mean (no run finished)."""
    if mean is None or _isnan(mean):
        return None
    if std is None or _isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def aux_depth(params) -> float:
    """The auxiliary-net depth in a run's ``method_params`` (``depth``), or NaN."""
    if not isinstance(params, dict) or params.get("depth") is None:
        return math.nan
    try:
        return float(params["depth"])  # --hp depth=3 stores the string "3"
    except (TypeError, ValueError):
        return math.nan


def _column(results: pd.DataFrame, name: str) -> pd.Series:
    if name in results:
        return results[name]
    return pd.Series([None] * len(results), index=results.index, dtype=object)


def _numeric(results: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(_column(results, name), errors="coerce").astype(float)


def _isnan(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _baseline_key(row: dict) -> tuple:
    return tuple(None if _isnan(row[k]) else row[k] for k in ("net", "dataset", "batch size"))


def _common_peaks(row: dict, bp: dict) -> tuple[float, float]:
    """The row's peak and BP's, in bytes, from one memory source: the row's own if BP has it,
    else any source both have; (NaN, NaN) if they share none."""
    source = row["memory source"]
    order = [source] + [s for s in (CUDA_SOURCE, TRACKED_SOURCE) if s != source]
    for src in order:
        if src is None:
            continue
        ours, theirs = row["_peaks"][src], bp["_peaks"][src]
        if not (math.isnan(ours) or math.isnan(theirs)):
            return ours, theirs
    return math.nan, math.nan


def _saving(ours: float, theirs: float) -> float:
    """``100 * (1 - ours / theirs)``; NaN when either is missing or ``theirs`` is zero."""
    if _isnan(ours) or _isnan(theirs) or theirs == 0:
        return math.nan
    return 100 * (1 - ours / theirs)


def _overhead(ours: float, theirs: float) -> float:
    """``100 * (ours / theirs - 1)``; NaN when either is missing or ``theirs`` is zero."""
    if _isnan(ours) or _isnan(theirs) or theirs == 0:
        return math.nan
    return 100 * (ours / theirs - 1)


# ---------------------------------------------------------------- output formats


def to_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub pipe table: a header row, an alignment row (numbers right-aligned) and one
    line per row of ``table``. Floats get ``digits`` decimals; missing values are empty."""
    columns = [str(c) for c in table.columns]
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    cells = [[format_cell(v, digits) for v in row] for row in table.itertuples(index=False)]
    widths = [max([len(name), 3, *(len(r[i]) for r in cells)]) for i, name in enumerate(columns)]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join("-" * (w + 1) + ":" if num else "-" * (w + 2) for w, num in zip(widths, numeric))
        + "|"
    )
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])


def format_cell(value, digits: int = 2) -> str:
    """One table cell as text: floats with ``digits`` decimals, missing values empty, pipes
    escaped and line breaks flattened (a cell must stay on its line)."""
    if value is None or _isnan(value):
        return ""
    text = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def write_table(table: pd.DataFrame, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``table`` as ``<stem>.csv`` (pandas, no index) and ``<stem>.md``; return both."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md = Path(f"{stem}.csv"), Path(f"{stem}.md")
    table.to_csv(csv, index=False)
    md.write_text(to_markdown(table) + "\n")
    return csv, md
