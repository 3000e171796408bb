"""Bad input to every command: exit 2, exactly one stderr line that says what is wrong, no
traceback, and nothing in ``--out`` but complete records.

Each case is ``argv`` (``{tmp}`` is the test's folder, ``{out}`` its results folder) and the
texts the error line must contain. argparse's own errors (an unknown flag, a flag without its
value) are not here: they print argparse's usage block by design.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from locbench.cli.main import main
from tests import bad_inputs_data, bad_inputs_decl, bad_inputs_exec, bad_inputs_out

FAST = ["--dataset", "synthetic", "--epochs", "1", "--no-progress"]
RUN = ["run", *FAST, "--out", "{out}"]
SWEEP = ["sweep", "--dataset", "synthetic", "--epochs", "1", "--no-progress", "--out", "{out}"]
EST = ["estimate", "--net", "smallnet", "--K", "2"]
DESCRIBE = ["describe", "--net", "smallnet", "--K", "2"]
BIG_NUMBER = "9" * 400

CASES: dict[str, tuple[list[str], list[str]]] = {
    # ---- run: model
    "run unknown method": ([*RUN, "--method", "nope"], ["unknown method 'nope'", "known: "]),
    "run unknown net": ([*RUN, "--net", "nope"], ["unknown net 'nope'", "resnet32"]),
    "run unknown dataset": (["run", "--dataset", "nope", "--out", "{out}"], ["unknown dataset"]),
    "run K 0": ([*RUN, "--K", "0"], ["--K must be an integer >= 1", "got 0"]),
    "run K text": ([*RUN, "--K", "abc"], ["--K must be an integer", "'abc'"]),
    "run K float": ([*RUN, "--K", "2.5"], ["--K must be an integer", "'2.5'"]),
    "run K above units": ([*RUN, "--K", "9"], ["K=9", "between 1 and 4"]),
    "run K and cuts": ([*RUN, "--K", "2", "--cuts", "1"], ["either --K or --cuts"]),
    "run cuts text": ([*RUN, "--cuts", "a,b"], ["--cuts must be a comma-separated list"]),
    "run cuts comma only": ([*RUN, "--cuts", ","], ["--cuts must be a comma-separated list"]),
    "run cuts negative": ([*RUN, "--cuts", "-1"], ["--cuts", "integers >= 0", "-1"]),
    "run cuts out of range": ([*RUN, "--cuts", "5"], ["invalid cut points [5]"]),
    "run cuts decreasing": ([*RUN, "--cuts", "2,1"], ["invalid cut points [2, 1]"]),
    # ---- run: train
    "run batch 0": ([*RUN, "--batch-size", "0"], ["--batch-size must be an integer >= 1"]),
    "run batch 1e9": ([*RUN, "--batch-size", "1000000000"], ["--batch-size", "<= 1048576"]),
    "run batch over the training set": (
        [*RUN, "--batch-size", "5000"],
        ["batch size 5000 is larger than the 512 training images of synthetic"],
    ),
    "run epochs 0": ([*RUN[:3], "--epochs", "0", "--out", "{out}"], ["--epochs must be"]),
    "run epochs text": ([*RUN[:3], "--epochs", "one", "--out", "{out}"], ["--epochs", "'one'"]),
    "run lr nan": ([*RUN, "--lr", "nan"], ["--lr must be a finite number > 0", "nan"]),
    "run lr inf": ([*RUN, "--lr", "inf"], ["--lr must be a finite number > 0", "inf"]),
    "run lr 0": ([*RUN, "--lr", "0"], ["--lr must be a finite number > 0", "0.0"]),
    "run lr negative": ([*RUN, "--lr", "-1"], ["--lr must be a finite number > 0"]),
    "run lr text": ([*RUN, "--lr", "fast"], ["--lr must be a finite number", "'fast'"]),
    "run warm-up nan": ([*RUN, "--warmup-epochs", "nan"], ["--warmup-epochs must be a finite"]),
    "run warm-up negative": ([*RUN, "--warmup-epochs", "-1"], ["--warmup-epochs", ">= 0"]),
    "run warm-up start lr": ([*RUN, "--warmup-start-lr", "-0.1"], ["--warmup-start-lr", ">= 0"]),
    "run momentum 2": ([*RUN, "--momentum", "2"], ["--momentum", "<= 1", "2.0"]),
    "run weight decay negative": ([*RUN, "--weight-decay", "-1"], ["--weight-decay", ">= 0"]),
    "run weight decay nan": ([*RUN, "--weight-decay", "nan"], ["--weight-decay", "finite"]),
    # ---- run: measure
    "run measure steps -1": ([*RUN, "--measure-steps", "-1"], ["--measure-steps", ">= 0"]),
    "run track steps -5": ([*RUN, "--track-steps", "-5"], ["--track-steps", ">= 0"]),
    "run warm-up steps -1": ([*RUN, "--warmup-steps", "-1"], ["--warmup-steps", ">= 0"]),
    "run memory unknown": ([*RUN, "--memory", "lots"], ["--memory must be one of auto"]),
    "run memory cuda on cpu": ([*RUN, "--memory", "cuda"], ["needs a CUDA device"]),
    # ---- run: env
    "run seed negative": ([*RUN, "--seed", "-1"], ["--seed must be an integer >= 0"]),
    "run seed 10**30": ([*RUN, "--seed", str(10**30)], ["--seed must be an integer"]),
    "run seed float": ([*RUN, "--seed", "1.5"], ["--seed must be an integer"]),
    "run device tpu": ([*RUN, "--device", "tpu"], ["unknown device 'tpu'"]),
    "run device cuda:x": ([*RUN, "--device", "cuda:x"], ["cuda:x"]),
    "run dtype": ([*RUN, "--dtype", "float16"], ["--dtype must be one of float32"]),
    # ---- run: data
    "run loader workers -1": ([*RUN, "--num-workers", "-1"], ["--num-workers", ">= 0"]),
    "run data root missing": ([*RUN, "--data-root", "{tmp}/nowhere"], ["does not exist"]),
    "run data root a file": ([*RUN, "--data-root", "{tmp}/file.txt"], ["is not a folder"]),
    "run cifar10 without data root": (
        ["run", "--dataset", "cifar10", "--epochs", "1", "--out", "{out}"],
        ["--data-root is required for cifar10"],
    ),
    # ---- run: method hyperparameters
    "run hp without =": ([*RUN, "--method", "dgl", "--hp", "variant"], ["KEY=VALUE"]),
    "run hp unknown": ([*RUN, "--method", "dgl", "--hp", "nope=1"], ["has no parameter nope"]),
    "run hp on bp": ([*RUN, "--hp", "variant=paper"], ["'bp' has no parameter variant"]),
    "run hp type": ([*RUN, "--method", "dgl", "--hp", "hidden_dim=abc"], ["hidden_dim", "'abc'"]),
    "run hp hidden_dim -1": (
        [*RUN, "--method", "dgl", "--hp", "hidden_dim=-1"],
        ["parameter hidden_dim of 'dgl' must be an integer >= 1"],
    ),
    "run hp variant": ([*RUN, "--method", "dgl", "--hp", "variant=x"], ["one of auglocal, paper"]),
    "run hp widen 0": ([*RUN, "--method", "auglocal", "--hp", "widen=0"], ["widen", "> 0"]),
    "run hp tau nan": ([*RUN, "--method", "auglocal", "--hp", "tau=nan"], ["tau", "finite"]),
    "run hp beta 2": ([*RUN, "--method", "predsim", "--hp", "beta=2"], ["beta", "<= 1"]),
    "run hp lambda negative": (
        [*RUN, "--method", "infopro", "--hp", "lambda1_first=-1"],
        ["lambda1_first", ">= 0"],
    ),
    "run hp pyramid": ([*RUN, "--method", "auglocal", "--hp", "pyramid=maybe"], ["true or false"]),
    "run aux depth 0": ([*RUN, "--method", "auglocal", "--aux-depth", "0"], ["depth", ">= 1"]),
    # ---- run: method files
    "run method file missing": ([*RUN, "--method", "{tmp}/none.py:X"], ["not found"]),
    "run method not a py file": ([*RUN, "--method", "{tmp}/file.txt:X"], ["not a .py file"]),
    "run method class missing": ([*RUN, "--method", "{tmp}/ok.py:Nope"], ["has no class 'Nope'"]),
    "run method syntax error": ([*RUN, "--method", "{tmp}/broken.py:X"], ["importing", "failed"]),
    "run method raising in __init__": (
        [*RUN, "--method", "{tmp}/raising.py:Raising", "--K", "2"],
        ["failed to build", "RuntimeError: no GPU in my constructor"],
    ),
    "run method not a Method": ([*RUN, "--method", "{tmp}/ok.py:helper"], ["not a subclass"]),
    # ---- run: results folder
    "run out is a file": (["run", *FAST, "--out", "{tmp}/file.txt"], ["is not a folder"]),
    "run out under a file": (
        ["run", *FAST, "--out", "{tmp}/file.txt/runs"],
        ["file.txt is not a folder"],
    ),
    "run out in /proc": (["run", *FAST, "--out", "/proc/locbench"], ["not a writable folder"]),
    # ---- describe
    "describe batch 0": ([*DESCRIBE, "--batch-size", "0"], ["--batch-size must be an integer"]),
    "describe classes 0": ([*DESCRIBE, "--classes", "0"], ["--classes must be between 2"]),
    "describe unknown net": (["describe", "--net", "nope"], ["unknown net 'nope'"]),
    "describe K too large": (["describe", "--net", "smallnet", "--K", "99"], ["K=99"]),
    "describe hp": ([*DESCRIBE, "--method", "dgl", "--hp", "mlp_layers=0"], ["mlp_layers"]),
    "describe dgl batch 1": (
        [*DESCRIBE, "--method", "dgl", "--batch-size", "1"],
        ["one training step at batch 1 fails"],
    ),
    # ---- estimate
    "estimate classes 0": ([*EST, "--classes", "0"], ["--classes must be between 2"]),
    "estimate batch 0": ([*EST, "--batch", "0"], ["--batch-size must be an integer >= 1"]),
    "estimate image size 0": ([*EST, "--image-size", "0"], ["--image-size must be between 1"]),
    "estimate budget 400 digits": (
        [*EST, "--max-batch", "--budget", BIG_NUMBER],
        ["as a size", "24GiB"],
    ),
    "estimate budget text": ([*EST, "--max-batch", "--budget", "lots"], ["cannot read 'lots'"]),
    "estimate budget 0": ([*EST, "--max-batch", "--budget", "0"], ["--budget must be between"]),
    "estimate with --method": ([*EST, "--method", "dgl"], ["use --methods"]),
    "estimate unknown method": ([*EST, "--methods", "bp,nope"], ["unknown method 'nope'"]),
    "estimate empty method": ([*EST, "--methods", "bp,,dgl"], ["--methods has an empty name"]),
    "estimate K 0": (["estimate", "--K", "0"], ["--K must be an integer >= 1"]),
    # ---- run: data-parallel
    "run nproc 0": ([*RUN, "--nproc", "0"], ["--nproc must be an integer >= 1", "got 0"]),
    "run nproc above batch": (
        [*RUN, "--nproc", "4", "--batch-size", "2"],
        ["batch size 2 cannot be shared among 4 ranks"],
    ),
    "run nproc on missing gpus": (
        [*RUN, "--nproc", "2", "--device", "cuda"],
        ["CUDA is not available"],
    ),
    # ---- sweep
    "sweep nproc 2": ([*SWEEP, "--nproc", "2"], ["nproc 2", "locbench run --nproc"]),
    "sweep ray flag with local executor": (
        [*SWEEP, "--ray-max-retries", "1"],
        ["--ray-max-retries applies to --executor ray"],
    ),
    "sweep slurm time 0": (
        [*SWEEP, "--executor", "slurm", "--slurm-time", "0"],
        ["--slurm-time must be an integer >= 1"],
    ),
    "sweep workers 0": ([*SWEEP, "--workers", "0"], ["--workers must be an integer >= 1, got 0"]),
    "sweep workers -1": ([*SWEEP, "--workers", "-1"], ["--workers must be an integer >= 1"]),
    "sweep workers text": ([*SWEEP, "--workers", "two"], ["--workers must be an integer >= 1"]),
    "sweep hp no method has": (
        [*SWEEP, "--methods", "bp", "--hp", "hidden_dim=64,128"],
        ["--hp hidden_dim: method 'bp' has no parameter hidden_dim"],
    ),
    "sweep hp scoped to a method not swept": (
        [*SWEEP, "--methods", "bp", "--hp", "dgl.hidden_dim=64"],
        ["method 'dgl' is not in the sweep"],
    ),
    "sweep hp scoped key missing": (
        [*SWEEP, "--methods", "bp,dgl", "--hp", "dgl.nope=1"],
        ["method 'dgl' has no parameter nope"],
    ),
    "sweep hp bad value": (
        [*SWEEP, "--methods", "dgl", "--hp", "hidden_dim=64,0"],
        ["configuration 2 (dgl", "hidden_dim=0", "must be an integer >= 1"],
    ),
    "sweep hp empty value": ([*SWEEP, "--hp", "hidden_dim=64,"], ["--hp hidden_dim has an empty"]),
    "sweep lr nan": ([*SWEEP, "--lr", "0.1,nan"], ["--lr must be a finite number > 0"]),
    "sweep K 0": ([*SWEEP, "--K", "2,0"], ["--K must be an integer >= 1"]),
    "sweep K empty": ([*SWEEP, "--K", "2,,4"], ["--K has an empty value"]),
    "sweep K too large": ([*SWEEP, "--K", "9"], ["configuration 1", "K=9"]),
    "sweep seeds negative": ([*SWEEP, "--seeds", "-1"], ["--seed must be an integer >= 0"]),
    "sweep unknown method": ([*SWEEP, "--methods", "bp,nope"], ["unknown method 'nope'"]),
    "sweep aux depth text": ([*SWEEP, "--aux-depth", "x"], ["--aux-depth must be comma-separated"]),
    "sweep unknown preset": ([*SWEEP, "--preset", "nope"], ["unknown preset 'nope'"]),
    "sweep config missing": ([*SWEEP, "--config", "{tmp}/none.toml"], ["does not exist"]),
    "sweep config not toml": ([*SWEEP, "--config", "{tmp}/bad.toml"], ["is not valid TOML"]),
    "sweep config epochs text": ([*SWEEP, "--config", "{tmp}/epochs.toml"], ["epochs", "'one'"]),
    "sweep config unknown table": ([*SWEEP, "--config", "{tmp}/table.toml"], ["unknown tables"]),
    "sweep config grid not a list": ([*SWEEP, "--config", "{tmp}/grid.toml"], ["non-empty list"]),
    "sweep config lr nan": ([*SWEEP, "--config", "{tmp}/nan.toml"], ["lr must be a finite"]),
    "sweep config method table": (
        [*SWEEP, "--config", "{tmp}/method.toml"],
        ["[method.predsim] names a method not in the sweep"],
    ),
    "sweep config unknown setting": ([*SWEEP, "--config", "{tmp}/key.toml"], ["unknown"]),
    "sweep out is a file": (
        ["sweep", "--methods", "bp", *FAST, "--out", "{tmp}/file.txt"],
        ["is not a folder"],
    ),
    # ---- report
    "report missing folder": (["report", "{tmp}/nowhere"], ["does not exist"]),
    "report no valid record": (["report", "{tmp}/junk"], ["no valid"]),
    # ---- plot
    "plot unknown kind": (["plot", "nope", "{tmp}/junk"], ["unknown chart kind 'nope'", "modules"]),
    "plot missing folder": (["plot", "breakdown", "{tmp}/nowhere"], ["does not exist"]),
    "plot no valid record": (["plot", "modules", "{tmp}/junk"], ["no valid", "nothing to plot"]),
    # ---- compare
    "compare missing base": (["compare", "{tmp}/none.json", "{tmp}/bench.json"], ["none.json"]),
    "compare not json": (["compare", "{tmp}/file.txt", "{tmp}/bench.json"], ["file.txt"]),
    "compare not benchmark json": (["compare", "{tmp}/list.json", "{tmp}/bench.json"], ["list"]),
    "compare figure not a number": (
        ["compare", "{tmp}/bench.json", "{tmp}/text_figure.json"],
        ["tracked_peak_bytes"],
    ),
    "compare time factor nan": (
        ["compare", "{tmp}/bench.json", "{tmp}/bench.json", "--time-factor", "nan"],
        ["--time-factor must be a finite number >= 1"],
    ),
    "compare time factor 0.5": (
        ["compare", "{tmp}/bench.json", "{tmp}/bench.json", "--time-factor", "0.5"],
        ["--time-factor must be a finite number >= 1"],
    ),
    # ---- demo
    "demo epochs 0": (["demo", "--epochs", "0", "--out", "{out}"], ["--epochs must be"]),
    "demo out is a file": (["demo", "--epochs", "1", "--out", "{tmp}/file.txt"], ["not a folder"]),
}

FILES = {
    "file.txt": "not a folder\n",
    "ok.py": "from locbench import Method\n\nclass Ok(Method):\n    pass\n\nhelper = 1\n",
    "broken.py": "def oops(:\n",
    "raising.py": (
        "from locbench import Method\n\n"
        "class Raising(Method):\n"
        "    def __init__(self, *args):\n"
        "        raise RuntimeError('no GPU in my constructor')\n"
    ),
    "bad.toml": "[grid\n",
    "epochs.toml": '[run]\nepochs = "one"\n',
    "table.toml": "[nope]\nx = 1\n",
    "grid.toml": '[grid]\nmethods = "bp"\n',
    "nan.toml": "[run]\nlr = nan\n",
    "method.toml": '[grid]\nmethods = ["bp"]\n[method.predsim]\nbeta = 0.5\n',
    "key.toml": "[run]\nepoch = 1\n",
    "list.json": "[1, 2, 3]\n",
    "junk/a.json": "{ truncated",
    "bench.json": json.dumps(
        {
            "benchmarks": [
                {
                    "name": "t",
                    "param": "bp",
                    "extra_info": {"tracked_peak_bytes": 10},
                    "stats": {"median": 0.1},
                }
            ]
        }  # fmt: skip
    ),
    "text_figure.json": json.dumps(
        {
            "benchmarks": [
                {
                    "name": "t",
                    "param": "bp",
                    "extra_info": {"tracked_peak_bytes": "x"},
                    "stats": {"median": 0.1},
                }
            ]
        }  # fmt: skip
    ),
}


# The groups of cases added for faults at the edges, each in its own module: its CASES (argv,
# expected texts and, optionally, environment variables set for the case) and the fixtures it
# writes into the workspace (write_fixtures).
GROUPS = [bad_inputs_out, bad_inputs_data, bad_inputs_exec, bad_inputs_decl]
for group in GROUPS:
    CASES.update(group.CASES)

#: Cases before the faults-at-the-edges work; it adds at least 80.
EARLIER_CASES = 125


def test_the_table_covers_every_command_with_at_least_80_cases():
    commands = {case[0][0] for case in CASES.values()}
    assert len(CASES) + len(MOUNTED) + len(MIDWAY) >= EARLIER_CASES + 80
    assert commands >= {"run", "describe", "estimate", "sweep", "report", "plot", "compare", "demo"}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    for name, text in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for group in GROUPS:
        group.write_fixtures(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_and_exit_2(capsys, monkeypatch, workspace, case):
    argv, expected, *env = case
    out = workspace / "runs"
    for name, value in (env[0] if env else {}).items():
        monkeypatch.setenv(name, value.format(tmp=workspace, out=out))
    argv = [a.format(tmp=workspace, out=out) for a in argv]
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("locbench: error: ")
    assert "Traceback" not in captured.err
    for text in expected:
        assert text.format(tmp=workspace) in lines[0]
    # nothing half-written: only complete records, if anything
    leftovers = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    for path in leftovers:
        record = json.loads(path.read_text())
        assert path.suffix == ".json" and record["schema"]
        assert record["status"] != "ok"  # nothing trained to the end on a bad input


def test_the_big_numbers_stay_short_in_the_message(capsys, workspace):
    main([*EST, "--max-batch", "--budget", BIG_NUMBER])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 200


def test_a_bad_input_in_a_real_process_prints_no_traceback(workspace):
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "locbench", "run", *FAST, "--lr", "nan", "--out", str(workspace)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == "locbench: error: --lr must be a finite number > 0 (or none), got nan\n"


# ---- full and read-only file systems: a small tmpfs each, where this machine lets the test
# mount one (root on Linux); skipped with the reason elsewhere
WRITERS = bad_inputs_out.WRITERS
MOUNTED = {
    **{
        f"{command} on a full disk": (bad_inputs_out.writer(command, "{full}/out"),
                                      ["MiB free; the outputs need about"])
        for command in WRITERS
    },
    **{
        f"{command} on a read-only disk": (bad_inputs_out.writer(command, "{ro}/out"),
                                           ["is not a writable folder (Read-only file system)"])
        for command in WRITERS
    },
    "run --stages 2 on a full disk": (
        [*bad_inputs_out.writer("run", "{full}/out"), "--K", "2", "--stages", "2"],
        ["MiB free; the outputs need about"],
    ),
}  # fmt: skip
# The disk fills up after the checks (they are told there is room): the write that fails is
# one line, and nothing of the command's output is left. run trains first.
MIDWAY = {
    f"{command} when the disk fills up midway": (
        bad_inputs_out.writer(command, "{full}/out"),
        ["could not write {full}/out", ": no space left on the device"],
    )
    for command in ("run", "report", "plot", "timeline")
}
SMALL_DISK = "64k"
ROOM_LEFT = 8192  # a write probe fits; a record, a chart or a timeline does not


def _mount(path: Path, options: str) -> None:
    import subprocess

    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode:
        reason = done.stderr.strip() or f"mount exited {done.returncode}"
        pytest.skip(f"cannot mount a small tmpfs here ({reason})")


@pytest.fixture
def small_disks(workspace: Path):
    import subprocess

    full, ro = workspace / "full", workspace / "ro"
    mounted = []
    try:
        for path, options in ((full, f"size={SMALL_DISK}"), (ro, f"ro,size={SMALL_DISK}")):
            _mount(path, options)
            mounted.append(path)
        yield full, ro
    finally:
        for path in mounted:
            subprocess.run(["umount", str(path)], check=False)


def _one_line_exit_2(capsys, argv, expected, **where) -> None:
    code = main([a.format(**where) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("locbench: error: "), captured.err
    for text in expected:
        assert text.format(**where) in lines[0]


@pytest.mark.parametrize("case", MOUNTED.values(), ids=MOUNTED.keys())
def test_a_full_or_read_only_disk_is_refused_before_any_work(capsys, small_disks, case):
    full, ro = small_disks
    tmp = full.parent
    _one_line_exit_2(capsys, *case, tmp=tmp, full=full, ro=ro)
    assert not (full / "out").exists() and not list(full.iterdir())  # nothing made


@pytest.mark.parametrize("case", MIDWAY.values(), ids=MIDWAY.keys())
def test_a_disk_that_fills_up_midway_is_one_line_and_nothing_partial(
    capsys, monkeypatch, small_disks, case
):
    import collections
    import shutil

    full, ro = small_disks
    filler = full / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(full).free - ROOM_LEFT))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 0, 2**40))
    _one_line_exit_2(capsys, *case, tmp=full.parent, full=full, ro=ro)
    left = [p for p in full.rglob("*") if p.is_file() and p != filler]
    assert left == []  # no temporary file, no half of the outputs
