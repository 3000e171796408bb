"""Data-parallel runs (locbench.harness.distributed): N gloo ranks on the CPU compute what one
process
computes on the global batch, and `locbench run --nproc N` records it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from locbench.harness.distributed import Ranks, free_port
from locbench.harness.run import prepare
from locbench.harness.trainer import LocalTrainer
from locbench.settings.run_config import RunConfig

STEPS = 3
BATCH = 10  # global; 5 per rank with 2 ranks

pytestmark = pytest.mark.integration  # every test spawns gloo ranks


def _config(method: str, world: int, sync_bn: bool, batch: int = BATCH) -> RunConfig:
    return RunConfig(
        net="smallnet",
        method=method,
        K=2 if method != "bp" else None,
        dataset="synthetic",
        batch_size=batch,
        lr=0.1,
        epochs=1,
        warmup_epochs=0,
        augment=False,
        sync_bn=sync_bn,
        nproc=world,
        device="cpu",
    )


def _train(
    rank: int, world: int, port: int, method: str, sync_bn: bool, out: str, steps: int = STEPS
) -> None:
    """``steps`` steps of ``method``; rank 0 saves every parameter and buffer to ``out``."""
    torch.set_num_threads(1)
    ranks = None
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
        ranks = Ranks.from_env()
        ranks.start(torch.device("cpu"))
    p = prepare(_config(method, world, sync_bn))
    cpu = torch.device("cpu")
    trainer = LocalTrainer(p.backbone, p.split, p.method, p.config, cpu, ranks=ranks)
    for _, (x, y) in zip(range(steps), p.data.train):
        trainer.train_step(*trainer.to_device(*trainer.share(x, y)))
    if rank == 0:
        state = {f"modules.{k}": v for k, v in trainer.modules.state_dict().items()}
        state.update({f"method.{k}": v for k, v in trainer.method.state_dict().items()})
        torch.save(state, out)
    if ranks is not None:
        ranks.stop()


def _states(tmp_path: Path, method: str, sync_bn: bool, steps: int = STEPS) -> tuple[dict, dict]:
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    _train(0, 1, 0, method, sync_bn, str(one), steps)
    args = (2, free_port(), method, sync_bn, str(two), steps)
    mp.spawn(_train, args=args, nprocs=2, join=True)
    return torch.load(one), torch.load(two)


@pytest.mark.parametrize("method", ["dgl", "bp"])
def test_two_ranks_with_sync_bn_equal_one_process_on_the_global_batch(tmp_path, method):
    single, ranks = _states(tmp_path, method, sync_bn=True)
    assert single.keys() == ranks.keys()
    moved = 0
    for name, value in single.items():
        # every parameter, and the BatchNorm running statistics and step counts
        torch.testing.assert_close(ranks[name], value, atol=1e-5, rtol=0, msg=name)
        moved += not name.endswith("num_batches_tracked")
    assert moved > 10
    counts = [v.item() for k, v in ranks.items() if k.endswith("num_batches_tracked")]
    assert counts and set(counts) == {STEPS}


def test_without_sync_bn_only_batchnorm_statistics_differ_in_kind(tmp_path):
    """Per-rank BatchNorm normalises each half on its own: the ranks no longer compute the
    global batch's step, so the parameters move apart from the single process's."""
    single, ranks = _states(tmp_path, "dgl", sync_bn=False)
    gaps = [
        (single[k] - ranks[k]).abs().max().item() for k in single if single[k].is_floating_point()
    ]
    assert max(gaps) > 1e-4


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "locbench", "run", "--net", "smallnet", "--method", "dgl", "--K",
        "2", "--dataset", "digits", "--epochs", "1", "--device", "cpu", "--no-progress",
        "--out", str(out), *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_run_nproc_writes_one_record_with_every_ranks_peaks(tmp_path):
    from locbench.records import load_results
    from locbench.reports.tables import comparison_table

    out = tmp_path / "runs"
    done = _run(out, "--nproc", "2")
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok"
    assert record["config"]["nproc"] == 2
    dist = record["distributed"]
    assert dist["world_size"] == 2
    tracked = dist["tracked_peak_bytes"]
    assert len(tracked["per_rank"]) == 2
    assert tracked["max"] == max(tracked["per_rank"])
    assert tracked["mean"] == sum(tracked["per_rank"]) / 2
    assert record["memory"]["peak_bytes"] == tracked["per_rank"][0]  # rank 0's breakdown
    assert dist["cuda_peak_allocated_bytes"] is None  # no CUDA here
    # the report tells the data-parallel run from the same configuration on one process
    assert _run(out).returncode == 0
    labels = set(comparison_table(load_results(out))["variant"])
    assert labels == {"dgl nproc=1", "dgl nproc=2"}


FROZEN = """
import torch.nn.functional as F
from torch import nn

from locbench.methods.dgl import DGL


class FrozenProjection(DGL):
    # a parameter the local losses use but never train (requires_grad=False), as a frozen
    # copy of a later block in an EMA method
    def __init__(self, *args):
        super().__init__(*args)
        n = self.data.num_classes
        self.projection = nn.Linear(n, n)
        self.projection.requires_grad_(False)

    def local_loss(self, k, out, batch):
        return F.cross_entropy(self.projection(self.aux[k](out)), batch.y)
"""


def test_frozen_parameters_under_two_ranks_equal_one_process(tmp_path):
    path = tmp_path / "frozen.py"
    path.write_text(FROZEN)
    method = f"{path}:FrozenProjection"
    single, ranks = _states(tmp_path, method, sync_bn=True)
    assert single.keys() == ranks.keys()
    for name, value in single.items():
        torch.testing.assert_close(ranks[name], value, atol=1e-5, rtol=0, msg=name)
    fresh = prepare(_config(method, 1, True)).method.projection.weight
    assert torch.equal(single["method.projection.weight"], fresh)  # never optimised


def test_an_overlap_under_two_ranks_equals_one_process(tmp_path):
    # module 1's loss also trains module 0's last unit: two backwards reach it in one step,
    # and the ranks average its gradient once, after both
    # Two steps, not three: at the third, one element of unit 1's output lies within float
    # rounding of zero, and the two BatchNorms (one process's, and the ranks' global one, which
    # sums in another order) put it on either side of the ReLU: 1.58e-7 on the ranks, 0 in one
    # process (found with float64 parameters, where that single flip is the only difference in
    # the forward; the loss agrees, unit 0's gradient moves by 1%). Which side is chance.
    example = Path(__file__).resolve().parents[1] / "examples" / "cascade_overlap.py"
    single, ranks = _states(tmp_path, f"{example}:CascadeOverlap", sync_bn=True, steps=2)
    assert single.keys() == ranks.keys()
    for name, value in single.items():
        torch.testing.assert_close(ranks[name], value, atol=1e-5, rtol=0, msg=name)


READS_GRADIENTS = """
import torch

from locbench import Capabilities
from locbench.methods.dgl import DGL


class KeepsGradient(DGL):
    # keeps module 0's output gradient as a synthetic-gradient method's target would be
    capabilities = Capabilities(reads_gradients=True)

    def __init__(self, *args):
        super().__init__(*args)
        self.register_buffer("seen", torch.zeros(0))

    def local_loss(self, k, out, batch):
        if k == 0:
            scale = batch.loss_scale
            out.register_hook(lambda g: setattr(self, "seen", (g / scale).detach().clone()))
        return super().local_loss(k, out, batch)
"""


def test_a_gradient_read_on_a_rank_is_one_processs_divided_by_the_loss_scale(tmp_path):
    # each rank's loss is its share's mean, so the gradients it backpropagates are the global
    # batch over the share (here 2) times one process's: batch.loss_scale says so
    path = tmp_path / "keeps.py"
    path.write_text(READS_GRADIENTS)
    single, ranks = _states(tmp_path, f"{path}:KeepsGradient", sync_bn=True, steps=1)
    one, rank0 = single["method.seen"], ranks["method.seen"]
    assert one.shape[0] == BATCH and rank0.shape[0] == BATCH // 2
    assert one.abs().max() > 0
    torch.testing.assert_close(rank0, one[: BATCH // 2], atol=1e-7, rtol=1e-4)
