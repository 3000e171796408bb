"""Mixed precision (autocast, the fp16 loss scaler) and channels-last memory format in the
harness: what a step computes, skips and records."""

import pytest
import torch
from torch import nn

from locbench.data.base import DataInfo
from locbench.errors import UserError
from locbench.harness.precision import MixedPrecision, check_autocast
from locbench.harness.run import execute
from locbench.harness.trainer import LocalTrainer
from locbench.harness.windows import steady_state_peak
from locbench.methods import METHODS, Method, make_params
from locbench.methods.dgl import DGL
from locbench.nets.backbone import Backbone, get_backbone
from locbench.nets.split import Split
from locbench.settings.run_config import RunConfig

CPU = torch.device("cpu")
INFO = DataInfo("synthetic", 10, (3, 16, 16), (0.0,) * 3, (1.0,) * 3)
INITIAL_SCALE = 2.0**16  # GradScaler's default init_scale; an overflow halves it


def make_trainer(method_cls, K, net=None, seed=0, **settings):
    torch.manual_seed(seed)
    net = net() if net is not None else get_backbone("smallnet")  # built after seeding
    params = make_params(method_cls, {}) if method_cls is not Method else None
    split = method_cls.plan_split(Split.uniform(net.n_hidden, K), params)
    method = method_cls(net, split, INFO, params)
    config = RunConfig(lr=0.1, epochs=1, **settings)
    return LocalTrainer.for_config(config, net, split, method, CPU)


def batch(seed=1, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def snapshot(trainer):
    return [p.detach().clone() for p in trainer.parameters()]


class OverflowingDGL(DGL):
    """DGL whose module-1 local loss is so large that, times the loss scale, its gradients
    overflow in fp16; the loss itself stays finite in float32."""

    def local_loss(self, k, out, batch):
        loss = super().local_loss(k, out, batch)
        return loss * 1e8 if k == 1 else loss


def test_fp16_overflow_in_one_module_skips_the_step_for_every_module_and_halves_the_scale():
    trainer = make_trainer(OverflowingDGL, K=3, precision="fp16")
    before = snapshot(trainer)
    losses = trainer.train_step(*batch())
    assert all(torch.isfinite(t) for t in [*losses.local, losses.output])
    grads = {k: [p.grad for p in trainer.modules[k].parameters()] for k in range(3)}
    # only module 1 overflowed: modules 0 and 2 have finite (unscaled) gradients...
    assert all(torch.isfinite(g).all() for k in (0, 2) for g in grads[k])
    assert not all(torch.isfinite(g).all() for g in grads[1])
    # ... yet no parameter of any module moved, and SGD made no momentum buffer
    assert all(map(torch.equal, before, trainer.parameters()))
    assert trainer.optimizer.state_dict()["state"] == {}
    assert trainer.amp.scaler.get_scale() == INITIAL_SCALE / 2


def test_fp16_step_without_overflow_updates_every_module_and_keeps_the_scale():
    trainer = make_trainer(DGL, K=3, precision="fp16")
    before = {id(p): p.detach().clone() for p in trainer.parameters()}
    trainer.train_step(*batch())
    for k, module in enumerate(trainer.modules):
        assert all(not torch.equal(before[id(p)], p) for p in module.parameters()), k
    assert trainer.amp.scaler.get_scale() == INITIAL_SCALE


def tiny_net() -> Backbone:
    """Two conv units and a linear head, without BatchNorm: fp16 rounding is not amplified by
    a batch's variance, so gradients can be compared closely."""
    seq = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)),
    )
    return Backbone.from_sequential(seq, (3, 16, 16), name="tiny")


# Relative error of a whole gradient; seen on this net: fp16 up to 9e-3, bf16 up to 1.7e-2 (the
# first convolution's, whose input is rounded too), against unit roundoffs of 4.9e-4 / 3.9e-3.
@pytest.mark.parametrize("precision, tolerance", [("fp16", 2e-2), ("bf16", 5e-2)])
def test_unscaled_low_precision_gradients_equal_fp32_gradients(precision, tolerance):
    # Method itself: the default auxiliary net (pooled linear classifier) on module 0
    full = make_trainer(Method, K=2, net=tiny_net)
    low = make_trainer(Method, K=2, net=tiny_net, precision=precision)
    x, y = batch()
    full.train_step(x, y)
    low.train_step(x, y)
    pairs = list(zip(full.parameters(), low.parameters()))
    assert len(pairs) == 8  # 2 convs and the head, plus module 0's auxiliary linear layer
    for a, b in pairs:
        assert b.grad.dtype == torch.float32
        # a loss scale left in (or applied twice) would be 65536x off
        assert (b.grad - a.grad).norm() <= tolerance * a.grad.norm()
    assert (low.amp.scaler is not None) == (precision == "fp16")


def test_bf16_record_counts_low_precision_activations_and_float32_state():
    x, y = batch(n=32)
    peaks = {}
    for precision in ("fp32", "bf16"):
        trainer = make_trainer(DGL, K=4, precision=precision)
        peaks[precision] = steady_state_peak(trainer, x, y)
    fp32, bf16 = peaks["fp32"], peaks["bf16"]
    # parameters, buffers and optimizer state stay float32: the same bytes
    assert bf16.breakdown["parameters"] == fp32.breakdown["parameters"] > 0
    assert bf16.breakdown["optimizer_state"] == fp32.breakdown["optimizer_state"] > 0
    # activations are bf16, plus the bf16 copies of the weights autocast casts
    assert bf16.breakdown["backbone_activations"] < 0.6 * fp32.breakdown["backbone_activations"]
    assert bf16.peak_bytes < fp32.peak_bytes


def test_run_records_precision_and_layout():
    config = RunConfig(
        method="dgl", K=2, net="smallnet", dataset="synthetic", epochs=1, precision="bf16",
        channels_last=True,
    )  # fmt: skip
    record = execute(config)
    assert record.status == "ok", record.message
    assert record.config["precision"] == "bf16" and record.config["channels_last"] is True
    assert record.memory["peak_bytes"] > 0 and 0 <= record.final_test_acc <= 100
    assert RunConfig().precision == "fp32" and RunConfig().channels_last is False


def test_channels_last_converts_4d_weights_and_inputs_and_keeps_the_loss():
    x, y = batch()
    default = make_trainer(METHODS.get("auglocal"), K=4)
    last = make_trainer(METHODS.get("auglocal"), K=4, channels_last=True)
    weights = [p for p in last.parameters() if p.dim() == 4]
    aux_weights = [p for p in last.method.parameters() if p.dim() == 4]
    assert len(weights) > len(aux_weights) > 0  # backbone and auxiliary convolutions
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    # 3x3 kernels: channels-last is a different layout, not a coincidence of size-1 dims
    assert not any(p.is_contiguous() for p in weights if p.shape[-1] == 3)
    assert all(p.is_contiguous() for p in default.parameters())
    inputs = []
    last.modules[0].register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    a, b = default.train_step(x, y), last.train_step(x, y)
    assert inputs[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(b.output, a.output, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.stack(b.local), torch.stack(a.local), rtol=1e-5, atol=1e-6)
    # the update keeps the layout (the optimizer holds the converted parameters)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def test_unknown_precision_is_one_line():
    with pytest.raises(UserError, match="fp8") as e:
        RunConfig(precision="fp8")
    assert "\n" not in str(e.value) and "fp32, bf16, fp16" in str(e.value)


def test_a_device_without_autocast_is_one_line():
    with pytest.raises(UserError, match="^--precision bf16 is not supported on meta by torch"):
        check_autocast("bf16", "meta", torch.bfloat16)


def test_a_kernel_without_low_precision_becomes_one_line_and_others_pass_through():
    amp = MixedPrecision("fp16", CPU)
    missing = "\"addmm_impl_cpu_\" not implemented for 'Half'\nmore detail"
    with pytest.raises(UserError) as e, amp.autocast():
        raise RuntimeError(missing)
    assert str(e.value) == (
        '--precision fp16 cannot run this step on cpu: "addmm_impl_cpu_" not implemented '
        "for 'Half'"
    )
    with pytest.raises(RuntimeError, match="shape mismatch"), amp.autocast():
        raise RuntimeError("shape mismatch")
    # fp32 never translates: the same error is a real failure there
    with (
        pytest.raises(RuntimeError, match="not implemented"),
        MixedPrecision("fp32", CPU).autocast(),
    ):
        raise RuntimeError(missing)


def test_meta_steps_count_the_same_flops_in_every_precision():
    from locbench.harness.build import resolve
    from locbench.harness.flops import config_flops

    flops = {
        p: config_flops(resolve(RunConfig(method="dgl", K=4, precision=p)), batch_size=8)
        for p in ("fp32", "bf16", "fp16")
    }
    assert flops["bf16"] == flops["fp16"] == flops["fp32"]


def test_a_bf16_cifar10_run_tracks_what_estimate_predicts_to_the_byte(tmp_path, capsys):
    """The issue's acceptance run, small: cifar10 from a folder in the real format, the tensor
    pipeline, bf16; the record's tracked peak equals `locbench estimate --precision bf16`."""
    import json

    import numpy as np

    from locbench.cli.main import main
    from tests.test_torchvision_data import write_cifar

    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    write_cifar(tmp_path, train, rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8))
    common = ["--net", "resnet20", "--K", "3", "--precision", "bf16"]
    argv = ["run", "--method", "dgl", *common, "--dataset", "cifar10", "--data-root",
            str(tmp_path), "--batch-size", "2", "--epochs", "2", "--warmup-steps", "1",
            "--measure-steps", "1", "--no-progress", "--out", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 0
    (path,) = (tmp_path / "runs").glob("*.json")
    record = json.loads(path.read_text())
    assert record["config"]["precision"] == "bf16" and record["config"]["loader"] == "tensor"
    assert 0 <= record["data_wait_share"] < 1
    capsys.readouterr()
    assert main(["estimate", "--methods", "dgl", *common, "--batch", "2", "--json"]) == 0
    (estimate,) = json.loads(capsys.readouterr().out)
    assert record["memory"]["peak_bytes"] == estimate["peak_bytes_unrounded"]
