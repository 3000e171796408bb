"""HPFF (hierarchical cascade + patch-split decoder) against the authors' code (Zeudfish/HPFF):
the auxiliary sizes written by hand, the gradients of one module pair against hand-written
autograd, tracked memory == the estimate, FLOPs, and --stages refused."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from locbench.analysis.describe import describe
from locbench.harness.run import prepare
from locbench.harness.trainer import LocalTrainer
from locbench.settings.run_config import RunConfig
from tests.method_checks import assert_stages_refused, assert_tracked_equals_estimate


def config(**kw) -> RunConfig:
    base = {"method": "hpff", "net": "smallnet", "K": 4, "dataset": "synthetic", "epochs": 1}
    return RunConfig(**{**base, **kw})


# ResNet-32 at the authors' K=16 (README): 16 hidden units (stem + 15 blocks); the stem alone
# merges into module 1, so 15 modules (their Encoder_Net): module 0 = stem + block 1 (no loss
# of its own), modules 1..14 = blocks 2..15. Cuts k = 1..13 end at units 2..14: units 2-5 have
# 16 channels (32x32), 6-10 32 (16x16), 11-14 64 (8x8): 4, 5 and 4 auxiliary paths.
#
# Each path: two 2c2f classifiers (greedy "net_classifier", cascade "aux_classifier") and the
# patch-split decoder. 2c2f on C channels (out = 2C with stride 2 below 64, else 64):
#   C*out*9 + 2*out + out*out*9 + 2*out + (out*128 + 128) + (128*10 + 10)
#   C=16 (out 32): 4,608 + 64 + 9,216 + 64 + 4,224 + 1,290    = 19,466
#   C=32 (out 64): 18,432 + 128 + 36,864 + 128 + 8,320 + 1,290 = 65,162
#   C=64 (out 64): 36,864 + 128 + 36,864 + 128 + 8,320 + 1,290 = 83,594
# patch decoder: 4 quadrant decoders of (C*12*9 + 12) + 2*12 + (12*3*9 + 3) = 108*C + 363:
#   C=16: 4 * 2,091 = 8,364   C=32: 4 * 3,819 = 15,276   C=64: 4 * 7,275 = 29,100
# per path: C=16: 2*19,466 + 8,364 = 47,296; C=32: 2*65,162 + 15,276 = 145,600;
#           C=64: 2*83,594 + 29,100 = 196,288
# all: 4*47,296 + 5*145,600 + 4*196,288 = 189,184 + 728,000 + 785,152 = 1,702,336
# (The authors also build, and never use, a "net_decoder" per cut and the auxiliary nets of
# their first and last modules: not counted.)
RESNET32_K16 = 1_702_336


def test_aux_parameters_resnet32_K16_are_the_hand_computed_ones():
    d = describe(RunConfig(method="hpff", net="resnet32", K=16, dataset="synthetic"), batch_size=2)
    assert d["params_aux"] == RESNET32_K16
    assert d["params_aux_frozen"] == 0
    modules = d["modules"]
    assert len(modules) == 15 and modules[0]["units"] == [0, 1]
    assert modules[0]["params_aux"] == 0 and modules[-1]["params_aux"] == 0
    assert [m["params_aux"] for m in modules[1:14]] == [47_296] * 4 + [145_600] * 5 + [196_288] * 4


def test_lambdas_follow_the_authors_ratio():
    # ResNet-32 K=16: 15 modules, the authors' ratio i / (local_module_num - 2) = k / 14
    p = prepare(config(net="resnet32", K=16))
    assert p.split.K == 15
    want = [(5 * (1 - k / 14), 0.5 * (1 - k / 14)) for k in range(14)]
    assert p.method.lambdas == pytest.approx(want)
    assert p.method.overlap(1) == 2 and p.method.overlap(14) == 1


def test_gradients_equal_hand_written_autograd():
    # smallnet K=4: the stem alone merges into module 1, so 3 modules: module 0 = units 0, 1
    # (no loss), module 1 = unit 2, module 2 = unit 3 and the head. Module 1 reruns units 0, 1
    # from the image; module 2 reruns unit 2 from its (detached) input.
    p = prepare(config())
    assert p.split.starts == (0, 2, 3)
    trainer = LocalTrainer(p.backbone, p.split, p.method, p.config, torch.device("cpu"))
    units = list(copy.deepcopy(p.backbone.units))
    aux = copy.deepcopy(p.method.aux[1])
    mean, std = p.method.mean, p.method.std
    x, y = next(iter(p.data.train))
    x, y = trainer.to_device(x, y)
    trainer.train_step(x, y)

    wx, wy = 0.001, 0.999
    lambda1, lambda2 = 5 * (1 - 1 / 2), 0.5 * (1 - 1 / 2)  # ratio 1 / (K - 1)
    image = (x * std + mean).clamp(0, 1)
    # the authors' two paths: greedy "x" (each module on the last one's detached output) and
    # cascade "y" (module k-1 rerun from its own detached input, then module k)
    x1 = units[2](units[1](units[0](x)).detach())  # module 1, greedy: stops at its input
    y0 = units[1](units[0](x))  # module 0 rerun by module 1 (attached)
    z = units[2](y0)
    # patch-split reconstruction: 8x8 features -> four 4x4 quadrants -> 8x8 image quadrants
    bce = sum(
        F.binary_cross_entropy(
            dec.net(F.interpolate(z[:, :, r : r + 4, c : c + 4], size=(8, 8), mode="bilinear",
                                  align_corners=True)),
            image[:, :, 2 * r : 2 * r + 8, 2 * c : 2 * c + 8],
        )
        for dec, (r, c) in zip(aux.decoder.decoders, [(0, 0), (0, 4), (4, 0), (4, 4)])
    )  # fmt: skip
    cascade = lambda1 * bce + lambda2 * F.cross_entropy(aux.cascade(z), y)
    (wx * F.cross_entropy(aux.greedy(x1), y) + wy * cascade).backward()
    logits_x = units[4](units[3](x1.detach()))  # the last module, greedy
    logits_y = units[4](units[3](units[2](y0.detach())))  # module 1 rerun, then the last
    (wx * F.cross_entropy(logits_x, y) + wy * F.cross_entropy(logits_y, y)).backward()
    for i, unit in enumerate(units):
        for (name, want), got in zip(unit.named_parameters(), p.backbone.units[i].parameters()):
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6,
                                       msg=f"unit {i} {name}")  # fmt: skip
    for (name, want), got in zip(aux.named_parameters(), p.method.aux[1].parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(q.grad is None for q in p.method.aux[0].parameters())


def test_tracked_memory_equals_the_estimate_and_flops_add_up():
    assert_tracked_equals_estimate(config())


def test_stages_are_refused_in_one_line_before_training(tmp_path, capsys):
    argv = ["--method", "hpff", "--net", "smallnet", "--K", "4", "--dataset", "synthetic"]
    assert assert_stages_refused([*argv, "--epochs", "1"], tmp_path / "runs", capsys) == (
        "locbench: error: --stages: hpff declares an overlap (module k reruns units of module "
        "k-1): the two may train in different stages\n"
    )


def test_aux_flops_are_the_hand_count_on_smallnet():
    # K=4 trains 3 modules (the stem merged into the first): units 0-1, 2, 3 and the head.
    # Module 0 has no loss of its own; module 1's path reads unit 2's 32x8x8 output. A FLOP is
    # a multiply or an add; BatchNorm, ReLU, pooling, sigmoid and the losses count 0.
    B = 8
    d = describe(RunConfig(method="hpff", net="smallnet", K=4), batch_size=B)
    # two 2c2f classifiers (greedy and cascade), each forward, input and weight gradients (3x):
    # conv 3x3 32->64 s2 to 4x4, conv 3x3 64->64, Linear(64, 128), Linear(128, 10)
    head = 2 * B * 4 * 4 * 64 * (32 * 9 + 64 * 9) + 2 * B * (64 * 128 + 128 * 10)
    # the patch decoder, four quadrants of 32x4x4 each upsampled to 8x8 by two products with
    # interpolation matrices (forward and input gradients), then conv 3x3 32->12, 12->3 (3x)
    upsample = 2 * B * 32 * 8 * 4 * 4 + 2 * B * 32 * 8 * 4 * 8
    decoder = 2 * B * 8 * 8 * 12 * 32 * 9 + 2 * B * 8 * 8 * 3 * 12 * 9
    expected = 2 * 3 * head + 4 * (2 * upsample + 3 * decoder)
    assert [m["flops_aux"] for m in d["modules"]] == [0, expected, 0]
