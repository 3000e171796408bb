"""Training-step time of each method relative to BP: ResNet-32, K=16, batch 64, CPU.

The AugLocal authors' code gives dgl 1.10x, predsim 1.48x, infopro 4.0x and auglocal (d=2)
2.2x the time of a BP step; ours must be no slower. BP and the method are timed in alternation
in the same process so machine load affects both alike. A speed target, so it runs only when
asked: ``pytest tests/benchmarks -m speed --benchmark-enable`` (or ``nox -s bench``).
"""

import statistics
import time

import pytest
import torch

from bench.backbone import get_backbone
from bench.data import DataInfo
from bench.split import Split
from bench.trainer import LocalTrainer, OptimSettings
from methods import METHODS, make_params

INFO = DataInfo("cifar10", 10, (3, 32, 32), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
AUTHORS_RATIO = {"dgl": 1.10, "predsim": 1.48, "infopro": 4.0, "auglocal": 2.2}
ROUNDS, WARMUP = 7, 2


def resnet32_trainer(name: str, **params) -> LocalTrainer:
    torch.manual_seed(0)
    net = get_backbone("resnet32")
    cls = METHODS.get(name)
    p = make_params(cls, params)
    split = cls.plan_split(Split.uniform(net.n_hidden, 16), p)
    method = cls(net, split, INFO, p)
    return LocalTrainer(net, split, method, OptimSettings(lr=0.01, epochs=1), torch.device("cpu"))


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.speed
@pytest.mark.parametrize("name", sorted(AUTHORS_RATIO))
def test_step_time_relative_to_bp(benchmark, name):
    params = {"depth": 2} if name == "auglocal" else {}
    bp, method = resnet32_trainer("bp"), resnet32_trainer(name, **params)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
    bp_times, method_times = [], []
    for i in range(WARMUP + ROUNDS):
        t_bp, t_method = (
            seconds(lambda: bp.train_step(x, y)),
            seconds(lambda: method.train_step(x, y)),
        )
        if i >= WARMUP:
            bp_times.append(t_bp)
            method_times.append(t_method)
    ratio = statistics.median(method_times) / statistics.median(bp_times)
    benchmark.extra_info.update(
        {
            "ratio_vs_bp": ratio,
            "authors_ratio": AUTHORS_RATIO[name],
            "bp_step_s": statistics.median(bp_times),
        }
    )
    benchmark.pedantic(method.train_step, args=(x, y), rounds=3, warmup_rounds=1)
    assert ratio <= AUTHORS_RATIO[name], (
        f"{name}: {ratio:.2f}x BP, authors' code {AUTHORS_RATIO[name]}x"
    )
