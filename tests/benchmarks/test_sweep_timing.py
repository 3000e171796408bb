"""Speed target: a parallel sweep measures the step times a serial one does (issue: fair
comparisons). ``cpu-digits`` with ``--workers 1`` and ``--workers 2``, alternating on this
machine, five times each: every method's step-time median (over the repeats) within 15% of
the serial one, and the parallel sweep still faster in wall time. Five, not three: on a shared
2-core VM one configuration's median moves by up to a third from one sweep to the next (bp,
``--workers 1``: 12.7 and 17.4 ms), and the median of three does not hold such a sweep out when
two land on one side. Run alone (``nox -s speed``): another process on the cores is exactly
what this measures against."""

import statistics
import time

import pytest

from locbench.records import read_records
from locbench.study.presets import PRESETS
from locbench.study.sweep import sweep

REPEATS = 5


def medians(folder) -> dict[str, float]:
    return {r.config["method"]: r.step_time_median_s for r in read_records(folder)}


@pytest.mark.speed
def test_parallel_sweep_times_steps_as_a_serial_one(benchmark, tmp_path):
    grid = PRESETS.get("cpu-digits")
    steps: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    walls: dict[int, list[float]] = {1: [], 2: []}

    def sweeps():
        for i in range(REPEATS):
            for workers in (1, 2):
                out = tmp_path / f"w{workers}-{i}"
                start = time.perf_counter()
                sweep(grid, out, workers=workers, progress=False)
                walls[workers].append(time.perf_counter() - start)
                steps[workers].append(medians(out))

    benchmark.pedantic(sweeps, rounds=1, iterations=1)
    methods = sorted(steps[1][0])
    ratio = {
        m: statistics.median(s[m] for s in steps[2]) / statistics.median(s[m] for s in steps[1])
        for m in methods
    }
    benchmark.extra_info["step_ms"] = {
        w: {m: [round(s[m] * 1e3, 2) for s in steps[w]] for m in methods} for w in (1, 2)
    }
    benchmark.extra_info["workers2_over_workers1"] = ratio
    benchmark.extra_info["wall_s"] = walls
    print("\nstep median ms (workers: repeats):", benchmark.extra_info["step_ms"])
    print("workers 2 / workers 1:", {m: round(r, 3) for m, r in ratio.items()})
    print("wall s:", {w: [round(t, 1) for t in ts] for w, ts in walls.items()})
    assert set(methods) == set(grid.methods)
    assert all(0.85 <= r <= 1.15 for r in ratio.values()), ratio
    assert sum(walls[2]) < sum(walls[1]), walls
