"""The deterministic half of the regression gate, run on every CI build: memory and FLOPs of
every method against the committed baseline (tests/benchmarks/baseline.json), plus a
deliberate regression that the gate must catch."""

import json
import math
from pathlib import Path

import pytest

from locbench.analysis.regress import (
    DETERMINISTIC,
    compare,
    figures,
    format_changes,
    load_figures,
    regression_cases,
)
from locbench.cli.main import main
from locbench.errors import UserError

BASELINE = Path(__file__).parent / "benchmarks" / "baseline.json"
METHODS = ["bp", "bp-ckpt", "dgl", "infopro", "predsim", "auglocal"]


@pytest.fixture(scope="module")
def baseline():
    base = load_figures(BASELINE)
    return {case: {k: v for k, v in f.items() if k in DETERMINISTIC} for case, f in base.items()}


def test_every_method_matches_the_committed_baseline(baseline):
    cases = regression_cases(METHODS)  # every method in fp32 ("dgl") and bf16 ("dgl-bf16")
    assert set(baseline) == set(cases) and len(cases) == 12
    head = {case: figures(*cases[case]) for case in baseline}
    changes = compare(baseline, head, time_factor=1.5)
    assert not [c for c in changes if c.failed], format_changes(changes)


LEAKY = '''
from locbench.methods.dgl import DGL


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


GOOD_ENTRY = {"name": "test_method_step[dgl]", "param": "dgl",
              "extra_info": {"tracked_peak_bytes": 1000}, "stats": {"median": 0.01}}  # fmt: skip


def entry(**changes) -> dict:
    """GOOD_ENTRY with ``changes``; a value None drops that key."""
    out = {**GOOD_ENTRY, **changes}
    return {k: v for k, v in out.items() if v is not None}


def bench_text(*entries) -> str:
    return json.dumps({"benchmarks": list(entries)})


BAD_INPUTS = [
    ("missing", None, "does not exist"),
    ("folder", "DIR", "is not a file"),
    ("not JSON", '{"benchmarks": [', "is not JSON (Expecting value at line 1)"),
    ("not UTF-8", b"\xff\xfe{}", "is not JSON (not UTF-8 text)"),
    ("a JSON list", "[]", 'is not a pytest-benchmark JSON file (no "benchmarks" list'),
    ("a run record", '{"schema": "locbench.run/2"}', "is not a pytest-benchmark JSON file"),
    ("benchmarks not a list", '{"benchmarks": {}}', "is not a pytest-benchmark JSON file"),
    ("entry not an object", bench_text(3), "benchmark #1 is not a JSON object"),
    ("entry without name", bench_text(entry(name=None)), 'benchmark #1 has no "name"'),
    ("name not a string", bench_text(entry(name=7)), 'benchmark #1 has no "name"'),
    ("no stats", bench_text(entry(stats=None)), "'test_method_step[dgl]' has no \"stats\" object"),
    ("stats not an object", bench_text(entry(stats=[0.01])), 'has no "stats" object'),
    ("stats without median", bench_text(entry(stats={"mean": 0.01})), 'has no "stats.median"'),
    ("median a string", bench_text(entry(stats={"median": "fast"})),
     "stats.median is not a finite number ('fast')"),
    ("figure a string", bench_text(entry(extra_info={"tracked_peak_bytes": "abc"})),
     "extra_info.tracked_peak_bytes is not a finite number ('abc')"),
    ("figure NaN", bench_text(entry(extra_info={"flops_per_step": math.nan})),
     "extra_info.flops_per_step is not a finite number (NaN)"),
    ("figure infinite", bench_text(entry(extra_info={"flops_per_step": math.inf})),
     "extra_info.flops_per_step is not a finite number (Infinity)"),
    ("figure true", bench_text(entry(extra_info={"estimated_peak_bytes": True})),
     "extra_info.estimated_peak_bytes is not a finite number (true)"),
    ("extra_info a list", bench_text(entry(extra_info=[1])), '"extra_info" is not a JSON object'),
    ("a case twice", bench_text(GOOD_ENTRY, GOOD_ENTRY), "case 'dgl' appears twice"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_compare_rejects_bad_input_with_one_line(tmp_path, capsys, content, message):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(bench_text(GOOD_ENTRY))
    if content == "DIR":
        bad.mkdir()
    elif isinstance(content, bytes):
        bad.write_bytes(content)
    elif content is not None:
        bad.write_text(content)
    with pytest.raises(UserError) as exc:
        load_figures(bad)
    assert message in str(exc.value) and str(bad) in str(exc.value)
    for argv in (["compare", str(good), str(bad)], ["compare", str(bad), str(good)]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "Traceback" not in captured.err
        assert captured.out == ""


def test_a_good_file_loads_with_its_time(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(bench_text(GOOD_ENTRY, entry(name="test_other", param=None)))
    assert load_figures(path) == {
        "dgl": {"tracked_peak_bytes": 1000, "step_time_s": 0.01},
        "test_other": {"tracked_peak_bytes": 1000, "step_time_s": 0.01},
    }


def test_a_case_only_in_head_is_reported_not_failed(tmp_path, capsys):
    base = {"dgl": {"tracked_peak_bytes": 1000}}
    head = {**base, "newmethod": {"tracked_peak_bytes": 5000}}
    changes = compare(base, head, time_factor=1.5)
    assert not [c for c in changes if c.failed]
    assert format_changes(changes).splitlines() == [
        "no figure moved",
        "new case newmethod: not in the baseline",
    ]
    grown = {"dgl": {"tracked_peak_bytes": 2000}, "newmethod": {"tracked_peak_bytes": 5000}}
    lines = format_changes(compare(base, grown, time_factor=1.5)).splitlines()
    assert "FAIL" in lines[2] and lines[-1] == "new case newmethod: not in the baseline"
    write_benchmark_json(tmp_path / "base.json", base, 0.01)
    write_benchmark_json(tmp_path / "head.json", head, 0.01)
    assert main(["compare", str(tmp_path / "base.json"), str(tmp_path / "head.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "new case newmethod: not in the baseline" in out
    assert out[-1] == "0 of 2 figures over their limit"
