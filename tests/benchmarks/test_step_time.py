"""Training-step time per method (pytest-benchmark). Disabled by default (`--benchmark-disable`
in pyproject.toml runs each body once as a test); `pytest tests/benchmarks --benchmark-enable`
times them."""

import pytest
import torch

from locbench.data.base import DataInfo
from locbench.harness.trainer import LocalTrainer
from locbench.methods import METHODS, make_params
from locbench.nets.backbone import get_backbone
from locbench.nets.split import Split
from locbench.settings.run_config import RunConfig

INFO = DataInfo("synthetic", 10, (3, 32, 32), (0.0,) * 3, (1.0,) * 3)


@pytest.mark.parametrize("method, K", [("bp", 1), ("dgl", 16)])
def test_resnet32_step_time(benchmark, method, K):
    torch.manual_seed(0)
    net = get_backbone("resnet32")
    cls = METHODS.get(method)
    split = cls.plan_split(Split.uniform(net.n_hidden, K), None)
    trainer = LocalTrainer(
        net,
        split,
        cls(net, split, INFO, make_params(cls, {})),
        RunConfig(lr=0.01, epochs=1),
        torch.device("cpu"),
    )
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    losses = benchmark(trainer.train_step, x, y)
    assert len(losses.local) == split.K - 1
    assert torch.isfinite(losses.output)
