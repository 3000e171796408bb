"""MAN (Momentum Auxiliary Network) against the authors' code (JunhaoSu0/MAN): the auxiliary
sizes written by hand, the moving average after three steps, the lambdas, tracked memory ==
the estimate, FLOPs, and --stages refused."""

from __future__ import annotations

import pytest
import torch

from locbench.analysis.describe import describe
from locbench.harness.run import prepare
from locbench.harness.trainer import LocalTrainer
from locbench.methods import METHODS, make_params
from locbench.nets.backbone import get_backbone
from locbench.nets.split import Split
from locbench.settings.run_config import RunConfig
from tests.method_checks import assert_stages_refused, assert_tracked_equals_estimate
from tests.test_seed_methods import CIFAR


def config(**kw) -> RunConfig:
    base = {"method": "man", "net": "smallnet", "K": 4, "dataset": "synthetic", "epochs": 1}
    return RunConfig(**{**base, **kw})


def build(net: str, K: int, **params):
    cls = METHODS.get("man")
    p = make_params(cls, params)
    backbone = get_backbone(net)
    return cls(backbone, Split.uniform(backbone.n_hidden, K), CIFAR, p)


# ResNet-32 K=16: 16 hidden units (stem + 15 blocks), one per module; cut k (after unit k) has
# a trainable and a frozen copy of unit k+1, then the 2c2f classifier and the decoder on their
# sum. Units 1-5 are 16->16 blocks, 6 is 16->32 s2, 7-10 32->32, 11 32->64 s2, 12-15 64->64.
#
# BasicBlock (3x3 convs without bias, BN = 2 * channels, 1x1 conv + BN shortcut if reshaped):
#   16->16:  2*16*16*9 + 2*32                            =  4,672
#   16->32:  16*32*9 + 32*32*9 + 2*64 + 16*32 + 64        = 14,528
#   32->32:  2*32*32*9 + 2*64                            = 18,560
#   32->64:  32*64*9 + 64*64*9 + 2*128 + 32*64 + 128      = 57,728
#   64->64:  2*64*64*9 + 2*128                           = 73,984
# one copy of every next unit: 5*4,672 + 14,528 + 4*18,560 + 57,728 + 4*73,984 = 465,792
#
# 2c2f classifier on C channels (out = 2C with stride 2 below 64, else 64 with stride 1):
#   C*out*9 + 2*out + out*out*9 + 2*out + (out*128 + 128) + (128*10 + 10)
#   C=16 (out 32): 4,608 + 64 + 9,216 + 64 + 4,224 + 1,290   = 19,466
#   C=32 (out 64): 18,432 + 128 + 36,864 + 128 + 8,320 + 1,290 = 65,162
#   C=64 (out 64): 36,864 + 128 + 36,864 + 128 + 8,320 + 1,290 = 83,594
# decoder on C channels: (C*12*9 + 12) + 24 + (12*3*9 + 3) = 108*C + 363:
#   C=16: 2,091   C=32: 3,819   C=64: 7,275
# heads: 5 * (19,466 + 2,091) + 5 * (65,162 + 3,819) + 5 * (83,594 + 7,275)
#      = 107,785 + 344,905 + 454,345 = 907,035
# trainable: 465,792 (LB copies) + 907,035 = 1,372,827; frozen (EMA copies): 465,792;
# all: 1,838,619. (The authors' K=16 has no cut after the stem: 14 aux paths, 30,901 fewer.)
RESNET32_K16_FROZEN = 465_792
RESNET32_K16_TRAINABLE = 1_372_827


def test_aux_parameters_resnet32_K16_are_the_hand_computed_ones():
    d = describe(RunConfig(method="man", net="resnet32", K=16, dataset="synthetic"), batch_size=2)
    assert d["params_aux_frozen"] == RESNET32_K16_FROZEN
    assert d["params_aux"] == RESNET32_K16_TRAINABLE + RESNET32_K16_FROZEN == 1_838_619
    first, widest = d["modules"][0], d["modules"][14]
    assert first["params_aux_frozen"] == 4_672 and widest["params_aux_frozen"] == 73_984
    assert first["layers"][:3] == [
        "BasicBlock(16->16, s1)",
        "BasicBlock(16->16, s1) (frozen)",
        "Conv2d(16->32, 3x3, s2)",
    ]
    assert d["modules"][5]["layers"][:2] == [
        "BasicBlock(16->32, s2)",
        "BasicBlock(16->32, s2) (frozen)",
    ]
    assert d["modules"][-1]["params_aux"] == 0  # the last module has none
    # MAN++: one trainable scalar s per auxiliary path
    plus = build("resnet32", 16, learnable_scale=True)
    assert sum(p.numel() for p in plus.parameters()) == 1_838_619 + 15


def test_the_lambdas_follow_the_authors_stage_ratio():
    # ratio = stage of the copied unit / (K - 2); (5, 0.5) -> (0, 0): README's ResNet-32 K=16
    m = build("resnet32", 16)
    stages = [1] * 5 + [2] * 5 + [3] * 5  # copied units 1..15
    expected = [(5 * (1 - s / 14), 0.5 * (1 - s / 14)) for s in stages]
    assert m.lambdas == pytest.approx(expected)
    m = build("resnet32", 16, ramp="module")
    assert m.lambdas == pytest.approx([(5 * (1 - k / 14), 0.5 * (1 - k / 14)) for k in range(15)])
    # K=4: the authors' ratio reaches 3/2 (negative weights); clamped to 1
    assert build("resnet32", 4).lambdas[-1] == (0.0, 0.0)


def test_the_moving_average_after_three_steps_is_the_hand_computed_one():
    p = prepare(config(method_params={"momentum": "0.5"}))
    trainer = LocalTrainer(p.backbone, p.split, p.method, p.config, torch.device("cpu"))
    method, m = trainer.method, 0.5
    units = [trainer.modules[k + 1][0] for k in range(3)]  # module k+1's first unit
    start = [{n: t.clone() for n, t in method.aux[k].ema.named_parameters()} for k in range(3)]
    seen = []  # the units' weights each step's backwards read: before that step's update
    for _, (x, y) in zip(range(3), p.data.train):
        seen.append([{n: t.detach().clone() for n, t in u.named_parameters()} for u in units])
        trainer.train_step(*trainer.to_device(x, y))
    optimised = {id(q) for g in trainer.optimizer.param_groups for q in g["params"]}
    for k in range(3):
        aux = method.aux[k]
        for name, ema in aux.ema.named_parameters():
            e0 = start[k][name]  # a fresh initialisation, not the unit's weights
            w0, w1, w2 = (s[k][name] for s in seen)
            expected = m**3 * e0 + (1 - m) * (m**2 * w0 + m * w1 + w2)
            torch.testing.assert_close(ema, expected, rtol=0, atol=1e-6)
            assert not ema.requires_grad and ema.grad is None and id(ema) not in optimised
        # the trainable copy is optimised, and the moving average leaves it alone
        assert all(id(q) in optimised and q.requires_grad for q in aux.lb.parameters())
        # BatchNorm buffers are the frozen copy's own, neither averaged nor copied
        assert not torch.equal(aux.ema.bn1.running_mean, units[k].bn1.running_mean)


def test_tracked_memory_equals_the_estimate_and_flops_add_up():
    assert_tracked_equals_estimate(config())


def test_stages_are_refused_in_one_line_before_training(tmp_path, capsys):
    argv = ["--method", "man", "--net", "smallnet", "--K", "4", "--dataset", "synthetic"]
    assert assert_stages_refused([*argv, "--epochs", "1"], tmp_path / "runs", capsys) == (
        "locbench: error: --stages: man reads other modules' parameters "
        "(Capabilities(reads_modules=True)); a module it reads may train in another stage\n"
    )


def test_aux_flops_are_the_hand_count_on_smallnet():
    # K=2, batch B: the one auxiliary path reads unit 1's 16x16x16 output. A FLOP is a
    # multiply or an add; BatchNorm, ReLU, pooling, sigmoid and the losses count 0.
    B = 8
    d = describe(RunConfig(method="man", net="smallnet", K=2), batch_size=B)
    # two copies of unit 2 (conv 3x3 16->32 s2, conv 3x3 32->32, shortcut 1x1 16->32 s2, to
    # 8x8): the trainable one forward, input and weight gradients (3x), the frozen one forward
    # and input gradients (2x)
    copy = 2 * B * 8 * 8 * 32 * (16 * 9 + 32 * 9 + 16)
    # the decoder: upsampling 8x8 -> 16x16 as two products with interpolation matrices (forward
    # and input gradients), then conv 3x3 32->12 and 12->3 on 16x16 (3x)
    upsample = 2 * B * 32 * 16 * 8 * 8 + 2 * B * 32 * 16 * 8 * 16
    decoder = 2 * B * 16 * 16 * 12 * 32 * 9 + 2 * B * 16 * 16 * 3 * 12 * 9
    # 2c2f: conv 3x3 32->64 s2 to 4x4, conv 3x3 64->64, Linear(64, 128), Linear(128, 10) (3x)
    head = 2 * B * 4 * 4 * 64 * (32 * 9 + 64 * 9) + 2 * B * (64 * 128 + 128 * 10)
    expected = 3 * copy + 2 * copy + 2 * upsample + 3 * decoder + 3 * head
    assert d["flops_per_step"]["aux"] == d["modules"][0]["flops_aux"] == expected
