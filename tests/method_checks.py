"""Checks every method beyond the seeds gets the same way (man, hpff, mlaan and the examples):
its run's tracked peak is the estimate's to the byte, its FLOPs add up, and ``--stages``
refuses it in one line before training."""

from __future__ import annotations

from pathlib import Path

from locbench.analysis.estimate import estimate
from locbench.cli.main import main
from locbench.harness.build import resolve
from locbench.harness.run import execute
from locbench.records import RunRecord
from locbench.settings.run_config import RunConfig


def assert_tracked_equals_estimate(config: RunConfig) -> RunRecord:
    """Run ``config`` (batch 64): its tracked peak and breakdown equal the fake-tensor
    estimate's, and its FLOPs are positive parts of their total. The record, for more checks."""
    record = execute(config)
    assert record.status == "ok", record.message
    predicted = estimate(resolve(config), 64)
    assert record.memory["peak_bytes"] == predicted.peak_bytes
    assert record.memory["breakdown"] == predicted.breakdown
    flops = record.flops
    assert flops["total"] == flops["backbone"] + flops["aux"]
    assert min(flops.values()) > 0
    return record


def assert_stages_refused(argv: list[str], out: Path, capsys) -> str:
    """``locbench run ARGV --stages 2`` exits 2 with one line and writes no record; that line."""
    assert main(["run", *argv, "--stages", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert not out.exists() or not list(out.glob("*.json"))  # nothing trained
    return err
