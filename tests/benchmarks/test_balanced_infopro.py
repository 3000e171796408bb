"""InfoPro* (hand-balanced cuts) against ``--cuts balanced``: ResNet-110, batch 1024. The
published table (one Titan Xp, cuDNN benchmark) gives E2E 9.40 GB and InfoPro* K = 2/3/4 at
5.38/4.22/3.52 GB, i.e. 0.572/0.449/0.374 of E2E; our uniform cuts estimate 0.744/0.574/0.420
of our BP. The search must beat uniform (it minimises our estimate of the same step).
About 40 s on 2 CPU cores: ``pytest tests/benchmarks -m speed``."""

import pytest

from locbench.analysis.estimate import estimate
from locbench.harness.build import resolve
from locbench.settings.run_config import RunConfig

BATCH = 1024
#: ours with --cuts balanced (these cuts), K = 2/3/4 (docs/measurement.md, "Balanced cuts")
EXPECTED = {2: ((15,), 0.530), 3: ((10, 22), 0.368), 4: ((7, 15, 27), 0.291)}


@pytest.mark.speed
@pytest.mark.parametrize("K", [2, 3, 4])
def test_infopro_resnet110_balanced_below_uniform(K):
    def peak(**kw) -> int:
        run = resolve(RunConfig(net="resnet110", batch_size=BATCH, device="cpu", **kw))
        return estimate(run, BATCH).peak_bytes_rounded

    bp = peak(method="bp")
    uniform = peak(method="infopro", K=K)
    run = resolve(
        RunConfig(
            method="infopro", net="resnet110", K=K, cuts="balanced", batch_size=BATCH, device="cpu"
        )
    )
    balanced = estimate(run, BATCH).peak_bytes_rounded
    assert balanced == run.balance.estimated_peak_bytes_rounded
    assert balanced < uniform
    cuts, ratio = EXPECTED[K]
    assert run.config.cuts == cuts
    assert balanced / bp == pytest.approx(ratio, abs=5e-4)
