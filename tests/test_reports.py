"""Reports: the comparison table, Markdown/CSV, the charts and the HTML report page, on run
records written by hand (numbers chosen so that every expected value is known)."""

from __future__ import annotations

import json
import math
import re
import statistics

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from locbench.cli.main import main
from locbench.errors import UserError
from locbench.harness.build import resolve
from locbench.records import RunRecord, curves_frame, load_results, save_record, scan_records
from locbench.reports.charts import (
    CHARTS,
    Chart,
    accuracy_memory_figure,
    curves_figure,
    memory_batch_figure,
    memory_k_figure,
    pareto_front,
    save,
    step_overhead_figure,
)
from locbench.reports.page import build_report
from locbench.reports.tables import comparison_table, to_markdown, write_table
from locbench.settings.run_config import RunConfig

MIB = 2**20
ENV = {"python": "3.11.7", "torch": "2.4.0", "device_name": "cpu", "git_commit": "abc123"}

# (net, method, K, depth, batch, seed, status, acc, step s, FLOPs, tracked MiB, CUDA MiB)
RUNS = [
    # smallnet on CPU: tracked peaks only
    ("smallnet", "bp", 1, None, 64, 0, "ok", 80.0, 0.010, 1.0e9, 10.0, None),
    ("smallnet", "bp", 1, None, 64, 1, "ok", 82.0, 0.012, 1.0e9, 10.0, None),
    ("smallnet", "bp", 1, None, 64, 2, "ok", 84.0, 0.014, 1.0e9, 10.0, None),
    ("smallnet", "dgl", 2, None, 64, 0, "ok", 78.0, 0.015, 1.2e9, 6.0, None),
    ("smallnet", "dgl", 2, None, 64, 1, "ok", 79.0, 0.015, 1.2e9, 6.0, None),
    ("smallnet", "dgl", 4, None, 64, 0, "ok", 75.0, 0.018, 1.3e9, 4.0, None),
    ("smallnet", "dgl", 4, None, 64, 1, "ok", 77.0, 0.020, 1.3e9, 4.5, None),
    ("smallnet", "dgl", 4, None, 64, 2, "oom", None, None, 1.3e9, None, None),
    ("smallnet", "auglocal", 4, 2, 64, 0, "ok", 81.0, 0.020, 1.5e9, 7.0, None),
    ("smallnet", "auglocal", 4, 2, 64, 1, "ok", 83.0, 0.022, 1.5e9, 7.0, None),
    ("smallnet", "auglocal", 4, 2, 64, 2, "diverged", 10.0, 0.5, 1.5e9, 70.0, None),
    ("smallnet", "bp", 1, None, 128, 0, "ok", 81.0, 0.020, 2.0e9, 19.0, None),
    ("smallnet", "dgl", 4, None, 128, 0, "ok", 80.0, 0.030, 2.6e9, 7.0, None),
    # resnet20 on a GPU: CUDA peaks; BP also tracked in one seed, predsim tracked only
    ("resnet20", "bp", 1, None, 64, 0, "ok", 90.0, 0.050, 4.0e9, 95.0, 100.0),
    ("resnet20", "bp", 1, None, 64, 1, "ok", 91.0, 0.052, 4.0e9, None, 102.0),
    ("resnet20", "infopro", 2, None, 64, 0, "ok", 88.0, 0.070, 5.0e9, None, 60.0),
    ("resnet20", "infopro", 2, None, 64, 1, "ok", 90.0, 0.074, 5.0e9, None, 61.0),
    ("resnet20", "predsim", 3, None, 64, 0, "ok", 85.0, 0.060, 4.4e9, 50.0, None),
    ("resnet20", "predsim", 3, None, 64, 1, "ok", 86.0, 0.060, 4.4e9, 50.0, None),
    ("resnet20", "auglocal", 4, 2, 64, 0, "oom", None, None, 6.0e9, None, None),
]
FIELDS = ["net", "method", "K", "depth", "batch", "seed", "status", "acc", "step", "flops"]
FIELDS += ["tracked", "cuda"]


def spec(**match) -> list[dict]:
    """The fixture runs whose fields equal ``match``, as dicts."""
    runs = [dict(zip(FIELDS, r)) for r in RUNS]
    return [r for r in runs if all(r[k] == v for k, v in match.items())]


def make_record(r: dict, params: dict | None = None, **settings) -> RunRecord:
    """The record of fixture run ``r``; ``params`` and ``settings`` override its config."""
    if params is None:
        params = {} if r["depth"] is None else {"depth": r["depth"]}
    base = dict(K=r["K"], net=r["net"], dataset="digits", batch_size=r["batch"], epochs=2)
    config = RunConfig(
        method=r["method"], seed=r["seed"], method_params=params, **{**base, **settings}
    )
    record = RunRecord(
        run_id=resolve(config).run_id,
        config=config.to_dict(),
        env=dict(ENV, device_name="cpu" if r["cuda"] is None else "NVIDIA H100"),
        status=r["status"],
        message="CUDA out of memory" if r["status"] == "oom" else "",
        K=r["K"],
        final_test_acc=r["acc"],
        best_test_acc=r["acc"],
        step_time_median_s=r["step"],
        flops={"backbone": r["flops"] * 0.75, "aux": r["flops"] * 0.25, "total": r["flops"]},
    )
    if r["tracked"] is not None:
        peak = int(r["tracked"] * MIB)
        record.memory = {
            "peak_bytes": peak,
            "peak_bytes_rounded": peak + 512,
            "breakdown": {"parameters": peak // 4, "activations": peak - peak // 4},
            "floor_bytes": peak // 2,
            "peak_over_floor": 2.0,
        }
    if r["cuda"] is not None:
        record.cuda = {
            "peak_allocated_bytes": int(r["cuda"] * MIB),
            "peak_reserved_bytes": int(r["cuda"] * MIB) * 2,
            "allocated_at_start_bytes": MIB,
            "cudnn_benchmark": True,
        }
    return record


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    for r in spec():
        save_record(make_record(r), folder)
    return folder


@pytest.fixture(scope="module")
def results(runs_dir) -> pd.DataFrame:
    return load_results(runs_dir)


@pytest.fixture(scope="module")
def table(results) -> pd.DataFrame:
    return comparison_table(results)


@pytest.fixture(autouse=True)
def no_open_figures():
    yield
    plt.close("all")


def row(table: pd.DataFrame, net: str, method: str, K: int, batch: int = 64) -> pd.Series:
    hit = table[
        (table["net"] == net)
        & (table["method"] == method)
        & (table["K"] == K)
        & (table["batch size"] == batch)
    ]
    assert len(hit) == 1
    return hit.iloc[0]


def ok_values(field: str, **match) -> list[float]:
    return [r[field] for r in spec(status="ok", **match)]


# ---------------------------------------------------------------- comparison table


def test_comparison_table_rows_and_order(table):
    assert list(table.columns) == [
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
    keys = list(zip(table["net"], table["method"], table["K"], table["batch size"]))
    assert keys == [
        ("resnet20", "bp", 1, 64),
        ("resnet20", "auglocal", 4, 64),
        ("resnet20", "infopro", 2, 64),
        ("resnet20", "predsim", 3, 64),
        ("smallnet", "bp", 1, 64),
        ("smallnet", "auglocal", 4, 64),
        ("smallnet", "dgl", 2, 64),
        ("smallnet", "dgl", 4, 64),
        ("smallnet", "bp", 1, 128),
        ("smallnet", "dgl", 4, 128),
    ]
    assert set(table["dataset"]) == {"digits"}
    # one setting per method in this fixture: every variant is the plain method name
    assert table["variant"].tolist() == table["method"].tolist()
    depths = table["aux depth"].tolist()
    assert depths[1] == 2 and depths[5] == 2
    assert all(pd.isna(d) for i, d in enumerate(depths) if i not in (1, 5))


def test_comparison_table_counts_seeds_and_failed_runs(table):
    expected = {}
    for r in spec():
        key = (r["net"], r["method"], r["K"], r["batch"])
        seeds, failed = expected.get(key, (0, 0))
        expected[key] = (seeds + (r["status"] == "ok"), failed + (r["status"] != "ok"))
    got = {
        (n, m, k, b): (s, f)
        for n, m, k, b, s, f in zip(
            table["net"],
            table["method"],
            table["K"],
            table["batch size"],
            table["seeds"],
            table["failed runs"],
        )
    }
    assert got == expected
    assert got[("smallnet", "dgl", 4, 64)] == (2, 1)  # one oom
    assert got[("smallnet", "auglocal", 4, 64)] == (2, 1)  # one diverged
    assert got[("resnet20", "auglocal", 4, 64)] == (0, 1)  # nothing finished


def test_comparison_table_accuracy_over_ok_seeds_only(table):
    for net, method, K, batch in [
        ("smallnet", "bp", 1, 64),
        ("smallnet", "dgl", 4, 64),
        ("smallnet", "auglocal", 4, 64),
        ("resnet20", "infopro", 2, 64),
    ]:
        accs = ok_values("acc", net=net, method=method, K=K, batch=batch)
        r = row(table, net, method, K, batch)
        assert r["acc mean (%)"] == pytest.approx(statistics.mean(accs), abs=1e-12)
        assert r["acc std (%)"] == pytest.approx(statistics.stdev(accs), abs=1e-12)
    bp = row(table, "smallnet", "bp", 1)
    assert (bp["acc mean (%)"], bp["acc std (%)"]) == (82.0, 2.0)
    assert bp["test acc (%)"] == "82.00 ± 2.00"
    aug = row(table, "smallnet", "auglocal", 4)  # the diverged 10 % run is left out
    assert aug["acc mean (%)"] == 82.0
    assert aug["test acc (%)"] == f"82.00 ± {math.sqrt(2):.2f}"
    single = row(table, "smallnet", "dgl", 4, batch=128)
    assert single["test acc (%)"] == "80.00"
    assert single["acc mean (%)"] == 80.0 and math.isnan(single["acc std (%)"])
    none = row(table, "resnet20", "auglocal", 4)
    assert pd.isna(none["test acc (%)"]) and math.isnan(none["acc mean (%)"])


def test_comparison_table_peak_and_memory_source(table):
    expected = {
        ("smallnet", "bp", 1, 64): (10.0, "tracked"),
        ("smallnet", "dgl", 4, 64): (4.25, "tracked"),  # oom run has no peak
        ("smallnet", "auglocal", 4, 64): (7.0, "tracked"),  # diverged 70 MiB left out
        ("resnet20", "bp", 1, 64): (101.0, "CUDA allocated"),  # CUDA preferred to tracked
        ("resnet20", "infopro", 2, 64): (60.5, "CUDA allocated"),
        ("resnet20", "predsim", 3, 64): (50.0, "tracked"),
    }
    for (net, method, K, batch), (mib, source) in expected.items():
        r = row(table, net, method, K, batch)
        assert r["peak (MiB)"] == mib
        assert r["memory source"] == source
    none = row(table, "resnet20", "auglocal", 4)
    assert math.isnan(none["peak (MiB)"]) and pd.isna(none["memory source"])


def test_comparison_table_saving_and_overheads_vs_bp(table):
    bp_step = statistics.mean(ok_values("step", net="smallnet", method="bp", batch=64))
    assert bp_step == pytest.approx(0.012)
    dgl2 = row(table, "smallnet", "dgl", 2)
    assert dgl2["saving vs BP (%)"] == pytest.approx(100 * (1 - 6.0 / 10.0))
    assert dgl2["step (ms)"] == pytest.approx(15.0)
    assert dgl2["step overhead vs BP (%)"] == pytest.approx(100 * (0.015 / bp_step - 1))
    assert dgl2["step overhead vs BP (%)"] == pytest.approx(25.0)
    assert dgl2["GFLOP / step"] == pytest.approx(1.2)
    assert dgl2["FLOPs overhead vs BP (%)"] == pytest.approx(20.0)
    dgl4 = row(table, "smallnet", "dgl", 4)
    assert dgl4["saving vs BP (%)"] == pytest.approx(57.5)
    assert dgl4["step overhead vs BP (%)"] == pytest.approx(100 * (0.019 / 0.012 - 1))
    # batch 128 is compared with BP at batch 128
    dgl128 = row(table, "smallnet", "dgl", 4, batch=128)
    assert dgl128["saving vs BP (%)"] == pytest.approx(100 * (1 - 7.0 / 19.0))
    assert dgl128["step overhead vs BP (%)"] == pytest.approx(50.0)
    assert dgl128["FLOPs overhead vs BP (%)"] == pytest.approx(30.0)
    # CUDA vs CUDA; and a tracked-only method against BP's tracked peak (seed 0: 95 MiB)
    infopro = row(table, "resnet20", "infopro", 2)
    assert infopro["saving vs BP (%)"] == pytest.approx(100 * (1 - 60.5 / 101.0))
    assert infopro["step overhead vs BP (%)"] == pytest.approx(100 * (0.072 / 0.051 - 1))
    assert infopro["FLOPs overhead vs BP (%)"] == pytest.approx(25.0)
    predsim = row(table, "resnet20", "predsim", 3)
    assert predsim["saving vs BP (%)"] == pytest.approx(100 * (1 - 50.0 / 95.0))
    for net, batch in [("smallnet", 64), ("smallnet", 128), ("resnet20", 64)]:
        bp = row(table, net, "bp", 1, batch)
        assert bp["saving vs BP (%)"] == 0.0
        assert bp["step overhead vs BP (%)"] == 0.0
        assert bp["FLOPs overhead vs BP (%)"] == 0.0
    none = row(table, "resnet20", "auglocal", 4)
    assert math.isnan(none["saving vs BP (%)"])
    assert math.isnan(none["step overhead vs BP (%)"])


def test_comparison_table_without_bp_has_nan_savings(results):
    table = comparison_table(results[results["config.method"] != "bp"])
    assert len(table) == 7
    for col in ("saving vs BP (%)", "step overhead vs BP (%)", "FLOPs overhead vs BP (%)"):
        assert table[col].isna().all()


def test_comparison_table_of_nothing_is_empty_with_columns():
    table = comparison_table(pd.DataFrame())
    assert table.empty and "peak (MiB)" in table.columns


# ---------------------------------------------------------------- markdown and CSV


def test_markdown_header_rule_and_one_line_per_row(table):
    text = to_markdown(table)
    lines = text.splitlines()
    assert len(lines) == len(table) + 2
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == list(table.columns)
    assert re.fullmatch(r"\|(:?-+:?\|)+", lines[1])
    assert lines[1].count("|") == len(table.columns) + 1
    for line, (_, r) in zip(lines[2:], table.iterrows()):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(table.columns)
        assert cells[:3] == [r["net"], r["dataset"], r["method"]]
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    assert first[table.columns.get_loc("test acc (%)")] == "90.50 ± 0.71"
    assert first[table.columns.get_loc("peak (MiB)")] == "101.00"
    assert first[table.columns.get_loc("aux depth")] == ""
    assert first[table.columns.get_loc("seeds")] == "2"


def test_markdown_escapes_pipes_and_newlines():
    text = to_markdown(pd.DataFrame({"a": ["x|y", "two\nlines"], "n (MiB)": [1.5, None]}))
    assert text.splitlines() == [
        "| a         | n (MiB) |",
        "|-----------|--------:|",
        "| x\\|y      |    1.50 |",
        "| two lines |         |",
    ]


def test_csv_round_trips(table, tmp_path):
    csv, md = write_table(table, tmp_path / "out" / "comparison")
    assert (csv.name, md.name) == ("comparison.csv", "comparison.md")
    assert md.read_text() == to_markdown(table) + "\n"
    back = pd.read_csv(csv)
    assert list(back.columns) == list(table.columns)
    # a column of nothing but missing values (no timing caveat) reads back as floats
    empty = [c for c in table if table[c].isna().all()]
    pd.testing.assert_frame_equal(
        back, table.astype(dict.fromkeys(["K", "aux depth", *empty], float)), check_dtype=False
    )


# ---------------------------------------------------------------- charts


def legend_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_pareto_front_function():
    pts = pd.DataFrame({"x": [4, 6, 7, 7, 10, 19, 5], "y": [76, 78.5, 80, 82, 82, 81, 70]})
    front = pareto_front(pts)
    assert list(zip(front["x"], front["y"])) == [(4, 76), (6, 78.5), (7, 82)]


def test_accuracy_memory_figure(results, table):
    fig = accuracy_memory_figure(results)
    assert [ax.get_title() for ax in fig.axes] == ["resnet20, digits", "smallnet, digits"]
    for ax in fig.axes:
        assert ax.get_xlabel() == "peak memory (MiB)"
        assert ax.get_ylabel() == "test accuracy (%)"
    resnet, small = fig.axes
    # One error-bar series per method that finished (resnet20's auglocal never did).
    assert legend_labels(resnet) == ["bp", "infopro", "predsim", "Pareto front"]
    assert legend_labels(small) == ["bp", "auglocal", "dgl", "Pareto front"]
    assert len(small.containers) == 3
    dgl = small.containers[2]
    assert dgl.get_label() == "dgl"
    data_line = dgl.lines[0]
    assert list(data_line.get_xdata()) == [6.0, 4.25, 7.0]  # K=2, K=4 at 64, K=4 at 128
    assert list(data_line.get_ydata()) == [78.5, 76.0, 80.0]
    assert to_rgba(data_line.get_color()) != to_rgba(small.containers[0].lines[0].get_color())
    # Error bars: one standard deviation; the single-seed point has none.
    segments = dgl.lines[2][0].get_segments()
    assert [round(s[1][1] - s[0][1], 9) for s in segments] == pytest.approx(
        [2 * statistics.stdev([78.0, 79.0]), 2 * statistics.stdev([75.0, 77.0]), 0.0]
    )
    # The Pareto front: the lowest memory for the accuracy.
    (front,) = [line for line in small.lines if line.get_label() == "Pareto front"]
    assert list(zip(front.get_xdata(), front.get_ydata())) == [
        (4.25, 76.0),
        (6.0, 78.5),
        (7.0, 82.0),
    ]
    (front,) = [line for line in resnet.lines if line.get_label() == "Pareto front"]
    assert list(zip(front.get_xdata(), front.get_ydata())) == [
        (50.0, 85.5),
        (60.5, 89.0),
        (101.0, 90.5),
    ]


def test_memory_k_figure(results):
    fig = memory_k_figure(results)
    (ax,) = fig.axes  # only smallnet at batch 64 has a method at two K
    assert ax.get_title() == "smallnet, digits, batch 64"
    assert ax.get_xlabel() == "K (local modules)"
    assert ax.get_ylabel() == "peak memory (MiB)"
    assert legend_labels(ax) == ["bp", "auglocal d=2", "dgl"]
    assert len(ax.lines) == 3
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines["dgl"].get_xdata()) == [2.0, 4.0]
    assert list(lines["dgl"].get_ydata()) == [6.0, 4.25]
    assert list(lines["bp"].get_ydata()) == [10.0]


def test_memory_k_figure_skips_single_k(results):
    one_k = results[(results["K"] == 1)]
    assert memory_k_figure(one_k) is None


ESTIMATES = [
    {"method": "bp", "K": 1, "batch_size": b, "peak_bytes": int(m * MIB), "breakdown": {}}
    for b, m in [(64, 9.5), (128, 18.5), (256, 36.5)]
] + [
    {"method": "dgl", "K": 4, "batch_size": b, "peak_bytes": int(m * MIB), "breakdown": {}}
    for b, m in [(64, 4.0), (128, 7.5), (256, 14.5)]
]


def test_memory_batch_figure_measured_solid_estimated_dashed(results):
    est = pd.DataFrame(ESTIMATES).assign(net="smallnet")
    fig = memory_batch_figure(results, est)
    (ax,) = fig.axes
    assert ax.get_title() == "smallnet, digits"
    assert ax.get_xlabel() == "batch size (images)"
    assert ax.get_ylabel() == "peak memory (MiB)"
    assert legend_labels(ax) == ["bp", "dgl", "bp (estimate)", "dgl (estimate)"]
    lines = {line.get_label(): line for line in ax.lines}
    assert [lines[k].get_linestyle() for k in legend_labels(ax)] == ["-", "-", "--", "--"]
    assert list(lines["bp"].get_xdata()) == [64.0, 128.0]
    assert list(lines["bp"].get_ydata()) == [10.0, 19.0]
    assert list(lines["dgl"].get_ydata()) == [4.25, 7.0]
    assert list(lines["dgl (estimate)"].get_xdata()) == [64.0, 128.0, 256.0]
    assert list(lines["dgl (estimate)"].get_ydata()) == [4.0, 7.5, 14.5]
    for method in ("bp", "dgl"):  # one colour per method
        assert lines[method].get_color() == lines[f"{method} (estimate)"].get_color()
    assert lines["bp"].get_color() != lines["dgl"].get_color()
    # ... and the same colour as in the accuracy vs memory chart
    small = accuracy_memory_figure(results).axes[1]
    colors = {c.get_label(): to_rgba(c.lines[0].get_color()) for c in small.containers}
    assert colors == {m: to_rgba(lines[m].get_color()) for m in ("bp", "dgl")} | {
        "auglocal": colors["auglocal"]
    }


def test_memory_batch_figure_without_estimates_and_without_data(results):
    (ax,) = memory_batch_figure(results).axes
    assert legend_labels(ax) == ["bp", "dgl"]
    assert memory_batch_figure(results[results["config.batch_size"] == 64]) is None
    # estimates alone make a line; without a net they cannot be placed among two nets
    assert memory_batch_figure(results[results["config.batch_size"] == 64], ESTIMATES) is None
    one_net = results[(results["config.net"] == "resnet20")]
    (ax,) = memory_batch_figure(one_net, ESTIMATES).axes
    assert legend_labels(ax) == ["bp (estimate)", "dgl (estimate)"]


def test_step_overhead_figure(results):
    fig = step_overhead_figure(results)
    assert [ax.get_title() for ax in fig.axes] == [
        "resnet20, digits, batch 64",
        "smallnet, digits, batch 64",
        "smallnet, digits, batch 128",
    ]
    for ax in fig.axes:
        assert ax.get_ylabel() == "step-time overhead vs BP (%)"
    resnet, small, small128 = fig.axes
    assert legend_labels(resnet) == ["infopro", "predsim"]
    assert legend_labels(small) == ["auglocal", "dgl"]
    assert len(small.containers) == 2
    heights = [[bar.get_height() for bar in c] for c in small.containers]
    assert heights == [
        pytest.approx([100 * (0.021 / 0.012 - 1)]),
        pytest.approx([25.0, 100 * (0.019 / 0.012 - 1)]),
    ]
    assert [t.get_text() for t in small.get_xticklabels()] == [
        "auglocal\nK=4 d=2",
        "dgl\nK=2",
        "dgl\nK=4",
    ]
    assert [[bar.get_height() for bar in c] for c in small128.containers] == [pytest.approx([50.0])]
    assert step_overhead_figure(results[results["config.method"] != "bp"]) is None


def test_save_writes_png_and_svg_and_closes(results, tmp_path):
    fig = accuracy_memory_figure(results)
    paths = save(fig, tmp_path / "charts" / "acc.v1")
    assert paths == [tmp_path / "charts" / "acc.v1.png", tmp_path / "charts" / "acc.v1.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in paths[1].read_text()
    assert not plt.fignum_exists(fig.number)


# ---------------------------------------------------------------- report page


def test_build_report_writes_everything(runs_dir, tmp_path):
    out = tmp_path / "report"
    report = build_report(runs_dir, out, estimates=pd.DataFrame(ESTIMATES).assign(net="smallnet"))
    html_path = report.path
    assert html_path == out / "report.html" and report.skipped == ()
    assert f"report: {report}" == f"report: {html_path}"  # what the CLI prints
    charts = ["accuracy_vs_memory", "memory_vs_K", "memory_vs_batch", "step_overhead", "curves"]
    expected = {"report.html", "comparison.csv", "comparison.md"}
    expected |= {f"{c}.{ext}" for c in charts[:4] for ext in ("png", "svg")}
    assert {p.name for p in out.iterdir()} == expected  # no curves: the records have none
    assert len(pd.read_csv(out / "comparison.csv")) == 10
    assert len((out / "comparison.md").read_text().splitlines()) == 12
    page = html_path.read_text()
    # smallnet's four charts; resnet20 ran one K and one batch size: accuracy and step time
    assert page.count("data:image/png;base64,") == 6
    assert "http" not in page.lower()  # no external assets, no links
    assert "<link" not in page and not re.search(r"<script[^>]*src", page)
    assert "How measured" in page and "max_memory_allocated" in page
    assert page.count("<td>CUDA allocated</td>") == 2
    assert page.count("<td>tracked</td>") == 7
    assert "CUDA out of memory" in page  # the failed runs are listed
    assert "Skipped files" not in page
    assert not plt.get_fignums()


# ---------------------------------------------------------------- a chart added in one place


def runs_per_method_figure(results: pd.DataFrame) -> plt.Figure | None:
    """A chart a user adds: how many runs of each method the records hold."""
    counts = results["config.method"].value_counts().sort_index()
    if counts.empty:
        return None
    fig, ax = plt.subplots()
    ax.bar(counts.index, counts.values)
    return fig


@pytest.fixture
def runs_chart():
    chart = CHARTS.add(
        Chart(
            "runs", "runs_per_method", "Runs per method",
            lambda results, curves, estimates: runs_per_method_figure(results),
        )
    )  # fmt: skip
    yield chart
    CHARTS.remove("runs")


def test_a_registered_chart_is_a_plot_kind_and_a_chart_of_the_report(
    runs_chart, runs_dir, tmp_path, capsys
):
    with pytest.raises(SystemExit) as exit_:
        main(["plot", "--help"])
    assert exit_.value.code == 0
    help_lines = capsys.readouterr().out.splitlines()
    assert "  runs             Runs per method" in help_lines
    assert CHARTS.kinds()[-1] == "runs"

    assert main(["plot", "runs", str(runs_dir), "--out", str(tmp_path / "plots")]) == 0
    paths = [tmp_path / "plots" / f"runs_per_method.{ext}" for ext in ("png", "svg")]
    assert capsys.readouterr().out.splitlines() == [str(p) for p in paths]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    fig = runs_chart.draw(load_results(runs_dir), pd.DataFrame(), None)
    bars = {
        t.get_text(): p.get_height()
        for t, p in zip(fig.axes[0].get_xticklabels(), fig.axes[0].patches)
    }
    assert bars == {"auglocal": 4, "bp": 6, "dgl": 6, "infopro": 2, "predsim": 2}

    page = build_report(runs_dir, tmp_path / "report").path.read_text()
    assert '<figure data-chart="runs_per_method">' in page
    assert "<figcaption>Runs per method (runs_per_method.png, runs_per_method.svg)" in page
    assert (tmp_path / "report" / "runs_per_method.svg").exists()


def test_an_unknown_plot_kind_lists_the_registered_ones(runs_chart, runs_dir, capsys):
    assert main(["plot", "nope", str(runs_dir)]) == 2
    assert capsys.readouterr().err == (
        "locbench: error: unknown chart kind 'nope'; known: accuracy-memory, memory-k, "
        "memory-batch, breakdown, modules, timeline, step-overhead, curves, runs\n"
    )


def test_a_chart_kind_or_file_name_registers_once(runs_chart):
    with pytest.raises(ValueError, match="already registered"):
        CHARTS.add(Chart("runs", "other", "x", runs_chart.draw))
    with pytest.raises(ValueError, match="already registered"):
        CHARTS.add(Chart("other", "runs_per_method", "x", runs_chart.draw))
    assert "other" not in CHARTS.kinds()


def test_build_report_skips_charts_without_data(tmp_path):
    runs = tmp_path / "runs"
    for r in spec(net="resnet20"):
        save_record(make_record(r), runs)
    out = tmp_path / "out"
    build_report(runs, out)
    names = {p.name for p in out.iterdir()}
    assert "memory_vs_K.png" not in names and "memory_vs_batch.svg" not in names
    assert {"accuracy_vs_memory.png", "step_overhead.svg", "report.html"} <= names


def test_build_report_with_curves(tmp_path):
    runs = tmp_path / "runs"
    point = {"epoch": 1, "train_loss": 1.0, "test_acc": 50.0}
    for r in spec(net="smallnet", batch=128):
        record = make_record(r)
        record.curve = [point, dict(point, epoch=2, train_loss=0.5, test_acc=r["acc"])]
        save_record(record, runs)
    build_report(runs, tmp_path / "out")
    assert (tmp_path / "out" / "curves.svg").exists()


def test_build_report_empty_or_missing_folder_is_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no run records") as exc:
        build_report(tmp_path / "empty", tmp_path / "out")
    assert "\n" not in str(exc.value) and str(tmp_path / "empty") in str(exc.value)
    with pytest.raises(UserError, match="does not exist"):
        build_report(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- variants (identity)

DGL_PARAMS = {"variant": "auglocal", "hidden_dim": 128, "mlp_layers": 3}


def one_run(method: str, seed: int = 0, K: int = 4, **fields) -> dict:
    """A fixture run on smallnet at batch 64; ``fields`` override its numbers."""
    r = dict(zip(FIELDS, ("smallnet", method, K, None, 64, seed, "ok", 80.0, 0.02, 1e9, 5.0, None)))
    return {**r, **fields}


def dgl(hidden_dim: int, seed: int = 0, **fields) -> RunRecord:
    return make_record(one_run("dgl", seed, **fields), dict(DGL_PARAMS, hidden_dim=hidden_dim))


def frame(records: list[RunRecord], tmp_path) -> pd.DataFrame:
    for record in records:
        save_record(record, tmp_path)
    return load_results(tmp_path)


def test_hyperparameters_separate_rows_with_unique_variant_labels(tmp_path):
    bp = make_record(one_run("bp", K=1, tracked=10.0, step=0.01))
    results = frame([bp, dgl(64, tracked=4.0, acc=76.0), dgl(128, tracked=6.0, acc=78.0)], tmp_path)
    table = comparison_table(results)
    assert table["variant"].tolist() == ["bp", "dgl hidden_dim=128", "dgl hidden_dim=64"]
    assert table["method"].tolist() == ["bp", "dgl", "dgl"]
    assert table["seeds"].tolist() == [1, 1, 1]  # not averaged together
    assert table["peak (MiB)"].tolist() == [10.0, 6.0, 4.0]
    assert table["saving vs BP (%)"].tolist() == pytest.approx([0.0, 40.0, 60.0])
    assert table["step overhead vs BP (%)"].tolist() == pytest.approx([0.0, 100.0, 100.0])


def test_two_seeds_of_one_configuration_make_one_row(tmp_path):
    table = comparison_table(frame([dgl(64, seed=0), dgl(64, seed=1, acc=82.0)], tmp_path))
    assert len(table) == 1
    assert (table["variant"][0], table["seeds"][0], table["acc mean (%)"][0]) == ("dgl", 2, 81.0)


def test_run_settings_make_variants_and_pick_the_matching_bp(tmp_path):
    runs = [
        make_record(one_run("bp", K=1, tracked=10.0), lr=0.05),
        make_record(one_run("bp", K=1, tracked=20.0), lr=0.1),
        make_record(one_run("dgl", tracked=5.0), DGL_PARAMS, lr=0.1),
        make_record(one_run("predsim", tracked=5.0), lr=0.2),  # no bp at lr 0.2
    ]
    table = comparison_table(frame(runs, tmp_path))
    assert table["variant"].tolist() == ["bp lr=0.05", "bp lr=0.1", "dgl", "predsim"]
    saving = dict(zip(table["variant"], table["saving vs BP (%)"]))
    assert saving["dgl"] == pytest.approx(75.0)  # against bp at its own lr: 5 / 20
    # no bp shares predsim's lr: equally close, the first bp label wins
    assert saving["predsim"] == pytest.approx(50.0)
    assert saving["bp lr=0.05"] == saving["bp lr=0.1"] == 0.0


def test_variants_told_apart_only_by_a_shown_setting_still_get_unique_labels(tmp_path):
    # BP trains one module whatever K is asked: K=4 and K=16 are two rows with K 1
    runs = [
        make_record(one_run("bp", K=1, tracked=10.0), K=4),
        make_record(one_run("bp", K=1, tracked=12.0), K=16),
        make_record(one_run("dgl", K=4, tracked=5.0), K=4),
    ]
    table = comparison_table(frame(runs, tmp_path))
    assert table["variant"].tolist() == ["bp K=16", "bp K=4", "dgl"]
    assert table["K"].tolist() == [1, 1, 4]
    assert table["saving vs BP (%)"].tolist()[-1] == pytest.approx(50.0)  # the bp asked K=4


def test_variants_share_the_method_colour_and_differ_in_style(tmp_path):
    bp = make_record(one_run("bp", K=1, tracked=10.0, step=0.01))
    runs = [bp, dgl(64, tracked=4.0, acc=76.0), dgl(128, tracked=6.0, acc=78.0)]
    runs += [dgl(64, K=2, tracked=5.0, acc=77.0), dgl(128, K=2, tracked=7.0, acc=79.0)]
    results = frame(runs, tmp_path)

    (ax,) = accuracy_memory_figure(results).axes
    labels = ["bp", "dgl hidden_dim=128", "dgl hidden_dim=64"]
    assert legend_labels(ax) == [*labels, "Pareto front"]
    series = {c.get_label(): c.lines[0] for c in ax.containers}
    colors = {k: to_rgba(line.get_color()) for k, line in series.items()}
    assert colors["dgl hidden_dim=64"] == colors["dgl hidden_dim=128"] != colors["bp"]
    assert series["dgl hidden_dim=64"].get_marker() != series["dgl hidden_dim=128"].get_marker()

    (ax,) = memory_k_figure(results).axes
    assert legend_labels(ax) == labels
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines["dgl hidden_dim=64"].get_ydata()) == [5.0, 4.0]
    assert to_rgba(lines["dgl hidden_dim=64"].get_color()) == colors["dgl hidden_dim=64"]
    assert lines["dgl hidden_dim=64"].get_linestyle() != lines["dgl hidden_dim=128"].get_linestyle()

    (ax,) = step_overhead_figure(results).axes
    assert legend_labels(ax) == labels[1:]
    bars = [c[0] for c in ax.containers]
    assert bars[0].get_facecolor() == bars[1].get_facecolor() == colors["dgl hidden_dim=64"]
    assert bars[0].get_hatch() != bars[1].get_hatch()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert len(set(ticks)) == len(ticks) == 4


def test_curves_legend_uses_variant_labels(tmp_path):
    point = {"epoch": 1, "train_loss": 1.0, "test_acc": 50.0}
    runs = [dgl(64), dgl(128), dgl(128, seed=1)]
    for record in runs:
        record.curve = [point, dict(point, epoch=2)]
    results = frame(runs, tmp_path)
    fig = curves_figure(curves_frame(runs), results)
    assert legend_labels(fig.axes[1]) == [
        "dgl hidden_dim=64 (K=4)",
        "dgl hidden_dim=128 (K=4) seed 0",
        "dgl hidden_dim=128 (K=4) seed 1",
    ]
    colors = {to_rgba(line.get_color()) for line in fig.axes[1].lines}
    assert len(colors) == 1  # one method, one colour


def test_report_page_shows_variant_labels(tmp_path):
    runs = tmp_path / "runs"
    frame([dgl(64), dgl(128), make_record(one_run("bp", K=1))], runs)
    page = build_report(runs, tmp_path / "out").path.read_text()
    assert "<td>dgl hidden_dim=64</td>" in page and "<td>dgl hidden_dim=128</td>" in page
    csv = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert csv["variant"].tolist() == ["bp", "dgl hidden_dim=128", "dgl hidden_dim=64"]


# ---------------------------------------------------------------- untrusted files


def good_record_json() -> str:
    return make_record(one_run("bp", K=1)).to_json()


BAD_FILES = {
    "truncated.json": (lambda: good_record_json()[:200], "truncated or not valid JSON"),
    "old.json": (
        lambda: good_record_json().replace("locbench.run/2", "locbench.run/1"),
        "unknown schema version 'locbench.run/1'",
    ),
    "list.json": (lambda: "[1, 2]", "not a run record (JSON an array)"),
    "bench.json": (lambda: '{"benchmarks": []}', "not a run record (a pytest-benchmark file)"),
    "missing.json": (
        lambda: json.dumps({k: v for k, v in json.loads(good_record_json()).items() if k != "env"}),
        "missing fields: env",
    ),
    "unknown.json": (
        lambda: json.dumps({**json.loads(good_record_json()), "colour": "red"}),
        "unknown fields: colour",
    ),
    "wrongtype.json": (
        lambda: json.dumps({**json.loads(good_record_json()), "config": [1]}),
        "config is list, expected dict",
    ),
    "binary.json": (lambda: "\udcff", "not UTF-8 text"),
}


def write_bad(folder, name: str) -> None:
    text = BAD_FILES[name][0]()
    (folder / name).write_bytes(text.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_scan_records_skips_a_bad_file_with_its_reason(tmp_path, name):
    save_record(make_record(one_run("bp", K=1)), tmp_path)
    write_bad(tmp_path, name)
    (tmp_path / "notes.txt").write_text("not json, not looked at")
    records, skipped = scan_records(tmp_path)
    assert [r.config["method"] for r in records] == ["bp"]
    assert len(skipped) == 1
    path, reason = skipped[0]
    assert path == tmp_path / name
    assert BAD_FILES[name][1] in reason and "\n" not in reason


def test_report_renders_good_records_and_lists_a_truncated_one(runs_dir, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for path in runs_dir.glob("*.json"):
        (runs / path.name).write_bytes(path.read_bytes())
    (runs / "zz-killed.json").write_text(good_record_json()[:300])
    report = build_report(runs, tmp_path / "out")
    assert [(p.name, r.split(" (")[0]) for p, r in report.skipped] == [
        ("zz-killed.json", "truncated or not valid JSON")
    ]
    assert len(pd.read_csv(tmp_path / "out" / "comparison.csv")) == 10  # every good record
    page = report.path.read_text()
    assert "Skipped files" in page and "<td>zz-killed.json</td>" in page
    assert "1 file skipped" in page


def test_report_without_a_valid_record_is_one_line_user_error(tmp_path):
    for name in ("truncated.json", "old.json"):
        write_bad(tmp_path, name)
    with pytest.raises(UserError, match="holds no valid run records") as exc:
        build_report(tmp_path, tmp_path / "out")
    message = str(exc.value)
    assert "2 of 2 *.json files skipped" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def timed(record: RunRecord, threads: int, others: float) -> RunRecord:
    record.measured_steps = record.config["measure_steps"]
    record.timing = {"threads": threads, "exclusive": True, "others_cpu_share": others}
    return record


def test_step_times_measured_unlike_are_not_compared_and_say_why(tmp_path):
    """Rows timed at other thread counts than BP's, or contended, get no step overhead but a
    ``timing`` note; the contended run is flagged even though its p90 / p10 is tidy."""
    bp = timed(make_record(one_run("bp", K=1, step=0.01)), threads=2, others=0.02)
    alike = timed(make_record(one_run("predsim", step=0.02)), threads=2, others=0.05)
    fewer = timed(make_record(one_run("dgl", step=0.02)), threads=1, others=0.0)
    busy = timed(make_record(one_run("infopro", step=0.03)), threads=2, others=0.40)
    results = frame([bp, alike, fewer, busy], tmp_path)
    table = comparison_table(results).set_index("method")
    assert table.loc["predsim", "step overhead vs BP (%)"] == pytest.approx(100.0)
    assert pd.isna(table.loc["predsim", "timing"])
    assert math.isnan(table.loc["dgl", "step overhead vs BP (%)"])
    assert table.loc["dgl", "timing"] == "threads differ (1/2)"
    assert math.isnan(table.loc["infopro", "step overhead vs BP (%)"])
    assert table.loc["infopro", "timing"] == "contended 1/1"
    # FLOPs do not depend on how the step was timed
    assert table.loc["dgl", "FLOPs overhead vs BP (%)"] == pytest.approx(0.0)
    from locbench.reports.runs import flag_texts

    flags = dict(zip(results["config.method"], flag_texts(results)))
    assert flags["infopro"] == "contended (others 40% of the CPU)"
    assert flags["dgl"] == flags["bp"] == flags["predsim"] == ""


def test_equal_memory_view_sets_each_local_row_beside_the_bp_variants_that_fit(tmp_path):
    """dgl at 6 MiB: bp-ckpt K=2 (7 MiB) does not fit, K=3 (5.5) and K=6 (4) do: K=3, the
    largest peak that fits; bp-accum M=2 (5.8) fits. predsim at 5 MiB: bp-ckpt K=6 only, no
    bp-accum. The page shows the section and the files are written."""
    records = [
        make_record(one_run("bp", K=1, tracked=10.0)),
        make_record(one_run("dgl", tracked=6.0, acc=78.0, step=0.02)),
        make_record(one_run("predsim", tracked=5.0)),
        make_record(one_run("bp-ckpt", K=2, tracked=7.0)),
        make_record(one_run("bp-ckpt", K=3, tracked=5.5, acc=81.0, step=0.03)),
        make_record(one_run("bp-ckpt", K=6, tracked=4.0)),
        make_record(
            one_run("bp-accum", K=1, tracked=5.8, acc=82.0, step=0.04), params={"micro_batches": 2}
        ),  # fmt: skip
    ]
    for r in records:
        save_record(r, tmp_path / "runs")
    from locbench.reports.tables import equal_memory_table

    equal = equal_memory_table(load_results(tmp_path / "runs")).set_index("variant")
    assert list(equal.index) == ["dgl", "predsim"]
    assert equal.loc["dgl", "bp-ckpt setting"] == "K=3"
    assert equal.loc["dgl", "bp-accum setting"] == "micro_batches=2"
    assert equal.loc["dgl", "bp-ckpt peak (MiB)"] == pytest.approx(5.5)
    assert equal.loc["dgl", "bp-ckpt test acc (%)"] == "81.00"
    assert equal.loc["dgl", "bp-ckpt step (ms)"] == pytest.approx(30.0)
    assert equal.loc["dgl", "bp-accum peak (MiB)"] == pytest.approx(5.8)
    assert equal.loc["predsim", "bp-ckpt peak (MiB)"] == pytest.approx(4.0)
    assert pd.isna(equal.loc["predsim", "bp-accum peak (MiB)"])
    build_report(tmp_path / "runs", tmp_path / "report")
    assert (tmp_path / "report" / "equal_memory.csv").is_file()
    assert 'id="equal-memory"' in (tmp_path / "report" / "report.html").read_text()
