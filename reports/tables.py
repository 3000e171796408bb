"""Summary tables from the results DataFrame (:func:`bench.records.load_results`)."""

from __future__ import annotations

import pandas as pd

MIB = 2**20

COLUMNS = {
    "config.method": "method",
    "config.net": "net",
    "K": "K",
    "config.dataset": "dataset",
    "config.epochs": "epochs",
    "status": "status",
    "final_test_acc": "test acc (%)",
    "best_test_acc": "best acc (%)",
    "step_time_median_s": "step (ms)",
    "images_per_s": "images/s",
    "params_aux": "aux params",
}


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per run: method, net, K, accuracy, median step time, the tracked peak in MiB
    and its ratio to the memory floor when tracked, the CUDA peak in MiB when measured on a
    GPU, and GFLOPs per training step when recorded."""
    table = results[[c for c in COLUMNS if c in results]].rename(columns=COLUMNS).copy()
    table["step (ms)"] = table["step (ms)"] * 1e3
    if "memory.peak_bytes" in results:
        table["tracked peak (MiB)"] = results["memory.peak_bytes"] / MIB
        table["peak / floor"] = results["memory.peak_over_floor"]
    if "cuda.peak_allocated_bytes" in results:
        table["CUDA peak (MiB)"] = results["cuda.peak_allocated_bytes"] / MIB
    if "flops.total" in results:
        table["GFLOP / step"] = results["flops.total"] / 1e9
    return table.reset_index(drop=True)


def format_table(table: pd.DataFrame) -> str:
    return table.to_string(index=False, float_format=lambda v: f"{v:.2f}")
