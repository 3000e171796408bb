"""Sweeps: the grid, TOML configs, one process per run, resume by hash, failures as rows."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from locbench.cli.main import main
from locbench.errors import UserError
from locbench.harness.build import resolve
from locbench.harness.run import prepare
from locbench.records import RunRecord, read_records
from locbench.settings.run_config import RunConfig
from locbench.settings.schema import setting
from locbench.study.executors.base import ExecutorKind, RunExecutor, register_executor
from locbench.study.executors.builtin import EXECUTORS
from locbench.study.grid import Grid, load_grid
from locbench.study.presets import PRESETS
from locbench.study.sweep import finished_ids, keep_record, resolved_id, sweep

REPO = Path(__file__).resolve().parents[1]
FAST = {"dataset": "synthetic", "epochs": 1, "warmup_steps": 1, "measure_steps": 2}


def test_grid_expands_every_axis_once_and_depth_only_where_it_applies():
    grid = Grid(
        methods=("bp", "dgl", "auglocal"),
        nets=("smallnet",),
        K=(2, 4),
        aux_depth=(1, 2),
        seeds=(0, 1),
        run=FAST,
    )
    configs = grid.configs()
    # bp and dgl ignore the depth axis: 2 K x 2 seeds each; auglocal: 2 K x 2 depths x 2 seeds
    assert len(configs) == 2 * 2 + 2 * 2 + 2 * 2 * 2
    auglocal = [c for c in configs if c.method == "auglocal"]
    assert sorted({c.method_params["depth"] for c in auglocal}) == [1, 2]
    assert all("depth" not in c.method_params for c in configs if c.method != "auglocal")
    assert len({resolved_id(c) for c in configs}) == len(configs)


def test_override_replaces_only_what_is_given():
    grid = PRESETS.get("cpu-digits").override(methods=("bp",), seeds=None, run={"epochs": 1})
    assert grid.methods == ("bp",) and grid.seeds == (0,)
    assert grid.run == {"dataset": "digits", "epochs": 1}


def test_toml_config(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(
        '[grid]\nmethods = ["bp", "dgl"]\nK = [2]\nseeds = [0, 1]\n'
        '[run]\ndataset = "synthetic"\nepochs = 1\n'
    )
    grid = load_grid(path)
    assert grid.methods == ("bp", "dgl") and grid.K == (2,) and grid.seeds == (0, 1)
    assert len(grid.configs()) == 4
    path.write_text('[grid]\nmetods = ["bp"]\n')
    with pytest.raises(UserError, match="unknown \\[grid\\] keys \\['metods'\\]"):
        load_grid(path)
    path.write_text("[run]\nepoch = 1\n")
    with pytest.raises(UserError, match="unknown settings \\['epoch'\\]"):
        load_grid(path)
    path.write_text("[grid\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_grid(path)


def test_sweep_runs_each_configuration_once_and_resumes(tmp_path):
    grid = Grid(methods=("bp", "dgl"), K=(2,), run=FAST)
    first = sweep(grid, tmp_path, workers=2, progress=False)
    assert (first.total, first.skipped, first.ran, first.failed) == (2, 0, 2, [])
    records = read_records(tmp_path)
    assert sorted(r.config["method"] for r in records) == ["bp", "dgl"]
    assert all(r.status == "ok" for r in records)
    again = sweep(grid, tmp_path, progress=False)
    assert (again.skipped, again.ran) == (2, 0)
    assert finished_ids(tmp_path) == {resolved_id(c) for c in grid.configs()}


def test_failures_are_rows_not_crashes(tmp_path):
    crash = tmp_path / "crash.py"
    crash.write_text(
        "import os, signal\n"
        "from locbench import Method\n"
        "class Crash(Method):\n"
        "    def __init__(self, *args):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    bad = sweep(Grid(methods=("bp",), run={**FAST, "dataset": "cifar10"}), tmp_path / "runs")
    killed = sweep(Grid(methods=(f"{crash}:Crash",), run=FAST), tmp_path / "runs")
    records = {r.config["method"]: r for r in read_records(tmp_path / "runs")}
    assert len(records) == 2 and bad.ran == killed.ran == 1
    assert len(bad.failed) == len(killed.failed) == 1
    # a bad configuration: the worker writes the error row itself
    assert records["bp"].status == "error"
    assert "--data-root is required for cifar10" in records["bp"].message
    # a worker killed before writing: the sweep writes the row
    killed = records[f"{crash}:Crash"]
    assert killed.status == "error" and "status -9" in killed.message


@pytest.mark.integration
def test_a_sweep_killed_with_sigkill_finishes_every_configuration_exactly_once(tmp_path):
    out = tmp_path / "runs"
    argv = [sys.executable, "-m", "locbench", "sweep", "--methods", "bp,dgl,predsim",
            "--nets", "smallnet", "--K", "2", "--dataset", "synthetic", "--epochs", "2",
            "--out", str(out), "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path)
    deadline = time.time() + 120
    while not list(out.glob("*.json")) and time.time() < deadline:
        time.sleep(0.2)
    assert list(out.glob("*.json")), "no run finished in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = len(list(out.glob("*.json")))
    assert 1 <= partial < 3
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"3 configurations, {partial} already done, {3 - partial} run, 0 failed" in done.stdout
    records = read_records(out)
    assert sorted(r.config["method"] for r in records) == ["bp", "dgl", "predsim"]
    assert all(r.status == "ok" for r in records)
    assert not [p for p in out.iterdir() if p.is_file() and p.suffix != ".json"]  # no half-written
    assert not list((out / ".claims").iterdir())  # the killed sweep's claim taken over, released


def test_sweep_cli_errors(tmp_path, capsys):
    assert main(["sweep", "--preset", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'nope'; known: cifar10-resnet110" in capsys.readouterr().err
    assert main(["sweep", "--K", "two", "--out", str(tmp_path)]) == 2
    assert "--K must be an integer" in capsys.readouterr().err
    assert main(["sweep", "--methods", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["sweep", "--workers", "0", "--out", str(tmp_path)]) == 2
    assert not list(tmp_path.glob("*.json"))


def test_presets_cover_the_published_configurations():
    r32, r110 = PRESETS.get("cifar10-resnet32"), PRESETS.get("cifar10-resnet110")
    assert (r32.K, r32.aux_depth, r110.K, r110.aux_depth) == ((16,), (2,), (55,), (3,))
    seeds = {"bp", "bp-ckpt", "dgl", "infopro", "predsim", "auglocal"}
    assert set(r32.methods) == set(r110.methods) == seeds | {"man", "hpff", "mlaan"}
    configs = r32.configs()
    assert len(configs) == 9 * 3  # nine methods, three seeds
    resolved = resolve(configs[0]).config
    assert (resolved.batch_size, resolved.lr, resolved.epochs) == (1024, 0.8, 400)
    assert PRESETS.get("stl10-resnet32").configs()[0].batch_size == 128
    assert json.dumps(PRESETS.get("cpu-digits").run) == '{"dataset": "digits", "epochs": 3}'


@pytest.mark.integration
def test_cpu_preset_sweep_and_report_end_to_end(tmp_path, capsys):
    """The CPU preset (every method on digits) and its report, through the CLI."""
    runs = tmp_path / "runs"
    assert main(["sweep", "--preset", "cpu-digits", "--workers", "2", "--out", str(runs),
                 "--no-progress"]) == 0  # fmt: skip
    assert "6 configurations, 0 already done, 6 run, 0 failed" in capsys.readouterr().out
    assert main(["report", str(runs), "--out", str(tmp_path / "report")]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'report' / 'report.html'}"
    records = read_records(runs)
    assert sorted(r.config["method"] for r in records) == sorted(PRESETS.get("cpu-digits").methods)
    assert all(r.status == "ok" and r.final_test_acc > 50 for r in records)
    table = pd.read_csv(tmp_path / "report" / "comparison.csv")
    assert len(table) == 6
    for name in ("accuracy_vs_memory", "curves"):
        assert (tmp_path / "report" / f"{name}.png").is_file()
        assert (tmp_path / "report" / f"{name}.svg").is_file()
    # step overheads only where timed alike: on a machine busy with other work every window
    # may be contended, and then there is no overhead to chart, and the table says why
    others = table[table["method"] != "bp"]
    compared = others["step overhead vs BP (%)"].notna()
    assert (tmp_path / "report" / "step_overhead.png").is_file() == compared.any()
    assert all("contended" in str(note) for note in others.loc[~compared, "timing"])
    html = (tmp_path / "report" / "report.html").read_text()
    assert "data:image/png;base64" in html and "http" not in html


def test_report_cli_on_a_missing_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_a_remote_gpu_executor_plans_the_run_ids_its_runs_resolve_to(tmp_path):
    """A sweep submitted from a machine without a GPU (a login node) to GPU jobs or tasks:
    device "auto" is planned as the runs' "cuda", not as this machine's "cpu", so that the
    records the runs write carry the planned run ids and a resume finds them."""
    import torch

    from locbench.study.sweep import plan_sweep

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    grid = Grid(methods=("bp", "dgl"), nets=("smallnet",), K=(2,), run={"dataset": "synthetic"})
    plan = plan_sweep(grid, tmp_path, device="cuda")
    assert {c.device for c, _, _ in plan.todo} == {"cuda"}
    for config, run_id, _ in plan.todo:
        remote = resolve(RunConfig.from_dict(config.to_dict())).config  # as the job resolves it
        assert remote.device == "cuda" and remote.memory == "cuda"
        assert run_id == resolve(remote).run_id
    local = plan_sweep(grid, tmp_path)  # runs here: auto is this machine's cpu
    assert {c.device for c, _, _ in local.todo} == {"cpu"}
    assert {r for _, r, _ in local.todo}.isdisjoint(r for _, r, _ in plan.todo)
    # a run started here still refuses CUDA it does not have, in one line
    with pytest.raises(UserError, match="CUDA is not available"):
        prepare(plan.todo[0][0])


# ---------------------------------------------------------------- an executor added in one place


@dataclass(frozen=True)
class ToyOptions:
    fail: str | None = setting(None, "a method whose runs the toy executor fails")


class ToyExecutor(RunExecutor):
    """Runs each configuration in this process without training: an ``ok`` record, or an
    ``error`` one for the method of ``--toy-fail``."""

    made: list["ToyExecutor"] = []  # every toy the CLI made, for the test to look at

    def __init__(self, options: ToyOptions) -> None:
        self.options, self.ran, self.closed = options, [], False
        ToyExecutor.made.append(self)

    def slots(self, todo: int) -> list[dict[str, str]]:
        return [{}]

    def run(self, config: RunConfig, out: Path, slot: dict[str, str]) -> RunRecord | None:
        failed = config.method == self.options.fail
        record = resolve(config).record(
            status="error" if failed else "ok",
            message="the toy failed it" if failed else None,
            K=config.K,
        )
        keep_record(record, out)
        self.ran.append(config.method)
        return record

    def stop(self) -> int:
        return 0

    def kill(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def toy_executor():
    kind = register_executor(
        ExecutorKind("toy", "this process, no training", ToyOptions, ToyExecutor)
    )
    ToyExecutor.made.clear()
    yield kind
    EXECUTORS.remove("toy")


def test_a_registered_executor_runs_a_sweep_from_the_cli(toy_executor, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["sweep", "--executor", "toy", "--methods", "bp,dgl", "--nets", "smallnet", "--K", "2",
            "--dataset", "synthetic", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main([*argv, "--toy-fail", "dgl"]) == 0
    assert capsys.readouterr().out == (
        f"sweep: 2 configurations, 0 already done, 2 run, 1 failed; records in {out}\n"
        "  failed: dgl smallnet: error, the toy failed it\n"
    )
    (toy,) = ToyExecutor.made
    assert sorted(toy.ran) == ["bp", "dgl"] and toy.closed
    records = {r.config["method"]: r for r in read_records(out)}
    assert {m: (r.status, r.K) for m, r in records.items()} == {
        "bp": ("ok", 2),
        "dgl": ("error", 2),
    }
    assert {r.run_id for r in records.values()} == finished_ids(out)

    # the same planning and counting as every sweep: resume, retry
    assert main([*argv, "--retry-failed"]) == 0
    assert capsys.readouterr().out == (
        f"sweep: 2 configurations, 1 already done, 1 run (1 retried), 0 failed; records in {out}\n"
    )
    assert ToyExecutor.made[-1].ran == ["dgl"]
    assert sorted(r.status for r in read_records(out)) == ["ok", "ok"]


def test_a_registered_executor_has_its_flags_checks_and_help(toy_executor, tmp_path, capsys):
    out = str(tmp_path / "runs")
    assert main(["sweep", "--toy-fail", "dgl", "--out", out]) == 2
    assert capsys.readouterr().err == (
        "locbench: error: --toy-fail applies to --executor toy, not local\n"
    )
    assert main(["sweep", "--executor", "toy", "--workers", "2", "--out", out]) == 2
    assert capsys.readouterr().err == (
        "locbench: error: --workers applies to --executor local, not toy\n"
    )
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--executor {local,ray,slurm,toy}" in help_text
    assert "toy, this process, no training; default local" in help_text
    assert "--toy-fail TOY_FAIL a method whose runs the toy executor fails;" in help_text
    assert not ToyExecutor.made


class ToyJobs:
    """A toy tracker: job 7 of run id aaa is queued, job 8 of run id bbb ended silently."""

    def __init__(self, out: Path) -> None:
        self.jobs = {"aaa": ("7", "dgl"), "bbb": ("8", "bp")}

    def run_ids(self) -> set[str]:
        return set(self.jobs)

    def config(self, run_id: str) -> dict:
        return {"method": self.jobs[run_id][1], "net": "smallnet", "K": 2, "seed": 0}

    def live(self, run_id: str, has_record: bool) -> tuple[str, str] | None:
        return ("pending", "toy job 7 queued") if run_id == "aaa" else None

    def ended_without_record(self, run_id: str) -> str | None:
        return f"toy job {self.jobs[run_id][0]} ended without a record"

    def ended(self) -> set[str]:
        return {"toy:8"}


def test_sweep_status_asks_every_registered_tracker(tmp_path, capsys):
    kind = ExecutorKind("toyjobs", "toy jobs", ToyOptions, ToyExecutor, tracker=ToyJobs)
    register_executor(kind)
    try:
        assert main(["sweep", "--status", "--out", str(tmp_path)]) == 0
    finally:
        EXECUTORS.remove("toyjobs")
    assert capsys.readouterr().out.splitlines() == [
        "failed   bp         smallnet   K=2 seed=0  bbb  toy job 8 ended without a record",
        "pending  dgl        smallnet   K=2 seed=0  aaa  toy job 7 queued",
        f"2 configurations in {tmp_path}: 0 done, 1 failed, 0 running, 1 pending",
    ]
