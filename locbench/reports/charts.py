"""Matplotlib charts from results DataFrames (Agg backend: files only, no display).

Every ``*_figure`` function takes DataFrames (the runs of :func:`locbench.records.load_results`, the
curves of :func:`locbench.records.load_curves`, estimate rows of
:func:`locbench.analysis.estimate.estimate_methods`) and returns a
:class:`~matplotlib.figure.Figure`, or
``None`` when there is nothing to draw (e.g. memory vs K when every run has the same K).
:func:`save` writes a figure as PNG and SVG and closes it.

Charts with several nets get one panel (axes) per net (and dataset, and batch size where the
chart compares at a fixed batch); each panel has its own legend, right of the axes so that it never
covers data (the memory breakdown has one legend for all panels: its categories). Series are the
``variant`` labels of :func:`locbench.reports.tables.comparison_table` (``dgl``, or ``dgl
hidden_dim=64`` when a method ran with several settings). A method keeps its colour in every chart
of one results set; its variants share that colour and differ in marker, line style and bar hatch.
Peak memory is the ``peak (MiB)`` of :func:`locbench.reports.tables.comparison_table`: the CUDA
allocator's peak where measured, else the tracked peak (that table's ``memory source`` column says
which); the breakdown and per-module charts show the tracked peak, the only one with a breakdown.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from locbench.errors import UserError  # noqa: E402
from locbench.outputs import Outputs, write_atomic  # noqa: E402
from locbench.records import CATEGORIES, PHASE_CODES  # noqa: E402
from locbench.reports.tables import (  # noqa: E402
    MIB,
    aux_depth,
    comparison_table,
    is_missing,
    variant_labels,
)

MEMORY_LABEL = "peak memory (MiB)"
ACCURACY_LABEL = "test accuracy (%)"
K_LABEL = "K (local modules)"
BATCH_LABEL = "batch size (images)"
STEP_OVERHEAD_LABEL = "step-time overhead vs BP (%)"
PARETO_LABEL = "Pareto front"
TRACKED_LABEL = "tracked peak memory (MiB)"
MODULE_LABEL = "module k"
# Room for the legend, which stands right of each panel: it never covers data.
PANEL_WIDTH, PANEL_HEIGHT = 6.2, 3.8
# Each category keeps its colour in every panel; Set2 is muted beside the methods' tab10, which
# colours the tick labels naming the bars.
CATEGORY_COLORS = dict(zip(CATEGORIES, plt.get_cmap("Set2").colors))
# The n-th variant of a method (sorted labels) gets the n-th of each; "--" is left out: it
# marks estimates and the Pareto front.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))
HATCHES = (None, "//", "..", "xx", "\\\\", "++")


#: Room one chart asks for (its PNG and SVG).
CHART_BYTES = 4 * 2**20


def save(fig: plt.Figure, path_stem: str | Path, dpi: int = 120) -> list[Path]:
    """Write ``fig`` to ``<stem>.png`` and ``<stem>.svg`` (both whole, or neither), close it
    and return both paths."""
    stem = Path(path_stem)
    try:
        with Outputs.collect() as outputs:
            for suffix in ("png", "svg"):
                path = Path(f"{stem}.{suffix}")
                outputs.add(write_atomic(path, figure_writer(fig, suffix, dpi)))
    finally:
        plt.close(fig)
    return outputs.paths


def figure_writer(fig: plt.Figure, fmt: str, dpi: int = 120) -> Callable[[IO[bytes]], None]:
    """What writes ``fig`` in format ``fmt`` to a file (for :func:`write_atomic`); an SVG
    without a date, so that the same chart is the same file."""
    metadata = {"Date": None} if fmt == "svg" else None
    return lambda f: fig.savefig(f, format=fmt, dpi=dpi, metadata=metadata)


# The built-in methods keep their colour whichever methods a chart holds: the report page
# charts each net and dataset apart, and a method must look the same in all of them.
BUILTIN_METHODS = ("bp", "bp-ckpt", "dgl", "infopro", "predsim", "auglocal", "man", "hpff", "mlaan")


def method_colors(methods, extra=()) -> dict[str, tuple]:
    """A fixed colour per method name over the tab10 cycle: the built-in methods by their
    place in :data:`BUILTIN_METHODS`, other names (plugins) after them in sorted order; names
    only in ``extra`` (e.g. estimated methods never run) come last, so they move no other
    colour."""
    cycle = plt.get_cmap("tab10").colors
    names = sorted({str(m) for m in methods} - set(BUILTIN_METHODS))
    names += sorted({str(m) for m in extra} - set(names) - set(BUILTIN_METHODS))
    slots = {m: i for i, m in enumerate([*BUILTIN_METHODS, *names])}
    present = {str(m) for m in [*methods, *extra]}
    return {m: cycle[slots[m] % len(cycle)] for m in slots if m in present}


def variant_styles(table: pd.DataFrame, methods=()) -> dict[str, dict]:
    """``variant label -> matplotlib style`` (``color``, ``marker``, ``linestyle``, ``hatch``)
    for the rows of a :func:`~locbench.reports.tables.comparison_table`: the colour of the method
    (:func:`method_colors` over its methods and ``methods``), the rest by the label's rank among
    that method's variant labels."""
    colors = method_colors([*table["method"].dropna(), *methods])
    styles = {}
    pairs = table[["method", "variant"]].dropna().drop_duplicates()
    for method, labels in pairs.groupby("method", sort=False)["variant"]:
        for i, label in enumerate(sorted({str(v) for v in labels})):
            styles[label] = {
                "color": colors[str(method)],
                "marker": MARKERS[i % len(MARKERS)],
                "linestyle": LINESTYLES[i % len(LINESTYLES)],
                "hatch": HATCHES[i % len(HATCHES)],
            }
    return styles


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
    configuration of :func:`~locbench.reports.tables.comparison_table` (mean over seeds, error bars
    one standard deviation), one marker series per method variant, each point annotated with its K,
    and the Pareto front (the lowest memory for the accuracy) as a dashed line. One panel per
    net and dataset."""
    full = comparison_table(results)
    table = full.dropna(subset=["peak (MiB)", "acc mean (%)"])
    if table.empty:
        return None
    styles = variant_styles(full, _methods(results))
    panels = list(table.groupby(["net", "dataset"], sort=True, dropna=False))
    fig, axes = _panels(len(panels))
    for ax, ((net, dataset), rows) in zip(axes, panels):
        for variant, mrows in rows.groupby("variant", sort=False):
            style = styles[str(variant)]
            ax.errorbar(
                mrows["peak (MiB)"],
                mrows["acc mean (%)"],
                yerr=mrows["acc std (%)"].fillna(0.0),
                fmt=style["marker"],
                ms=6,
                capsize=3,
                color=style["color"],
                label=str(variant),
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
        ax.margins(x=0.15, y=0.08)  # room for the K labels of the outermost points
        _finish(ax)
    return fig


# ---------------------------------------------------------------- memory vs K


def memory_k_figure(results: pd.DataFrame) -> plt.Figure | None:
    """Peak memory vs K, one line per method variant (and aux depth), one panel per net,
    dataset and batch size. ``None`` unless some variant was run at two or more K in one
    panel."""
    full = comparison_table(results)
    table = full.dropna(subset=["peak (MiB)", "K"])
    panels = [
        (key, rows)
        for key, rows in table.groupby(["net", "dataset", "batch size"], sort=True, dropna=False)
        if (rows.groupby(["variant", "aux depth"], dropna=False)["K"].nunique() > 1).any()
    ]
    if not panels:
        return None
    styles = variant_styles(full, _methods(results))
    fig, axes = _panels(len(panels))
    for ax, ((net, dataset, batch), rows) in zip(axes, panels):
        for (variant, depth), series in rows.groupby(
            ["variant", "aux depth"], sort=False, dropna=False
        ):
            series = series.sort_values("K")
            style = styles[str(variant)]
            ax.plot(
                series["K"].astype(float),
                series["peak (MiB)"],
                marker=style["marker"],
                linestyle=style["linestyle"],
                color=style["color"],
                label=_series_label(variant, depth),
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
    estimated (rows of :func:`locbench.analysis.estimate.estimate_methods`: ``method``, ``K``,
    ``batch_size``, ``peak_bytes``, optionally ``net`` and ``dataset``) as dashed lines, one
    colour per method, one line per method variant and K (and aux depth). One panel per net and
    dataset; estimate rows without a ``net`` (``dataset``) belong to the only net (that net's
    only dataset) of the results, and are left out when that is ambiguous. ``None`` unless
    some line has two batch sizes."""
    full = comparison_table(results)
    table = full.dropna(subset=["peak (MiB)", "batch size"])
    est = _estimate_points(estimates, table)
    # (panel key, method, variant, K, aux depth, estimated, rows with batch size and peak)
    series = []
    for (net, dataset, method, variant, K, depth), rows in table.groupby(
        ["net", "dataset", "method", "variant", "K", "aux depth"], sort=True, dropna=False
    ):
        series.append(((net, dataset), method, variant, K, depth, False, rows))
    for (net, dataset, method, K), rows in est.groupby(
        ["net", "dataset", "method", "K"], sort=True, dropna=False
    ):
        series.append(((net, dataset), method, method, K, math.nan, True, rows))
    series = [s for s in series if s[-1]["batch size"].nunique() > 1]
    if not series:
        return None
    styles = variant_styles(full, _methods(results))
    colors = method_colors([*full["method"].dropna(), *_methods(results)], est["method"])
    panel_keys = sorted({s[0] for s in series}, key=str)
    fig, axes = _panels(len(panel_keys))
    for ax, key in zip(axes, panel_keys):
        mine = [s for s in series if s[0] == key]
        configs = {(s[2], _number(s[3]), _number(s[4])) for s in mine}
        several_k = {v for v, _, _ in configs if sum(c[0] == v for c in configs) > 1}
        for _, method, variant, K, depth, estimated, rows in mine:
            rows = rows.sort_values("batch size")
            label = _series_label(variant, depth, K if variant in several_k else None)
            style = styles.get(str(variant), {}) if not estimated else {}
            ax.plot(
                rows["batch size"].astype(float),
                rows["peak (MiB)"],
                linestyle="--" if estimated else style["linestyle"],
                marker=None if estimated else style["marker"],
                color=colors[str(method)],
                label=f"{label} (estimate)" if estimated else label,
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
    """Step-time overhead vs BP (%) of every non-BP configuration, as bars, one bar set per
    method variant (the method's colour, a hatch per variant), one panel per net, dataset and
    batch size that has a BP row."""
    full = comparison_table(results)
    table = full[full["method"] != "bp"].dropna(subset=["step overhead vs BP (%)"])
    if table.empty:
        return None
    styles = variant_styles(full, _methods(results))
    panels = list(table.groupby(["net", "dataset", "batch size"], sort=True, dropna=False))
    fig, axes = _panels(len(panels))
    for ax, ((net, dataset, batch), rows) in zip(axes, panels):
        rows = rows.reset_index(drop=True)
        for variant, mrows in rows.groupby("variant", sort=False):
            style = styles[str(variant)]
            ax.bar(
                mrows.index,
                mrows["step overhead vs BP (%)"],
                width=0.6,
                color=style["color"],
                hatch=style["hatch"],
                edgecolor="white" if style["hatch"] else None,
                label=str(variant),
            )
        ax.set_xlim(-0.5 - 0.5 * (len(rows) < 3), len(rows) - 0.5 + 0.5 * (len(rows) < 3))
        ax.set_xticks(rows.index, [_bar_label(r) for _, r in rows.iterrows()])
        ax.tick_params(axis="x", labelsize=7)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set(ylabel=STEP_OVERHEAD_LABEL, xlabel="method", title=_title(net, dataset, batch))
        _finish(ax)
    return fig


# ---------------------------------------------------------------- tracked memory breakdown


def breakdown_figure(results: pd.DataFrame) -> plt.Figure | None:
    """The tracked peak split by what was live at that moment: one stacked bar per
    configuration of :func:`~locbench.reports.tables.comparison_table` (method variant, K, aux
    depth), its segments the six categories of :mod:`locbench.measure.memory` (parameters,
    gradients, optimizer state, backbone activations, auxiliary activations, other), each in one
    colour in every panel. A segment's height is the record's ``memory.breakdown`` bytes / 2**20:
    the mean over the configuration's ``ok`` runs when several seeds share the row, so the bar's top
    is the mean tracked peak. The tick label (in the method's colour) names the bar. One panel per
    net, dataset and batch size; runs without a full breakdown (failed runs, records of other
    tools) are left out, and ``None`` when none has one."""
    columns = {f"memory.breakdown.{c}": c for c in CATEGORIES}
    table = _configurations(_with_frozen(results), columns)
    if table.empty:
        return None
    colors = method_colors(_methods(results))
    panels = list(table.groupby(["net", "dataset", "batch size"], sort=True, dropna=False))
    fig, axes = _panels(len(panels))
    for ax, ((net, dataset, batch), rows) in zip(axes, panels):
        rows = rows.reset_index(drop=True)
        bottom = np.zeros(len(rows))
        for category in CATEGORIES:
            heights = (rows[category] / MIB).to_numpy()
            ax.bar(
                rows.index,
                heights,
                bottom=bottom,
                width=0.6,
                color=CATEGORY_COLORS[category],
                label=category.replace("_", " "),
            )
            bottom = bottom + heights
        ax.set_xticks(rows.index, [_bar_label(r) for _, r in rows.iterrows()])
        for tick, method in zip(ax.get_xticklabels(), rows["method"]):
            tick.set_color(colors[str(method)])
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlim(-0.5 - 0.5 * (len(rows) < 3), len(rows) - 0.5 + 0.5 * (len(rows) < 3))
        ax.set(ylabel=TRACKED_LABEL, xlabel="method", title=_title(net, dataset, batch))
        ax.grid(alpha=0.3, axis="y")
        ax.set_axisbelow(True)
    # one legend for every panel (the categories are the same), the top segment first
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="outside right upper", fontsize=8)
    return fig


# ---------------------------------------------------------------- per-module profile

# (record field, what the row of panels shows); with the backbone and auxiliary peaks apart
# (records since they were tracked), those replace the combined activation peak.
MODULE_PEAKS = ("memory.module_peaks", "peak while module k ran (MiB)")
MODULE_ACTIVATIONS = ("memory.module_activation_peaks", "module k's own activations (MiB)")
MODULE_SPLIT = (
    ("memory.module_backbone_activation_peaks", "module k's backbone activations (MiB)"),
    ("memory.module_aux_activation_peaks", "module k's auxiliary-net activations (MiB)"),
)
WHOLE_NET = "whole\nnet"


def module_memory_figure(results: pd.DataFrame) -> plt.Figure | None:
    """Each module's own tracked peak by module index 1..K: one line with markers per
    configuration (method variant, and K when a variant ran at several), styled as in the
    other charts; a single-module run (BP) is one point at the "whole net" tick beside them.
    The top row is ``memory.module_peaks`` (peak live bytes while the module's phases ran);
    the rows below, the peak of the activations the module itself made: its backbone forward
    and its auxiliary net apart when the records hold them, else together. Values are means
    over the ``ok`` seeds, in MiB. One column per net, dataset and batch size; ``None`` when no
    run has module peaks."""
    peaks = MODULE_PEAKS[0]
    with_peaks = results[results[peaks].notna()] if peaks in results else results.iloc[:0]
    # apart only when every run with module peaks has them: older records lack them
    split = all(f in with_peaks and with_peaks[f].notna().all() for f, _ in MODULE_SPLIT)
    rows_shown = [MODULE_PEAKS, *(MODULE_SPLIT if split else [MODULE_ACTIVATIONS])]
    table = _configurations(results, {field: field for field, _ in rows_shown})
    if table.empty:
        return None
    styles = variant_styles(comparison_table(results), _methods(results))
    panels = list(table.groupby(["net", "dataset", "batch size"], sort=True, dropna=False))
    fig, axes = _panels(len(panels), rows=len(rows_shown))
    for col, ((net, dataset, batch), rows) in enumerate(panels):
        several_k = rows.groupby("variant")["K"].nunique(dropna=False)
        for r, (field, ylabel) in enumerate(rows_shown):
            ax = axes[r * len(panels) + col]
            whole_net = False
            for _, row in rows.iterrows():
                peaks = np.asarray(row[field], dtype=float) / MIB
                style = styles[str(row["variant"])]
                single = len(peaks) == 1  # BP: one module, drawn beside the local modules
                whole_net |= single
                K = row["K"] if several_k[row["variant"]] > 1 and not single else None
                ax.plot(
                    [0] if single else np.arange(1, len(peaks) + 1),
                    peaks,
                    marker=style["marker"],
                    linestyle=style["linestyle"],
                    color=style["color"],
                    label=_series_label(row["variant"], row["aux depth"], K),
                )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if whole_net:
                ax.xaxis.set_major_formatter(
                    FuncFormatter(lambda x, _: WHOLE_NET if x == 0 else f"{x:.0f}")
                )
            ax.set_ylim(bottom=0)
            ax.set(ylabel=ylabel, xlabel=MODULE_LABEL)
            if r == 0:
                ax.set_title(_title(net, dataset, batch))
            _finish(ax, legend=r == 0)  # the rows below show the same series
    return fig


def _configurations(results: pd.DataFrame, fields: dict[str, str], reduce=None) -> pd.DataFrame:
    """The ``ok`` runs that have every one of ``fields`` (record column -> name), one row per
    configuration as in :func:`~locbench.reports.tables.comparison_table` (its keys, variant label
    and order), each field the mean over the configuration's seeds (element by element for the
    per-module lists), or ``reduce`` of the configuration's values."""
    reduce = reduce or _mean
    keys = ["net", "dataset", "batch size", "method", "variant", "K", "aux depth"]
    if results.empty or not fields or not set(fields) <= set(results):
        return pd.DataFrame(columns=[*keys, *fields.values()])
    runs = pd.DataFrame(
        {
            "net": results.get("config.net"),
            "dataset": results.get("config.dataset"),
            "batch size": pd.to_numeric(results.get("config.batch_size"), errors="coerce"),
            "method": results["config.method"],
            "variant": variant_labels(results),
            "K": pd.to_numeric(results.get("K"), errors="coerce"),
            "aux depth": results.get("config.method_params", pd.Series(index=results.index))
            .map(aux_depth)
            .astype(float),
        },
        index=results.index,
    )
    present = results["status"].eq("ok")
    for column, name in fields.items():
        runs[name] = results[column]
        present &= results[column].map(lambda v: isinstance(v, list) or not is_missing(v))
    rows = []
    for key, group in runs[present].groupby(keys, sort=False, dropna=False):
        rows.append({**dict(zip(keys, key)), **{n: reduce(group[n]) for n in fields.values()}})
    table = pd.DataFrame(rows, columns=[*keys, *fields.values()])
    table["_bp_last"] = table["method"] != "bp"  # BP first, as in the comparison table
    order = ["net", "dataset", "batch size", "_bp_last", "method", "variant", "K", "aux depth"]
    table = table.sort_values(order, na_position="last", kind="stable")
    return table.drop(columns="_bp_last").reset_index(drop=True)


def _with_frozen(results: pd.DataFrame) -> pd.DataFrame:
    """Records from before the ``frozen`` category had none: 0 where they have a breakdown."""
    column = "memory.breakdown.frozen"
    if "memory.breakdown.parameters" not in results:
        return results
    had = results["memory.breakdown.parameters"].map(lambda v: not is_missing(v))
    frozen = results[column] if column in results else pd.Series(np.nan, index=results.index)
    return results.assign(**{column: frozen.where(~(had & frozen.isna()), 0)})


def _mean(values: pd.Series):
    """The mean of numbers, or of equally long lists element by element (as a list)."""
    if isinstance(values.iloc[0], list):
        return pd.DataFrame(values.tolist()).mean().tolist()
    return values.astype(float).mean()


# ---------------------------------------------------------------- one step over time

# Each timeline phase's name and its shade behind the line, light beside the methods' tab10
# lines; "other" (the batch arriving, the output loss) stays unshaded.
PHASES = {
    PHASE_CODES["backbone"]: ("forward", "#dbe9f6"),
    PHASE_CODES["aux"]: ("local loss", "#fde4c8"),
    PHASE_CODES["backward"]: ("backward", "#f6d3d3"),
    PHASE_CODES["optimizer_state"]: ("optimizer", "#d9eed5"),
    PHASE_CODES["other"]: ("other", None),
}
TIMELINE_LABEL = "live tracked memory (MiB)"
EVENT_LABEL = "allocations and releases, in op order"
TIMELINE_FIELDS = {
    "memory.timeline.event": "event",
    "memory.timeline.bytes": "bytes",
    "memory.timeline.phases": "phases",
    "memory.timeline.events": "events",
}
TIMELINE_COLUMNS = 3  # panels a row


def timeline_figure(results: pd.DataFrame) -> plt.Figure | None:
    """One training step over time (the records' ``memory.timeline``,
    :mod:`locbench.measure.memory`):
    live tracked bytes after each allocation and release of the step, in MiB, one panel per
    configuration (method variant, K, aux depth) of each net, dataset and batch size, BP first,
    all on one memory scale so that BP's single mountain stands beside the local methods'
    saw-tooth. Of several seeds, the first record's. ``None`` when no ``ok`` run has one."""
    table = _configurations(results, TIMELINE_FIELDS, reduce=lambda values: values.iloc[0])
    if table.empty:
        return None
    panels = []
    for _, row in table.iterrows():
        label = f"{row['variant']} {_config_label(row)}".strip()
        title = f"{_title(row['net'], row['dataset'], row['batch size'])}\n{label}"
        panels.append((title, str(row["method"]), {f: row[f] for f in TIMELINE_FIELDS.values()}))
    return timelines_figure(panels, method_colors(_methods(results)))


def timelines_figure(panels: list[tuple[str, str, dict]], colors: dict | None = None) -> plt.Figure:
    """``(title, method, timeline)`` panels
    (:meth:`locbench.measure.memory.MemoryTracker.timeline`), each line in its method's colour
    (``colors``, else :func:`method_colors`), phases shaded,
    module boundaries dotted, the peak marked; one memory scale for all."""
    colors = colors or method_colors([method for _, method, _ in panels])
    cols = min(len(panels), TIMELINE_COLUMNS)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.6 * cols + 1.4, 3.3 * rows), squeeze=False, sharey=True,
        constrained_layout=True,
    )  # fmt: skip
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_visible(False)
            continue
        title, method, timeline = panels[i]
        _draw_timeline(ax, timeline, colors[method])
        ax.set_title(title, fontsize=9)
        ax.set(ylabel=TIMELINE_LABEL if i % cols == 0 else None, xlabel=EVENT_LABEL)
    # the panels share their y axis: room above the highest peak for its label
    top = max(max(timeline["bytes"]) for _, _, timeline in panels) / MIB
    axes[0, 0].set_ylim(bottom=0, top=top * 1.12)
    handles = [
        Patch(facecolor=shade or "white", edgecolor="0.6", lw=0.5, label=name)
        for name, shade in PHASES.values()
    ]
    handles.append(Line2D([], [], color="0.35", lw=0.8, ls=":", label="next module"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="phase")
    return fig


def _draw_timeline(ax: plt.Axes, timeline: dict, color) -> None:
    """Live MiB against the event index: a step line (a value holds until the next event),
    each phase's span shaded, a dotted line where the next module's phases begin, its number
    (1..K) at the top."""
    x = np.asarray(timeline["event"])
    y = np.asarray(timeline["bytes"], dtype=float) / MIB
    phases, n = timeline["phases"], int(timeline["events"])
    ends = [p[0] for p in phases[1:]] + [n]
    module, spans = None, {}
    for (start, code, k), end in zip(phases, ends):
        shade = PHASES.get(code, PHASES["-"])[1]
        if shade:
            ax.axvspan(start - 0.5, end - 0.5, color=shade, lw=0)
        if k is not None:
            if module is not None and k != module:
                ax.axvline(start - 0.5, color="0.35", lw=0.8, ls=":")
            lo, hi = spans.get(k, (start, end))
            spans[k], module = (min(lo, start), max(hi, end)), k
    if len(spans) > 1:  # one module (BP) needs no number
        for k, (lo, hi) in spans.items():
            ax.text((lo + hi) / 2, 0.98, str(k + 1), transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=7, color="0.35")  # fmt: skip
    ax.step(x, y, where="post", color=color, lw=1.2, gid="timeline")
    top = int(np.argmax(y))
    ax.plot(x[top], y[top], "v", color=color, ms=5)
    ax.annotate(f"peak {y[top]:.1f} MiB", (x[top], y[top]), xytext=(4, 2),
                textcoords="offset points", fontsize=7)  # fmt: skip
    ax.set_xlim(-0.5, n - 0.5)
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)


# ---------------------------------------------------------------- training curves


def curves_figure(curves: pd.DataFrame, results: pd.DataFrame | None = None) -> plt.Figure:
    """Training loss and test accuracy per epoch, one line per run, in its method's colour.
    With the runs' ``results`` (:func:`locbench.records.load_results`), lines are labelled and
    styled by variant as in the other charts, and colours match theirs; runs that share a
    label are told apart by seed."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.5), constrained_layout=True)
    lines = _curve_lines(curves, results)
    for run_id, label, style in lines:
        run = curves[curves["run_id"] == run_id]
        for ax, column in ((ax_loss, "train_loss"), (ax_acc, "test_acc")):
            ax.plot(
                run["epoch"],
                run[column],
                marker=style["marker"],
                linestyle=style["linestyle"],
                color=style["color"],
                ms=3,
                label=label,
            )
    ax_loss.set(xlabel="epoch", ylabel="training loss (output head)", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="test top-1 accuracy (%)")
    _outside_legend(ax_acc)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no 1.5
    return fig


def _curve_lines(curves: pd.DataFrame, results: pd.DataFrame | None) -> list[tuple]:
    """``(run_id, label, style)`` per run of ``curves``, in their order."""
    runs = curves.drop_duplicates("run_id")
    variants, seeds, styles = {}, {}, {}
    if results is not None and not results.empty and "run_id" in results:
        variants = dict(zip(results["run_id"], variant_labels(results)))
        if "config.seed" in results:
            seeds = dict(zip(results["run_id"], results["config.seed"]))
        styles = variant_styles(comparison_table(results), runs["method"])
    colors = method_colors(_methods(results) if results is not None else [], runs["method"])
    lines = []
    for run_id, method, K in zip(runs["run_id"], runs["method"], runs["K"]):
        variant = variants.get(run_id, str(method))
        style = styles.get(variant) or {"marker": "o", "linestyle": "-"}
        label = variant if is_missing(K) else f"{variant} (K={int(K)})"
        lines.append([run_id, label, {**style, "color": colors[str(method)]}])
    counts = pd.Series([line[1] for line in lines]).value_counts()
    for line in lines:
        seed = seeds.get(line[0])
        if counts[line[1]] > 1 and not is_missing(seed):
            line[1] = f"{line[1]} seed {seed}"
    return [tuple(line) for line in lines]


def plot_curves(
    curves: pd.DataFrame, path: str | Path, results: pd.DataFrame | None = None
) -> Path:
    """Write :func:`curves_figure` to ``path`` (its suffix picks the format); return it."""
    path = Path(path)
    fig = curves_figure(curves, results)
    try:
        return write_atomic(path, figure_writer(fig, path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- helpers


def _panels(n: int, rows: int = 1) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure of ``rows`` x ``n`` panels; the axes row by row."""
    fig, axes = plt.subplots(
        rows,
        n,
        figsize=(PANEL_WIDTH * n, PANEL_HEIGHT * rows),
        squeeze=False,
        constrained_layout=True,
    )
    return fig, list(axes.flat)


def _finish(ax: plt.Axes, legend: bool = True) -> None:
    """Grid and legend; the methods first in drawing order, the Pareto front last."""
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    if legend:
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: labels[i] == PARETO_LABEL)
        _outside_legend(ax, [handles[i] for i in order], [labels[i] for i in order])


def _outside_legend(ax: plt.Axes, handles=None, labels=None) -> None:
    """The legend right of the axes, outside them: inside, it covered bars and points."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(
        handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0
    )


def _bar_label(row: pd.Series) -> str:
    """A bar's tick label: its variant, one setting a line (long labels of neighbouring bars
    must not overlap), then its K and aux depth."""
    return re.sub(r" (?=[^ =]+=)", "\n", str(row["variant"])) + f"\n{_config_label(row)}"


def _number(value) -> float | None:
    """``value`` as a float, ``None`` when missing: the same K from Int64 and float columns."""
    return None if is_missing(value) else float(value)


def _methods(results: pd.DataFrame) -> list[str]:
    """Every method of the results, failed runs included: they fix each method's colour."""
    if "config.method" not in results:
        return []
    return [str(m) for m in results["config.method"].dropna().unique()]


def _title(net, dataset=None, batch=None) -> str:
    parts = [str(net)]
    if not is_missing(dataset):
        parts.append(str(dataset))
    title = ", ".join(parts)
    return title if is_missing(batch) else f"{title}, batch {int(batch)}"


def _config_label(row: pd.Series) -> str:
    """``K=4`` (``K=4 d=2`` with an aux depth) for annotating one configuration."""
    label = "" if is_missing(row["K"]) else f"K={int(row['K'])}"
    if not is_missing(row["aux depth"]):
        label = f"{label} d={int(row['aux depth'])}".strip()
    return label


def _series_label(method, depth, K=None) -> str:
    label = str(method)
    if not is_missing(K):
        label += f" K={int(K)}"
    if not is_missing(depth):
        label += f" d={int(depth)}"
    return label


# ---------------------------------------------------------------- the report's charts

# What a chart draws from: the runs, their curves (one row per run and epoch) and estimate rows
# (None, or those :func:`locbench.reports.page.build_report` was given).
Draw = Callable[[pd.DataFrame, pd.DataFrame, "pd.DataFrame | None"], "plt.Figure | None"]


@dataclass(frozen=True)
class Chart:
    """One chart of the report, declared once: the report page, its files and ``locbench plot``
    (its kinds, its ``--help``) read it from :data:`CHARTS`."""

    kind: str  # ``locbench plot KIND``
    name: str  # its files, NAME.png and NAME.svg, and its figure on the page
    title: str  # one line: the page's caption and the kind's line in ``locbench plot --help``
    draw: Draw  # (results, curves, estimates) -> the figure, or None without data


class Charts:
    """The report's charts by kind, in the order the page shows them (registration order)."""

    def __init__(self) -> None:
        self._by_kind: dict[str, Chart] = {}

    def add(self, chart: Chart) -> Chart:
        for other in self._by_kind.values():
            if chart.kind == other.kind or chart.name == other.name:
                raise ValueError(f"chart {chart.kind!r} ({chart.name}) is already registered")
        self._by_kind[chart.kind] = chart
        return chart

    def remove(self, kind: str) -> None:
        """Unregister ``kind`` (a test's own chart); unknown kinds are ignored."""
        self._by_kind.pop(kind, None)

    def get(self, kind: str) -> Chart:
        if kind not in self._by_kind:
            raise UserError(f"unknown chart kind {kind!r}; known: {', '.join(self.kinds())}")
        return self._by_kind[kind]

    def kinds(self) -> list[str]:
        return list(self._by_kind)

    def __iter__(self) -> Iterator[Chart]:
        return iter(list(self._by_kind.values()))


CHARTS = Charts()
# A new chart: its figure function (above, or in a module of its own) and one line here.
CHARTS.add(Chart(
    "accuracy-memory", "accuracy_vs_memory", "Test accuracy vs peak memory",
    lambda results, curves, estimates: accuracy_memory_figure(results),
))  # fmt: skip
CHARTS.add(Chart(
    "memory-k", "memory_vs_K", "Peak memory vs K",
    lambda results, curves, estimates: memory_k_figure(results),
))  # fmt: skip
CHARTS.add(Chart(
    "memory-batch", "memory_vs_batch", "Peak memory vs batch size",
    lambda results, curves, estimates: memory_batch_figure(results, estimates),
))  # fmt: skip
CHARTS.add(Chart(
    "breakdown", "memory_breakdown", "Tracked peak memory by category",
    lambda results, curves, estimates: breakdown_figure(results),
))  # fmt: skip
CHARTS.add(Chart(
    "modules", "module_memory", "Tracked peak memory per module",
    lambda results, curves, estimates: module_memory_figure(results),
))  # fmt: skip
CHARTS.add(Chart(
    "timeline", "memory_timeline", "Live tracked memory over one training step",
    lambda results, curves, estimates: timeline_figure(results),
))  # fmt: skip
CHARTS.add(Chart(
    "step-overhead", "step_overhead", "Step-time overhead vs BP",
    lambda results, curves, estimates: step_overhead_figure(results),
))  # fmt: skip
CHARTS.add(Chart(
    "curves", "curves", "Training curves",
    lambda results, curves, estimates: None if curves.empty else curves_figure(curves, results),
))  # fmt: skip
