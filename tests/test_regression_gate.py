"""The deterministic half of the regression gate, run on every CI build: memory and FLOPs of
every method against the committed baseline (tests/benchmarks/baseline.json), plus a
deliberate regression that the gate must catch."""

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.regress import DETERMINISTIC, compare, figures, format_changes, load_figures

BASELINE = Path(__file__).parent / "benchmarks" / "baseline.json"


@pytest.fixture(scope="module")
def baseline():
    base = load_figures(BASELINE)
    return {case: {k: v for k, v in f.items() if k in DETERMINISTIC} for case, f in base.items()}


def test_every_method_matches_the_committed_baseline(baseline):
    assert set(baseline) == {"bp", "bp-ckpt", "dgl", "infopro", "predsim", "auglocal"}
    head = {method: figures(method) for method in baseline}
    changes = compare(baseline, head, time_factor=1.5)
    assert not [c for c in changes if c.failed], format_changes(changes)


LEAKY = '''
from methods.dgl import DGL


class LeakyDGL(DGL):
    """DGL that keeps one extra activation alive: a copy of every module output."""

    def local_loss(self, k, out, batch):
        self.kept = getattr(self, "kept", {})
        self.kept[k] = out.detach().clone()
        return super().local_loss(k, out, batch)
'''


def test_a_deliberate_regression_fails_the_gate_with_a_readable_table(baseline, tmp_path):
    plugin = tmp_path / "leaky.py"
    plugin.write_text(LEAKY)
    head = {**baseline, "dgl": figures(f"{plugin}:LeakyDGL")}
    changes = compare(baseline, head, time_factor=1.5)
    failed = [c for c in changes if c.failed]
    assert [(c.case, c.figure) for c in failed] == [
        ("dgl", "estimated_peak_bytes"),
        ("dgl", "tracked_peak_bytes"),
    ]
    assert all(c.head > 1.01 * c.base for c in failed)
    table = format_changes(changes).splitlines()
    assert table[0].split() == ["case", "figure", "base", "head", "change", "verdict"]
    assert any(line.startswith("dgl") and "tracked_peak_bytes" in line and "FAIL" in line
               for line in table)  # fmt: skip


def write_benchmark_json(path: Path, figures_by_case: dict, seconds: float) -> None:
    benchmarks = [
        {"name": f"test_method_step[{case}]", "param": case, "extra_info": f,
         "stats": {"median": seconds}}
        for case, f in figures_by_case.items()
    ]  # fmt: skip
    path.write_text(json.dumps({"benchmarks": benchmarks}))


def test_compare_cli_passes_unchanged_and_fails_growth(tmp_path, capsys):
    base = {"dgl": {"tracked_peak_bytes": 1000, "flops_per_step": 50}}
    write_benchmark_json(tmp_path / "base.json", base, 0.010)
    write_benchmark_json(tmp_path / "same.json", base, 0.012)
    assert main(["compare", str(tmp_path / "base.json"), str(tmp_path / "same.json")]) == 0
    out = capsys.readouterr().out
    assert "step_time_s" in out and "+20.0%" in out and "0 of 3 figures over their limit" in out
    grown = {"dgl": {"tracked_peak_bytes": 1011, "flops_per_step": 50}}
    write_benchmark_json(tmp_path / "grown.json", grown, 0.010)
    assert main(["compare", str(tmp_path / "base.json"), str(tmp_path / "grown.json")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "1,000" in out[2] and "1,011" in out[2] and "+1.1%" in out[2] and "FAIL" in out[2]
    assert out[-1] == "1 of 3 figures over their limit"
    slow = tmp_path / "slow.json"
    write_benchmark_json(slow, base, 0.016)
    assert main(["compare", str(tmp_path / "base.json"), str(slow)]) == 1
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "base.json"), str(slow), "--time-factor", "2"]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "base.json"), str(slow), "--ignore-time"]) == 0
    capsys.readouterr()
    # a case that disappears fails rather than passing silently
    write_benchmark_json(tmp_path / "empty.json", {}, 0.01)
    assert main(["compare", str(tmp_path / "base.json"), str(tmp_path / "empty.json")]) == 1
    capsys.readouterr()
    (tmp_path / "junk.json").write_text("[]")
    assert main(["compare", str(tmp_path / "base.json"), str(tmp_path / "junk.json")]) == 2
    assert "not a pytest-benchmark JSON file" in capsys.readouterr().err
