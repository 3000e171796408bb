"""State kept across steps (the contract's ``after_backward`` / ``after_step`` hooks, the
read-only ``ModulesView``, ``Capabilities``), through ``examples/ema_next.py``: a moving
average of the next module's first unit, as MAN's auxiliary nets keep one."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from locbench.analysis.describe import describe
from locbench.analysis.estimate import estimate
from locbench.cli.main import main
from locbench.errors import UserError
from locbench.harness.build import resolve
from locbench.harness.run import execute, prepare
from locbench.harness.trainer import LocalTrainer
from locbench.settings.run_config import RunConfig
from tests.method_checks import assert_stages_refused, assert_tracked_equals_estimate

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ema_next.py"
SPEC = f"{EXAMPLE}:EmaNext"
FAST = ["--net", "smallnet", "--K", "2", "--dataset", "synthetic", "--epochs", "1"]


def config(spec: str = SPEC, **kw) -> RunConfig:
    return RunConfig(method=spec, net="smallnet", K=2, dataset="synthetic", epochs=1, **kw)


def trainer_of(spec: str = SPEC) -> tuple[LocalTrainer, object]:
    p = prepare(config(spec, method_params={"momentum": "0.5"}))
    return LocalTrainer(p.backbone, p.split, p.method, p.config, torch.device("cpu")), p


def test_the_moving_average_after_three_steps_is_the_hand_computed_one():
    trainer, p = trainer_of()
    follower = trainer.method.aux[0][0]  # moves towards module 1's first unit
    unit = trainer.modules[1][0]
    m = 0.5
    seen = []  # the unit's weights each step's module-0 backward reads: before that step's update
    for _, (x, y) in zip(range(3), p.data.train):
        seen.append({n: t.detach().clone() for n, t in unit.named_parameters()})
        trainer.train_step(*trainer.to_device(x, y))
    for name, ema in follower.named_parameters():
        w0, w1, w2 = (s[name] for s in seen)  # the copy starts as w0
        expected = m**3 * w0 + (1 - m) * (m**2 * w0 + m * w1 + w2)
        torch.testing.assert_close(ema, expected, rtol=0, atol=1e-6)
        assert not ema.requires_grad and ema.grad is None  # frozen: never optimised
        assert not torch.equal(ema, w0)  # it moved
    assert all(id(t) not in {id(q) for g in trainer.optimizer.param_groups for q in g["params"]}
               for t in follower.parameters())  # fmt: skip


UNDECLARED = """
from locbench import Capabilities
from locbench.methods.loading import load_from_file


class Undeclared(load_from_file("{example}:EmaNext")):
    capabilities = Capabilities()  # reads module 1 without saying so
"""


def test_reading_another_module_undeclared_is_one_line(tmp_path):
    path = tmp_path / "undeclared.py"
    path.write_text(UNDECLARED.format(example=EXAMPLE))
    trainer, p = trainer_of(f"{path}:Undeclared")
    x, y = next(iter(p.data.train))
    with pytest.raises(UserError, match="^method Undeclared reads module 1's parameters but does "
                       "not declare it; set capabilities = Capabilities"):  # fmt: skip
        trainer.train_step(*trainer.to_device(x, y))


def test_stages_refuse_a_method_that_reads_modules_before_training(tmp_path, capsys):
    assert assert_stages_refused(["--method", SPEC, *FAST], tmp_path / "runs", capsys) == (
        "locbench: error: --stages: emanext reads other modules' parameters "
        "(Capabilities(reads_modules=True)); a module it reads may train in another stage\n"
    )


def test_tracked_equals_estimate_and_every_command_runs_it(tmp_path, capsys):
    record = assert_tracked_equals_estimate(config())
    flops = record.flops
    d = describe(config(), batch_size=64)
    assert d["flops_per_step"] == flops
    # the frozen copy is a parameter of the auxiliary net: smallnet's K=2 cut is after unit
    # 1, so it copies unit 2 (16 -> 32 channels), then Linear(32, 10)
    p = prepare(config())
    assert p.split.last_unit(0) == 1
    unit = sum(t.numel() for t in p.backbone.units[2].parameters())
    assert d["params_aux"] == unit + 32 * 10 + 10
    assert d["params_aux_frozen"] == d["modules"][0]["params_aux_frozen"] == unit
    assert record.memory["breakdown"]["frozen"] == 4 * unit  # float32, resident all step
    assert d["modules"][0]["layers"] == [
        "BasicBlock(16->32, s2) (frozen)",
        "AdaptiveAvgPool2d",
        "Flatten",
        "Linear(32->10)",
    ]
    assert main(["estimate", "--methods", f"bp,{SPEC}", "--net", "smallnet", "--K", "2",
                 "--json"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["peak_bytes"] == estimate(resolve(config()), 1024).peak_bytes_rounded


def test_a_sweep_and_its_report_with_both_examples(tmp_path, capsys):
    # the moving average here and the overlap of examples/cascade_overlap.py (tests/test_overlap.py)
    overlap = f"{EXAMPLE.parent / 'cascade_overlap.py'}:CascadeOverlap"
    out = tmp_path / "sweep"
    methods = f"bp,{SPEC},{overlap}"
    argv = ["sweep", "--methods", methods, *FAST, "--out", str(out), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    records = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert sorted(r["status"] for r in records) == ["ok"] * 3
    assert main(["report", str(out)]) == 0, capsys.readouterr().err
    table = pd.read_csv(out / "report" / "comparison.csv").set_index("method")
    # what the charts label them: the class, not the path
    assert [table.loc[m, "variant"] for m in (SPEC, overlap)] == ["EmaNext", "CascadeOverlap"]


READS_GRADIENTS = """
from locbench import Capabilities, Method


class ReadsGradients(Method):
    # what a synthetic-gradient method reads: the gradient of its module's output, unscaled
    capabilities = Capabilities(reads_gradients=True)
    seen = []

    def local_loss(self, k, out, batch):
        out.register_hook(lambda g: self.seen.append((g.float() / batch.loss_scale).norm()))
        return super().local_loss(k, out, batch)
"""

OLD_BOUNDARY = """
from locbench import Method


class OldBoundary(Method):
    def boundary(self, k, out):
        return out.detach()
"""


def test_the_loss_scale_reaches_a_method_that_reads_gradients(tmp_path):
    path = tmp_path / "reads.py"
    path.write_text(READS_GRADIENTS)
    norms = {}
    for precision in ("fp32", "fp16"):
        p = prepare(config(f"{path}:ReadsGradients", precision=precision))
        trainer = LocalTrainer.for_config(p.config, p.backbone, p.split, p.method,
                                          torch.device("cpu"))  # fmt: skip
        type(p.method).seen.clear()
        x, y = next(iter(p.data.train))
        trainer.train_step(*trainer.to_device(x, y))
        norms[precision] = float(type(p.method).seen[0])
        scale = trainer.amp.loss_scale()
        assert scale == 1.0 if precision == "fp32" else float(scale) == 2.0**16
    # unscaled, the fp16 gradient is the fp32 one up to half precision (scaled: 65536 times)
    assert norms["fp16"] == pytest.approx(norms["fp32"], rel=1e-2)


def test_a_boundary_without_the_batch_is_one_line(tmp_path):
    path = tmp_path / "old.py"
    path.write_text(OLD_BOUNDARY)
    p = prepare(config(f"{path}:OldBoundary"))
    with pytest.raises(UserError, match=r"^method OldBoundary: boundary\(\) takes \(k, out\); "):
        LocalTrainer(p.backbone, p.split, p.method, p.config, torch.device("cpu"))


REMEMBERS = """
from locbench import Capabilities, Method


class Remembers(Method):
    # state that appears after the second step (as a method comparing steps keeps one):
    # a buffer of 64 x 16 x 16 x 16 floats, resident from the third step on
    capabilities = Capabilities(steady_after=STEADY)

    def __init__(self, *args):
        super().__init__(*args)
        self.steps = 0

    def after_step(self, view):
        self.steps += 1
        if self.steps == 2:
            self.register_buffer("kept", self.aux[0][-1].weight.new_zeros(64, 16, 16, 16))
"""


def test_state_that_appears_later_is_estimated_once_declared(tmp_path):
    peaks = {}
    for steady in (1, 2):
        path = tmp_path / f"remembers{steady}.py"
        path.write_text(REMEMBERS.replace("STEADY", str(steady)))
        cfg = config(f"{path}:Remembers")
        record = execute(cfg)  # tracked after 3 warm-up steps: the buffer is resident
        peaks[steady] = (record.memory["peak_bytes"], estimate(resolve(cfg), 64).peak_bytes)
    tracked, declared = peaks[2]
    assert declared == tracked == peaks[1][0]
    # undeclared, the estimate's step is the second, which makes the buffer only at its end
    assert tracked - peaks[1][1] == 64 * 16 * 16 * 16 * 4


def test_the_examples_aux_flops_are_the_hand_count():
    # smallnet K=2 at batch B: the cut is after unit 1 (16 x 16 x 16). A FLOP is a multiply or
    # an add (a multiply-add is 2); pooling, BatchNorm and ReLU count 0.
    B = 8
    # ema_next: a frozen copy of unit 2 (BasicBlock 16 -> 32, stride 2: conv 3x3 16->32 s2 and
    # conv 3x3 32->32 on 8x8, shortcut conv 1x1 16->32 s2), then Linear(32, 10). The copy's
    # backward computes only input gradients (frozen: no weight gradients), as much as its
    # forward; the Linear's, input and weight gradients, twice its forward.
    convs = 2 * B * 8 * 8 * 32 * (16 * 9 + 32 * 9 + 16)
    linear = 2 * B * 32 * 10
    assert describe(config(), batch_size=B)["flops_per_step"]["aux"] == 2 * convs + 3 * linear
    # cascade_overlap: the contract's default head, Linear(16, 10) on the pooled cut; the
    # rerun of unit 1 is the backbone's
    overlap = f"{EXAMPLE.parent / 'cascade_overlap.py'}:CascadeOverlap"
    d = describe(config(overlap, method_params={"units": "1"}), batch_size=B)
    assert d["flops_per_step"]["aux"] == 3 * 2 * B * 16 * 10
    # Its backbone, against greedy_linear's (the same step without the overlap): unit 1 (two
    # conv 3x3 16->16 on 16x16) run again, forward and weight gradients of both convs and the
    # input gradient of the second (its rerun input is detached); and unit 2's first conv and
    # shortcut now take input gradients (module 1's input is the rerun's, attached).
    greedy = describe(config("examples/greedy_linear.py:GreedyLinear"), batch_size=B)
    conv = 2 * B * 16 * 16 * 16 * 16 * 9
    unit2_inputs = 2 * B * 8 * 8 * 32 * (16 * 9 + 16)
    extra = d["flops_per_step"]["backbone"] - greedy["flops_per_step"]["backbone"]
    assert extra == 5 * conv + unit2_inputs
