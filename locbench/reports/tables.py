"""Tables from the results DataFrame (:func:`locbench.records.load_results`).

Bytes in records; MiB (2**20 bytes) here, and every column name carries its unit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from locbench.outputs import Outputs, write_atomic
from locbench.records import END_TO_END, MEMORY_BASELINES

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
    if "data_wait_share" in results and results["data_wait_share"].notna().any():
        table["data wait (%)"] = pd.to_numeric(results["data_wait_share"]) * 100
    return table.reset_index(drop=True)


def format_table(table: pd.DataFrame) -> str:
    return table.to_string(index=False, float_format=lambda v: f"{v:.2f}")


# ---------------------------------------------------------------- comparison table

CUDA_SOURCE = "CUDA allocated"
TRACKED_SOURCE = "tracked"

KEYS = ["net", "dataset", "method", "K", "aux depth", "batch size"]
COMPARISON_COLUMNS = [
    "net",
    "dataset",
    "method",
    "variant",
    "K",
    "aux depth",
    "batch size",
    "seeds",
    "failed runs",
    "test acc (%)",
    "acc mean (%)",
    "acc std (%)",
    "peak (MiB)",
    "memory source",
    "saving vs BP (%)",
    "pipeline bound",
    "step (ms)",
    "step overhead vs BP (%)",
    "timing",
    "data wait (%)",
    "GFLOP / step",
    "FLOPs overhead vs BP (%)",
]
INTEGER_COLUMNS = ["K", "aux depth", "batch size", "seeds", "failed runs"]
# Settings the table shows in their own columns (K, aux depth, batch size): a variant label
# names them only when two rows could not be told apart otherwise.
SHOWN_SETTINGS = ("config.K", "method_params.depth", "config.batch_size")
PARAMS_PREFIX = "method_params."
# Settings the baseline must share anyway (its key) or that say what the method is.
_NOT_BASELINE_SETTINGS = (
    "config.method",
    "config.method_params",
    "config.net",
    "config.dataset",
    "config.batch_size",
)


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration, aggregated over seeds, for comparing methods against BP.

    A configuration is every resolved setting of a run except its seed: each ``config.*``
    column (``method_params`` one setting per hyperparameter; lists and dicts compared by their
    JSON text) and the run's K. Only runs with status ``ok`` enter the numbers; ``failed runs``
    counts the others (oom, diverged, error) of the configuration, and ``seeds`` the ``ok`` runs
    averaged.

    * ``variant``: the method's name, followed by ``name=value`` for every setting that differs
      among that method's rows of the same net and dataset, other than K, aux depth and batch
      size, which have their own columns (``dgl hidden_dim=64``, ``dgl lr=0.1``); a method with
      a single variant keeps its plain name. Rows that still share a label and K, aux depth and
      batch size also name the shown settings that tell them apart (``bp K=4``: the K asked
      for, BP running one module whatever K is), else get ``#2``, ``#3``, ...
    * ``test acc (%)``: ``mean ± std`` of the final test top-1 accuracy over the ``ok`` runs
      (sample standard deviation, ddof=1; the mean alone for a single run); the numbers are
      also in ``acc mean (%)`` and ``acc std (%)``.
    * ``peak (MiB)``: the mean peak memory of the ``ok`` runs: the CUDA allocator's peak
      (``cuda.peak_allocated_bytes``) when any of them measured one, otherwise the tracked
      peak of live tensor storage (``memory.peak_bytes``); ``memory source`` names which.
    * ``saving vs BP (%)``: ``100 * (1 - peak / peak of BP)``, BP being a ``bp`` row of the
      same net, dataset and batch size (NaN without one). With several such ``bp`` rows, the
      one whose other non-method settings (lr, epochs, K asked for, ...) all equal the row's,
      else the one with the most such settings equal, ties going to the first ``bp`` variant
      label in sorted order; a ``bp`` row is its own baseline. Both peaks come from the same
      source: the row's own if BP has it, else the other one if both rows have it, else NaN.
    * ``step overhead vs BP (%)`` and ``FLOPs overhead vs BP (%)``: ``100 * (x / x of BP - 1)``
      for the median step time and the FLOPs of one training step (forward + backward,
      backbone and auxiliary nets), against the same BP row. Step times are compared only when
      measured alike: the step overhead is NaN when the row's runs and BP's timed at different
      thread counts (``timing.threads``), or when any of them was *contended* (other
      processes used more than :data:`CONTENDED_SHARE` of the machine's CPU during its timed
      window, ``timing.others_cpu_share``); ``timing`` says which (missing when comparable).
    * ``pipeline bound``: the mean over seeds of each run's ``pipeline_bound_speedup``, the
      speed-up a pipeline of one stage per module could reach at best from the run's measured module
      times (sum / max; :mod:`locbench.measure.pipeline_bound`); NaN for runs recorded without.
    * ``data wait (%)``: the mean share of the training epochs' wall time the loop waited for
      data (``data_wait_share``): a loader-bound configuration shows a large one.
    """
    if results.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    runs = _runs(results)
    rows = []
    for key, group in runs.groupby([*KEYS, "variant", "_identity"], dropna=False, sort=False):
        ok = group[group["ok"]]
        peaks = {src: ok[src].mean() for src in (CUDA_SOURCE, TRACKED_SOURCE)}
        source = next((src for src, v in peaks.items() if not math.isnan(v)), None)
        acc_mean, acc_std = ok["acc"].mean(), ok["acc"].std(ddof=1)
        rows.append(
            {
                **dict(zip([*KEYS, "variant"], key)),
                "seeds": len(ok),
                "failed runs": len(group) - len(ok),
                "test acc (%)": format_mean_std(acc_mean, acc_std),
                "acc mean (%)": acc_mean,
                "acc std (%)": acc_std,
                "peak (MiB)": peaks[source] / MIB if source else math.nan,
                "memory source": source,
                "pipeline bound": ok["pipeline_bound"].mean(),
                "step (ms)": ok["step"].mean() * 1e3,
                "data wait (%)": ok["data_wait"].mean() * 100,
                "GFLOP / step": ok["flops"].mean() / 1e9,
                "_peaks": peaks,
                "_settings": group["_settings"].iloc[0],
                "_threads": frozenset(ok["threads"].dropna()),
                "_contended": int(ok["contended"].sum()),
                "_timed": len(ok),
            }
        )
    baselines: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["method"] == "bp":
            baselines.setdefault(_baseline_key(row), []).append(row)
    for row in rows:
        bp = _baseline(row, baselines.get(_baseline_key(row), []))
        ours, theirs = _common_peaks(row, bp) if bp else (math.nan, math.nan)
        row["saving vs BP (%)"] = _saving(ours, theirs)
        for column, name in (("step (ms)", "step"), ("GFLOP / step", "FLOPs")):
            row[f"{name} overhead vs BP (%)"] = (
                _overhead(row[column], bp[column]) if bp else math.nan
            )
        row["timing"] = timing_caveat(row, bp) or None
        if row["timing"]:
            row["step overhead vs BP (%)"] = math.nan
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    for col in INTEGER_COLUMNS:
        table[col] = table[col].astype("Int64")
    table["_bp_first"] = table["method"] != "bp"
    table = table.sort_values(
        ["net", "dataset", "batch size", "_bp_first", "method", "variant", "K", "aux depth"],
        na_position="last",
        kind="stable",
    )
    return table.drop(columns="_bp_first").reset_index(drop=True)


#: A timed window is *contended* when other processes used more than this share of the
#: machine's CPU time during it (``timing.others_cpu_share``): its step time is not the
#: method's alone, however tidy its p90 / p10.
CONTENDED_SHARE = 0.10


def contended(results: pd.DataFrame) -> pd.Series:
    """Whether each run's timed window was contended (False when not recorded)."""
    return _numeric(results, "timing.others_cpu_share") > CONTENDED_SHARE


def timing_caveat(row: dict, bp: dict | None) -> str:
    """Why ``row``'s step time cannot be set against ``bp``'s (empty when it can): mixed or
    different thread counts, or contended windows."""
    notes = []
    threads = row["_threads"] | (bp["_threads"] if bp else frozenset())
    if len(threads) > 1:
        shown = "/".join(str(int(t)) for t in sorted(threads))
        notes.append(f"threads differ ({shown})")
    for who, r in (("", row), ("BP ", bp)):
        if r is not None and r["_contended"] and (who == "" or r is not row):
            notes.append(f"{who}contended {r['_contended']}/{r['_timed']}")
    return "; ".join(notes)


def variant_labels(results: pd.DataFrame) -> pd.Series:
    """The ``variant`` label of :func:`comparison_table` for every run of ``results`` (same
    index): for legends of per-run charts and lists of runs."""
    if results.empty:
        return pd.Series([], index=results.index, dtype=object)
    return _runs(results)["variant"]


def _runs(results: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the table's keys, the numbers, the settings and the variant label."""
    settings = [_settings(row) for _, row in results.iterrows()]
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
            "threads": _numeric(results, "timing.threads"),
            "contended": contended(results),
            "data_wait": _numeric(results, "data_wait_share"),
            "pipeline_bound": _numeric(results, "pipeline_bound_speedup"),
            "flops": _numeric(results, "flops.total"),
            CUDA_SOURCE: _numeric(results, "cuda.peak_allocated_bytes"),
            TRACKED_SOURCE: _numeric(results, "memory.peak_bytes"),
            "_settings": pd.Series(settings, index=results.index, dtype=object),
            "_identity": [json.dumps(s, sort_keys=True) for s in settings],
        },
        index=results.index,
    )
    runs["variant"] = None
    for _, group in runs.groupby(["net", "dataset", "method"], dropna=False, sort=False):
        runs.loc[group.index, "variant"] = _label_variants(group)
    return runs


def _settings(row: pd.Series) -> dict:
    """A run's identity: every ``config.*`` setting but the seed, one key per hyperparameter."""
    out = {}
    for column, value in row.items():
        if not str(column).startswith("config.") or column == "config.seed":
            continue
        if column == "config.method_params" and isinstance(value, dict):
            out.update({f"{PARAMS_PREFIX}{k}": _canonical(v) for k, v in value.items()})
        else:
            out[str(column)] = _canonical(value)
    return out


def _canonical(value):
    """A setting as a JSON scalar that compares equal exactly when the settings are equal: 64
    and 64.0 (a column pandas widened) alike, missing as None, lists and dicts as JSON text."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()  # numpy scalar
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _label_variants(group: pd.DataFrame) -> pd.Series:
    """Variant labels of one net, dataset and method's runs (see :func:`comparison_table`)."""
    method = str(group["method"].iloc[0])
    slots = [
        (_slot_value(k), _slot_value(d), _slot_value(b), ident)
        for k, d, b, ident in zip(
            group["K"], group["aux depth"], group["batch size"], group["_identity"]
        )
    ]
    rows = dict(zip(slots, group["_settings"]))  # one entry per table row
    names = sorted({k for s in rows.values() for k in s})
    differing = [n for n in names if len({_text(s.get(n)) for s in rows.values()}) > 1]
    shown = [n for n in differing if n in SHOWN_SETTINGS]
    keys = [n for n in differing if n not in SHOWN_SETTINGS]

    def labels(keys: list[str]) -> dict[tuple, str]:
        return {slot: _label(method, keys, s) for slot, s in rows.items()}

    by_slot = labels(keys)
    if shown and _clashes(by_slot):
        by_slot = labels(sorted([*keys, *shown]))
    if _clashes(by_slot):  # settings equal as text (3 and "3"): number them
        seen: dict[tuple, int] = {}
        for slot in sorted(by_slot, key=str):
            clash = (by_slot[slot], *slot[:3])
            seen[clash] = seen.get(clash, 0) + 1
            if seen[clash] > 1:
                by_slot[slot] = f"{by_slot[slot]} #{seen[clash]}"
    return pd.Series([by_slot[s] for s in slots], index=group.index, dtype=object)


def _slot_value(value):
    return None if is_missing(value) else float(value)


def _clashes(by_slot: dict[tuple, str]) -> bool:
    """Whether two table rows with the same K, aux depth and batch size share a label."""
    seen = [(label, *slot[:3]) for slot, label in by_slot.items()]
    return len(set(seen)) < len(seen)


def _label(method: str, keys: list[str], settings: dict) -> str:
    short = [k.removeprefix(PARAMS_PREFIX).removeprefix("config.") for k in keys]
    # a hyperparameter named like a run setting keeps its prefix to stay unambiguous
    names = [k if short.count(s) > 1 else s for k, s in zip(keys, short)]
    parts = (f"{n}={_text(settings.get(k))}" for n, k in zip(names, keys))
    return " ".join([short_method(method), *parts])


def short_method(method: str) -> str:
    """A method's name for labels: a file's method (``path/to/file.py:Class``) by its class
    name, which a chart has room for; a registered name as it is."""
    path, sep, name = method.rpartition(":")
    return name if sep and path.endswith(".py") and name else method


def _text(value) -> str:
    return str(value)


def _baseline(row: dict, candidates: list[dict]) -> dict | None:
    """The BP row ``row`` is compared with (rule in :func:`comparison_table`)."""
    if any(bp is row for bp in candidates):
        return row
    ours = row["_settings"]

    def rank(bp: dict) -> tuple:
        theirs = bp["_settings"]
        names = [n for n in sorted({*ours, *theirs}) if _is_run_setting(n)]
        equal = sum(ours.get(n) == theirs.get(n) for n in names)
        return (equal < len(names), -equal, str(bp["variant"]))

    return min(candidates, key=rank, default=None)


def _is_run_setting(name: str) -> bool:
    return not name.startswith(PARAMS_PREFIX) and name not in _NOT_BASELINE_SETTINGS


def format_mean_std(mean: float, std: float, digits: int = 2) -> str | None:
    """``80.00 ± 1.25``; the mean alone when there is no spread to report (one run); ``None``
    when there is no mean (no run finished)."""
    if mean is None or is_missing(mean):
        return None
    if std is None or is_missing(std):
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


def is_missing(value) -> bool:
    """None, NaN or NA: a cell with no value (lists and other non-scalars are values)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _baseline_key(row: dict) -> tuple:
    return tuple(None if is_missing(row[k]) else row[k] for k in ("net", "dataset", "batch size"))


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
    if is_missing(ours) or is_missing(theirs) or theirs == 0:
        return math.nan
    return 100 * (1 - ours / theirs)


def _overhead(ours: float, theirs: float) -> float:
    """``100 * (ours / theirs - 1)``; NaN when either is missing or ``theirs`` is zero."""
    if is_missing(ours) or is_missing(theirs) or theirs == 0:
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
    if value is None or is_missing(value):
        return ""
    text = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def write_table(table: pd.DataFrame, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``table`` as ``<stem>.csv`` (pandas, no index) and ``<stem>.md``; return both."""
    stem = Path(path_stem)
    with Outputs.collect() as outputs:  # both whole, or neither
        csv = outputs.add(write_atomic(Path(f"{stem}.csv"), table.to_csv(index=False)))[0]
        md = outputs.add(write_atomic(Path(f"{stem}.md"), to_markdown(table) + "\n"))[0]
    return csv, md


# ---------------------------------------------------------------- equal-memory view

_EQUAL_MEMORY_FIGURES = ["peak (MiB)", "test acc (%)", "step (ms)", "GFLOP / step"]


def equal_memory_table(results: pd.DataFrame) -> pd.DataFrame:
    """The equal-memory view of the runs' :func:`comparison_table`: one row per local method's
    row (any method but BP and its memory-saving variants), with, for each of
    :data:`MEMORY_BASELINES`, the row of that method (same net, dataset, batch size and memory
    source) whose peak is at most the local row's and the largest such (the fewest segments or
    micro-batches that fit: the fastest baseline at that memory): its setting (``K=3``
    segments, ``micro_batches=2``), peak, accuracy, step time and FLOPs beside the local
    row's; missing where none fits (``locbench sweep --baselines equal-memory`` runs them).
    Empty when no local row has a baseline."""
    table = comparison_table(results)
    runs = _runs(results) if not results.empty else None
    columns = ["net", "dataset", "batch size", "variant", *_EQUAL_MEMORY_FIGURES]
    shown = ["setting", *_EQUAL_MEMORY_FIGURES]
    wide = columns + [f"{b} {c}" for b in MEMORY_BASELINES for c in shown]
    rows = []
    same = ["net", "dataset", "batch size", "memory source"]
    for _, row in table[~table["method"].isin(END_TO_END)].iterrows():
        if pd.isna(row["peak (MiB)"]):
            continue
        line = {c: row[c] for c in columns}
        for baseline in MEMORY_BASELINES:
            candidates = table[
                (table["method"] == baseline)
                & (table["peak (MiB)"] <= row["peak (MiB)"])
                & (table[same] == row[same]).all(axis=1)
            ]
            if candidates.empty:
                continue
            best = candidates.loc[candidates["peak (MiB)"].idxmax()]
            line[f"{baseline} setting"] = _baseline_setting(best, runs)
            line |= {f"{baseline} {c}": best[c] for c in _EQUAL_MEMORY_FIGURES}
        if len(line) > len(columns):
            rows.append(line)
    return pd.DataFrame(rows, columns=wide)


def _baseline_setting(row: pd.Series, runs: pd.DataFrame) -> str:
    """What a memory baseline's row is configured to: its segments or micro-batches (read
    from the settings of its runs)."""
    if row["method"] == "bp-ckpt":
        return f"K={int(row['K'])}"
    keys = ["net", "dataset", "method", "variant", "batch size"]
    mine = runs[(runs[keys] == row[keys]).all(axis=1)]
    values = {s.get(f"{PARAMS_PREFIX}micro_batches") for s in mine["_settings"]}
    return f"micro_batches={values.pop()}" if len(values) == 1 else ""
