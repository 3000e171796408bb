"""Run records for the report page's tests (tests/test_report_page.py and
tests/test_report_browser.py): two nets, one of them on a GPU, with curves, breakdowns and
step-time spreads chosen so that every flag and ratio on the page is known."""

from __future__ import annotations

from pathlib import Path

from locbench.harness.build import resolve
from locbench.records import RunRecord, save_record
from locbench.settings.run_config import RunConfig

MIB = 2**20
# (net, method, K, seed, acc, step s, p10 s, p90 s, measured steps, tracked MiB, CUDA MiB)
RUNS = [
    ("smallnet", "bp", 1, 0, 80.0, 0.010, 0.009, 0.011, 20, 10.0, None),
    ("smallnet", "bp", 1, 1, 82.0, 0.012, 0.011, 0.013, 20, 10.0, None),
    ("smallnet", "dgl", 4, 0, 78.0, 0.015, 0.010, 0.030, 20, 6.0, None),  # noisy: p90/p10 3
    ("smallnet", "infopro", 2, 0, 75.0, 0.020, 0.019, 0.021, 7, 8.0, None),  # 7 of 20 steps
    ("resnet20", "bp", 1, 0, 90.0, 0.050, 0.049, 0.051, 20, 95.0, 100.0),  # ratio 0.95
    ("resnet20", "dgl", 4, 0, 88.0, 0.070, 0.069, 0.071, 20, 62.0, 60.0),  # ratio 1.0333
]
BREAKDOWN = ("parameters", "gradients", "optimizer_state", "backbone_activations")


def make_record(net, method, K, seed, acc, step, p10, p90, measured, tracked, cuda) -> RunRecord:
    config = RunConfig(
        method=method, seed=seed, K=K, net=net, dataset="digits", batch_size=64, epochs=2
    )
    peak = int(tracked * MIB)
    record = RunRecord(
        run_id=resolve(config).run_id,
        config=config.to_dict(),
        env={"torch": "2.4.0", "device_name": "cpu" if cuda is None else "NVIDIA H100"},
        K=K,
        final_test_acc=acc,
        best_test_acc=acc,
        measured_steps=measured,
        step_time_median_s=step,
        step_time_p10_s=p10,
        step_time_p90_s=p90,
        memory={
            "peak_bytes": peak,
            "breakdown": {c: peak // 4 for c in BREAKDOWN} | {"aux_activations": 0, "other": 0},
            "floor_bytes": peak // 2,
            "peak_over_floor": 2.0,
            "steps": 2,
        },
        curve=[
            {"epoch": 1, "train_loss": 1.0, "test_acc": acc - 10},
            {"epoch": 2, "train_loss": 0.5, "test_acc": acc},
        ],
    )
    if cuda is not None:
        record.cuda = {"peak_allocated_bytes": int(cuda * MIB), "peak_reserved_bytes": 0}
    return record


def write_runs(folder: Path, runs=RUNS) -> Path:
    """Save the records of ``runs`` into ``folder``; return it."""
    for run in runs:
        save_record(make_record(*run), folder)
    return folder
