"""CUDA-only checks; skipped (see conftest.py) on machines without a GPU."""

import pytest
import torch

from locbench.data.base import DataInfo
from locbench.harness.run import execute
from locbench.harness.trainer import LocalTrainer
from locbench.methods import METHODS, make_params
from locbench.nets.backbone import get_backbone
from locbench.nets.split import Split
from locbench.settings.run_config import RunConfig

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("method, K", [("bp", None), ("dgl", 4)])
def test_cuda_run_records_allocator_peaks(method, K):
    r = execute(
        RunConfig(method=method, K=K, dataset="synthetic", epochs=1, batch_size=32, device="cuda")
    )
    assert r.status == "ok" and r.config["device"] == "cuda"
    cuda = r.cuda
    assert cuda["peak_allocated_bytes"] > cuda["allocated_at_start_bytes"] > 0
    assert cuda["peak_reserved_bytes"] >= cuda["peak_allocated_bytes"]
    assert cuda["cudnn_benchmark"] is True
    assert r.env["device_name"] != "cpu"


def test_cuda_K1_gradients_match_cpu():
    info = DataInfo("synthetic", 10, (3, 16, 16), (0.0,) * 3, (1.0,) * 3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    results = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        net = get_backbone("smallnet")
        split = Split(net.n_hidden, (0,))
        bp = METHODS.get("bp")
        trainer = LocalTrainer(
            net,
            split,
            bp(net, split, info, make_params(bp, {})),
            RunConfig(lr=0.1, epochs=1),
            torch.device(device),
        )
        trainer.train_step(*trainer.to_device(x, y))
        results.append([p.grad.cpu() for p in trainer.modules.parameters()])
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


def test_local_step_peak_below_bp_on_resnet32():
    """The reason local learning exists: DGL K=16 holds less than BP at the same batch."""
    peaks = {}
    for method, K in [("bp", None), ("dgl", 16)]:
        r = execute(
            RunConfig(
                method=method,
                K=K,
                net="resnet32",
                dataset="synthetic",
                epochs=1,
                batch_size=256,
                device="cuda",
                warmup_steps=1,
                measure_steps=1,
            )
        )
        peaks[method] = r.cuda["peak_allocated_bytes"] - r.cuda["allocated_at_start_bytes"]
    assert peaks["dgl"] < peaks["bp"]


@pytest.mark.parametrize("method", ["bp", "bp-ckpt", "dgl", "infopro", "predsim", "auglocal"])
def test_tracked_and_allocator_peaks_agree_within_10_percent(method):
    """The design target: on CUDA the tracked peak agrees with the allocator's within 10%."""
    K = None if method == "bp" else 16
    r = execute(
        RunConfig(
            method=method,
            K=K,
            net="resnet32",
            dataset="synthetic",
            epochs=1,
            batch_size=64,
            device="cuda",
            memory="both",
        )
    )
    assert r.status == "ok", r.message
    tracked, allocated = r.memory["peak_bytes_rounded"], r.cuda["peak_allocated_bytes"]
    assert abs(tracked - allocated) <= 0.1 * allocated, (tracked, allocated)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_run_with_channels_last(precision):
    r = execute(
        RunConfig(
            method="dgl", K=4, dataset="synthetic", epochs=1, batch_size=32, device="cuda",
            precision=precision, channels_last=True,
        )
    )  # fmt: skip
    assert r.status == "ok", r.message
    assert r.config["precision"] == precision and r.config["channels_last"] is True
    assert r.cuda["peak_allocated_bytes"] > r.cuda["allocated_at_start_bytes"] > 0


def test_cuda_autocast_refusing_an_op_is_one_line():
    # CUDA autocast refuses F.binary_cross_entropy (InfoPro's reconstruction loss)
    from locbench.errors import UserError

    config = RunConfig(
        method="infopro", K=4, dataset="synthetic", epochs=1, batch_size=32, device="cuda",
        precision="bf16",
    )  # fmt: skip
    with pytest.raises(UserError, match="^--precision bf16 cannot run this step on cuda: .*unsafe"):
        execute(config)
