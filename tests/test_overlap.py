"""Declared overlap (the contract's "Overlap"), through ``examples/cascade_overlap.py``: module
k reruns and trains module k-1's last units."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from locbench.analysis.describe import describe
from locbench.errors import UserError
from locbench.harness.run import prepare
from locbench.harness.trainer import LocalTrainer
from locbench.settings.run_config import RunConfig
from tests.method_checks import assert_stages_refused, assert_tracked_equals_estimate

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cascade_overlap.py"
SPEC = f"{EXAMPLE}:CascadeOverlap"


def config(spec: str = SPEC, units: int = 1, **kw) -> RunConfig:
    params = {"units": str(units)} if spec == SPEC else {}
    return RunConfig(method=spec, net="smallnet", K=2, dataset="synthetic", epochs=1,
                     method_params=params, **kw)  # fmt: skip


def test_overlap_gradients_equal_hand_written_autograd():
    # smallnet K=2: module 0 = units 0, 1; module 1 = units 2, 3 and the head. With units=1,
    # module 1 reruns unit 1 from unit 0's (detached) output: unit 1 gets both losses'
    # gradients, unit 0 only module 0's, units 2, 3 and the head only module 1's.
    p = prepare(config())
    trainer = LocalTrainer(p.backbone, p.split, p.method, p.config, torch.device("cpu"))
    units = list(copy.deepcopy(p.backbone.units))
    aux = copy.deepcopy(p.method.aux[0])
    x, y = next(iter(p.data.train))
    x, y = trainer.to_device(x, y)
    trainer.train_step(x, y)

    start = units[0](x)
    loss0 = F.cross_entropy(aux(units[1](start)), y)
    loss0.backward()
    logits = units[4](units[3](units[2](units[1](start.detach()))))
    F.cross_entropy(logits, y).backward()
    for i, unit in enumerate(units):
        for (name, want), got in zip(unit.named_parameters(), p.backbone.units[i].parameters()):
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6,
                                       msg=f"unit {i} {name}")  # fmt: skip
    for want, got in zip(aux.parameters(), p.method.aux[0].parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6)


def test_tracked_equals_estimate_and_the_rerun_is_backbone_flops():
    record = assert_tracked_equals_estimate(config())
    with_rerun = describe(config(), batch_size=64)["flops_per_step"]
    greedy = describe(config("examples/greedy_linear.py:GreedyLinear"), 64)["flops_per_step"]
    assert record.flops == with_rerun
    assert with_rerun["aux"] == greedy["aux"] > 0  # the same heads
    assert with_rerun["backbone"] > greedy["backbone"]  # unit 1 run twice, trained twice
    assert with_rerun["total"] == with_rerun["backbone"] + with_rerun["aux"]


def test_stages_refuse_an_overlap_before_training(tmp_path, capsys):
    argv = ["--method", SPEC, "--net", "smallnet", "--K", "2", "--dataset", "synthetic",
            "--epochs", "1"]  # fmt: skip
    err = assert_stages_refused(argv, tmp_path / "runs", capsys)
    assert err.startswith("locbench: error: --stages: cascadeoverlap declares an overlap")


BAD = """
from locbench import Method


class TooMuch(Method):
    def overlap(self, k):
        return 3  # module k-1 has 2 hidden units on smallnet at K=2
"""


def test_an_overlap_larger_than_the_module_is_one_line(tmp_path):
    path = tmp_path / "too_much.py"
    path.write_text(BAD)
    p = prepare(config(f"{path}:TooMuch"))
    with pytest.raises(UserError, match=r"^method TooMuch: overlap\(1\) is 3; module 0 has 2 "):
        LocalTrainer(p.backbone, p.split, p.method, p.config, torch.device("cpu"))


BOTH_PATHS = """
import torch.nn.functional as F

from locbench import Capabilities, Method


class BothPaths(Method):
    # module 1 reruns unit 1 and also runs on its own input: the output loss weighs the greedy
    # logits 0.25 and the cascade's 0.75, so that a mix-up of the two shows in the gradients
    capabilities = Capabilities(greedy_path=True)

    def overlap(self, k):
        return 1

    def output_loss(self, logits, batch):
        greedy = F.cross_entropy(logits.greedy, batch.y)
        return 0.25 * greedy + 0.75 * F.cross_entropy(logits.cascade, batch.y)
"""


def both_paths(tmp_path: Path) -> RunConfig:
    path = tmp_path / "both_paths.py"
    path.write_text(BOTH_PATHS)
    return config(f"{path}:BothPaths")


def test_the_greedy_path_stops_at_the_modules_input(tmp_path):
    # smallnet K=2: module 1 (units 2, 3, head) runs on module 0's detached output (greedy)
    # and after unit 1's rerun (cascade). Unit 1 gets module 0's gradient and the cascade's
    # (0.75 of the output loss), not the greedy path's; units 2, 3 and the head get both.
    p = prepare(both_paths(tmp_path))
    trainer = LocalTrainer(p.backbone, p.split, p.method, p.config, torch.device("cpu"))
    units = list(copy.deepcopy(p.backbone.units))
    aux = copy.deepcopy(p.method.aux[0])
    x, y = next(iter(p.data.train))
    x, y = trainer.to_device(x, y)
    losses = trainer.train_step(x, y)

    start = units[0](x)
    out0 = units[1](start)
    F.cross_entropy(aux(out0), y).backward()

    def last(h):
        return units[4](units[3](units[2](h)))

    greedy = F.cross_entropy(last(out0.detach()), y)
    cascade = F.cross_entropy(last(units[1](start.detach())), y)
    (0.25 * greedy + 0.75 * cascade).backward()
    for i, unit in enumerate(units):
        for (name, want), got in zip(unit.named_parameters(), p.backbone.units[i].parameters()):
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6,
                                       msg=f"unit {i} {name}")  # fmt: skip
    torch.testing.assert_close(losses.output, 0.25 * greedy.detach() + 0.75 * cascade.detach())


def test_the_greedy_path_is_measured_as_a_third_forward(tmp_path):
    record = assert_tracked_equals_estimate(both_paths(tmp_path))
    one_path = describe(config(), batch_size=64)["flops_per_step"]
    assert record.flops["aux"] == one_path["aux"]  # the same head
    # module 1 (units 2, 3 and the head) run and trained once more: the greedy path
    assert record.flops["backbone"] > one_path["backbone"]


NO_OVERLAP = """
from locbench import Capabilities, Method


class GreedyAlone(Method):
    capabilities = Capabilities(greedy_path=True)
"""


def test_a_greedy_path_without_an_overlap_is_one_line(tmp_path):
    path = tmp_path / "greedy_alone.py"
    path.write_text(NO_OVERLAP)
    p = prepare(config(f"{path}:GreedyAlone"))
    with pytest.raises(UserError, match=r"^method GreedyAlone declares Capabilities\(greedy_"):
        LocalTrainer(p.backbone, p.split, p.method, p.config, torch.device("cpu"))
