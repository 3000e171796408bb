"""Matplotlib charts from results DataFrames. Every function returns the path it wrote."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def curves_figure(curves: pd.DataFrame) -> plt.Figure:
    """Training loss and test accuracy per epoch, one line per run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    for (_, method, K), run in curves.groupby(["run_id", "method", "K"], sort=False):
        label = f"{method} (K={K})"
        ax_loss.plot(run["epoch"], run["train_loss"], marker="o", ms=3, label=label)
        ax_acc.plot(run["epoch"], run["test_acc"], marker="o", ms=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss (output head)", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="test top-1 accuracy (%)")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    return fig


def plot_curves(curves: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = curves_figure(curves)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
