"""Speed target of ``locbench estimate``: every registered method on ResNet-110, K=55, batch
1024, on fake tensors, in under 60 s on 2 CPU cores (issue: memory you can trust).
Run with ``nox -s bench`` or ``pytest tests/benchmarks -m speed --benchmark-enable``."""

import time

import pytest

from locbench.analysis.estimate import estimate_methods
from locbench.methods import METHODS
from locbench.settings.run_config import RunConfig


@pytest.mark.speed
def test_estimate_all_methods_resnet110_K55_batch1024(benchmark):
    config = RunConfig(net="resnet110", K=55)
    start = time.perf_counter()
    rows = benchmark.pedantic(
        estimate_methods, args=(config, METHODS.names(), 1024), rounds=1, iterations=1
    )
    seconds = time.perf_counter() - start
    benchmark.extra_info["seconds"] = seconds
    benchmark.extra_info["peak_mib"] = {r["method"]: r["peak_bytes"] / 2**20 for r in rows}
    assert {r["method"] for r in rows} == set(METHODS.names())
    assert seconds < 60, f"{seconds:.1f} s"
