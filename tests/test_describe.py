"""`locbench describe`: split, auxiliary layers, parameter counts and FLOPs per step."""

import json

import pytest
from torch.utils.flop_counter import FlopCounterMode

from locbench.analysis.describe import describe
from locbench.cli.main import main
from locbench.settings.run_config import RunConfig


def run_json(capsys, *argv) -> dict:
    assert main(["describe", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_keys_and_totals(capsys):
    d = run_json(capsys, "--method", "dgl", "--net", "resnet32", "--K", "16")
    assert {"params_total", "params_aux", "modules", "flops_per_step"} <= set(d)
    assert d["params_total"] == 466_906 + 838_294 and d["params_aux"] == 838_294
    assert len(d["modules"]) == 16
    assert sum(m["params_aux"] for m in d["modules"]) == d["params_aux"]
    assert sum(m["params_backbone"] for m in d["modules"]) == 466_906
    assert all({"params_aux", "layers"} <= set(m) for m in d["modules"])
    assert d["modules"][-1]["layers"] == [] and d["modules"][-1]["with_head"] is True
    assert d["modules"][0]["layers"][:2] == ["AdaptiveAvgPool2d", "Conv2d(16->16, 1x1, s1)"]
    f = d["flops_per_step"]
    assert f["total"] == f["backbone"] + f["aux"]
    assert f["aux"] == sum(m["flops_aux"] for m in d["modules"])


def test_dgl_aux_flops_by_hand():
    # module 0 of ResNet-32: a 16x32x32 map pooled to 8x8; a FLOP is a multiply or an add.
    # Forward: three 1x1 convs 2*B*16*16*64, two Linear(64, 64) 2*B*64*64, Linear(64, 10).
    # Backward costs twice the forward (input and weight gradients), so 3x in all.
    B = 64
    forward = 3 * 2 * B * 16 * 16 * 64 + 2 * 2 * B * 64 * 64 + 2 * B * 64 * 10
    d = describe(RunConfig(method="dgl", net="resnet32", K=16), batch_size=B)
    assert d["modules"][0]["flops_aux"] == 3 * forward == 22_265_856


def test_bp_ckpt_adds_exactly_one_forward_of_the_checkpointed_segments():
    from locbench.harness.build import build, resolve
    from locbench.harness.flops import META

    bp = describe(RunConfig(method="bp", net="resnet32"), batch_size=8)
    ckpt = describe(RunConfig(method="bp-ckpt", net="resnet32", K=2), batch_size=8)
    backbone, _ = build(resolve(RunConfig(method="bp", net="resnet32")))
    import torch

    first_half = torch.nn.Sequential(*backbone.units[:8]).to(META)
    with FlopCounterMode(display=False) as counter:
        first_half(torch.empty(8, 3, 32, 32, device=META))
    extra = ckpt["flops_per_step"]["total"] - bp["flops_per_step"]["total"]
    assert extra == counter.get_total_flops() > 0
    assert ckpt["params_aux"] == bp["params_aux"] == 0 and ckpt["K"] == 2


def test_auglocal_describe_follows_the_module_convention(capsys):
    d = run_json(
        capsys, "--method", "auglocal", "--net", "resnet32", "--K", "16", "--aux-depth", "2"
    )
    assert d["K"] == 14 and d["K_requested"] == 16
    assert d["modules"][0]["layers"][:2] == ["BasicBlock(16->32, s2)", "BasicBlock(32->64, s2)"]
    assert d["modules"][13]["units"] == [13, 14, 15]
    assert d["params_aux"] == 1_341_058


def test_flops_scale_with_the_batch():
    small = describe(RunConfig(method="infopro", net="resnet32", K=4), batch_size=2)
    large = describe(RunConfig(method="infopro", net="resnet32", K=4), batch_size=6)
    assert large["flops_per_step"]["total"] == 3 * small["flops_per_step"]["total"]


def test_text_output_and_errors(capsys):
    assert main(["describe", "--method", "predsim", "--net", "smallnet", "--K", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("predsim on smallnet: 2 modules")
    assert "FLOPs per training step at batch 64" in out
    assert main(["describe", "--method", "dgl", "--aux-depth", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    known = "variant, hidden_dim, mlp_layers"
    assert err == [
        f"locbench: error: --aux-depth: method 'dgl' has no parameter depth; known: {known}"
    ]


@pytest.mark.parametrize("net", ["resnet34", "vgg13"])
def test_imagenet_nets_describe_at_their_published_K(net, capsys):
    d = run_json(capsys, "--method", "dgl", "--net", net, "--batch-size", "2")
    assert d["K"] == {"resnet34": 17, "vgg13": 10}[net]


def test_a_step_that_cannot_run_is_one_line(capsys):
    # DGL's BatchNorm1d cannot train on a batch of one sample
    assert main(["describe", "--method", "dgl", "--net", "smallnet", "--batch-size", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("locbench: error: one training step at batch 1")


COSTLIER_LATER = '''
from locbench.methods.base import Method


class Plain(Method):
    """The contract's defaults: a linear classifier on pooled features at each cut."""


class CostlierLater(Plain):
    """State carried across steps (as a synthetic-gradient method's): from its second step on,
    each local loss runs its auxiliary net three times."""

    def __init__(self, *args):
        super().__init__(*args)
        self.steps_seen = 0

    def local_loss(self, k, out, batch):
        self.steps_seen += k == 0
        repeats = 1 if self.steps_seen == 1 else 3
        return sum(super(CostlierLater, self).local_loss(k, out, batch) for _ in range(repeats))
'''


def test_flops_are_one_steady_steps_and_its_aux_share(tmp_path):
    # The auxiliary share is read on the counted step itself, the second: a method whose aux
    # costs more after its first step once got a backbone share below the backbone's (and
    # below zero for a synthetic-gradient method), its total from a first step and its aux
    # share from a later call.
    path = tmp_path / "costlier.py"
    path.write_text(COSTLIER_LATER)
    B = 8
    plain, costlier = (
        describe(RunConfig(method=f"{path}:{name}", net="smallnet", K=2), batch_size=B)
        for name in ("Plain", "CostlierLater")
    )
    # smallnet's cut after unit 1 is 16x16x16: Linear(16, 10) on the pooled features, forward
    # 2*B*16*10, and as much again for the input gradient and the weight gradient
    linear = 2 * B * 16 * 10
    assert plain["flops_per_step"]["aux"] == 3 * linear == plain["modules"][0]["flops_aux"]
    assert costlier["flops_per_step"]["aux"] == 3 * 3 * linear
    assert costlier["flops_per_step"]["backbone"] == plain["flops_per_step"]["backbone"] > 0
    for d in (plain, costlier):
        f = d["flops_per_step"]
        assert f["total"] == f["backbone"] + f["aux"]


def test_what_a_method_declares_is_shown(capsys):
    # mlaan on smallnet K=4 trains 3 modules: module 1 reruns module 0's two units, module 2
    # module 1's one; it reads other modules (its EMA) and runs both paths
    d = run_json(capsys, "--method", "mlaan", "--net", "smallnet", "--K", "4")
    assert d["capabilities"] == {
        "reads_modules": True, "greedy_path": True, "reads_gradients": False, "steady_after": 1
    }  # fmt: skip
    assert d["overlaps"] == [0, 2, 1]
    assert main(["describe", "--method", "mlaan", "--net", "smallnet", "--K", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "declares: reads_modules, greedy_path, overlaps [0, 2, 1]" in lines
    assert main(["describe", "--method", "dgl", "--net", "smallnet", "--K", "4"]) == 0
    assert not [x for x in capsys.readouterr().out.splitlines() if x.startswith("declares")]
