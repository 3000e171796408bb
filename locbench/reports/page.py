"""The report: a results folder -> comparison table (CSV, Markdown), charts (PNG, SVG) and one
self-contained HTML page (charts inlined as base64 PNG; no external assets, no network)."""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from locbench.errors import UserError
from locbench.outputs import Outputs, check_folder, write_atomic
from locbench.records import curves_frame, results_frame, scan_records
from locbench.reports import charts
from locbench.reports.runs import (
    FLAG_NOTES,
    RATIO_COLUMN,
    baseline_sentence,
    configuration_flags,
    memory_sentences,
    numeric,
    run_table,
    step_sentence,
)
from locbench.reports.tables import (
    MIB,
    comparison_table,
    equal_memory_table,
    format_cell,
    is_missing,
    variant_labels,
    write_table,
)

STYLE = """\
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em;
  color: #222; line-height: 1.45; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
nav ul { columns: 2; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }
th { background: #f0f0f0; text-align: left; }
thead th { max-width: 7em; }  /* long headers wrap: the table stays within the page */
th[scope=row] { white-space: nowrap; }
table.sortable th { cursor: pointer; }
table.sortable th::after { content: " \\2195"; color: #999; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; color: #222; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; color: #222; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.flag { color: #a33; white-space: nowrap; }
tr:target, details:target { outline: 2px solid #e8a33d; }
figure { margin: 1.5em 0; break-inside: avoid; }
figcaption { font-size: 0.9em; color: #555; }
img { max-width: 100%; height: auto; }
code { font-size: 0.95em; }
details { border: 1px solid #ddd; border-radius: 4px; padding: 0.3em 0.8em; margin: 0.4em 0; }
summary { cursor: pointer; }
details .tables { display: flex; flex-wrap: wrap; gap: 0 2em; }
@media print {
  body { max-width: none; margin: 0; font-size: 10pt; }
  nav, .noprint { display: none; }
  .scroll { overflow: visible; }
  /* an A4 page is about 720 px wide: wide tables shrink and wrap rather than lose columns */
  table { font-size: 6.5pt; }
  th, td { padding: 0.1em 0.2em; }
  thead th { max-width: 4.5em; overflow-wrap: anywhere; }
  td.num, td.flag { white-space: normal; }
  table.sortable th::after { content: none; }
  h2 { break-before: page; }
  h2:first-of-type { break-before: auto; }
  h2, h3, summary { break-after: avoid; }
  tr, img { break-inside: avoid; }
  details { border: none; padding: 0; }
  details::details-content { content-visibility: visible; display: block; }
}
"""

# Sorting: click (or Enter on) a header; a column whose every non-empty key is a number sorts
# numerically (a cell's data-sort, else its text), any other in natural text order; empty
# cells go last either way. Details open when a link targets them, and all open for printing.
SCRIPT = """\
const NUMBER = /^[-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?$/i;
const COLLATOR = new Intl.Collator(undefined, {numeric: true});
function sortKey(row, col) {
  const cell = row.cells[col];
  return cell ? (cell.dataset.sort ?? cell.textContent).trim() : "";
}
function sortTable(table, col, th) {
  const up = th.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", up ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows).map(r => [sortKey(r, col), r]);
  const numeric = rows.every(([k]) => k === "" || NUMBER.test(k));
  rows.sort(([a], [b]) => {
    if (a === "" || b === "") return (a === "") - (b === "");
    const d = numeric ? parseFloat(a) - parseFloat(b) : COLLATOR.compare(a, b);
    return up ? d : -d;
  });
  rows.forEach(([, r]) => body.appendChild(r));
}
document.querySelectorAll("table.sortable").forEach(table => {
  table.querySelectorAll("thead th").forEach((th, col) => {
    th.tabIndex = 0;
    th.title = "sort by this column";
    th.addEventListener("click", () => sortTable(table, col, th));
    th.addEventListener("keydown", e => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortTable(table, col, th); }
    });
  });
});
function openTarget() {
  const id = decodeURIComponent(location.hash.slice(1));
  const target = id && document.getElementById(id);
  if (target && target.tagName === "DETAILS") target.open = true;
}
window.addEventListener("hashchange", openTarget);
openTarget();
const closed = [];
window.addEventListener("beforeprint", () => document.querySelectorAll("details:not([open])")
  .forEach(d => { d.open = true; closed.push(d); }));
window.addEventListener("afterprint", () => closed.splice(0).forEach(d => { d.open = false; }));
"""


#: Room a report asks for: its tables, two files per chart and the page with every chart inline.
REPORT_BYTES = 16 * MIB


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
    ``comparison.md`` (and ``equal_memory.csv``/``.md`` when local methods have BP baselines at
    equal memory), every chart of :data:`charts.CHARTS` that has data as ``<name>.png`` and
    ``<name>.svg``, and ``report.html`` (self-contained). ``estimates``: optional rows of
    :func:`locbench.analysis.estimate.estimate_methods` (a DataFrame or a list of dicts) drawn
    dashed in the memory vs batch size chart. Files that are not valid records (truncated, another
    schema, not a record) are left out, listed on the page and returned in :attr:`Report.skipped`.

    The page has one section per net and dataset with every chart of :data:`charts.CHARTS` that has
    data for it (the written chart when there is one section, else the chart of the section's
    runs alone), its runs in a table, and each run's configuration, curve and memory.

    Raises :class:`~locbench.errors.UserError` when ``runs_dir`` is missing or holds no valid
    record."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    results, curves, skipped = load_runs(runs_dir)
    if estimates is not None and not isinstance(estimates, pd.DataFrame):
        estimates = pd.DataFrame(list(estimates))

    check_folder(out_dir, "--out", REPORT_BYTES)
    with Outputs.collect() as outputs:  # a report that fails midway leaves none of its files
        path = _write_report(runs_dir, out_dir, results, curves, skipped, estimates, outputs)
    return Report(path, tuple(skipped))


def _write_report(runs_dir, out_dir, results, curves, skipped, estimates, outputs) -> Path:
    table = comparison_table(results)
    outputs.add(*write_table(table, out_dir / "comparison"))
    equal = equal_memory_table(results)
    if not equal.empty:
        outputs.add(*write_table(equal, out_dir / "equal_memory"))

    written = {}
    for chart in charts.CHARTS:
        fig = chart.draw(results, curves, estimates)
        if fig is not None:
            written[chart.name] = outputs.add(*charts.save(fig, out_dir / chart.name))

    sections = []
    for key, runs in sections_of(results):
        if len(results) == len(runs):  # one section: its charts are the files just written
            pngs = {name: _png_file(paths) for name, paths in written.items()}
        else:
            ids = set(runs["run_id"])
            part = curves[curves["run_id"].isin(ids)] if "run_id" in curves else curves
            pngs = section_charts(runs.reset_index(drop=True), part, _estimates_for(estimates, key))
        sections.append(Section(key, runs, pngs))

    page = render_page(
        runs_dir, results, curves, table, sections, written, skipped, estimates, equal
    )
    return outputs.add(write_atomic(out_dir / "report.html", page))[0]


@dataclass(frozen=True)
class Section:
    """One net and dataset of the page: its runs and its charts' PNG bytes by chart name."""

    key: tuple[str, str]
    runs: pd.DataFrame
    pngs: dict[str, bytes]

    @property
    def title(self) -> str:
        return f"{self.key[0]} on {self.key[1]}"

    @property
    def anchor(self) -> str:
        return _anchor("section", *self.key)


def sections_of(results: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    """The runs of every (net, dataset), sorted by net and dataset."""
    keys = (
        pd.DataFrame(
            {
                "net": results.get("config.net", pd.Series("?", index=results.index)),
                "dataset": results.get("config.dataset", pd.Series("?", index=results.index)),
            }
        )
        .fillna("?")
        .astype(str)
    )
    return [
        ((net, dataset), results.loc[group.index])
        for (net, dataset), group in keys.groupby(["net", "dataset"], sort=True)
    ]


def section_charts(results: pd.DataFrame, curves: pd.DataFrame, estimates=None) -> dict:
    """PNG bytes of every chart of :data:`charts.CHARTS` that has data in ``results`` alone."""
    pngs = {}
    for chart in charts.CHARTS:
        fig = chart.draw(results, curves, estimates)
        if fig is not None:
            buffer = io.BytesIO()
            try:
                fig.savefig(buffer, format="png", dpi=120)
            finally:
                charts.plt.close(fig)
            pngs[chart.name] = buffer.getvalue()
    return pngs


def _estimates_for(estimates, key: tuple[str, str]):
    """The estimate rows of one section's net (and dataset, where they name one)."""
    if estimates is None:
        return None
    keep = pd.Series(True, index=estimates.index)
    for column, value in zip(("net", "dataset"), key):
        if column in estimates:
            keep &= estimates[column].astype(str).eq(value)
    return estimates[keep]


def _png_file(paths: list[Path]) -> bytes:
    return next(p for p in paths if p.suffix == ".png").read_bytes()


def load_runs(runs_dir: Path, what: str = "report") -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """The valid records of ``runs_dir`` as results and curves frames, and the ``(path,
    reason)`` of every skipped file. Raises :class:`~locbench.errors.UserError` (``nothing to
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


def render_page(
    runs_dir: Path,
    results: pd.DataFrame,
    curves: pd.DataFrame,
    table: pd.DataFrame,
    sections: list[Section],
    written: dict[str, list[Path]],
    skipped: list[tuple[Path, str]] = (),
    estimates: pd.DataFrame | None = None,
    equal: pd.DataFrame | None = None,
) -> str:
    """The whole page as HTML text (see :func:`build_report`); ``equal``: the equal-memory view
    (:func:`~locbench.reports.tables.equal_memory_table`), a section when it has rows."""
    statuses = results["status"].value_counts().sort_index()
    status_text = ", ".join(f"{n} {s}" for s, n in statuses.items())
    if skipped:
        files = "file" if len(skipped) == 1 else "files"
        status_text += f"; {len(skipped)} {files} skipped, listed below"
    failed = failed_runs(results)
    contents = [("how", "How measured"), ("comparison", "Comparison")]
    contents += [("equal-memory", "At equal memory")] if equal is not None and len(equal) else []
    contents += [(s.anchor, s.title) for s in sections]
    contents += [("failed", "Failed runs")] if not failed.empty else []
    contents += [("skipped", "Skipped files")] if skipped else []
    contents += [("environment", "Environment")]
    notes = configuration_flags(results, table)
    shown = table.assign(notes=notes) if any(notes) else table
    # columns no row has a value in (no FLOPs, no data wait) only widen the page; the CSV keeps
    # them, and the accuracy's mean and std are in its "mean ± std" cell
    shown = shown.drop(columns=["acc mean (%)", "acc std (%)"])
    shown = shown.drop(columns=[c for c in shown if shown[c].isna().all()])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>locbench report: {esc(runs_dir.name)}</title>",
        f"<style>\n{STYLE}</style></head><body>",
        f"<h1>locbench report: {esc(runs_dir.name)}</h1>",
        f"<p>Results folder <code>{esc(str(runs_dir))}</code>: {len(results)} runs "
        f"({esc(status_text)}) in {len(sections)} "
        f"section{'s' if len(sections) != 1 else ''} (net and dataset). Generated "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}.</p>",
        "<nav><b>Contents</b><ul>",
        *(f'<li><a href="#{a}">{esc(t)}</a></li>' for a, t in contents),
        "</ul></nav>",
        '<h2 id="how">How measured</h2>',
        how_measured(results, table, estimates),
        '<h2 id="comparison">Comparison</h2>',
        "<p>One row per configuration, mean over its seeds. Click a column header to sort."
        + (
            " <i>notes</i> flags configurations whose step times are in doubt (<i>noisy 1/2</i>:"
            " one of its two runs is noisy)."
            if any(notes)
            else ""
        )
        + "</p>",
        html_table(
            shown,
            sort_by={"test acc (%)": table["acc mean (%)"]},
            classes={"notes": "flag"},
        ),
        flag_notes(notes),
        "<p>Also written as <code>comparison.csv</code> and <code>comparison.md</code>, with every "
        "column: here, columns empty in every row are left out, and the accuracy's mean and "
        "standard deviation share a cell.</p>",
    ]
    if equal is not None and len(equal):
        parts += [
            '<h2 id="equal-memory">At equal memory</h2>',
            "<p>Each local method's row beside BP's memory-saving variants configured to at "
            "most its peak: activation checkpointing (<i>bp-ckpt</i>, K segments) and gradient "
            "accumulation (<i>bp-accum</i>, micro-batches), each the one with the largest peak "
            "that fits (the fewest segments or micro-batches: the fastest at that memory). "
            "<code>locbench sweep --baselines equal-memory</code> runs them. Also written as "
            "<code>equal_memory.csv</code> and <code>equal_memory.md</code>.</p>",
            html_table(equal),
        ]
    for section in sections:
        parts.append(render_section(section, curves, written, len(sections) > 1))
    if not failed.empty:
        parts += ['<h2 id="failed">Failed runs</h2>', html_table(failed, sortable=False)]
    if skipped:
        parts += [
            '<h2 id="skipped">Skipped files</h2>',
            "<p>Files of the results folder that are not valid run records; no number above "
            "comes from them.</p>",
            html_table(skipped_files(skipped), sortable=False),
        ]
    parts += [
        '<h2 id="environment">Environment</h2>',
        html_table(environments(results), sortable=False),
        f"<script>\n{SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def how_measured(results: pd.DataFrame, table: pd.DataFrame, estimates=None) -> str:
    """The page's method text: definitions, and the measured statements computed from
    ``results`` (:mod:`locbench.reports.runs`), never asserted."""
    memory = memory_sentences(results)
    has_cuda = numeric(results, "cuda.peak_allocated_bytes").notna().any()
    tracked_steps = numeric(results, "memory.steps").dropna()
    window = (
        f" ({_span(tracked_steps)} tracked steps per run here)" if not tracked_steps.empty else ""
    )
    cuda = (
        "<b>Peak memory (CUDA allocated)</b> is <code>torch.cuda.max_memory_allocated()</code> "
        "over the timed steps, started after <code>gc.collect()</code>, "
        "<code>empty_cache()</code> and <code>reset_peak_memory_stats()</code>. "
        if has_cuda
        else ""
    )
    estimated = (
        "<b>Estimated</b> peaks (dashed lines) replay the same training step on fake tensors, "
        "with CUDA's 512-byte rounding. "
        if estimates is not None and not estimates.empty
        else ""
    )
    sources = table["memory source"].value_counts()
    source_text = ", ".join(f"{n} row{'s' if n > 1 else ''} {s}" for s, n in sources.items())
    return f"""\
<p><b>Peak memory (tracked)</b>, on any device, CPU included, is the peak of live tensor-storage
bytes over the tracked steps after warm-up{window}: parameters, gradients, optimizer state,
backbone activations, auxiliary-net activations and other. {cuda}{memory["cuda"]}
{memory["agreement"]} {estimated}The comparison table's <i>peak (MiB)</i> is the CUDA allocated
peak when the runs measured one, otherwise the tracked peak; its <i>memory source</i> column says
which one each row used ({esc(source_text) if source_text else "no row has a peak"}), and the
saving vs BP compares peaks of the same source. MiB = 2<sup>20</sup> bytes.</p>
<p><b>Tracked peak memory by category</b> splits the tracked peak by what was live at that
moment (each bar's top is the tracked peak, the mean over seeds). <b>Per module</b>, the top
row is the peak of live bytes while module <i>k</i>'s phases ran; the rows below, the peak of
the activations module <i>k</i> itself made (its backbone forward and its auxiliary net apart,
where the records hold them). BP trains one module, the whole net: one point. <b>Live
tracked memory over one training step</b> is each run's last tracked step, allocation by
allocation, phases shaded and module boundaries dotted; its peak is the run's tracked peak.</p>
<p><b>Accuracy</b> is the final top-1 accuracy on the test split from the output head, mean
± sample standard deviation over the seeds that finished with status <code>ok</code>;
<i>failed runs</i> counts out-of-memory, diverged and errored runs of the configuration, which
enter no number. <b>Step time</b> is the median per-step time over the timed steps
(synchronised on CUDA, warm-up excluded). {step_sentence(results)} <b>FLOPs</b> are per
training step, forward and backward, backbone and auxiliary nets: matrix products and
convolutions (normalisation, activations, pooling and losses count 0). Savings and overheads compare
with the BP row of the same net, dataset and batch size; where BP ran with several settings, the
one whose other settings (learning rate, epochs, ...) equal the row's, else the one sharing
most of them. {baseline_sentence(table)}</p>
<p>A row is one configuration: every setting of the run but its seed. The <i>variant</i>
column names the settings in which a method's rows differ, other than K, aux depth and batch
size (e.g. <code>dgl hidden_dim=64</code>); charts label their series with it. The built-in
methods keep one colour in every chart; a method's variants differ in marker, line style or
hatch.</p>
"""


def flag_notes(cells: list[str]) -> str:
    """The footnote explaining the step-time flags that the table ``cells`` show."""
    shown = {f: note for f, note in FLAG_NOTES.items() if any(f in c for c in cells)}
    if not shown:
        return ""
    items = "".join(f"<li><b>{esc(f)}</b>: {note}</li>" for f, note in shown.items())
    return f'<ul class="flag-notes">{items}</ul>'


def render_section(
    section: Section, curves: pd.DataFrame, written: dict, several: bool = False
) -> str:
    """One net and dataset: its charts, its runs' table and every run's details. ``several``:
    the page has other sections (its charts are of this section's runs alone)."""
    titles = {chart.name: chart.title for chart in charts.CHARTS}
    runs = section.runs
    parts = [
        f'<section id="{section.anchor}">',
        f"<h2>{esc(section.title)}</h2>",
        f"<p>{len(runs)} run{'s' if len(runs) != 1 else ''}."
        + (" Charts of these runs alone; the chart files hold every section." if several else "")
        + "</p>",
    ]
    for name, png in section.pngs.items():  # the order of CHARTS, driven by that one list
        title = titles.get(name, name)
        files = f" ({name}.png, {name}.svg)" if name in written else ""
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure data-chart="{esc(name)}"><img alt="{esc(title)}" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(title)}{esc(files)}</figcaption></figure>"
        )
    table = run_table(runs)
    links = {"run": [f'<a href="#{_anchor("run", r)}">{esc(str(r))}</a>' for r in table["run"]]}
    parts += [
        "<h3>Runs</h3>",
        "<p>One row per run; click a run to open its configuration, curve and memory."
        + (
            f" <i>{RATIO_COLUMN}</i> is the run's measured ratio of its two peaks."
            if RATIO_COLUMN in table
            else ""
        )
        + "</p>",
        html_table(table, html_cells=links, classes={"flags": "flag"}),
        flag_notes(list(table["flags"])),
        "<h3>Run details</h3>",
        *(run_details(run, curves) for _, run in runs.iterrows()),
        "</section>",
    ]
    return "\n".join(parts)


def run_details(run: pd.Series, curves: pd.DataFrame) -> str:
    """One run's ``<details>``: its configuration, curve, memory and step times as tables."""
    run_id = str(run["run_id"])
    label = " ".join(
        str(run.get(c)) for c in ("config.method", "config.net") if pd.notna(run.get(c))
    )
    K = f" K={int(run['K'])}" if pd.notna(run.get("K")) else ""
    seed = f" seed {run['config.seed']}" if pd.notna(run.get("config.seed")) else ""
    config = {
        str(c).removeprefix("config."): v
        for c, v in run.items()
        if str(c).startswith("config.") and c != "config.method_params"
    }
    params = run.get("config.method_params")
    if isinstance(params, dict):
        config.update({f"method_params.{k}": v for k, v in params.items()})
    blocks = [("Configuration", _key_values(config))]
    curve = curves[curves["run_id"] == run_id] if "run_id" in curves else curves.iloc[:0]
    if not curve.empty:
        columns = {
            "epoch": "epoch",
            "train_loss": "train loss",
            "train_acc": "train acc (%)",
            "test_loss": "test loss",
            "test_acc": "test acc (%)",
            "lr": "lr",
            "epoch_time_s": "epoch (s)",
        }
        shown = curve[[c for c in columns if c in curve]].rename(columns=columns)
        blocks.append(("Training curve", html_table(shown, sortable=False, digits=3)))
    memory = {}
    for column, value in run.items():
        name = str(column)
        if name.startswith("memory.breakdown."):
            category = name.removeprefix("memory.breakdown.").replace("_", " ")
            memory[f"{category} (MiB)"] = _mib(value)
    for column, name in (
        ("memory.peak_bytes", "tracked peak (MiB)"),
        ("memory.floor_bytes", "floor (MiB)"),
        ("memory.peak_over_floor", "peak / floor"),
        ("memory.steps", "tracked steps"),
        ("cuda.peak_allocated_bytes", "CUDA peak allocated (MiB)"),
        ("cuda.peak_reserved_bytes", "CUDA peak reserved (MiB)"),
    ):
        if pd.notna(run.get(column)):
            value = run[column]
            memory[name] = _mib(value) if name.endswith("(MiB)") else value
    if memory:
        blocks.append(("Memory", _key_values(memory)))
    steps = {
        "step median (ms)": run.get("step_time_median_s"),
        "step p10 (ms)": run.get("step_time_p10_s"),
        "step p90 (ms)": run.get("step_time_p90_s"),
    }
    steps = {k: v * 1e3 for k, v in steps.items() if pd.notna(v)}
    steps["measured steps"] = run.get("measured_steps")
    steps["asked steps"] = run.get("config.measure_steps")
    blocks.append(("Step time", _key_values(steps)))
    message = run.get("message")
    note = f"<p>{esc(str(message))}</p>" if isinstance(message, str) and message else ""
    body = "".join(f"<div><h4>{esc(t)}</h4>{b}</div>" for t, b in blocks)
    return (
        f'<details id="{_anchor("run", run_id)}"><summary><code>{esc(run_id)}</code> '
        f"{esc(label + K + seed)}: {esc(str(run.get('status')))}</summary>{note}"
        f'<div class="tables">{body}</div></details>'
    )


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


def html_table(
    table: pd.DataFrame,
    *,
    sortable: bool = True,
    sort_by: dict[str, pd.Series] | None = None,
    html_cells: dict[str, list[str]] | None = None,
    classes: dict[str, str] | None = None,
    digits: int = 2,
) -> str:
    """An HTML table with the cells formatted as in the Markdown table. ``sortable``: headers
    sort the rows when clicked (numeric cells carry their exact value to sort by); ``sort_by``:
    a column's sort keys (e.g. the mean of a ``mean ± std`` cell); ``html_cells``: a column's
    cells as ready HTML (links); ``classes``: a CSS class per column."""
    sort_by, html_cells, classes = sort_by or {}, html_cells or {}, classes or {}
    numeric_columns = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    head = "".join(f'<th scope="col">{esc(str(c))}</th>' for c in table.columns)
    body = []
    for i, row in enumerate(table.itertuples(index=False)):
        cells = []
        for column, value, is_number in zip(table.columns, row, numeric_columns):
            key = sort_by[column].iloc[i] if column in sort_by else value
            attrs = ' class="num"' if is_number else ""
            if column in classes:
                attrs = f' class="{classes[column]}"'
            if (is_number or column in sort_by) and not is_missing(key):
                attrs += f' data-sort="{float(key)!r}"'
            text = (
                html_cells[column][i] if column in html_cells else esc(format_cell(value, digits))
            )
            cells.append(f"<td{attrs}>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    kind = ' class="sortable"' if sortable else ""
    return (
        f'<div class="scroll"><table{kind}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def esc(text: str) -> str:
    return html.escape(text)


def _key_values(values: dict) -> str:
    """A two-column table of names and values."""
    rows = "".join(
        f'<tr><th scope="row">{esc(str(k))}</th><td>{esc(_value_text(v))}</td></tr>'
        for k, v in values.items()
    )
    return f"<table><tbody>{rows}</tbody></table>"


def _value_text(value) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, float):
        return str(int(value))
    return "" if is_missing(value) else str(value)


def _mib(value) -> float:
    return float(value) / MIB


def _span(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo} to {hi}"


def _anchor(*parts) -> str:
    """An HTML id from ``parts``: letters, digits, ``-`` and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(str(p) for p in parts))
