"""Speed target of ``locbench estimate --max-batch``: the largest batch within 24 GiB for every
registered method on ResNet-110 (its default K), on fake tensors, in under 30 s on 2 CPU cores
(the search on fresh estimates took about 110 s per method).
Run with ``nox -s bench`` or ``pytest tests/benchmarks -m speed --benchmark-enable``."""

import time

import pytest

from locbench.analysis.estimate import estimate_methods
from locbench.methods import METHODS
from locbench.settings.run_config import RunConfig


@pytest.mark.speed
def test_max_batch_all_methods_resnet110_24GiB(benchmark):
    config = RunConfig(net="resnet110")
    budget = 24 * 2**30
    start, cpu = time.perf_counter(), time.process_time()
    rows = benchmark.pedantic(
        estimate_methods,
        args=(config, METHODS.names(), 128),
        kwargs={"budget": budget},
        rounds=1,
        iterations=1,
    )
    seconds = time.perf_counter() - start
    benchmark.extra_info["seconds"] = seconds
    # this process's own CPU time: the wall time less what other processes on the cores took
    benchmark.extra_info["cpu_seconds"] = time.process_time() - cpu
    benchmark.extra_info["batch"] = {r["method"]: r["batch_size"] for r in rows}
    assert {r["method"] for r in rows} == set(METHODS.names())
    assert all(0 < r["peak_bytes"] <= budget for r in rows)
    cpu_seconds = benchmark.extra_info["cpu_seconds"]
    print(f"{seconds:.1f} s ({cpu_seconds:.1f} s CPU): {benchmark.extra_info['batch']}")
    assert seconds < 30, f"{seconds:.1f} s"
