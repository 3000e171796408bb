"""Run records: atomic writes, JSON round trips, loading into pandas, tables and charts."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from locbench import outputs
from locbench.errors import UserError
from locbench.harness.build import resolve
from locbench.records import (
    SCHEMA,
    RunRecord,
    curves_frame,
    load_curves,
    load_results,
    read_records,
    record_path,
    results_frame,
    save_record,
    write_atomic,
)
from locbench.reports.charts import curves_figure, plot_curves
from locbench.reports.tables import summary_table
from locbench.settings.run_config import RunConfig

MIB = 2**20
ENV = {"python": "3.11.7", "torch": "2.4.0", "device_name": "cpu", "git_commit": "abc123"}


def point(epoch: int, loss: float, acc: float) -> dict:
    return {
        "epoch": epoch,
        "lr": 0.05,
        "train_loss": loss,
        "train_acc": acc - 5,
        "local_losses": [],
        "test_loss": loss + 0.1,
        "test_acc": acc,
        "epoch_time_s": 0.5,
    }


def make_record(method: str = "bp", K: int = 1, seed: int = 0, **fields) -> RunRecord:
    config = RunConfig(method=method, K=K, net="smallnet", dataset="digits", epochs=2, seed=seed)
    curve = fields.pop("curve", [point(1, 1.5, 60.0), point(2, 0.7, 80.0)])
    defaults = dict(
        run_id=resolve(config).run_id,
        config=config.to_dict(),
        env=dict(ENV),
        K=K,
        module_starts=list(range(K)),
        params_backbone=1000,
        params_aux=0 if method == "bp" else 250,
        final_test_acc=curve[-1]["test_acc"] if curve else None,
        best_test_acc=max(p["test_acc"] for p in curve) if curve else None,
        final_train_loss=curve[-1]["train_loss"] if curve else None,
        measured_steps=20,
        step_time_median_s=0.0125,
        step_time_p10_s=0.011,
        step_time_p90_s=0.014,
        images_per_s=64 / 0.0125,
        started_at="2024-01-01T00:00:00+00:00",
        wall_time_s=3.5,
        curve=curve,
    )
    defaults.update(fields)
    return RunRecord(**defaults)


CUDA = {
    "peak_allocated_bytes": 3 * MIB + MIB // 2,
    "peak_reserved_bytes": 8 * MIB,
    "allocated_at_start_bytes": MIB,
    "cudnn_benchmark": True,
}


# ---------------------------------------------------------------- write_atomic


def test_write_atomic_writes_and_overwrites(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_atomic(path, "first")
    assert path.read_text() == "first"
    write_atomic(path, "second")
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_write_atomic_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch, failing):
    path = tmp_path / "r.json"
    path.write_text("old content")
    seen_tmp = []

    def boom(*args):
        seen_tmp.extend(p.name for p in tmp_path.iterdir() if p != path)
        raise OSError(f"simulated {failing} failure")

    monkeypatch.setattr(outputs.os, failing, boom)
    # one line naming the file and the reason, not the OSError's traceback
    with pytest.raises(UserError, match=f"^could not write {path}: simulated {failing} failure$"):
        write_atomic(path, "new content that must never appear")
    monkeypatch.undo()
    # The temporary file existed beside the target while writing, and is gone now.
    assert len(seen_tmp) == 1 and seen_tmp[0].startswith(".r.json.")
    assert path.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_write_atomic_interrupt_leaves_no_target(tmp_path, monkeypatch):
    path = tmp_path / "new.json"

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "{}")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- JSON round trip


def test_record_round_trips_through_json():
    rec = make_record("dgl", K=2, cuda=dict(CUDA), message="note", status="ok")
    back = RunRecord.from_dict(json.loads(rec.to_json()))
    assert back == rec
    assert back.curve[1]["test_acc"] == 80.0
    assert back.cuda["peak_allocated_bytes"] == 3 * MIB + MIB // 2


def test_save_record_path_and_read_back(tmp_path):
    rec = make_record("dgl", K=2)
    path = save_record(rec, tmp_path)
    assert path == tmp_path / f"dgl-smallnet-K2-digits-s0-{rec.run_id}.json"
    assert path == record_path(tmp_path, rec)
    assert json.loads(path.read_text())["schema"] == SCHEMA
    assert read_records(tmp_path) == [rec]


def test_a_long_method_file_name_keeps_the_record_name_within_255_bytes(tmp_path):
    # a method file of a 240-character name: the record keeps the last 100 of them
    rec = make_record("dgl", K=2)
    rec.config["method"] = f"/somewhere/{'m' * 237}.py:Mine"
    path = save_record(rec, tmp_path)
    assert path.name == f"{'m' * 92}.py_Mine-smallnet-K2-digits-s0-{rec.run_id}.json"
    assert len(path.name) == 100 + len(f"-smallnet-K2-digits-s0-{rec.run_id}.json") <= 255


# ---------------------------------------------------------------- load_results / load_curves


@pytest.fixture
def two_records(tmp_path):
    bp = make_record("bp", K=1)
    dgl = make_record(
        "dgl",
        K=2,
        final_test_acc=77.5,
        step_time_median_s=0.02,
        curve=[point(1, 1.2, 65.0), point(2, 0.9, 72.5), point(3, 0.8, 77.5)],
    )
    save_record(bp, tmp_path)
    save_record(dgl, tmp_path)
    return tmp_path, bp, dgl


def test_load_results_one_row_per_run(two_records):
    folder, bp, dgl = two_records
    df = load_results(folder).sort_values("config.method").reset_index(drop=True)
    assert len(df) == 2
    for col in ("run_id", "config.method", "config.net", "config.seed", "env.torch", "K"):
        assert col in df.columns
    assert "curve" not in df.columns
    assert df["config.method"].tolist() == ["bp", "dgl"]
    assert df["K"].tolist() == [1, 2]
    assert df["run_id"].tolist() == [bp.run_id, dgl.run_id]
    assert df["final_test_acc"].tolist() == [80.0, 77.5]
    assert df["step_time_median_s"].tolist() == [0.0125, 0.02]
    assert df["params_aux"].tolist() == [0, 250]
    assert df["env.git_commit"].tolist() == ["abc123", "abc123"]
    assert df["status"].tolist() == ["ok", "ok"]


def test_load_curves_one_row_per_epoch_per_run(two_records):
    folder, bp, dgl = two_records
    df = load_curves(folder)
    assert len(df) == 5  # 2 epochs of bp + 3 of dgl
    by_run = df.groupby("run_id")
    assert by_run["epoch"].apply(list).to_dict() == {bp.run_id: [1, 2], dgl.run_id: [1, 2, 3]}
    dgl_rows = df[df["run_id"] == dgl.run_id]
    assert dgl_rows["test_acc"].tolist() == [65.0, 72.5, 77.5]
    assert dgl_rows["train_loss"].tolist() == [1.2, 0.9, 0.8]
    assert set(dgl_rows["method"]) == {"dgl"}
    assert set(dgl_rows["K"]) == {2}


def test_load_results_ignores_temp_files(two_records):
    folder, _, _ = two_records
    (folder / ".x.json.abc.tmp").write_text("half a rec")
    assert len(load_results(folder)) == 2


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"schema": "other/1"}', "schema 'other/1'"),
        ('{"run_id": "x"}', "schema None"),
        ("[1, 2]", "schema 'list'"),
        ('{"schema": "locbench.run/1", "run', "is not valid JSON"),
        ("", "is not valid JSON"),
        (
            json.dumps({"schema": SCHEMA, "run_id": "x", "config": {}, "env": {}, "extra": 1}),
            "unknown fields ['extra']",
        ),
        (json.dumps({"schema": SCHEMA, "run_id": "x"}), "missing fields ['config', 'env']"),
    ],
    ids=["other schema", "no schema", "not an object", "truncated", "empty", "extra", "missing"],
)
def test_bad_file_in_results_folder_is_user_error_naming_it(two_records, content, expected):
    folder, _, _ = two_records
    bad = folder / "zz-bad.json"
    bad.write_text(content)
    for load in (load_results, load_curves):
        with pytest.raises(UserError) as exc:
            load(folder)
        message = str(exc.value)
        assert str(bad) in message
        assert expected in message
        assert "\n" not in message


def test_missing_results_folder_is_user_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="does not exist") as exc:
        load_results(missing)
    assert str(missing) in str(exc.value)


# ---------------------------------------------------------------- run_id


def changed(value):
    """A value of the same kind that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, dict):
        return {**value, "extra": 1}
    if isinstance(value, tuple):
        return (*value, 99)
    return 1  # None


def test_run_id_stable_for_equal_configs():
    a = RunConfig(method="dgl", K=2, method_params={"variant": "paper", "hidden_dim": 64})
    b = RunConfig(method="dgl", K=2, method_params={"hidden_dim": 64, "variant": "paper"})
    assert resolve(a).run_id == resolve(b).run_id
    assert len(resolve(a).run_id) == 12
    int(resolve(a).run_id, 16)  # hexadecimal
    assert (
        resolve(RunConfig.from_dict(json.loads(json.dumps(a.to_dict())))).run_id
        == resolve(a).run_id
    )


# Values the schema accepts where ``changed`` would not give one (choices, names, ranges).
ACCEPTED_OTHER = {
    "method": "dgl",
    "K": 2,
    "momentum": 0.5,
    "data_root": "/tmp",
    "memory": "tracked",
    "precision": "bf16",
    "loader": "torchvision",
    "warmup_epochs": 2,  # not the digits preset's 1
    "dataset": "synthetic",
    "device": "cuda:1",  # resolved on any machine: whether it has one is checked at run time
    "method_params": {"hidden_dim": 7},
}
ONE_CHOICE = {"dtype"}  # nothing else is accepted yet, so nothing to change


@pytest.mark.parametrize(
    "name", [f.name for f in dataclasses.fields(RunConfig) if f.name not in ONE_CHOICE]
)
def test_run_id_changes_with_every_field(name):
    base = RunConfig(cuts=(1,)) if name != "K" else RunConfig()
    if name == "method_params":
        base = RunConfig(method="dgl", cuts=(1,))
    value = ACCEPTED_OTHER.get(name, changed(getattr(base, name)))
    if name == "cuts_balanced":  # the same cuts, found by --K 2 --cuts balanced
        other = dataclasses.replace(base, K=2, cuts_balanced=True)
    else:
        other = dataclasses.replace(base, **{name: value})
    assert other != base
    # A run's identity is its resolved configuration: two settings that resolve alike (memory
    # auto is tracked on a CPU; sync_bn means nothing in one process) are one run; any other
    # change is another run.
    same_run = resolve(other).config == resolve(base).config
    assert same_run == (name == "sync_bn" or (name == "memory" and not torch.cuda.is_available()))
    assert (resolve(other).run_id == resolve(base).run_id) == same_run


def test_run_id_seed_and_resolved():
    base = resolve(RunConfig())
    assert resolve(RunConfig(seed=1)).run_id != base.run_id
    # The id is the resolved configuration's: the digits preset spelt out is the same run, and
    # resolving a resolved configuration changes nothing.
    explicit = RunConfig(epochs=10, batch_size=64, lr=0.05, warmup_epochs=1)
    assert resolve(explicit).run_id == base.run_id
    assert resolve(base.config).run_id == base.run_id
    assert resolve(RunConfig(epochs=11)).run_id != base.run_id


# ---------------------------------------------------------------- reports


def test_summary_table_values_and_units():
    gpu = make_record("dgl", K=2, cuda=dict(CUDA), step_time_median_s=0.0405)
    cpu = make_record("bp", K=1, step_time_median_s=0.25, final_test_acc=91.25)
    table = summary_table(results_frame([gpu, cpu]))
    assert list(table.columns) == [
        "method",
        "net",
        "K",
        "dataset",
        "epochs",
        "status",
        "test acc (%)",
        "best acc (%)",
        "step (ms)",
        "images/s",
        "aux params",
        "CUDA peak (MiB)",
    ]
    assert table["method"].tolist() == ["dgl", "bp"]
    assert table["K"].tolist() == [2, 1]
    assert table["test acc (%)"].tolist() == [80.0, 91.25]
    assert table["step (ms)"].tolist() == pytest.approx([40.5, 250.0])
    assert table["aux params"].tolist() == [250, 0]
    assert table["CUDA peak (MiB)"][0] == CUDA["peak_allocated_bytes"] / 2**20 == 3.5
    assert math.isnan(table["CUDA peak (MiB)"][1])
    waited = make_record("bp", K=1, data_wait_share=0.25)
    assert summary_table(results_frame([waited]))["data wait (%)"].tolist() == [25.0]


def test_summary_table_without_cuda_has_no_cuda_column():
    table = summary_table(results_frame([make_record("bp"), make_record("dgl", K=2)]))
    assert "CUDA peak (MiB)" not in table.columns
    assert table["step (ms)"].tolist() == pytest.approx([12.5, 12.5])


def test_summary_table_from_loaded_folder(two_records):
    folder, bp, dgl = two_records
    table = summary_table(load_results(folder)).sort_values("method")
    assert table["test acc (%)"].tolist() == [bp.final_test_acc, dgl.final_test_acc]
    assert table["step (ms)"].tolist() == pytest.approx([12.5, 20.0])


@pytest.fixture
def curves() -> pd.DataFrame:
    bp = make_record("bp", K=1)
    dgl = make_record(
        "dgl", K=2, curve=[point(1, 2.0, 50.0), point(2, 1.0, 70.0), point(3, 0.5, 75.0)]
    )
    return curves_frame([bp, dgl])


def test_curves_figure_one_line_per_run_with_units(curves):
    fig = curves_figure(curves)
    try:
        assert len(fig.axes) == 2
        ax_loss, ax_acc = fig.axes
        assert ax_acc.get_ylabel() == "test top-1 accuracy (%)"
        assert "(%)" in ax_acc.get_ylabel()
        assert "loss" in ax_loss.get_ylabel()
        for ax in fig.axes:
            assert ax.get_xlabel() == "epoch"
            lines = ax.get_lines()
            assert len(lines) == 2
            assert [list(line.get_xdata()) for line in lines] == [[1, 2], [1, 2, 3]]
            assert [line.get_label() for line in lines] == ["bp (K=1)", "dgl (K=2)"]
        assert [list(line.get_ydata()) for line in ax_acc.get_lines()] == [
            [60.0, 80.0],
            [50.0, 70.0, 75.0],
        ]
        assert [list(line.get_ydata()) for line in ax_loss.get_lines()] == [
            [1.5, 0.7],
            [2.0, 1.0, 0.5],
        ]
        legend = ax_acc.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == ["bp (K=1)", "dgl (K=2)"]
    finally:
        plt.close(fig)


def test_plot_curves_writes_png(curves, tmp_path):
    path = plot_curves(curves, tmp_path / "charts" / "c.png")
    assert path == tmp_path / "charts" / "c.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.get_fignums()  # the figure was closed


def test_records_and_reports_load_without_torch():
    """Records and reports read JSON only: importing them (and the package's public names
    lazily) loads no torch, as the import contracts of pyproject.toml say statically."""
    code = (
        "import sys, locbench, locbench.records, locbench.reports.page, locbench.reports.charts\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
