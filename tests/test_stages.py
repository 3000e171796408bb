"""Pipeline stages (locbench.harness.stages): P processes, each stepping its own modules, make the
same
updates as the sequential harness; what cannot be pipelined is refused in one line."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from locbench.errors import UserError
from locbench.harness.optim import set_lr, warmup_cosine
from locbench.harness.run import execute, prepare
from locbench.harness.stages import (
    balanced_groups,
    check_stages,
    execute_stages,
    module_state,
    run_stages,
    unit_counts,
)
from locbench.harness.trainer import LocalTrainer
from locbench.methods.base import StepContext
from locbench.settings.run_config import RunConfig

STEPS = 5


def _config(method: str, **extra) -> RunConfig:
    return RunConfig(
        net="smallnet",
        method=method,
        dataset="synthetic",
        batch_size=8,
        lr=0.1,
        epochs=1,
        warmup_epochs=0,
        augment=False,
        device="cpu",
        **extra,
    )


def _sequential_state(config: RunConfig, steps: int) -> tuple[dict, object]:
    torch.set_num_threads(1)
    p = prepare(config)
    trainer = LocalTrainer(p.backbone, p.split, p.method, p.config, torch.device("cpu"))
    cfg, per_epoch = p.config, len(p.data.train)
    for i, (x, y) in zip(range(steps), p.data.train):
        # the schedule fit() applies: the stages follow it step by step
        lr = warmup_cosine(i / per_epoch, cfg.lr, cfg.epochs, cfg.warmup_epochs, 0.01)
        set_lr(trainer.optimizer, lr)
        trainer.train_step(
            *trainer.to_device(x, y), step=StepContext(i, 0, per_epoch, per_epoch, lr)
        )
    state = module_state(trainer, range(p.split.K))
    return state, p


# dgl in the default run; auglocal, the same check in two more processes, in the integration run
@pytest.mark.parametrize("method", ["dgl", pytest.param("auglocal", marks=pytest.mark.integration)])
def test_two_stages_make_the_sequential_updates(method):
    config = _config(method, K=4 if method == "auglocal" else 2)  # auglocal trains K - 2
    sequential, p = _sequential_state(config, STEPS)
    groups = balanced_groups(unit_counts(p.split), 2)
    assert [len(g) for g in groups] == [1, 1]
    results = run_stages(p.config, groups, max_steps=STEPS)
    staged = {n: t for r in results for n, t in r["state"].items()}
    assert staged.keys() == sequential.keys()
    for name, value in sequential.items():
        # every parameter and BatchNorm running statistic (and step count)
        torch.testing.assert_close(staged[name], value, atol=1e-6, rtol=0, msg=name)
    counts = [v.item() for n, v in staged.items() if n.endswith("num_batches_tracked")]
    assert counts and set(counts) == {STEPS}
    assert all(len(r["ends"]) == STEPS for r in results)


def test_balanced_groups_are_contiguous_and_minimise_the_largest():
    assert balanced_groups([1, 1, 1, 1], 2) == [range(0, 2), range(2, 4)]
    assert balanced_groups([3, 1, 1, 1], 2) == [range(0, 1), range(1, 4)]
    assert balanced_groups([1, 2, 3], 3) == [range(0, 1), range(1, 2), range(2, 3)]


def _refusal(config: RunConfig) -> str:
    with pytest.raises(UserError) as e:
        execute_stages(config)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_end_to_end_and_too_many_stages_are_refused():
    assert "end to end" in _refusal(_config("bp", stages=2))
    assert "K=2" in _refusal(_config("dgl", K=2, stages=3))
    p = prepare(_config("dgl", K=2))
    with pytest.raises(UserError, match="at least 1"):
        check_stages(p.method, p.split, 0, torch.device("cpu"))


def test_a_method_without_a_local_loss_is_refused_before_any_step(tmp_path, monkeypatch):
    """Found on a fake step: neither the sequential baseline nor a stage trains a step."""
    import locbench.harness.stages as stages

    def no_training(*args, **kwargs):
        raise AssertionError("the refusal came after training started")

    monkeypatch.setattr(stages, "sequential_baseline", no_training)
    monkeypatch.setattr(stages, "run_stages", no_training)
    plugin = tmp_path / "noloss.py"
    plugin.write_text(
        "from locbench.methods.dgl import DGL\n\n\n"
        "class NoLoss(DGL):\n"
        "    def local_loss(self, k, out, batch):\n"
        "        return None\n"
    )
    assert "no local loss" in _refusal(_config(f"{plugin}:NoLoss", K=2, stages=2))


def test_a_boundary_other_than_detach_is_refused(tmp_path):
    plugin = tmp_path / "keep.py"
    plugin.write_text(
        "from locbench.methods.dgl import DGL\n\n\n"
        "class Keep(DGL):\n"
        "    def boundary(self, k, out, batch):\n"
        "        return out\n"
    )
    assert "boundary" in _refusal(_config(f"{plugin}:Keep", K=2, stages=2))


def test_stages_with_nproc_are_refused():
    with pytest.raises(UserError, match="not both"):
        _config("dgl", K=2, stages=2, nproc=2)


def test_a_sweep_with_stages_is_refused(tmp_path):
    from locbench.study.grid import Grid
    from locbench.study.sweep import plan_sweep

    run = {"dataset": "synthetic", "device": "cpu"}
    grid = Grid(methods=("dgl",), K=(2,), axes={"stages": (2,)}, run=run)
    with pytest.raises(UserError, match="stages 2"):
        plan_sweep(grid, tmp_path / "runs")


@pytest.mark.integration
def test_run_stages_writes_a_record_with_the_speedup_and_its_bound(tmp_path):
    import json
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "locbench", "run", "--net", "smallnet", "--method", "dgl", "--K",
        "2", "--dataset", "synthetic", "--epochs", "1", "--device", "cpu", "--no-progress",
        "--warmup-steps", "1", "--measure-steps", "3", "--stages", "2", "--out",
        str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "speed-up" in done.stdout and "bound" in done.stdout
    (path,) = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["config"]["stages"] == 2
    s = record["stages"]
    assert s["P"] == 2 and s["groups"] == [[0], [1]]
    assert len(s["busy_s"]) == len(s["idle_s"]) == 2
    assert s["speedup"] > 0 and s["bound"] > 0 and s["sequential_step_time_s"] > 0
    assert record["measured_steps"] == 3 and record["curve"][0]["test_acc"] >= 0


@pytest.mark.integration
def test_a_failing_stage_is_an_error_row_not_a_traceback(tmp_path):
    """The method fails only inside a stage (the sequential measurement before the stages runs
    without a process group): the run writes one error row naming the stage's error."""
    import json
    import subprocess
    import sys

    plugin = tmp_path / "fails.py"
    plugin.write_text(
        "import torch.distributed as dist\n"
        "from locbench.methods.dgl import DGL\n\n\n"
        "class FailsInStage(DGL):\n"
        "    def local_loss(self, k, out, batch):\n"
        "        if dist.is_initialized() and batch.step.global_step == 1:\n"
        "            raise RuntimeError('boom in a stage')\n"
        "        return super().local_loss(k, out, batch)\n"
    )
    out = tmp_path / "runs"
    command = [
        sys.executable, "-m", "locbench", "run", "--net", "smallnet", "--method",
        f"{plugin}:FailsInStage", "--K", "2", "--dataset", "synthetic", "--epochs", "1",
        "--device", "cpu", "--no-progress", "--warmup-steps", "1", "--measure-steps", "2",
        "--stages", "2", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "status error (stage 0 failed: RuntimeError: boom in a stage)" in done.stdout
    (path,) = out.glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "error"
    assert record["message"] == "stage 0 failed: RuntimeError: boom in a stage"


NAN_AFTER_FIRST_STEP = """
from locbench.methods.dgl import DGL


class NanIn{where}(DGL):
    def {hook}(self, *args):
        loss = super().{hook}(*args)
        batch = args[-1]
        return loss * float("nan") if batch.step.global_step >= 1 else loss
"""


@pytest.mark.parametrize(
    ("where", "hook"),
    [
        ("Stage1", "output_loss"),
        pytest.param("Stage0", "local_loss", marks=pytest.mark.integration),
    ],
)
def test_a_nan_loss_in_any_stage_is_diverged_as_in_the_sequential_harness(tmp_path, where, hook):
    """The stages run fit's loop: a non-finite loss in one stage (stage 1: the output loss;
    stage 0: module 0's local loss) ends every stage after that epoch, and the record says
    ``diverged``, as a sequential run's does."""
    plugin = tmp_path / "nan.py"
    plugin.write_text(NAN_AFTER_FIRST_STEP.format(where=where, hook=hook))
    config = dataclasses.replace(
        _config(f"{plugin}:NanIn{where}", K=2), epochs=3, measure_steps=2, warmup_steps=1
    )
    staged = execute_stages(dataclasses.replace(config, stages=2))
    assert (staged.status, staged.message) == ("diverged", "non-finite training loss in epoch 1")
    assert len(staged.curve) == 1  # the first epoch, then every stage stopped
    sequential = execute(config)
    assert (sequential.status, sequential.message) == (staged.status, staged.message)


def test_a_diverging_pipeline_run_exits_as_the_sequential_run_does(tmp_path, capsys):
    """``run --stages 2 --lr 1e30``: the record says what the sequential run's says
    (diverged in epoch 1), and the command exits 1, not 0."""
    import json

    from locbench.cli.main import main

    argv = ["run", "--net", "smallnet", "--method", "dgl", "--K", "2", "--dataset", "synthetic",
            "--epochs", "1", "--device", "cpu", "--no-progress", "--lr", "1e30",
            "--warmup-steps", "1", "--measure-steps", "2"]  # fmt: skip
    records = {}
    for stages in ("1", "2"):
        out = tmp_path / stages
        assert main([*argv, "--stages", stages, "--out", str(out)]) == 1
        (path,) = out.glob("*.json")
        records[stages] = json.loads(path.read_text())
    capsys.readouterr()
    sequential, staged = records["1"], records["2"]
    assert (staged["status"], staged["message"]) == (sequential["status"], sequential["message"])
    assert staged["status"] == "diverged"
