"""Speed target of ``locbench estimate --max-batch``: ResNet-110 (K = 55), the six seed methods,
24 GiB, on fake tensors, in under 30 s on 2 cores, the methods side by side as the CLI runs them
(the search on fresh estimates took about 110 s per method). Run with ``nox -s speed``."""

import time

import pytest

from locbench.analysis.estimate import estimate_methods
from locbench.analysis.side_by_side import default_jobs
from locbench.settings.run_config import RunConfig

SEEDS = ["bp", "bp-ckpt", "dgl", "infopro", "predsim", "auglocal"]


@pytest.mark.speed
def test_max_batch_resnet110_six_methods_24gib(benchmark):
    budget = 24 * 2**30
    start = time.perf_counter()
    rows = benchmark.pedantic(
        estimate_methods,
        args=(RunConfig(net="resnet110"), SEEDS, 1024),
        kwargs={"budget": budget, "jobs": default_jobs(len(SEEDS))},
        rounds=1,
        iterations=1,
    )
    seconds = time.perf_counter() - start
    benchmark.extra_info["seconds"] = seconds
    benchmark.extra_info["batch"] = {r["method"]: r["batch_size"] for r in rows}
    print(f"\n{seconds:.1f} s, {default_jobs(len(SEEDS))} jobs:", benchmark.extra_info["batch"])
    assert [r["method"] for r in rows] == SEEDS
    assert all(0 < r["peak_bytes"] <= budget for r in rows)
    assert seconds < 30, f"{seconds:.1f} s"
