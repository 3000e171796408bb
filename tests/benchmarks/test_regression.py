"""Regression benchmarks: each method's step time (pytest-benchmark) with its deterministic
figures (tracked peak, estimated peak at the published configuration, FLOPs) in extra_info.

``nox -s bench`` runs these into ``.benchmarks/head.json`` and gates it against the committed
``tests/benchmarks/baseline.json`` with ``locbench compare``; ``nox -s bench_refresh``
rewrites the baseline (see the README: refresh it only for a change that is meant to move a
figure, and say why in the commit)."""

import pytest

from locbench.analysis.regress import figures, regression_cases, small_batch, small_trainer

METHODS = ["bp", "bp-ckpt", "dgl", "infopro", "predsim", "auglocal"]
# one case per method and precision, named "dgl" (fp32) or "dgl-bf16": the id is the case
# name the baseline stores (pytest-benchmark's "param")
CASES = [pytest.param(*case, id=name) for name, case in regression_cases(METHODS).items()]


@pytest.mark.regression
@pytest.mark.parametrize("method, precision", CASES)
def test_method_step(benchmark, method, precision):
    benchmark.extra_info.update(figures(method, precision))
    trainer = small_trainer(method, precision)
    x, y = small_batch()
    benchmark.pedantic(trainer.train_step, args=(x, y), rounds=15, warmup_rounds=3)
    assert benchmark.extra_info["tracked_peak_bytes"] > 0
