"""The ``locbench`` command line: one-line errors for bad input, ``list``, and tiny real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from locbench.cli.main import main
from locbench.data.catalog import DATASETS
from locbench.methods import METHODS
from locbench.nets.backbone import BACKBONES
from locbench.study.presets import PRESETS

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFIX = "locbench: error: "

# Fast defaults for bad-input cases: synthetic data so nothing slow runs before the check.
FAST = ["--dataset", "synthetic", "--epochs", "1", "--batch-size", "64", "--no-progress"]
# A tiny real run: synthetic has 512 training samples -> 8 steps per epoch at batch 64.
TINY = ["--net", "smallnet", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "64"]
TINY += ["--no-progress"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def records_in(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) if folder.exists() else []


# (extra arguments, substrings the one error line must contain)
BAD_INPUTS = {
    "unknown method": (
        ["--method", "nope", *FAST],
        ["unknown method 'nope'", "known: ", "bp", "dgl"],
    ),
    "unknown net": (
        ["--net", "nope", *FAST],
        ["unknown net 'nope'", "resnet32", "smallnet"],
    ),
    "unknown dataset": (
        ["--dataset", "nope", "--epochs", "1", "--no-progress"],
        ["unknown dataset 'nope'", "cifar10", "digits", "stl10", "svhn", "synthetic"],
    ),
    "K above smallnet's 4 units": (
        ["--net", "smallnet", "--K", "9", *FAST],
        ["K=9", "4 hidden units", "between 1 and 4"],
    ),
    "K of 0": (
        ["--net", "smallnet", "--K", "0", *FAST],
        ["--K must be an integer >= 1", "got 0"],
    ),
    "K above resnet32's 16 units": (
        ["--net", "resnet32", "--K", "17", *FAST],
        ["K=17", "16 hidden units", "between 1 and 16"],
    ),
    "batch size 0": (
        ["--dataset", "synthetic", "--batch-size", "0", "--no-progress"],
        ["--batch-size must be an integer >= 1", "got 0"],
    ),
    "cifar10 without data root": (
        ["--dataset", "cifar10", "--epochs", "1", "--no-progress"],
        ["--data-root is required for cifar10", "cifar-10-batches-py"],
    ),
    "cifar10 with missing data root": (
        ["--dataset", "cifar10", "--data-root", "/nonexistent", "--epochs", "1"],
        ["--data-root /nonexistent does not exist"],
    ),
    "malformed cuts": (
        ["--cuts", "a,b", *FAST],
        ["--cuts must be a comma-separated list of integers >= 0", "'a,b'"],
    ),
    "cuts out of range": (
        ["--net", "smallnet", "--cuts", "5", *FAST],
        ["invalid cut points [5]", "0..2"],
    ),
    "cuts not increasing": (
        ["--net", "smallnet", "--cuts", "2,1", *FAST],
        ["invalid cut points [2, 1]"],
    ),
    "hp without =": (
        ["--method", "dgl", "--hp", "variant", *FAST],
        ["KEY=VALUE", "'variant'"],
    ),
    "hp key the method lacks": (
        ["--method", "dgl", "--hp", "nope=1", *FAST],
        ["method 'dgl' has no parameter nope", "variant", "hidden_dim", "mlp_layers"],
    ),
    "hp on a method without parameters": (
        ["--method", "bp", "--hp", "variant=paper", *FAST],
        ["method 'bp' has no parameter variant", "known: none"],
    ),
    "hp value of the wrong type": (
        ["--method", "dgl", "--hp", "hidden_dim=abc", *FAST],
        ["parameter hidden_dim of 'dgl' must be an integer >= 1", "'abc'"],
    ),
    "epochs 0": (
        ["--dataset", "synthetic", "--epochs", "0", "--no-progress"],
        ["--epochs must be an integer >= 1", "got 0"],
    ),
    "unknown device": (
        ["--device", "tpu", *FAST],
        ["unknown device 'tpu'", "auto, cpu, cuda"],
    ),
}


@pytest.mark.parametrize("argv, expected", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_error_line_and_exit_2(capsys, tmp_path, argv, expected):
    out_dir = tmp_path / "runs"
    code, out, err = run_cli(capsys, "run", *argv, "--out", str(out_dir))
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX)
    for text in expected:
        assert text in lines[0]
    assert "Traceback" not in err
    assert out == ""
    assert records_in(out_dir) == []  # nothing trained, nothing written


def test_argparse_errors_keep_usage_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--memory"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: locbench run")
    assert err.splitlines()[-1] == "locbench run: error: argument --memory: expected one argument"
    assert "Traceback" not in err


def test_a_setting_of_the_wrong_type_is_one_line_not_usage(capsys):
    code, out, err = run_cli(capsys, "run", "--K", "abc")
    assert code == 2
    assert err == "locbench: error: --K must be an integer >= 1 (or none), got 'abc'\n"


def cli_subprocess(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "locbench", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_subprocess_bad_input_exit_code_and_no_traceback(tmp_path):
    proc = cli_subprocess("run", "--method", "nope", *FAST, "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2
    known = ", ".join(METHODS.names())
    assert proc.stderr == f"locbench: error: unknown method 'nope'; known: {known}\n"
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_subprocess_malformed_cuts_is_one_line(tmp_path):
    proc = cli_subprocess("run", "--cuts", "1,x", *FAST, "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(PREFIX + "--cuts must be a comma-separated list of integers")
    assert "Traceback" not in proc.stderr


def test_list_prints_every_registered_name(capsys):
    code, out, err = run_cli(capsys, "list")
    assert code == 0
    assert err == ""
    listed = {}
    for line in out.splitlines():
        key, _, names = line.partition(":")
        listed[key] = names.strip().split(", ")
    assert listed == {
        "methods": METHODS.names(),
        "nets": BACKBONES.names(),
        "datasets": DATASETS.names(),
        "presets": PRESETS.names(),
    }
    # The seed registrations are there (the registries could be empty by mistake).
    assert {"bp", "dgl"} <= set(listed["methods"])
    assert {"smallnet", "resnet32"} <= set(listed["nets"])
    assert {"digits", "synthetic", "cifar10", "svhn", "stl10"} <= set(listed["datasets"])


def test_list_subprocess():
    proc = cli_subprocess("list")
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[0] == "methods:  " + ", ".join(METHODS.names())


# torchvision's resnet34 with a 1000-way head; with 10 classes the fc loses 512 * 990 + 990.
RESNET34_PARAMS = 21_797_672


@pytest.mark.parametrize(
    "extra, params",
    [
        (["--dataset", "imagenet"], RESNET34_PARAMS),
        (["--dataset", "imagenet", "--classes", "10"], RESNET34_PARAMS - 513 * 990),
        (["--dataset", "cifar10"], RESNET34_PARAMS - 513 * 990),
        ([], RESNET34_PARAMS - 513 * 990),  # no dataset: 10 classes, as before
    ],
)
def test_describe_dataset_sets_classes(capsys, extra, params):
    code, out, err = run_cli(
        capsys, "describe", "--net", "resnet34", "--method", "dgl", *extra, "--json"
    )
    assert (code, err) == (0, "")
    d = json.loads(out)
    assert (d["params_backbone"], d["K"]) == (params, 17)


def test_describe_unknown_dataset(capsys):
    code, out, err = run_cli(capsys, "describe", "--net", "smallnet", "--dataset", "nope")
    assert code != 0 and out == ""
    assert err == PREFIX + (
        "unknown dataset 'nope'; known: cifar10, digits, imagenet, stl10, svhn, synthetic\n"
    )


# DGL's auxiliary net at smallnet's cut after unit 1 (16 x 16x16 features): pool to 4x4, three
# 1x1 conv(16->16, no bias) + BN(16): 3 * (256 + 32); pool to 2x2 -> 64 features; two
# Linear(64, 64, no bias) + BN1d(64): 2 * (4096 + 128); Linear(64, 10): 650.
DGL_SMALLNET_K2_AUX_PARAMS = 3 * (256 + 32) + 2 * (4096 + 128) + 650


def test_run_dgl_writes_one_record(capsys, tmp_path):
    out_dir = tmp_path / "runs"
    code, out, err = run_cli(
        capsys, "run", "--method", "dgl", "--K", "2", *TINY, "--out", str(out_dir)
    )
    assert code == 0, err
    assert "Traceback" not in err
    paths = records_in(out_dir)
    assert len(paths) == 1
    path = paths[0]
    rec = json.loads(path.read_text())
    assert path.name == f"dgl-smallnet-K2-synthetic-s0-{rec['run_id']}.json"
    assert rec["schema"] == "locbench.run/2"
    assert rec["status"] == "ok"
    assert rec["message"] == ""
    assert rec["config"]["method"] == "dgl"
    assert rec["config"]["net"] == "smallnet"
    assert rec["config"]["dataset"] == "synthetic"
    assert rec["config"]["epochs"] == 1
    assert rec["config"]["batch_size"] == 64
    assert rec["config"]["device"] == "cpu"
    assert rec["config"]["K"] == 2
    assert rec["K"] == 2
    assert rec["module_starts"] == [0, 2]
    assert len(rec["curve"]) == 1
    assert rec["curve"][0]["epoch"] == 1
    assert len(rec["curve"][0]["local_losses"]) == 1  # one local loss for K=2
    # 512 samples / 64 = 8 steps: warm-up 3, 2 tracked for memory, 20 timed clipped to 3.
    assert rec["measured_steps"] == 3
    assert rec["memory"]["steps"] == 2
    assert rec["params_aux"] == DGL_SMALLNET_K2_AUX_PARAMS
    assert rec["params_aux"] > 0
    assert rec["final_test_acc"] == rec["curve"][-1]["test_acc"]
    assert rec["best_test_acc"] == rec["curve"][-1]["test_acc"]
    assert 0.0 <= rec["final_test_acc"] <= 100.0
    assert rec["images_per_s"] == pytest.approx(64 / rec["step_time_median_s"])
    assert rec["cuda"] is None
    acc = f"{rec['final_test_acc']:.2f}%"
    assert out == f"dgl: status ok, test accuracy {acc}, record {path}\n"


def test_run_bp_is_always_one_module(capsys, tmp_path):
    out_dir = tmp_path / "runs"
    code, out, err = run_cli(
        capsys, "run", "--method", "bp", "--K", "3", *TINY, "--out", str(out_dir)
    )
    assert code == 0, err
    paths = records_in(out_dir)
    assert len(paths) == 1
    rec = json.loads(paths[0].read_text())
    assert rec["config"]["K"] == 3  # what was asked
    assert rec["K"] == 1  # what was trained
    assert rec["module_starts"] == [0]
    assert rec["params_aux"] == 0
    assert rec["curve"][0]["local_losses"] == []
    assert paths[0].name.startswith("bp-smallnet-K1-synthetic-s0-")
    assert out.endswith(f"record {paths[0]}\n")


def test_same_config_twice_overwrites_one_record(capsys, tmp_path):
    out_dir = tmp_path / "runs"
    argv = ["run", "--method", "dgl", "--K", "2", *TINY, "--out", str(out_dir)]
    assert run_cli(capsys, *argv)[0] == 0
    first = records_in(out_dir)
    assert len(first) == 1
    first[0].write_text("stale")  # the second run must replace it, not sit beside it
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    assert records_in(out_dir) == first
    rec = json.loads(first[0].read_text())
    assert rec["status"] == "ok"
    assert out.endswith(f"record {first[0]}\n")
    # A different seed is a different run: a second file.
    assert run_cli(capsys, *argv, "--seed", "1")[0] == 0
    assert len(records_in(out_dir)) == 2
