"""MLAAN (HPFF's cascade + copies of later blocks + a moving-average copy of the first) against
the authors' code (Wendy231015/MLAAN): the auxiliary sizes written by hand, the gradients of
one module pair against hand-written autograd, the moving average after three steps, tracked
memory == the estimate, FLOPs, and --stages refused."""

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
    base = {"method": "mlaan", "net": "smallnet", "K": 4, "dataset": "synthetic", "epochs": 1}
    return RunConfig(**{**base, **kw})


# ResNet-32 at K=16: the stem merges into module 1, so the authors' 15 modules (their
# run32-cifar10.txt's --local_module_num 15; config2.py). Paths k = 1..13 end at units 2..14;
# each copies the blocks of the authors' InfoPro_Aux table (hidden units: layer1[j] = 1+j,
# layer2[j] = 6+j, layer3[j] = 11+j):
#   cuts 2-5 (16 ch): [6, 11, 13|14, 15]   cuts 6-10 (32 ch): [11, 13, 14, 15]
#   cut 11: [12, 13, 15]   cut 12: [13, 14, 15]   cut 13: [14, 15]   cut 14: [15]
# BasicBlock sizes (3x3 convs without bias, 2 BN params per channel, 1x1 conv + BN shortcut):
#   16->32 s2: 16*32*9 + 32*32*9 + 2*64 + 16*32 + 64   = 14,528
#   32->64 s2: 32*64*9 + 64*64*9 + 2*128 + 32*64 + 128 = 57,728
#   64->64:    2*64*64*9 + 2*128                       = 73,984
# greedy classifier Linear(C, 10): 170 (C=16), 330 (32), 650 (64); cascade head Linear(64, 10)
# = 650. The first copy is doubled by a frozen (EMA) copy.
#   cuts 2-5:  14,528 + 57,728 + 2*73,984 + 170 + 650 = 221,044 trainable, 14,528 frozen
#   cuts 6-10: 57,728 + 3*73,984 + 330 + 650          = 280,660 trainable, 57,728 frozen
#   cut 11, 12: 3*73,984 + 650 + 650                   = 223,252 trainable, 73,984 frozen
#   cut 13:     2*73,984 + 650 + 650                   = 149,268 trainable, 73,984 frozen
#   cut 14:     73,984 + 650 + 650                     =  75,284 trainable, 73,984 frozen
# trainable: 4*221,044 + 5*280,660 + 2*223,252 + 149,268 + 75,284
#          = 884,176 + 1,403,300 + 446,504 + 149,268 + 75,284 = 2,958,532
# frozen: 4*14,528 + 5*57,728 + 4*73,984 = 58,112 + 288,640 + 295,936 = 642,688
# all: 3,601,220. (The authors also build 825 unused 64-channel heads, a net_classifier per
# block and frozen copies of every copied block, of which the forward uses the first only:
# not counted.)
RESNET32_K16_TRAINABLE = 2_958_532
RESNET32_K16_FROZEN = 642_688


def test_aux_parameters_resnet32_K16_are_the_hand_computed_ones():
    d = describe(RunConfig(method="mlaan", net="resnet32", K=16, dataset="synthetic"), 2)
    assert d["params_aux_frozen"] == RESNET32_K16_FROZEN
    assert d["params_aux"] == RESNET32_K16_TRAINABLE + RESNET32_K16_FROZEN == 3_601_220
    modules = d["modules"]
    assert len(modules) == 15 and modules[0]["params_aux"] == modules[-1]["params_aux"] == 0
    assert modules[1]["layers"][3:6] == [
        "BasicBlock(16->32, s2)",
        "BasicBlock(16->32, s2) (frozen)",
        "BasicBlock(32->64, s2)",
    ]
    p = prepare(RunConfig(method="mlaan", net="resnet32", K=16, dataset="synthetic"))
    assert p.method.copied[1:] == [
        [6, 11, 13, 15], [6, 11, 14, 15], [6, 11, 13, 15], [6, 11, 14, 15],
        *[[11, 13, 14, 15]] * 5, [12, 13, 15], [13, 14, 15], [14, 15], [15],
    ]  # fmt: skip


def test_the_copied_blocks_without_the_authors_table():
    # ResNet-32 K=4 (no table): units after the cut that reshape, the last, then the last ones
    p = prepare(RunConfig(method="mlaan", net="resnet32", K=4, dataset="synthetic"))
    assert p.split.starts == (0, 4, 8, 12)
    assert p.method.copied == [None, [11, 13, 14, 15], [12, 13, 14, 15]]
    # the copies start from the backbone's initial weights, the frozen copy too
    unit = p.backbone.units[11]
    for copied in (p.method.aux[1].lb, p.method.aux[1].ema):
        assert all(map(torch.equal, copied.parameters(), unit.parameters()))


def test_gradients_equal_hand_written_autograd():
    # smallnet K=4 -> 3 modules: module 0 = units 0, 1 (no loss), module 1 = unit 2, module 2
    # = unit 3 and the head. Path 1 copies unit 3 (trainable + frozen), then Linear(64, 10).
    p = prepare(config())
    assert p.split.starts == (0, 2, 3) and p.method.copied == [None, [3]]
    trainer = LocalTrainer(p.backbone, p.split, p.method, p.config, torch.device("cpu"))
    units = list(copy.deepcopy(p.backbone.units))
    aux, greedy = copy.deepcopy(p.method.aux[1]), copy.deepcopy(p.method.greedy[1])
    x, y = next(iter(p.data.train))
    x, y = trainer.to_device(x, y)
    trainer.train_step(x, y)

    x1 = units[2](units[1](units[0](x)).detach())  # module 1, greedy: stops at its input
    y0 = units[1](units[0](x))  # module 0 rerun by module 1 (attached)
    z = units[2](y0)
    cascade = F.cross_entropy(aux.head(aux.lb(z) + aux.ema(z)), y)
    (0.001 * F.cross_entropy(greedy(x1), y) + 0.999 * cascade).backward()
    F.cross_entropy(units[4](units[3](units[2](y0.detach()))), y).backward()  # cascade alone
    for i, unit in enumerate(units):
        for (name, want), got in zip(unit.named_parameters(), p.backbone.units[i].parameters()):
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6,
                                       msg=f"unit {i} {name}")  # fmt: skip
    mine = [*p.method.aux[1].parameters(), *p.method.greedy[1].parameters()]
    for want, got in zip([*aux.parameters(), *greedy.parameters()], mine):
        if want.requires_grad:
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6)
        else:
            assert got.grad is None


@pytest.mark.parametrize("ema", ["last", "every"])
def test_the_moving_average_after_three_steps_is_the_hand_computed_one(ema):
    # smallnet K=4 without the stem merge: 4 modules, paths 1 (copies units 2, 3) and 2
    # (copies unit 3). After the last module's backward, before the update, the frozen copy
    # of a path's first block moves towards that unit's weights: the last path's only
    # (the authors' code), or every path's.
    m = 0.5
    p = prepare(config(method_params={"momentum": str(m), "ema": ema, "merge_stem": "false"}))
    method = p.method
    assert p.split.K == 4 and method.copied == [None, [2, 3], [3]]
    trainer = LocalTrainer(p.backbone, p.split, method, p.config, torch.device("cpu"))
    units = p.backbone.units
    start = {k: {n: t.clone() for n, t in method.aux[k].ema.named_parameters()} for k in (1, 2)}
    seen = []  # the copied units' weights at each step's last backward: before its update
    for _, (x, y) in zip(range(3), p.data.train):
        seen.append({u: {n: t.detach().clone() for n, t in units[u].named_parameters()}
                     for u in (2, 3)})  # fmt: skip
        trainer.train_step(*trainer.to_device(x, y))
    optimised = {id(q) for g in trainer.optimizer.param_groups for q in g["params"]}
    moved = {1, 2} if ema == "every" else {2}
    for k, unit in ((1, 2), (2, 3)):
        for name, t in method.aux[k].ema.named_parameters():
            e0 = start[k][name]  # the unit's initial weights (a deep copy)
            torch.testing.assert_close(e0, seen[0][unit][name], rtol=0, atol=0)
            w0, w1, w2 = (s[unit][name] for s in seen)
            expected = m**3 * e0 + (1 - m) * (m**2 * w0 + m * w1 + w2) if k in moved else e0
            torch.testing.assert_close(t, expected, rtol=0, atol=1e-6)
            assert not t.requires_grad and t.grad is None and id(t) not in optimised
        assert all(id(q) in optimised for q in method.aux[k].lb.parameters())
    assert not torch.equal(seen[2][3]["conv1.weight"], seen[0][3]["conv1.weight"])  # it trains


def test_tracked_memory_equals_the_estimate_and_flops_add_up():
    assert_tracked_equals_estimate(config())


def test_stages_are_refused_in_one_line_before_training(tmp_path, capsys):
    argv = ["--method", "mlaan", "--net", "smallnet", "--K", "4", "--dataset", "synthetic"]
    assert assert_stages_refused([*argv, "--epochs", "1"], tmp_path / "runs", capsys) == (
        "locbench: error: --stages: mlaan declares an overlap (module k reruns units of module "
        "k-1): the two may train in different stages\n"
    )


def test_aux_flops_are_the_hand_count_on_smallnet():
    # K=4 trains 3 modules (units 0-1, 2, 3 and the head); module 1's path reads unit 2's
    # 32x8x8 output. A FLOP is a multiply or an add; BatchNorm, ReLU and pooling count 0.
    B = 8
    d = describe(RunConfig(method="mlaan", net="smallnet", K=4), batch_size=B)
    # a trainable copy of unit 3 (conv 3x3 32->64 s2 to 4x4, conv 3x3 64->64, shortcut 1x1
    # 32->64 s2): forward, input and weight gradients (3x); its frozen moving copy: forward and
    # input gradients (2x); Linear(64, 10) on the sum and the greedy Linear(32, 10) (3x)
    copy = 2 * B * 4 * 4 * 64 * (32 * 9 + 64 * 9 + 32)
    expected = 3 * copy + 2 * copy + 3 * 2 * B * (64 * 10 + 32 * 10)
    assert [m["flops_aux"] for m in d["modules"]] == [0, expected, 0]
