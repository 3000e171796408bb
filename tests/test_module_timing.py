"""Per-module timing of the timed steps (locbench.measure.meters.PhaseClock) and the pipeline bound
(locbench.measure.pipeline_bound) in run records, describe and the report."""

from __future__ import annotations

import json

import pytest
import torch

from locbench.analysis.describe import describe
from locbench.harness.run import execute
from locbench.measure.meters import PhaseClock
from locbench.measure.pipeline_bound import best_grouping, pipeline_bounds
from locbench.records import RunRecord, results_frame
from locbench.reports.tables import comparison_table
from locbench.settings.run_config import RunConfig

PARTS = ("forward_s", "local_s", "backward_s")


def short_run(method: str, K: int) -> RunRecord:
    # synthetic: 512 samples at batch 64 -> 8 steps per epoch; 3 warm-up, 1 tracked, 8 timed
    config = RunConfig(
        method=method, net="smallnet", K=K, dataset="synthetic", epochs=2, batch_size=64,
        warmup_steps=3, track_steps=1, measure_steps=8,
    )  # fmt: skip
    record = execute(config)
    assert record.status == "ok", record.message
    return record


@pytest.fixture(scope="module")
def dgl_run() -> RunRecord:
    return short_run("dgl", 4)


def test_a_run_records_each_modules_times(dgl_run):
    t = dgl_run.module_times
    assert t["steps"] == dgl_run.measured_steps == 8
    for name in PARTS:
        assert len(t[name]) == 4 and all(v > 0 for v in t[name])
    assert t["optimizer_s"] > 0
    assert t["step_s"] == dgl_run.step_time_median_s
    # other_s is what the parts' medians leave of the step's median
    parts = sum(sum(t[name]) for name in PARTS) + t["optimizer_s"]
    assert parts + t["other_s"] == pytest.approx(t["step_s"])
    # the acceptance figure: each step's parts sum to within 10% of its measured time (median
    # over the steps; the medians of the parts need not add up to the median step)
    assert t["parts_s"] <= t["step_s"]
    assert t["parts_s"] >= 0.9 * t["step_s"], t


def test_a_run_records_its_pipeline_bound(dgl_run):
    t = dgl_run.module_times
    m = [sum(parts) for parts in zip(*(t[name] for name in PARTS))]
    assert dgl_run.pipeline_bound_speedup == pytest.approx(sum(m) / max(m))
    assert 1 < dgl_run.pipeline_bound_speedup <= 4
    assert [s["P"] for s in dgl_run.pipeline_stages] == [2, 4]
    for stage in dgl_run.pipeline_stages:
        groups, bound = best_grouping(m, stage["P"])
        assert stage["groups"] == groups and stage["bound"] == pytest.approx(bound)
    # the fields survive JSON and show in a row and the comparison table
    again = RunRecord.from_dict(json.loads(dgl_run.to_json()))
    assert again.module_times == t
    row = again.row()
    assert row["module_times.forward_s"] == t["forward_s"]
    table = comparison_table(results_frame([again]))
    assert table["pipeline bound"].iloc[0] == pytest.approx(dgl_run.pipeline_bound_speedup)


def test_bp_is_one_module():
    r = short_run("bp", 4)
    assert r.K == 1
    assert all(len(r.module_times[name]) == 1 for name in PARTS)
    assert r.pipeline_bound_speedup == 1.0 and r.pipeline_stages == []


@pytest.mark.parametrize(
    "times, P, groups, bound",
    [
        ([1, 2, 3, 4], 1, [[0, 1, 2, 3]], 1.0),
        ([1, 2, 3, 4], 2, [[0, 1, 2], [3]], 10 / 6),
        ([1, 2, 3, 4], 3, [[0, 1], [2], [3]], 10 / 4),
        ([1, 2, 3, 4], 4, [[0], [1], [2], [3]], 10 / 4),
        # ties: the earliest stages take as many modules as they can
        ([1, 1, 1, 1], 2, [[0, 1], [2, 3]], 2.0),
        ([1, 1, 1, 1], 3, [[0, 1], [2], [3]], 2.0),
        ([4, 1, 1, 1, 1], 2, [[0], [1, 2, 3, 4]], 2.0),
        ([1, 4, 1, 1, 4, 1], 3, [[0, 1], [2, 3], [4, 5]], 12 / 5),
        ([5, 1, 1, 1, 1, 1, 1, 5], 4, [[0], [1, 2, 3, 4, 5], [6], [7]], 16 / 5),
        ([0, 0], 2, [[0], [1]], float("inf")),
    ],
)
def test_best_grouping_exact(times, P, groups, bound):
    assert best_grouping(times, P) == (groups, bound)


def test_best_grouping_is_optimal_against_brute_force():
    from itertools import combinations

    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        times = torch.randint(1, 20, (7,), generator=gen).tolist()
        for P in (2, 3, 4):
            best = min(
                max(sum(times[a:b]) for a, b in zip((0, *cuts), (*cuts, 7)))
                for cuts in combinations(range(1, 7), P - 1)
            )
            groups, bound = best_grouping(times, P)
            assert [i for g in groups for i in g] == list(range(7)) and len(groups) == P
            assert max(sum(times[i] for i in g) for g in groups) == best
            assert bound == sum(times) / best


def test_best_grouping_refuses_bad_input():
    with pytest.raises(ValueError, match="between 1"):
        best_grouping([1, 2], 3)
    with pytest.raises(ValueError, match="negative"):
        best_grouping([1, -2], 2)


def test_clock_sums_phases_per_module_and_part():
    ticks = iter(range(100))
    clock = PhaseClock(2, torch.device("cpu"), reading=lambda: next(ticks) ** 2)
    for tag, k in [("backbone", 0), ("aux", 0), ("backward", 0), ("backbone", 1)]:
        with clock.phase(tag, k):
            pass
    with clock.phase("other", 1):  # the output loss: the last module's local loss
        pass
    for _ in range(2):  # a phase met twice in a step adds up
        with clock.phase("backward", 1):
            pass
    with clock.phase("optimizer_state"):
        pass
    parts = clock.end_step(1000.0)
    # phase i spans reads 2i and 2i+1: (2i+1)^2 - (2i)^2 = 4i + 1
    assert parts == {
        "forward_s": [1, 13],
        "local_s": [5, 17],
        "backward_s": [9, 21 + 25],
        "optimizer_s": 29,
    }
    summary = clock.summary()
    assert summary["parts_s"] == 1 + 13 + 5 + 17 + 9 + 46 + 29
    assert summary["other_s"] == 1000.0 - summary["parts_s"] and summary["steps"] == 1
    assert PhaseClock.module_times(summary) == [15, 76]


def test_describe_gives_the_flops_bound():
    d = describe(RunConfig(method="dgl", net="smallnet", K=4))
    flops = [m["flops"] for m in d["modules"]]
    assert all(f > 0 for f in flops)
    # every FLOP of a dgl step is in some module's phases (the optimizer's are not counted)
    assert sum(flops) == d["flops_per_step"]["total"]
    assert all(m["flops"] > m["flops_aux"] for m in d["modules"])
    assert d["pipeline_bound"] == pipeline_bounds(flops)
    assert d["pipeline_bound"]["speedup"] == sum(flops) / max(flops)
    P2 = d["pipeline_bound"]["stages"][0]
    assert (P2["groups"], P2["bound"]) == best_grouping(flops, 2)


def test_old_records_without_the_fields_still_load_and_report(dgl_run):
    old = json.loads(dgl_run.to_json())
    for name in ("module_times", "pipeline_bound_speedup", "pipeline_stages"):
        del old[name]
    record = RunRecord.from_dict(old)
    assert record.module_times is None and record.pipeline_bound_speedup is None
    table = comparison_table(results_frame([record]))
    assert table["pipeline bound"].isna().all()
    # mixed with a run that has it: the mean of the runs that do
    seed1 = json.loads(dgl_run.to_json())
    seed1["config"]["seed"] = 1
    table = comparison_table(results_frame([record, RunRecord.from_dict(seed1)]))
    assert len(table) == 1 and table["seeds"].iloc[0] == 2
    assert table["pipeline bound"].iloc[0] == pytest.approx(dgl_run.pipeline_bound_speedup)
