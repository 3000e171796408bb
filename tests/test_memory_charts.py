"""Memory charts: the tracked-peak breakdown, the per-module profile, ``locbench plot``, the
report's new figures and the chart details (integer epochs, legends outside the data), on run
records written by hand (every expected height is known)."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.colors import to_rgba

import locbench.measure.memory
from locbench.cli.main import main
from locbench.harness.build import resolve
from locbench.measure.memory import MemoryTracker
from locbench.records import RunRecord, curves_frame, load_results, read_records, save_record
from locbench.reports import charts
from locbench.reports.page import build_report
from locbench.settings.run_config import RunConfig

MIB = 2**20

# (method, K, batch, seed, step s, breakdown bytes in CATEGORIES order, module peak bytes)
RUNS = [
    ("bp", 1, 64, 0, 0.010, (1000, 0, 1000, 2000, 5 * MIB, 0, 12345), [5 * MIB + 16345]),
    ("dgl", 4, 64, 0, 0.015, (1500, 0, 700, 3000, 2 * MIB, 333, 4096), [3, 4, 2, 1]),
    ("dgl", 4, 64, 1, 0.017, (1500, 0, 900, 3000, 3 * MIB, 111, 8192), [5, 4, 2, 3]),
    ("infopro", 2, 64, 0, 0.020, (1800, 640, 800, 3600, MIB, MIB // 2, 777), [7 * MIB, 6 * MIB]),
    ("bp", 1, 128, 0, 0.020, (1000, 0, 1000, 2000, 10 * MIB, 0, 22222), [10 * MIB]),
    ("dgl", 4, 128, 0, 0.030, (1500, 0, 700, 3000, 4 * MIB, 333, 4096), [9, 8, 7, 6]),
]


def make_record(method, K, batch, seed, step, breakdown, module_peaks, split=True) -> RunRecord:
    config = RunConfig(
        method=method, seed=seed, K=K, net="smallnet", dataset="digits", batch_size=batch
    )
    memory = {
        "peak_bytes": sum(breakdown),
        "breakdown": dict(zip(locbench.measure.memory.CATEGORIES, breakdown)),
        "module_peaks": module_peaks,
        "module_activation_peaks": [p // 2 for p in module_peaks],
        "floor_bytes": sum(breakdown[:4]),
    }
    if split:  # backbone 1/3 and aux 1/4 of the module peak: told apart from the combined 1/2
        memory["module_backbone_activation_peaks"] = [p // 3 for p in module_peaks]
        memory["module_aux_activation_peaks"] = [p // 4 for p in module_peaks]
    return RunRecord(
        run_id=resolve(config).run_id,
        config=config.to_dict(),
        env={"device_name": "cpu"},
        K=K,
        final_test_acc=80.0 + seed,
        step_time_median_s=step,
        memory=memory,
        curve=[{"epoch": e, "train_loss": 1.0 / e, "test_acc": 50.0 + e} for e in (1, 2, 3)],
    )


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    for run in RUNS:
        save_record(make_record(*run), folder)
    config = RunConfig(method="dgl", seed=2, K=4, net="smallnet", dataset="digits", batch_size=64)
    failed = RunRecord(  # an oom run: no memory, in no bar and no line
        run_id=resolve(config).run_id, config=config.to_dict(), env={}, status="oom", K=4
    )
    save_record(failed, folder)
    return folder


@pytest.fixture(scope="module")
def results(runs_dir):
    return load_results(runs_dir)


@pytest.fixture(autouse=True)
def no_open_figures():
    yield
    plt.close("all")


def overlaps(fig, legend, artists) -> list:
    """The ``artists`` whose display box overlaps ``legend``'s, after drawing ``fig``."""
    fig.canvas.draw()
    box = legend.get_window_extent()
    return [a for a in artists if box.overlaps(a.get_window_extent())]


# ---------------------------------------------------------------- breakdown


def test_breakdown_bar_heights_are_the_records_bytes(results):
    fig = charts.breakdown_figure(results)
    assert [ax.get_title() for ax in fig.axes] == [
        "smallnet, digits, batch 64",
        "smallnet, digits, batch 128",
    ]
    expected = {
        64: [RUNS[0][5], [(a + b) / 2 for a, b in zip(RUNS[1][5], RUNS[2][5])], RUNS[3][5]],
        128: [RUNS[4][5], RUNS[5][5]],
    }
    for ax, batch in zip(fig.axes, (64, 128)):
        assert ax.get_ylabel() == "tracked peak memory (MiB)"
        assert len(ax.containers) == len(charts.CATEGORIES)  # one stack layer per category
        for i, container in enumerate(ax.containers):
            heights = [bar.get_height() for bar in container]
            # exactly bytes / 2**20 (the mean of the two dgl seeds at batch 64)
            assert heights == [bars[i] / MIB for bars in expected[batch]]
        tops = [bar.get_y() + bar.get_height() for bar in ax.containers[-1]]
        assert tops == pytest.approx([sum(bars) / MIB for bars in expected[batch]])
    small = fig.axes[0]
    assert [t.get_text() for t in small.get_xticklabels()] == [
        "bp\nK=1",
        "dgl\nK=4",
        "infopro\nK=2",
    ]
    colors = charts.method_colors(["bp", "dgl", "infopro"])
    assert [t.get_color() for t in small.get_xticklabels()] == [
        colors[m] for m in ("bp", "dgl", "infopro")
    ]


def test_breakdown_categories_keep_their_colour_and_the_legend_covers_no_bar(results):
    fig = charts.breakdown_figure(results)
    per_panel = [[to_rgba(c.patches[0].get_facecolor()) for c in ax.containers] for ax in fig.axes]
    assert per_panel[0] == per_panel[1]
    assert len(set(per_panel[0])) == len(charts.CATEGORIES)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "other",
        "aux activations",
        "backbone activations",
        "optimizer state",
        "gradients",
        "frozen",
        "parameters",
    ]
    bars = [bar for ax in fig.axes for bar in ax.patches if bar.get_height() > 0]
    assert overlaps(fig, legend, bars) == []


def test_breakdown_without_breakdowns_is_none(results):
    assert charts.breakdown_figure(results[results["status"] != "ok"]) is None
    assert charts.breakdown_figure(results.drop(columns="memory.breakdown.other")) is None


# ---------------------------------------------------------------- per-module profile


def test_module_profile_has_k_points_per_local_method_and_one_for_bp(results):
    fig = charts.module_memory_figure(results)
    top_64, top_128, *below = fig.axes
    assert len(below) == 4  # rows: module peak, backbone activations, aux activations
    assert top_64.get_title() == "smallnet, digits, batch 64"
    lines = {line.get_label(): line for line in top_64.get_lines()}
    assert sorted(lines) == ["bp", "dgl", "infopro"]
    assert list(lines["bp"].get_xdata()) == [0]  # beside the modules, at "whole net"
    assert list(lines["dgl"].get_xdata()) == [1, 2, 3, 4]
    assert list(lines["infopro"].get_xdata()) == [1, 2]
    assert list(lines["infopro"].get_ydata()) == [7.0, 6.0]
    assert list(lines["dgl"].get_ydata()) == [4 / MIB, 4 / MIB, 2 / MIB, 2 / MIB]  # seed mean
    assert all(line.get_marker() not in (None, "None", "") for line in lines.values())
    colors = charts.method_colors(["bp", "dgl", "infopro"])
    assert {k: to_rgba(v.get_color()) for k, v in lines.items()} == {
        k: to_rgba(c) for k, c in colors.items()
    }
    assert [len(line.get_xdata()) for line in top_128.get_lines()] == [1, 4]
    backbone, aux = below[0], below[2]  # column batch 64, rows 2 and 3
    assert backbone.get_ylabel() == "module k's backbone activations (MiB)"
    assert aux.get_ylabel() == "module k's auxiliary-net activations (MiB)"
    infopro = [line for line in aux.get_lines() if line.get_label() == "infopro"][0]
    assert list(infopro.get_ydata()) == [7 * MIB // 4 / MIB, 6 * MIB // 4 / MIB]
    fig.canvas.draw()
    assert "whole\nnet" in [t.get_text() for t in top_64.get_xticklabels()]
    assert overlaps(fig, top_64.get_legend(), top_64.get_lines()) == []


def test_module_profile_of_records_without_the_split_shows_the_combined_activations(tmp_path):
    for run in RUNS[:4]:
        save_record(make_record(*run, split=False), tmp_path)
    fig = charts.module_memory_figure(load_results(tmp_path))
    top, below = fig.axes
    assert below.get_ylabel() == "module k's own activations (MiB)"
    infopro = [line for line in below.get_lines() if line.get_label() == "infopro"][0]
    assert list(infopro.get_ydata()) == [3.5, 3.0]


def test_module_profile_without_module_peaks_is_none(results):
    assert charts.module_memory_figure(results.drop(columns="memory.module_peaks")) is None


def test_tracker_splits_module_activations_into_backbone_and_aux():
    tracker = MemoryTracker()
    with tracker:
        with tracker.phase("backbone", 0):
            a = torch.ones(100)  # 400 bytes
            b = torch.ones(50)  # 200
        with tracker.phase("aux", 0):
            c = torch.ones(25)  # 100
        del b
        with tracker.phase("aux", 0):
            d = torch.ones(300)  # 1200
    peak = tracker.result(resident_bytes=0, n_modules=2)
    assert peak.module_activation_peaks == [1700, 0]  # a c d
    assert peak.module_backbone_activation_peaks == [600, 0]  # a b
    assert peak.module_aux_activation_peaks == [1300, 0]  # c d
    assert {"module_backbone_activation_peaks", "module_aux_activation_peaks"} <= set(
        peak.as_dict()
    )
    del a, c, d


# ---------------------------------------------------------------- other charts' details


def test_curves_have_integer_epoch_ticks_and_the_legend_outside(runs_dir, results):
    fig = charts.curves_figure(curves_frame(read_records(runs_dir)), results)
    fig.canvas.draw()
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert labels and all(re.fullmatch(r"\d+", t) for t in labels), labels
    legend = fig.axes[1].get_legend()
    assert overlaps(fig, legend, fig.axes[1].get_lines()) == []


def test_step_overhead_legend_covers_no_bar(results, tmp_path):
    for ax in charts.step_overhead_figure(results).axes:
        assert overlaps(ax.figure, ax.get_legend(), ax.patches) == []
    # Bars of nearly equal height fill the axes: a legend inside (matplotlib's "best" place,
    # as before) covers one of them.
    steps = [("bp", 1, 0.010), ("dgl", 4, 0.020), ("dgl", 2, 0.0201), ("infopro", 2, 0.021)]
    steps += [("predsim", 2, 0.0205), ("auglocal", 4, 0.0202)]
    for method, K, step in steps:
        save_record(make_record(method, K, 64, 0, step, RUNS[0][5], [1] * K), tmp_path)
    (ax,) = charts.step_overhead_figure(load_results(tmp_path)).axes
    assert overlaps(ax.figure, ax.get_legend(), ax.patches) == []
    assert overlaps(ax.figure, ax.legend(), ax.patches) != []  # the old legend would


# ---------------------------------------------------------------- plot command and report


@pytest.mark.parametrize(
    "kind, name",
    [("breakdown", "memory_breakdown"), ("modules", "module_memory"), ("curves", "curves")],
)
def test_plot_writes_png_and_svg_and_prints_them(capsys, runs_dir, tmp_path, kind, name):
    assert main(["plot", kind, str(runs_dir), "--out", str(tmp_path / "plots")]) == 0
    paths = [tmp_path / "plots" / f"{name}.{ext}" for ext in ("png", "svg")]
    assert capsys.readouterr().out.splitlines() == [str(p) for p in paths]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in paths[1].read_text()
    assert not plt.get_fignums()


def test_plot_without_data_for_the_chart_is_one_line_error(capsys, tmp_path):
    record = make_record(*RUNS[0])
    record.memory = None
    save_record(record, tmp_path)
    assert main(["plot", "breakdown", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"locbench: error: the records in {tmp_path} hold no data for the breakdown chart\n"
    )


def test_report_writes_and_embeds_the_memory_charts(runs_dir, tmp_path):
    page = build_report(runs_dir, tmp_path).path.read_text()
    for name in ("memory_breakdown", "module_memory"):
        assert (tmp_path / f"{name}.png").exists() and (tmp_path / f"{name}.svg").exists()
        assert f"({name}.png, {name}.svg)" in page
    assert 'alt="Tracked peak memory by category"' in page
    assert 'alt="Tracked peak memory per module"' in page


def test_records_from_before_the_frozen_category_chart_as_none_frozen(results):
    old = results.drop(columns="memory.breakdown.frozen")
    fig = charts.breakdown_figure(old)
    frozen = [c for ax in fig.axes for c in ax.containers if c.get_label() == "frozen"]
    assert frozen and all(bar.get_height() == 0 for c in frozen for bar in c)
