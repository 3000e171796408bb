"""Regression benchmarks: each method's step time (pytest-benchmark) with its deterministic
figures (tracked peak, estimated peak at the published configuration, FLOPs) in extra_info.

``nox -s bench`` runs these into ``.benchmarks/head.json`` and gates it against the committed
``tests/benchmarks/baseline.json`` with ``locbench compare``; ``nox -s bench_refresh``
rewrites the baseline (see the README: refresh it only for a change that is meant to move a
figure, and say why in the commit)."""

import pytest

from bench.regress import figures, small_batch, small_trainer

METHODS = ["bp", "bp-ckpt", "dgl", "infopro", "predsim", "auglocal"]


@pytest.mark.regression
@pytest.mark.parametrize("method", METHODS)
def test_method_step(benchmark, method):
    benchmark.extra_info.update(figures(method))
    trainer = small_trainer(method)
    x, y = small_batch()
    benchmark.pedantic(trainer.train_step, args=(x, y), rounds=15, warmup_rounds=3)
    assert benchmark.extra_info["tracked_peak_bytes"] > 0
