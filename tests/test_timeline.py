"""The memory timeline of one training step: its maximum is the tracked peak (runs, the
steady-state step, the estimate), it stays within 2,000 points, keeps the peak and every phase
change, shows one backward per module, and charts at the record's height."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from locbench.analysis.estimate import estimate
from locbench.analysis.regress import small_batch, small_trainer
from locbench.cli.main import main
from locbench.harness.build import resolve
from locbench.harness.run import execute
from locbench.harness.windows import steady_state_peak
from locbench.measure.memory import PHASE_CODES, TIMELINE_POINTS, MemoryTracker, downsample
from locbench.records import RunRecord, load_results, save_record
from locbench.reports import charts
from locbench.reports.page import build_report
from locbench.settings.run_config import RunConfig

MIB = 2**20


def backward_segments(timeline: dict) -> list[int | None]:
    """The module of each backward run of the phase sequence."""
    return [module for _, code, module in timeline["phases"] if code == "B"]


@pytest.fixture(scope="module")
def records() -> dict[str, RunRecord]:
    return {
        name: execute(RunConfig(method=name, K=K, net="smallnet", dataset="synthetic", epochs=1))
        for name, K in (("bp", None), ("dgl", 4))
    }


@pytest.fixture(autouse=True)
def no_open_figures():
    yield
    plt.close("all")


def test_a_runs_timeline_peaks_at_its_tracked_peak(records):
    for record in records.values():
        memory = record.memory
        timeline = memory["timeline"]
        assert max(timeline["bytes"]) == memory["peak_bytes"]
        assert timeline["steps"] == 1  # the window's last step reaches the peak again
        assert len(timeline["event"]) == len(timeline["bytes"]) <= TIMELINE_POINTS
        assert timeline["event"] == sorted(set(timeline["event"]))
        assert timeline["phases"][0][0] == 0 and timeline["event"][-1] == timeline["events"] - 1
        json.loads(record.to_json())  # a plain JSON value: lists, strings, ints and nulls


def test_a_local_method_backpropagates_once_per_module(records):
    assert backward_segments(records["dgl"].memory["timeline"]) == [0, 1, 2, 3]
    assert backward_segments(records["bp"].memory["timeline"]) == [0]
    codes = {code for _, code, _ in records["dgl"].memory["timeline"]["phases"]}
    assert codes == set(PHASE_CODES.values())  # forward, local loss, backward, optimizer, other


def test_steady_state_timeline_peaks_at_its_peak():
    peak = steady_state_peak(small_trainer("dgl"), *small_batch())
    assert max(peak.timeline["bytes"]) == peak.peak_bytes
    assert peak.as_dict()["timeline"] == peak.timeline


def test_estimates_timeline_peaks_at_the_estimate_and_is_bounded():
    peak = estimate(resolve(RunConfig(method="dgl", K=16, net="resnet32")), batch_size=2)
    timeline = peak.timeline
    assert timeline["events"] > TIMELINE_POINTS  # downsampled
    assert len(timeline["bytes"]) <= TIMELINE_POINTS
    assert max(timeline["bytes"]) == peak.peak_bytes
    assert backward_segments(timeline) == list(range(16))
    assert json.loads(json.dumps(timeline)) == timeline  # plain ints, as a record holds them
    kept = set(timeline["event"])
    assert all(start in kept and start - 1 in kept for start, _, _ in timeline["phases"][1:])


def test_a_step_with_more_phases_than_timeline_points_still_has_a_timeline():
    """Over 2000 phase changes (e.g. bp-accum with hundreds of micro-batches): the timeline
    keeps its phases whole and the peak, and stays bounded (before: the step failed)."""
    tracker = MemoryTracker()
    kept = []
    with tracker:
        tracker.begin_step()
        for i in range(1500):
            with tracker.phase("backbone" if i % 2 else "backward", i % 3):
                kept.append(torch.empty(4 + i % 7))
            if i % 5 == 4:
                kept.clear()
    timeline = tracker.timeline()
    assert len(timeline["phases"]) * 2 > TIMELINE_POINTS
    assert len(timeline["bytes"]) <= TIMELINE_POINTS
    assert max(timeline["bytes"]) == tracker.peak
    kept_events = set(timeline["event"])
    assert all(start in kept_events for start, _, _ in timeline["phases"])


def test_downsample_keeps_the_peak_the_changes_and_the_shape():
    rng = np.random.default_rng(0)
    values = np.cumsum(rng.integers(-100, 101, 50_000))
    values[31_337] = values.max() + 1  # one narrow spike: the global maximum
    changes = list(range(5, 50_000, 997))
    kept = downsample(values, changes, max_points=2000)
    assert len(kept) <= 2000 and kept == sorted(set(kept))
    assert all(type(i) is int for i in kept)
    assert {0, 49_999, 31_337} | set(changes) <= set(kept)
    assert values[kept].max() == values.max() and values[kept].min() == values.min()
    assert downsample(values[:10], [3]) == list(range(10))  # few points: all
    with pytest.raises(ValueError):
        downsample(values, range(0, 50_000, 2), max_points=100)


def test_the_timeline_starts_at_the_step_that_holds_the_peak():
    tracker = MemoryTracker()
    with tracker:
        tracker.begin_step()
        with tracker.phase("backbone", 0):
            big = torch.ones(1000)  # 4000 bytes: the window's peak, in its first step
        del big
        tracker.begin_step()
        with tracker.phase("backbone", 0):
            small = torch.ones(10)
    peak = tracker.result(resident_bytes=0, n_modules=1)
    assert peak.timeline["steps"] == 2 and max(peak.timeline["bytes"]) == peak.peak_bytes == 4000
    del small
    assert MemoryTracker().timeline() == {}  # nothing tracked


# ---------------------------------------------------------------- the chart


def timeline_record(method: str, K: int, peak: int, seed: int = 0) -> RunRecord:
    """A record with a hand-made timeline: K forward/backward pairs, the peak in module 0."""
    config = RunConfig(
        method=method, seed=seed, K=K, net="smallnet", dataset="digits", batch_size=64
    )
    phases, values = [], []
    for k in range(K):
        phases += [[len(values), "F", k]]
        values += [MIB * (k + 1), peak if k == 0 else MIB * (k + 2)]
        phases += [[len(values), "B", k]]
        values += [MIB // 2, MIB // 4]
    phases.append([len(values), "O", None])
    values.append(MIB // 8)
    timeline = {
        "steps": 1,
        "events": len(values),
        "event": list(range(len(values))),
        "bytes": values,
        "phases": phases,
    }
    return RunRecord(
        run_id=resolve(config).run_id,
        config=config.to_dict(),
        env={},
        K=K,
        memory={"peak_bytes": peak, "timeline": timeline},
    )


@pytest.fixture
def runs_dir(tmp_path):
    for args in (("bp", 1, 9 * MIB), ("dgl", 4, 5 * MIB), ("dgl", 4, 6 * MIB, 1)):
        save_record(timeline_record(*args), tmp_path / "runs")
    config = RunConfig(method="predsim", K=2, net="smallnet", dataset="digits", batch_size=64)
    old = RunRecord(  # a record without a timeline: no panel
        run_id=resolve(config).run_id,
        config=config.to_dict(),
        env={},
        K=2,
        memory={"peak_bytes": 1},
    )
    save_record(old, tmp_path / "runs")
    return tmp_path / "runs"


def test_timeline_chart_peaks_at_the_records_peak(runs_dir, tmp_path):
    fig = charts.timeline_figure(load_results(runs_dir))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().splitlines()[1] for ax in axes] == ["bp K=1", "dgl K=4"]  # BP first
    lines = [[ln for ln in ax.get_lines() if ln.get_gid() == "timeline"][0] for ax in axes]
    # of two seeds, the first record's (seed 0: 5 MiB)
    assert [max(line.get_ydata()) for line in lines] == [9.0, 5.0]
    colors = charts.method_colors(["bp", "dgl", "predsim"])
    assert [line.get_color() for line in lines] == [colors["bp"], colors["dgl"]]
    # dgl: a dotted boundary before each of modules 2..4
    assert sum(ln.get_linestyle() == ":" for ln in axes[1].get_lines()) == 3
    assert main(["plot", "timeline", str(runs_dir), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "memory_timeline.svg").is_file()
    build_report(runs_dir, tmp_path / "report")
    assert (tmp_path / "report" / "memory_timeline.png").is_file()
    assert (
        charts.timeline_figure(load_results(runs_dir).drop(columns="memory.timeline.bytes")) is None
    )


def test_chart_phase_codes_are_the_trackers():
    assert set(charts.PHASES) == set(PHASE_CODES.values())  # every phase has a shade


def test_estimate_cli_writes_the_timeline(tmp_path, capsys):
    stem = tmp_path / "out" / "tl"
    args = ["estimate", "--net", "smallnet", "--K", "4", "--batch", "8", "--methods", "dgl,bp"]
    assert main([*args, "--timeline", str(stem)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3:] == [f"{stem}.json", f"{stem}.png", f"{stem}.svg"]
    rows = json.loads(stem.with_suffix(".json").read_text())
    for row in rows:
        assert max(row["timeline"]["bytes"]) == row["peak_bytes_unrounded"]
    assert [len(backward_segments(r["timeline"])) for r in rows] == [1, 4]  # bp first
