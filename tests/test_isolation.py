"""Timed windows with the machine to themselves: the machine-wide timing lock, what a window
records (threads, exclusive, contention), and a parallel sweep whose windows never overlap."""

import multiprocessing as mp
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from locbench.harness.run import execute
from locbench.measure.isolation import TimingLock, WindowLoad, machine_cpu_seconds
from locbench.records import read_records
from locbench.settings.run_config import RunConfig
from locbench.study.grid import Grid
from locbench.study.sweep import sweep

FAST = {"dataset": "synthetic", "epochs": 1, "warmup_steps": 1, "measure_steps": 4}


def _worker(folder: str, role: str, rounds: int, log, ready) -> None:
    lock = TimingLock(Path(folder))
    lock.pause()  # not holding the lock while the others start
    ready.wait()
    for _ in range(rounds):
        if role == "window":
            with lock.window():
                start = time.time()
                time.sleep(0.015)
                lock.pause()  # a pause point inside the window (an evaluation it spans)
                time.sleep(0.015)
                log.put(("window", start, time.time()))
        else:  # work between two pause points, as training steps are
            lock.pause()
            start = time.time()
            time.sleep(0.01)
            log.put(("step", start, time.time()))
    lock.close()


def test_no_step_of_another_process_runs_during_a_timed_window(tmp_path):
    """Two processes timing and two stepping at once, on one lock: no window overlaps another
    window or any step (the work between two pause points); steps overlap each other freely
    (they hold the lock shared)."""
    ctx = mp.get_context("fork")  # the children use no torch
    log = ctx.Queue()
    roles = [("window", 6), ("window", 6), ("step", 40), ("step", 40)]
    ready = ctx.Barrier(len(roles))
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), r, n, log, ready)) for r, n in roles]
    for p in procs:
        p.start()
    events = [log.get(timeout=60) for _ in range(sum(n for _, n in roles))]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    windows = [(s, e) for kind, s, e in events if kind == "window"]
    steps = [(s, e) for kind, s, e in events if kind == "step"]
    assert len(windows) == 12 and len(steps) == 80
    for i, (s, e) in enumerate(windows):
        others = windows[:i] + windows[i + 1 :] + steps
        assert all(e2 <= s or s2 >= e for s2, e2 in others)
    # the two stepping processes did run at once, shared: the lock is not a plain mutex (one
    # process's steps follow each other, so two that overlap are the two processes'; the log
    # interleaves them in arrival order)
    assert any(s < e2 and s2 < e for i, (s, e) in enumerate(steps) for s2, e2 in steps[i + 1 :])


def test_a_window_measures_its_threads_and_this_process_cpu():
    load = WindowLoad(threads=1, exclusive=True)
    load.start()
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:  # one thread busy the whole window
        pass
    timing = load.stop()
    assert timing.threads == 1 and timing.exclusive
    assert timing.end - timing.start == pytest.approx(0.3, abs=0.1)
    assert 0.7 < timing.cpu_utilisation <= 1.05
    if machine_cpu_seconds() is not None:
        assert 0.0 <= timing.others_cpu_share <= 1.0


@pytest.mark.parametrize("exclusive", [True, False])
def test_a_run_records_what_its_timed_window_ran_under(exclusive):
    threads = torch.get_num_threads()
    config = RunConfig(method="dgl", K=2, exclusive_timing=exclusive, **FAST)
    record = execute(config)
    assert record.status == "ok"
    timing = record.timing
    assert timing["exclusive"] is exclusive
    assert timing["threads"] == threads == torch.get_num_threads()  # restored after the window
    assert timing["start"] < timing["end"]
    assert record.measured_steps == 4


@pytest.mark.integration
def test_two_workers_of_a_sweep_never_time_at_once(tmp_path):
    """``--workers 2``: both runs train at once, but their timed windows (the records' wall
    clock) never overlap, and each ran at a serial run's thread count."""
    run = {**FAST, "measure_steps": 30}
    grid = Grid(methods=("bp", "dgl", "predsim", "infopro"), nets=("smallnet",), K=(4,),
                aux_depth=(1,), seeds=(0,), run=run)  # fmt: skip
    sweep(grid, tmp_path, workers=2, progress=False)
    records = [r for r in read_records(tmp_path) if r.status == "ok"]
    assert len(records) == 4
    spans = sorted((r.timing["start"], r.timing["end"]) for r in records)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
    assert all(r.timing["exclusive"] and r.timing["threads"] == torch.get_num_threads()
               for r in records)  # fmt: skip
    # and the workers did run side by side: two runs' lifetimes overlap
    lives = sorted(
        (datetime.fromisoformat(r.started_at).timestamp(), r.wall_time_s) for r in records
    )
    assert any(s2 < s1 + wall1 for (s1, wall1), (s2, _) in zip(lives, lives[1:]))
