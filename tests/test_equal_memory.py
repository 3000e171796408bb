"""BP baselines at equal memory: the fewest checkpoint segments and micro-batches that fit a
local method's estimated peak, added to a sweep by ``--baselines equal-memory``."""

import dataclasses

import pytest

from locbench.analysis.equal_memory import bp_baselines, fewest, peak_of
from locbench.errors import UserError
from locbench.settings.run_config import RunConfig
from locbench.study.grid import Grid

BASE = RunConfig(net="resnet20", dataset="synthetic", batch_size=16, epochs=1)


def test_fewest_finds_the_first_value_that_fits_with_few_probes():
    asked = []

    def fits(v: int) -> bool:
        asked.append(v)
        return v >= 37

    assert fewest(list(range(2, 200)), fits) == 37
    assert len(asked) < 20
    assert fewest(list(range(2, 10)), lambda v: False) is None
    assert fewest([], lambda v: True) is None


@pytest.mark.parametrize("method, K, params", [("bp-accum", None, {"micro_batches": 3}),
                                               ("bp-ckpt", 3, {})])  # fmt: skip
def test_baselines_are_the_fewest_segments_and_micro_batches_that_fit(method, K, params):
    """The budget is the peak of M = 3 micro-batches (K = 3 segments): exactly that setting is
    chosen, one fewer does not fit."""
    target = dataclasses.replace(BASE, method=method, K=K, method_params=params)
    budget = peak_of(target)
    chosen = {c.method: c for c in bp_baselines(dataclasses.replace(BASE, method="dgl"), budget)}
    got = chosen[method]
    if method == "bp-accum":
        assert got.method_params == {"micro_batches": 3}
        fewer = dataclasses.replace(got, method_params={"micro_batches": 2})
    else:
        assert got.K == 3
        fewer = dataclasses.replace(got, K=2)
    assert peak_of(got) <= budget < peak_of(fewer)


def test_a_budget_nothing_reaches_gives_no_baseline():
    assert bp_baselines(dataclasses.replace(BASE, method="dgl"), 1000) == []


def test_equal_memory_grid_brings_baselines_at_most_each_local_peak():
    grid = Grid(methods=("bp", "dgl", "predsim"), nets=("smallnet",), K=(4,), seeds=(0,),
                run={"dataset": "synthetic", "batch_size": 32, "epochs": 1},
                baselines="equal-memory")  # fmt: skip
    configs = grid.configs()
    plain = dataclasses.replace(grid, baselines="none").configs()
    assert configs[: len(plain)] == plain
    extra = configs[len(plain) :]
    assert extra and {c.method for c in extra} <= {"bp-ckpt", "bp-accum"}
    local_peaks = [peak_of(c) for c in plain if c.method in ("dgl", "predsim")]
    # every baseline fits under at least one local method's peak; each appears once
    assert all(any(peak_of(b) <= p for p in local_peaks) for b in extra)
    assert len({(c.method, c.K, str(c.method_params)) for c in extra}) == len(extra)


def test_unknown_baselines_is_one_line():
    with pytest.raises(UserError, match="unknown baselines 'equal'; accepted: none, equal-memory"):
        Grid(baselines="equal")
