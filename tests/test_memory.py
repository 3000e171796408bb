"""Tracked memory and the fake-tensor estimate: equal to each other, sensible relations, CLI."""

import dataclasses
import json

import numpy as np
import pytest

import locbench.analysis.estimate as estimate_module
from locbench.analysis.estimate import (
    _max_batch_by_probing,
    _Steps,
    estimate,
    estimate_methods,
    for_method,
    max_batch,
    parse_bytes,
    smallest_batch,
)
from locbench.cli.main import main
from locbench.errors import UserError
from locbench.harness.build import resolve
from locbench.harness.run import execute
from locbench.measure.memory import CATEGORIES, round_up
from locbench.methods import METHODS
from locbench.settings.run_config import RunConfig

METHODS_K = [
    ("bp", None),
    ("bp-ckpt", 4),
    ("bp-accum", None),
    ("dgl", 4),
    ("infopro", 4),
    ("predsim", 4),
    ("auglocal", 4),
]


# every method in fp32 and under bf16 autocast; two in fp16 (loss scaler included), which is
# slow on the CPU; two with channels-last weights and inputs
CASES = [(name, K, p, False) for p in ("fp32", "bf16") for name, K in METHODS_K]
CASES += [("bp", None, "fp16", False), ("predsim", 4, "fp16", False)]
CASES += [("auglocal", 4, "fp32", True), ("dgl", 4, "bf16", True)]


@pytest.mark.parametrize("name, K, precision, channels_last", CASES)
def test_tracked_on_cpu_equals_the_fake_tensor_estimate(name, K, precision, channels_last):
    config = RunConfig(
        method=name, K=K, net="smallnet", dataset="synthetic", epochs=1, precision=precision,
        channels_last=channels_last,
    )  # fmt: skip
    record = execute(config)
    tracked = record.memory
    predicted = estimate(resolve(config), batch_size=64)
    assert tracked["steps"] == 2
    assert tracked["peak_bytes"] == predicted.peak_bytes
    assert tracked["breakdown"] == predicted.breakdown
    assert tracked["module_peaks"] == predicted.module_peaks
    # Not compared: module_activation_peaks (and so the floor). CPU's binary_cross_entropy
    # returns its 0-dim loss on a storage as large as its input (InfoPro: 192 KiB for a
    # moment), where the shape-only kernel allocates 4 bytes; it is not at the peak.
    assert record.memory["peak_over_floor"] == tracked["peak_bytes"] / tracked["floor_bytes"]


@pytest.fixture(scope="module")
def resnet32_peaks():
    return {
        name: estimate(resolve(RunConfig(method=name, K=16, net="resnet32")), batch_size=64)
        for name, _ in METHODS_K
    }


def test_bp_needs_the_most_memory_on_resnet32_K16(resnet32_peaks):
    bp = resnet32_peaks["bp"].peak_bytes
    for name, peak in resnet32_peaks.items():
        if name != "bp":
            assert peak.peak_bytes < bp, name


def test_breakdown_and_module_peaks_are_consistent(resnet32_peaks):
    for name, peak in resnet32_peaks.items():
        assert set(peak.breakdown) == set(CATEGORIES)
        assert sum(peak.breakdown.values()) == peak.peak_bytes, name
        assert max(peak.module_peaks) <= peak.peak_bytes, name
        assert peak.peak_bytes <= peak.peak_bytes_rounded
        assert peak.floor_bytes <= peak.peak_bytes_rounded, name
    # parameters + buffers: ResNet-32 has 466,906 parameters; its 33 BatchNorms (stem, two per
    # block, two projections) over 16 + 10*16 + 10*32 + 32 + 10*64 + 64 = 1,232 channels keep a
    # running mean and variance per channel and one int64 counter each.
    bn_layers, bn_channels = 33, 1_232
    bp = resnet32_peaks["bp"].breakdown
    assert bp["parameters"] == 466_906 * 4 + 2 * bn_channels * 4 + bn_layers * 8
    # BP: nothing auxiliary; local methods: something auxiliary is counted somewhere
    assert bp["aux_activations"] == 0
    assert resnet32_peaks["bp-ckpt"].breakdown["aux_activations"] == 0


def test_estimate_scales_with_batch_and_image_size():
    config = RunConfig(method="bp", net="resnet32")
    act = {b: estimate(resolve(config), b).breakdown["backbone_activations"] for b in (16, 32, 48)}
    # affine in the batch: BatchNorm's saved per-channel statistics do not grow with it
    per_sample = (act[32] - act[16]) // 16
    assert act[48] - act[32] == act[32] - act[16] > 0
    fixed = act[16] - 16 * per_sample
    assert 0 < fixed < 0.001 * act[16]
    bigger = estimate(resolve(config), 16, image_size=64).breakdown["backbone_activations"]
    # 4x the pixels, 4x the activations, but for the few pooled features and logits
    assert (bigger - fixed) / (act[16] - fixed) == pytest.approx(4, rel=1e-4)
    assert bigger - fixed < 4 * (act[16] - fixed)


def test_rounding_is_per_storage():
    assert [round_up(n) for n in (1, 512, 513, 0)] == [512, 512, 1024, 0]


def test_max_batch_is_the_largest_that_fits():
    config = RunConfig(method="bp", net="smallnet")
    budget = estimate(resolve(config), 100).peak_bytes_rounded
    batch, peak = max_batch(resolve(config), budget)
    assert peak.peak_bytes_rounded <= budget
    assert estimate(resolve(config), batch + 1).peak_bytes_rounded > budget
    assert batch >= 100
    assert max_batch(resolve(config), 1000) == (0, None)


def test_max_batch_starts_from_the_smallest_batch_the_method_trains_on():
    # DGL's auxiliary MLP has BatchNorm1d, which refuses a batch of one in training
    config = RunConfig(method="dgl", net="smallnet", K=4)
    with pytest.raises(UserError, match="one training step at batch 1 fails"):
        estimate(resolve(config), 1)
    budget = estimate(resolve(config), 40).peak_bytes_rounded
    batch, peak = max_batch(resolve(config), budget)
    assert batch >= 2
    assert peak.peak_bytes_rounded <= budget
    assert estimate(resolve(config), batch + 1).peak_bytes_rounded > budget
    assert batch >= 40
    # a budget below batch 2's peak: nothing fits
    assert max_batch(resolve(config), estimate(resolve(config), 2).peak_bytes_rounded - 1) == (
        0,
        None,
    )


@pytest.mark.parametrize("name", METHODS.names())
def test_max_batch_is_exact_from_three_steps(name, monkeypatch):
    # budgets at batch 37's rounded peak and a byte under it: the answer is 37 or the batch
    # before (or lower, where rounding gives several batches one peak)
    run = resolve(for_method(RunConfig(net="smallnet", K=4), name))
    tracked = []
    track = _Steps._track
    monkeypatch.setattr(_Steps, "_track", lambda s, b, stop: tracked.append(b) or track(s, b, stop))
    rounded = estimate(run, 37).peak_bytes_rounded
    for budget in (rounded, rounded - 1):
        tracked.clear()
        batch, peak = max_batch(run, budget)
        if name != "bp-accum":  # answered from the replay: the trace, the answer, one above
            assert tracked == [estimate_module.TRACE_BATCH, batch, batch + 1]
        else:  # micro-batches of ceil(batch / M) are no power of the batch: real steps answer
            assert tracked[0] == estimate_module.TRACE_BATCH and len(tracked) > 3
        assert peak == estimate(run, batch)
        assert peak.peak_bytes_rounded <= budget < estimate(run, batch + 1).peak_bytes_rounded
        assert batch == 37 or budget < rounded
    assert (batch, peak) == _max_batch_by_probing(run, budget)  # the old search's answer


def test_max_batch_equals_the_search_on_fresh_estimates():
    run = resolve(RunConfig(method="bp", net="smallnet"))
    budget = estimate(run, 1000).peak_bytes_rounded - 1
    assert max_batch(run, budget) == _max_batch_by_probing(run, budget)


def test_steps_of_one_trainer_are_estimates_at_any_batch():
    for config in (
        RunConfig(method="dgl", net="smallnet", K=4),  # its first step fails at batch 1
        RunConfig(method="predsim", net="smallnet", K=4, precision="bf16"),
        RunConfig(method="auglocal", net="smallnet", K=4, channels_last=True),
    ):
        run = resolve(config)
        with _Steps(run, None, 10) as steps:
            least = smallest_batch(steps.warm)
            peaks = {b: steps.peak(b) for b in (1021, 5, 64, least)}
            assert not steps.exceeds(64, peaks[64].peak_bytes_rounded)
            assert steps.exceeds(65, peaks[64].peak_bytes_rounded)  # stops mid-step
            peaks[7] = steps.peak(7)  # a trainer built again after that
        for b, peak in peaks.items():
            assert peak == estimate(run, b), (config.method, b)


def test_max_batch_falls_back_to_real_steps_when_the_replay_is_wrong(monkeypatch):
    # a trace at batch 32 takes every storage whose size 32 divides for one that grows with
    # the batch: the replay's answer is wrong, its confirmation fails, and the search on real
    # steps still answers exactly
    monkeypatch.setattr(estimate_module, "TRACE_BATCH", 32)
    run = resolve(RunConfig(method="bp", net="smallnet"))
    budget = estimate(run, 37).peak_bytes_rounded
    with _Steps(run, None, 10) as steps:
        smallest_batch(steps.warm)
        replay = steps.replay(32)
        assert replay.rounded_peak(37) != budget
    assert max_batch(run, budget) == _max_batch_by_probing(run, budget)


def test_event_log_replays_the_peak():
    run = resolve(RunConfig(method="dgl", net="smallnet", K=4))
    with _Steps(run, None, 10) as steps:
        steps.warm(2)
        peak = steps.peak(24)
        codes, nbytes = steps.logs[24]
    uids = np.where(codes >= 0, codes, -codes - 1)
    signs = np.where(codes >= 0, 1, -1)
    assert np.cumsum(nbytes[uids] * signs).max() == peak.peak_bytes
    rounded = np.array([round_up(int(n)) for n in nbytes])
    assert np.cumsum(rounded[uids] * signs).max() == peak.peak_bytes_rounded


def test_replay_reads_each_storage_as_a_power_of_the_batch():
    # a storage that grows with the batch, one with its square (a batch-by-batch similarity),
    # a constant one; allocated and released in this order
    codes = np.array([0, 1, -2, 2, -1, -3])
    nbytes = np.array([4 * 1021, 8 * 1021**2, 100])
    replay = estimate_module._Replay(codes, nbytes, 1021)
    assert replay.rounded_peak(10) == 512 + 1024  # 40 and 800 bytes, each rounded up
    assert replay.rounded_peak(2**40) == round_up(4 * 2**40) + round_up(8 * 2**80)  # no overflow
    assert replay.predicts(1021, codes, nbytes)
    assert not replay.predicts(1022, codes, nbytes)


NEEDS_VALUES = """
from locbench.methods.dgl import DGL


class NeedsValues(DGL):
    def local_loss(self, k, out, batch):
        loss = super().local_loss(k, out, batch)
        return loss * (1.0 if loss.item() < 1e9 else 0.0)
"""


def test_max_batch_of_a_method_that_never_steps_on_fake_tensors_is_one_error(tmp_path):
    plugin = tmp_path / "needs_values.py"
    plugin.write_text(NEEDS_VALUES)
    config = RunConfig(method=f"{plugin}:NeedsValues", net="smallnet", K=2)
    with pytest.raises(UserError, match="^no batch of 4 or fewer trains: one training step at "):
        max_batch(resolve(config), 2**30)


@pytest.mark.parametrize(
    "text, value",
    [("24GiB", 24 * 2**30), ("512 MiB", 512 * 2**20), ("8GB", 8 * 10**9), ("4096", 4096)],
)
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


def test_parse_bytes_rejects_nonsense():
    with pytest.raises(UserError, match="24GiB"):
        parse_bytes("lots")


def test_estimate_cli_table_and_json(capsys):
    assert (
        main(["estimate", "--net", "smallnet", "--K", "4", "--batch", "8", "--methods", "dgl,bp"])
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("estimated peak memory of one training step: smallnet, K=4, batch 8")
    assert out[1].split()[:5] == ["method", "K", "batch", "peak", "(MiB)"]
    assert out[2].split()[0] == "bp" and out[3].split()[0] == "dgl"  # BP first
    assert (
        main(
            [
                "estimate",
                "--net",
                "smallnet",
                "--K",
                "4",
                "--batch",
                "8",
                "--methods",
                "bp,dgl",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["bp", "dgl"]
    assert {"method", "peak_bytes", "breakdown"} <= set(rows[1])
    assert rows[0]["saving_vs_bp"] == 0.0
    assert rows[1]["saving_vs_bp"] == pytest.approx(
        1 - rows[1]["peak_bytes"] / rows[0]["peak_bytes"]
    )
    assert (
        rows[1]["peak_bytes"]
        == estimate(resolve(RunConfig(method="dgl", K=4, net="smallnet")), 8).peak_bytes_rounded
    )


def test_estimate_cli_errors(capsys):
    assert main(["estimate", "--method", "dgl"]) == 2
    assert "use --methods" in capsys.readouterr().err
    assert main(["estimate", "--methods", "nope"]) == 2
    assert capsys.readouterr().err.startswith("locbench: error: unknown method 'nope'")
    assert main(["estimate", "--max-batch", "--budget", "lots"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["estimate", "--jobs", "0"]) == 2
    assert capsys.readouterr().err == "locbench: error: --jobs must be between 1 and 1024, got 0\n"


def test_methods_side_by_side_give_the_rows_of_one_process_and_its_errors(capsys):
    config = RunConfig(net="smallnet", K=2)
    methods = ["bp", "dgl", "predsim"]
    serial = estimate_methods(config, methods, 32, budget=2**22)
    assert estimate_methods(config, methods, 32, budget=2**22, jobs=2) == serial
    assert [r["method"] for r in serial] == methods and serial[1]["batch_size"] > 1
    # an error in a worker is the CLI's one line, as without workers
    argv = ["estimate", "--net", "smallnet", "--K", "2", "--max-batch", "--budget", "1KiB"]
    assert main([*argv, "--methods", "bp,nope", "--jobs", "2"]) == 2
    assert capsys.readouterr().err.startswith("locbench: error: unknown method 'nope'")


def test_run_memory_option_on_cpu(tmp_path, capsys):
    argv = [
        "run",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    assert main([*argv, "--memory", "cuda"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert main([*argv, "--memory", "tracked"]) == 0
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["config"]["memory"] == "tracked" and record["memory"]["peak_bytes"] > 0
    assert record["flops"]["total"] == record["flops"]["backbone"] + record["flops"]["aux"]


COPIES = """
import copy

from torch import nn

from locbench.methods import Method


class CopiesAUnit(Method):
    # its auxiliary net at each cut starts with a copy of the next backbone unit (AugLocal's
    # and MAN's idea), made in __init__: also under estimate's fake tensors, where PyTorch's
    # deepcopy of BatchNorm's integer buffer fails (and could corrupt the process's memory)
    def build_aux(self, backbone, cut):
        unit = copy.deepcopy(backbone.units[cut.unit + 1])
        channels = backbone.shapes[cut.unit + 1][0]
        head = nn.Linear(channels, self.data.num_classes)
        return nn.Sequential(unit, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


class ReadsValues(CopiesAUnit):
    def local_loss(self, k, out, batch):
        loss = super().local_loss(k, out, batch)
        return loss if loss.item() < 1e9 else loss * 0  # values: none on fake tensors
"""


def test_a_unit_copied_in_init_is_estimated_and_a_failing_method_costs_only_its_row(
    tmp_path, capsys
):
    path = tmp_path / "copies.py"
    path.write_text(COPIES)
    config = RunConfig(method=f"{path}:CopiesAUnit", K=2, net="smallnet", dataset="synthetic")
    record = execute(dataclasses.replace(config, epochs=1))
    predicted = estimate(resolve(config), 64)
    assert record.memory["peak_bytes"] == predicted.peak_bytes
    assert record.memory["breakdown"] == predicted.breakdown
    methods = f"bp,{path}:ReadsValues,{path}:CopiesAUnit"
    argv = ["estimate", "--net", "smallnet", "--K", "2", "--batch", "8", "--methods", methods]
    assert main([*argv, "--json"]) == 2
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert [("peak_bytes" in r, "error" in r) for r in rows] == [
        (True, False),
        (False, True),
        (True, False),
    ]
    assert rows[2]["peak_bytes"] == estimate(resolve(config), 8).peak_bytes_rounded
    expected = f"locbench: error: {path}:ReadsValues: one training step at batch 8 fails: "
    assert err.startswith(expected)
    assert len(err.splitlines()) == 1  # nor PyTorch's log of the failing op
