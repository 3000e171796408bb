"""The report: a results folder -> comparison table (CSV, Markdown), charts (PNG, SVG) and one
self-contained HTML page (charts inlined as base64 PNG; no external assets, no network)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from bench.errors import UserError
from bench.records import curves_frame, results_frame, scan_records
from reports import charts
from reports.tables import comparison_table, format_cell, variant_labels, write_table

CHARTS = (
    ("accuracy_vs_memory", "Test accuracy vs peak memory"),
    ("memory_vs_K", "Peak memory vs K"),
    ("memory_vs_batch", "Peak memory vs batch size"),
    ("memory_breakdown", "Tracked peak memory by category"),
    ("module_memory", "Tracked peak memory per module"),
    ("memory_timeline", "Live tracked memory over one training step"),
    ("step_overhead", "Step-time overhead vs BP"),
    ("curves", "Training curves"),
)
# `locbench plot KIND`: the kind of each chart (its file keeps the report's name)
PLOT_KINDS = {
    "accuracy-memory": "accuracy_vs_memory",
    "memory-k": "memory_vs_K",
    "memory-batch": "memory_vs_batch",
    "breakdown": "memory_breakdown",
    "modules": "module_memory",
    "timeline": "memory_timeline",
    "step-overhead": "step_overhead",
    "curves": "curves",
}

HOW_MEASURED = """\
<p><b>Peak memory (CUDA allocated)</b> is <code>torch.cuda.max_memory_allocated()</code> over
the measured window: steady-state training steps after warm-up, started after
<code>gc.collect()</code>, <code>empty_cache()</code> and <code>reset_peak_memory_stats()</code>,
with cuBLAS/cuDNN already warmed up. <b>Peak memory (tracked)</b>, on any device, CPU included,
is the peak of live tensor-storage bytes in the same window (parameters, gradients, optimizer
state, backbone activations, auxiliary-net activations and other); on CUDA it agrees with the
allocator's peak within 10%. <b>Estimated</b> peaks (dashed lines) replay the same training step
on fake tensors, with CUDA's 512-byte rounding. The table's <i>peak (MiB)</i> is the CUDA
allocated peak when the runs measured one, otherwise the tracked peak; its <i>memory source</i>
column says which one each row used, and the saving vs BP compares peaks of the same source.
MiB = 2<sup>20</sup> bytes.</p>
<p><b>Tracked peak memory by category</b> splits the tracked peak by what was live at that
moment (each bar's top is the tracked peak, the mean over seeds). <b>Per module</b>, the top
row is the peak of live bytes while module <i>k</i>'s phases ran; the rows below, the peak of
the activations module <i>k</i> itself made (its backbone forward and its auxiliary net apart,
where the records hold them). BP trains one module, the whole net: one point.</p>
<p><b>Accuracy</b> is the final top-1 accuracy on the test split from the output head, mean
± sample standard deviation over the seeds that finished with status <code>ok</code>;
<i>failed runs</i> counts out-of-memory, diverged and errored runs of the configuration, which
enter no number. <b>Step time</b> is the median per-step time over the measured window
(synchronised on CUDA, warm-up excluded); <b>FLOPs</b> are per training step, forward and
backward, backbone and auxiliary nets. Savings and overheads compare with the BP row of the
same net, dataset and batch size; where BP ran with several settings, the one whose other
settings (learning rate, epochs, ...) equal the row's, else the one sharing most of them.</p>
<p>A row is one configuration: every setting of the run but its seed. The <i>variant</i>
column names the settings in which a method's rows differ, other than K, aux depth and batch
size (e.g. <code>dgl hidden_dim=64</code>); charts label their series with it. Each method keeps
one colour in every chart; its variants differ in marker, line style or hatch.</p>
"""

STYLE = """\
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; }
img { max-width: 100%; }
code { font-size: 0.95em; }
"""


@dataclass(frozen=True)
class Report:
    """What :func:`build_report` wrote: ``path`` of ``report.html``, and ``(file, reason)`` for
    every ``*.json`` file of the results folder that is not a valid run record. Reads as its
    path in f-strings and ``os.fspath``."""

    path: Path
    skipped: tuple[tuple[Path, str], ...] = ()

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


def build_report(runs_dir: str | Path, out_dir: str | Path, estimates=None) -> Report:
    """Write the report of the run records in ``runs_dir`` into ``out_dir``: ``comparison.csv``,
    ``comparison.md``, every chart that has data as ``<name>.png`` and ``<name>.svg``, and
    ``report.html`` (self-contained). ``estimates``: optional rows of
    :func:`bench.estimate.estimate_methods` (a DataFrame or a list of dicts) drawn dashed in the
    memory vs batch size chart. Files that are not valid records (truncated, another schema, not
    a record) are left out, listed on the page and returned in :attr:`Report.skipped`.

    Raises :class:`~bench.errors.UserError` when ``runs_dir`` is missing or holds no valid
    record."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    results, curves, skipped = load_runs(runs_dir)
    if estimates is not None and not isinstance(estimates, pd.DataFrame):
        estimates = pd.DataFrame(list(estimates))

    out_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(results)
    write_table(table, out_dir / "comparison")

    written = {}
    for name, _ in CHARTS:
        fig = chart_figure(name, results, curves, estimates)
        if fig is not None:
            written[name] = charts.save(fig, out_dir / name)

    page = render_page(runs_dir, results, table, written, skipped)
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return Report(path, tuple(skipped))


def load_runs(runs_dir: Path, what: str = "report") -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """The valid records of ``runs_dir`` as results and curves frames, and the ``(path,
    reason)`` of every skipped file. Raises :class:`~bench.errors.UserError` (``nothing to
    <what>``) when the folder is missing or holds no valid record."""
    records, skipped = scan_records(runs_dir)
    if not records and not skipped:
        raise UserError(
            f"results folder {runs_dir} holds no run records (*.json); nothing to {what}"
        )
    if not records:
        path, reason = skipped[0]
        raise UserError(
            f"results folder {runs_dir} holds no valid run records: {len(skipped)} of "
            f"{len(skipped)} *.json files skipped (first: {path.name}: {reason}); "
            f"nothing to {what}"
        )
    return results_frame(records), curves_frame(records), skipped


def chart_figure(name: str, results: pd.DataFrame, curves: pd.DataFrame, estimates=None):
    """The figure of the chart ``name`` (one of :data:`CHARTS`), or ``None`` without data."""
    if name == "accuracy_vs_memory":
        return charts.accuracy_memory_figure(results)
    if name == "memory_vs_K":
        return charts.memory_k_figure(results)
    if name == "memory_vs_batch":
        return charts.memory_batch_figure(results, estimates)
    if name == "memory_breakdown":
        return charts.breakdown_figure(results)
    if name == "module_memory":
        return charts.module_memory_figure(results)
    if name == "memory_timeline":
        return charts.timeline_figure(results)
    if name == "step_overhead":
        return charts.step_overhead_figure(results)
    if name == "curves":
        return charts.curves_figure(curves, results) if not curves.empty else None
    raise ValueError(f"unknown chart {name!r}")


def render_page(
    runs_dir: Path,
    results: pd.DataFrame,
    table: pd.DataFrame,
    written: dict[str, list[Path]],
    skipped: list[tuple[Path, str]] = (),
) -> str:
    esc = html.escape
    statuses = results["status"].value_counts().sort_index()
    status_text = ", ".join(f"{n} {s}" for s, n in statuses.items())
    if skipped:
        files = "file" if len(skipped) == 1 else "files"
        status_text += f"; {len(skipped)} {files} skipped, listed below"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>locbench report: {esc(runs_dir.name)}</title>",
        f"<style>\n{STYLE}</style></head><body>",
        "<h1>locbench report</h1>",
        f"<p>Results folder <code>{esc(str(runs_dir))}</code>: {len(results)} runs "
        f"({esc(status_text)}). Generated "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}.</p>",
        "<h2>How measured</h2>",
        HOW_MEASURED,
        "<h2>Comparison</h2>",
        html_table(table),
        "<p>Also written as <code>comparison.csv</code> and <code>comparison.md</code>.</p>",
    ]
    titles = dict(CHARTS)
    if written:
        parts.append("<h2>Charts</h2>")
    for name, paths in written.items():
        png = next(p for p in paths if p.suffix == ".png")
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img alt="{esc(titles.get(name, name))}" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(titles.get(name, name))} ({esc(name)}.png, {esc(name)}.svg)"
            "</figcaption></figure>"
        )
    failed = failed_runs(results)
    if not failed.empty:
        parts += ["<h2>Failed runs</h2>", html_table(failed)]
    if skipped:
        parts += [
            "<h2>Skipped files</h2>",
            "<p>Files of the results folder that are not valid run records; no number above "
            "comes from them.</p>",
            html_table(skipped_files(skipped)),
        ]
    parts += ["<h2>Environment</h2>", html_table(environments(results)), "</body></html>"]
    return "\n".join(parts) + "\n"


def failed_runs(results: pd.DataFrame) -> pd.DataFrame:
    """Runs whose status is not ``ok``, with their variant label and message."""
    columns = {
        "config.method": "method",
        "variant": "variant",
        "config.net": "net",
        "K": "K",
        "config.batch_size": "batch size",
        "config.seed": "seed",
        "status": "status",
        "message": "message",
    }
    failed = results[results["status"] != "ok"]
    failed = failed.assign(variant=variant_labels(results)[failed.index])
    failed = failed[[c for c in columns if c in failed]].rename(columns=columns)
    for col in ("K", "batch size", "seed"):
        if col in failed:
            failed[col] = pd.to_numeric(failed[col], errors="coerce").astype("Int64")
    return failed.reset_index(drop=True)


def skipped_files(skipped) -> pd.DataFrame:
    """``(path, reason)`` pairs as a table of file names and reasons."""
    return pd.DataFrame(
        [(Path(p).name, reason) for p, reason in skipped], columns=["file", "reason"]
    )


def environments(results: pd.DataFrame) -> pd.DataFrame:
    """Where the numbers were measured: each distinct environment and its number of runs."""
    columns = {
        "env.device_name": "device",
        "env.torch": "torch",
        "env.cuda": "CUDA",
        "env.cpu": "CPU",
        "env.git_commit": "git commit",
    }
    present = [c for c in columns if c in results]
    if not present:
        return pd.DataFrame({"runs": [len(results)]})
    env = results[present].astype(str).rename(columns=columns)
    return env.value_counts(sort=False).rename("runs").reset_index()


def html_table(table: pd.DataFrame) -> str:
    """A plain HTML table with the cells formatted as in the Markdown table."""
    esc = html.escape
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    head = "".join(f"<th>{esc(str(c))}</th>" for c in table.columns)
    body = []
    for row in table.itertuples(index=False):
        cells = "".join(
            f'<td class="num">{esc(format_cell(v))}</td>'
            if num
            else f"<td>{esc(format_cell(v))}</td>"
            for v, num in zip(row, numeric)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
