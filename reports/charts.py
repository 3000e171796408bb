"""Matplotlib charts from results DataFrames (Agg backend: files only, no display).

Every ``*_figure`` function takes DataFrames (the runs of :func:`bench.records.load_results`,
the curves of :func:`bench.records.load_curves`, estimate rows of
:func:`bench.estimate.estimate_methods`) and returns a :class:`~matplotlib.figure.Figure`, or
``None`` when there is nothing to draw (e.g. memory vs K when every run has the same K).
:func:`save` writes a figure as PNG and SVG and closes it.

Charts with several nets get one panel (axes) per net (and dataset, and batch size where the
chart compares at a fixed batch); each panel has its own legend. A method keeps its colour in
every chart of one results set. Peak memory is the ``peak (MiB)`` of
:func:`reports.tables.comparison_table`: the CUDA allocator's peak where measured, else the
tracked peak (that table's ``memory source`` column says which).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from reports.tables import MIB, comparison_table  # noqa: E402

MEMORY_LABEL = "peak memory (MiB)"
ACCURACY_LABEL = "test accuracy (%)"
K_LABEL = "K (local modules)"
BATCH_LABEL = "batch size (images)"
STEP_OVERHEAD_LABEL = "step-time overhead vs BP (%)"
PARETO_LABEL = "Pareto front"
PANEL_WIDTH, PANEL_HEIGHT = 4.8, 3.8


def save(fig: plt.Figure, path_stem: str | Path, dpi: int = 120) -> list[Path]:
    """Write ``fig`` to ``<stem>.png`` and ``<stem>.svg``, close it and return both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(f"{stem}.png"), Path(f"{stem}.svg")]
    try:
        for path in paths:
            fig.savefig(path, dpi=dpi, metadata={"Date": None} if path.suffix == ".svg" else None)
    finally:
        plt.close(fig)
    return paths


def method_colors(methods) -> dict[str, tuple]:
    """A fixed colour per method name (sorted names over the tab10 cycle)."""
    cycle = plt.get_cmap("tab10").colors
    return {m: cycle[i % len(cycle)] for i, m in enumerate(sorted({str(m) for m in methods}))}


def pareto_front(points: pd.DataFrame, x: str = "x", y: str = "y") -> pd.DataFrame:
    """The points no other point beats: none has lower or equal ``x`` (memory) and higher or
    equal ``y`` (accuracy) with one of them strictly better. Sorted by ``x``; of equal points,
    the first is kept."""
    pts = points.dropna(subset=[x, y])
    pts = pts.sort_values([x, y], ascending=[True, False], kind="stable")
    keep, best = [], -math.inf
    for index, value in pts[y].items():
        if value > best:
            keep.append(index)
            best = value
    return pts.loc[keep]


# ---------------------------------------------------------------- accuracy vs memory


def accuracy_memory_figure(results: pd.DataFrame) -> plt.Figure | None:
    """Test accuracy vs peak memory, the AugLocal paper's central figure: one point per
    configuration of :func:`~reports.tables.comparison_table` (mean over seeds, error bars one
    standard deviation), one marker series per method labelled with K, and the Pareto front
    (the lowest memory for the accuracy) as a dashed line. One panel per net and dataset."""
    table = comparison_table(results)
    table = table.dropna(subset=["peak (MiB)", "acc mean (%)"])
    if table.empty:
        return None
    colors = method_colors(_methods(results))
    panels = list(table.groupby(["net", "dataset"], sort=True, dropna=False))
    fig, axes = _panels(len(panels))
    for ax, ((net, dataset), rows) in zip(axes, panels):
        for method, mrows in rows.groupby("method", sort=False):
            ax.errorbar(
                mrows["peak (MiB)"],
                mrows["acc mean (%)"],
                yerr=mrows["acc std (%)"].fillna(0.0),
                fmt="o",
                ms=6,
                capsize=3,
                color=colors[str(method)],
                label=str(method),
            )
            for _, r in mrows.iterrows():
                ax.annotate(
                    _config_label(r),
                    (r["peak (MiB)"], r["acc mean (%)"]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
        front = pareto_front(rows, "peak (MiB)", "acc mean (%)")
        ax.plot(
            front["peak (MiB)"],
            front["acc mean (%)"],
            "--",
            color="0.35",
            lw=1.2,
            zorder=1,
            label=PARETO_LABEL,
        )
        ax.set(xlabel=MEMORY_LABEL, ylabel=ACCURACY_LABEL, title=_title(net, dataset))
        _finish(ax)
    return fig


# ---------------------------------------------------------------- memory vs K


def memory_k_figure(results: pd.DataFrame) -> plt.Figure | None:
    """Peak memory vs K, one line per method (and aux depth), one panel per net, dataset and
    batch size. ``None`` unless some method was run at two or more K in one panel."""
    table = comparison_table(results).dropna(subset=["peak (MiB)", "K"])
    panels = [
        (key, rows)
        for key, rows in table.groupby(["net", "dataset", "batch size"], sort=True, dropna=False)
        if (rows.groupby(["method", "aux depth"], dropna=False)["K"].nunique() > 1).any()
    ]
    if not panels:
        return None
    colors = method_colors(_methods(results))
    fig, axes = _panels(len(panels))
    for ax, ((net, dataset, batch), rows) in zip(axes, panels):
        for (method, depth), series in rows.groupby(
            ["method", "aux depth"], sort=False, dropna=False
        ):
            series = series.sort_values("K")
            ax.plot(
                series["K"].astype(float),
                series["peak (MiB)"],
                marker="o",
                color=colors[str(method)],
                label=_series_label(method, depth),
            )
        ax.set(xlabel=K_LABEL, ylabel=MEMORY_LABEL, title=_title(net, dataset, batch))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(bottom=0)
        _finish(ax)
    return fig


# ---------------------------------------------------------------- memory vs batch size


def memory_batch_figure(
    results: pd.DataFrame, estimates: pd.DataFrame | None = None
) -> plt.Figure | None:
    """Peak memory vs batch size: measured (from the records) as solid lines with markers,
    estimated (rows of :func:`bench.estimate.estimate_methods`: ``method``, ``K``,
    ``batch_size``, ``peak_bytes``, optionally ``net`` and ``dataset``) as dashed lines, one
    colour per method, one line per method and K (and aux depth). One panel per net and
    dataset; estimate rows without a ``net`` (``dataset``) belong to the only net (that net's
    only dataset) of the results, and are left out when that is ambiguous. ``None`` unless
    some line has two batch sizes."""
    table = comparison_table(results).dropna(subset=["peak (MiB)", "batch size"])
    est = _estimate_points(estimates, table)
    series = []  # (panel key, method, K, aux depth, linestyle, rows with batch size, peak)
    for (net, dataset, method, K, depth), rows in table.groupby(
        ["net", "dataset", "method", "K", "aux depth"], sort=True, dropna=False
    ):
        series.append(((net, dataset), method, K, depth, "-", rows))
    for (net, dataset, method, K), rows in est.groupby(
        ["net", "dataset", "method", "K"], sort=True, dropna=False
    ):
        series.append(((net, dataset), method, K, math.nan, "--", rows))
    series = [s for s in series if s[-1]["batch size"].nunique() > 1]
    if not series:
        return None
    colors = method_colors([*_methods(results), *est["method"]])
    panel_keys = sorted({s[0] for s in series}, key=str)
    fig, axes = _panels(len(panel_keys))
    for ax, key in zip(axes, panel_keys):
        mine = [s for s in series if s[0] == key]
        configs = {(s[1], _number(s[2]), _number(s[3])) for s in mine}
        several_k = {m for m, _, _ in configs if sum(c[0] == m for c in configs) > 1}
        for _, method, K, depth, style, rows in mine:
            rows = rows.sort_values("batch size")
            label = _series_label(method, depth, K if method in several_k else None)
            ax.plot(
                rows["batch size"].astype(float),
                rows["peak (MiB)"],
                linestyle=style,
                marker="o" if style == "-" else None,
                color=colors[str(method)],
                label=label if style == "-" else f"{label} (estimate)",
            )
        ax.set(xlabel=BATCH_LABEL, ylabel=MEMORY_LABEL, title=_title(*key))
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        _finish(ax)
    return fig


def _estimate_points(estimates, table: pd.DataFrame) -> pd.DataFrame:
    columns = ["net", "dataset", "method", "K", "batch size", "peak (MiB)"]
    if estimates is None:
        return pd.DataFrame(columns=columns)
    est = pd.DataFrame(estimates)
    if est.empty or not {"method", "batch_size", "peak_bytes"} <= set(est.columns):
        return pd.DataFrame(columns=columns)
    panels = table[["net", "dataset"]].drop_duplicates()
    out = pd.DataFrame(
        {
            "method": est["method"],
            "K": pd.to_numeric(est["K"], errors="coerce") if "K" in est else math.nan,
            "batch size": pd.to_numeric(est["batch_size"], errors="coerce"),
            "peak (MiB)": pd.to_numeric(est["peak_bytes"], errors="coerce") / MIB,
        }
    )
    if "net" in est:
        out["net"] = est["net"]
    elif len(panels) == 1:
        out["net"] = panels["net"].iloc[0]
    else:
        return pd.DataFrame(columns=columns)  # cannot tell which panel they belong to
    if "dataset" in est:
        out["dataset"] = est["dataset"]
    else:  # the dataset of the net's runs, when the runs of that net used one
        datasets = panels.groupby("net", dropna=False)["dataset"].agg(list)
        only = datasets[datasets.map(len) == 1].map(lambda d: d[0])
        out["dataset"] = out["net"].map(only)
        out = out[out["net"].isin(only.index)]
    return out.dropna(subset=["batch size", "peak (MiB)"])[columns]


# ---------------------------------------------------------------- step-time overhead


def step_overhead_figure(results: pd.DataFrame) -> plt.Figure | None:
    """Step-time overhead vs BP (%) of every non-BP configuration, as bars, one bar set (and
    colour) per method, one panel per net, dataset and batch size that has a BP row."""
    table = comparison_table(results)
    table = table[table["method"] != "bp"].dropna(subset=["step overhead vs BP (%)"])
    if table.empty:
        return None
    colors = method_colors(_methods(results))
    panels = list(table.groupby(["net", "dataset", "batch size"], sort=True, dropna=False))
    fig, axes = _panels(len(panels))
    for ax, ((net, dataset, batch), rows) in zip(axes, panels):
        rows = rows.reset_index(drop=True)
        for method, mrows in rows.groupby("method", sort=False):
            ax.bar(
                mrows.index,
                mrows["step overhead vs BP (%)"],
                width=0.6,
                color=colors[str(method)],
                label=str(method),
            )
        ax.set_xlim(-0.5 - 0.5 * (len(rows) < 3), len(rows) - 0.5 + 0.5 * (len(rows) < 3))
        ax.set_xticks(
            rows.index, [f"{r['method']}\n{_config_label(r)}" for _, r in rows.iterrows()]
        )
        ax.tick_params(axis="x", labelsize=7)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set(ylabel=STEP_OVERHEAD_LABEL, xlabel="method", title=_title(net, dataset, batch))
        _finish(ax)
    return fig


# ---------------------------------------------------------------- training curves


def curves_figure(curves: pd.DataFrame) -> plt.Figure:
    """Training loss and test accuracy per epoch, one line per run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    for (_, method, K), run in curves.groupby(["run_id", "method", "K"], sort=False):
        label = f"{method} (K={K})"
        ax_loss.plot(run["epoch"], run["train_loss"], marker="o", ms=3, label=label)
        ax_acc.plot(run["epoch"], run["test_acc"], marker="o", ms=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss (output head)", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="test top-1 accuracy (%)")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    return fig


def plot_curves(curves: pd.DataFrame, path: str | Path) -> Path:
    """Write :func:`curves_figure` to ``path`` (its suffix picks the format); return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = curves_figure(curves)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- helpers


def _panels(n: int) -> tuple[plt.Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(
        1, n, figsize=(PANEL_WIDTH * n, PANEL_HEIGHT), squeeze=False, constrained_layout=True
    )
    return fig, list(axes[0])


def _finish(ax: plt.Axes) -> None:
    """Grid and legend; the methods first in drawing order, the Pareto front last."""
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] == PARETO_LABEL)
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8)


def _missing(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _number(value) -> float | None:
    """``value`` as a float, ``None`` when missing: the same K from Int64 and float columns."""
    return None if _missing(value) else float(value)


def _methods(results: pd.DataFrame) -> list[str]:
    """Every method of the results, failed runs included: they fix each method's colour."""
    if "config.method" not in results:
        return []
    return [str(m) for m in results["config.method"].dropna().unique()]


def _title(net, dataset=None, batch=None) -> str:
    parts = [str(net)]
    if not _missing(dataset):
        parts.append(str(dataset))
    title = ", ".join(parts)
    return title if _missing(batch) else f"{title}, batch {int(batch)}"


def _config_label(row: pd.Series) -> str:
    """``K=4`` (``K=4 d=2`` with an aux depth) for annotating one configuration."""
    label = "" if _missing(row["K"]) else f"K={int(row['K'])}"
    if not _missing(row["aux depth"]):
        label = f"{label} d={int(row['aux depth'])}".strip()
    return label


def _series_label(method, depth, K=None) -> str:
    label = str(method)
    if not _missing(K):
        label += f" K={int(K)}"
    if not _missing(depth):
        label += f" d={int(depth)}"
    return label
