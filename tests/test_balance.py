"""``--cuts balanced``: the cost model of a step's peak (locbench.harness.balance) equals the
fake-tensor estimate, its search finds the least peak, and the setting resolves to cuts."""

import itertools
import json
import random

import pytest

from locbench.analysis.describe import describe
from locbench.analysis.estimate import estimate
from locbench.cli.main import main
from locbench.errors import UserError
from locbench.harness.balance import RAW, ROUNDED, Profile, measure
from locbench.harness.build import hidden_units, resolve
from locbench.settings.run_config import RunConfig

BATCH = 4


def config(method: str, net: str, **kw) -> RunConfig:
    return RunConfig(method=method, net=net, batch_size=BATCH, device="cpu", **kw)


def test_profiles_compose():
    a, b = Profile.of([5, -3, 4]), Profile.of([2, -10])
    assert (a.peak, a.net) == (6, 6)
    assert a.then(b) == Profile(8, -2) == Profile.of([5, -3, 4, 2, -10])


@pytest.mark.parametrize(
    ("method", "K"), [("dgl", 3), ("infopro", 3), ("predsim", 4), ("auglocal", 5)]
)
def test_model_equals_estimate_on_random_splits(method, K):
    net = "resnet20"
    n = hidden_units(net)
    measured = measure(resolve(config(method, net, K=K)), K, BATCH)
    trained_K = measured.trained_K
    rng = random.Random(K)
    for _ in range(2):
        cuts = sorted(rng.sample(range(n - 1 - (K - trained_K)), trained_K - 1))
        asked = [*cuts, *range(cuts[-1] + 1, cuts[-1] + 1 + K - trained_K)]
        peak = estimate(resolve(config(method, net, cuts=tuple(asked))), BATCH)
        assert measured.model(RAW).peak(cuts) == peak.peak_bytes, asked
        assert measured.model(ROUNDED).peak(cuts) == peak.peak_bytes_rounded, asked


def test_search_is_the_brute_force_minimum():
    # smallnet: 4 hidden units of 16x16x16, 16x16x16, 32x8x8, 64x4x4; every split of K=3
    net, method, K = "smallnet", "dgl", 3
    n = hidden_units(net)
    model = measure(resolve(config(method, net, K=K)), K, BATCH).model(ROUNDED)
    peaks = {}
    for cuts in itertools.combinations(range(n - 1), K - 1):
        estimated = estimate(resolve(config(method, net, cuts=cuts)), BATCH).peak_bytes_rounded
        assert model.peak(cuts) == estimated
        peaks[cuts] = estimated
    best = min(peaks.values())
    cuts, value = model.search()
    assert value == best
    assert cuts == min(c for c, p in peaks.items() if p == best)  # the tie-break


def test_balanced_resolves_to_cuts_and_a_new_run_id():
    balanced = resolve(config("dgl", "resnet20", K=3, cuts="balanced"))
    uniform = resolve(config("dgl", "resnet20", K=3))
    c = balanced.config
    assert c.cuts_balanced and c.K == 3 and isinstance(c.cuts, tuple) and len(c.cuts) == 2
    assert balanced.run_id != uniform.run_id
    assert balanced.identity["config"]["cuts"] == list(c.cuts)
    assert resolve(c).run_id == balanced.run_id  # resolving again changes nothing
    b = balanced.balance
    assert b.cuts == c.cuts and b.model_peak_bytes_rounded == b.estimated_peak_bytes_rounded
    assert b.estimated_peak_bytes_rounded <= estimate(uniform, BATCH).peak_bytes_rounded
    record = balanced.record(status="ok")
    assert record.balanced_cuts["cuts"] == list(c.cuts) and record.config["cuts_balanced"]


def test_balanced_from_a_toml_table():
    d = {"model": {"net": "resnet20", "K": 4, "cuts": "balanced"}, "method": "predsim"}
    c = RunConfig.from_dict({**d, "batch_size": BATCH, "device": "cpu"})
    assert c.cuts == "balanced"
    assert len(resolve(c).config.cuts) == 3


def test_bp_is_one_module_whatever_the_cuts():
    r = resolve(config("bp", "resnet20", K=3, cuts="balanced"))
    assert r.balance.trained_K == 1 and r.balance.model_peak_bytes is None
    assert r.config.cuts == (2, 5)  # the uniform cuts: nothing to balance


def test_bp_ckpt_is_refused_in_one_line():
    with pytest.raises(UserError, match="bp-ckpt.*overrides forward_module and boundary"):
        resolve(config("bp-ckpt", "resnet20", K=3, cuts="balanced"))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"cuts": "balanced"}, "--cuts balanced needs --K"),
        ({"K": 3, "cuts": (1, 4)}, "either --K or --cuts"),
        ({"K": 3, "cuts": (1,), "cuts_balanced": True}, "K-1 cuts"),
        ({"cuts": "balancd"}, "--cuts must be a comma-separated list of integers >= 0, or bal"),
    ],
)
def test_bad_balanced_settings(kw, message):
    with pytest.raises(UserError, match=message):
        RunConfig(**kw)


def test_cli_balanced_without_K_is_one_line(capsys):
    assert main(["describe", "--cuts", "balanced"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.endswith("--cuts balanced needs --K") and "\n" not in err


def test_describe_shows_module_peaks(capsys):
    argv = ["--method", "dgl", "--net", "resnet20", "--K", "3", "--cuts", "balanced"]
    assert main(["describe", *argv, "--batch-size", "8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    peaks = [m["peak_bytes"] for m in d["modules"]]
    assert len(peaks) == 3 and max(peaks) == d["peak_bytes"]
    assert d["balanced_cuts"]["cuts"] == d["cuts"]
    assert main(["describe", *argv, "--batch-size", "8"]) == 0
    text = capsys.readouterr().out
    assert "peak MiB" in text and "balanced (--cuts balanced)" in text


def test_describe_module_peaks_are_the_estimate():
    d = describe(RunConfig(method="infopro", net="resnet20", K=3), batch_size=8)
    run = resolve(RunConfig(method="infopro", net="resnet20", K=3))
    assert [m["peak_bytes"] for m in d["modules"]] == estimate(run, 8).module_peaks


def test_sweep_grid_with_balanced_cuts_and_a_K_axis():
    from locbench.study.grid import Grid

    run = {"dataset": "synthetic", "batch_size": BATCH, "cuts": "balanced"}
    grid = Grid(methods=("dgl",), nets=("resnet20",), K=(2, 3), run=run)
    configs = grid.configs()
    assert [c.K for c in configs] == [2, 3]
    assert all(c.cuts_balanced and len(c.cuts) == c.K - 1 for c in configs)


def test_search_on_a_hand_computed_model():
    # Three hidden units whose forwards keep outputs of 4, 1 and 2 bytes (each freed by its
    # backward, but a module's output, kept as the next module's input until that one ends),
    # and an auxiliary loss that rises 5 bytes above its cut when cut after unit 0, 0 after
    # unit 1. Cut after 0: module 0 peaks at 4 + 5 = 9, module 1 at 4 + 1 + 2 = 7: peak 9.
    # Cut after 1: 4 + 1 + 0 = 5, then 1 + 2 = 3: peak 5, plus what its aux keeps resident.
    from locbench.harness.balance import AuxCosts, CostModel, UnitCosts

    def unit(size: int) -> UnitCosts:
        forward = {first: Profile(size, size) for first in (True, False)}
        backward = {(first, last): Profile(0, 0 if last else -size)
                    for first in (True, False) for last in (True, False)}  # fmt: skip
        return UnitCosts(forward, backward, size)

    def model(resident_after_1: int) -> CostModel:
        aux = {
            0: AuxCosts(Profile(5, 0), 0, 0, 0),
            1: AuxCosts(Profile(0, 0), resident_after_1, 0, 0),
        }
        return CostModel(
            n=3, units=[unit(4), unit(1), unit(2), unit(0)], aux=lambda b, k: aux[b],
            output=Profile(), output_after=Profile(), tail=Profile(), base=0,
            backbone_grads=0, opt_excess=0, trained_K=2,
        )  # fmt: skip

    assert [model(3).peak([b]) for b in (0, 1)] == [9, 5 + 3]
    assert model(3).search() == ((1,), 8)
    assert model(5).search() == ((0,), 9)  # 5 + 5 = 10 after unit 1: the other cut wins
