"""Speed target of ``locbench estimate --max-batch``: ResNet-110 (K = 55), the six seed methods,
24 GiB, on fake tensors, in under 30 s on 2 cores. Not met yet by the affine prediction on
main (seven methods took 107 s in one run); the test records the seconds and fails until it
is. Run with ``nox -s speed``."""

import time

import pytest

from locbench.analysis.estimate import estimate_methods
from locbench.settings.run_config import RunConfig

SEEDS = ["bp", "bp-ckpt", "dgl", "infopro", "predsim", "auglocal"]


@pytest.mark.speed
def test_max_batch_resnet110_six_methods_24gib(benchmark):
    start = time.perf_counter()
    rows = benchmark.pedantic(
        estimate_methods,
        args=(RunConfig(net="resnet110"), SEEDS, 1024),
        kwargs={"budget": 24 * 2**30},
        rounds=1,
        iterations=1,
    )
    seconds = time.perf_counter() - start
    benchmark.extra_info["seconds"] = seconds
    benchmark.extra_info["batch"] = {r["method"]: r["batch_size"] for r in rows}
    print(f"\n{seconds:.1f} s:", benchmark.extra_info["batch"])
    assert all(r["peak_bytes"] <= 24 * 2**30 for r in rows)
    assert seconds < 30, f"{seconds:.1f} s"
