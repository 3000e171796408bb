"""Speed of pipeline stages (locbench.harness.stages): ResNet-32 DGL with K=2 (cut at the middle
unit), 2 stages on the CPU against the sequential harness on the same cores, with the speed-up that
the per-module times of the sequential run predict at best beside it. No target: a shared or slow
machine still passes; the figures go to ``extra_info``.

Run with ``pytest tests/benchmarks/test_stage_speed.py -m speed --benchmark-enable -s``."""

from __future__ import annotations

import math

import pytest

from locbench.harness.stages import execute_stages
from locbench.settings.run_config import RunConfig


@pytest.mark.speed
def test_two_stages_against_sequential_resnet32_dgl(benchmark) -> None:
    config = RunConfig(
        net="resnet32",
        method="dgl",
        K=2,  # units 0-7 | 8-15 + head: the middle cut
        dataset="synthetic",
        batch_size=32,
        epochs=1,
        augment=False,
        device="cpu",
        stages=2,
        warmup_steps=2,
        measure_steps=6,
    )
    records = []
    benchmark.pedantic(lambda: records.append(execute_stages(config)), rounds=1, iterations=1)
    (record,) = records
    s = record.stages
    figures = {
        "speedup": s["speedup"],
        "bound": s["bound"],
        "sequential_step_time_s": s["sequential_step_time_s"],
        "pipeline_step_time_s": s["pipeline_step_time_s"],
        "module_times_s": s["module_times_s"],
        "busy_s": s["busy_s"],
        "idle_s": s["idle_s"],
        "sequential_by_threads": s["sequential_by_threads"],
    }
    benchmark.extra_info.update(figures)
    print(f"\n2 stages {s['groups']}: {figures}")
    assert record.status == "ok"
    for name in ("speedup", "bound", "sequential_step_time_s", "pipeline_step_time_s"):
        assert math.isfinite(figures[name]) and figures[name] > 0, name
