"""A study end to end: sweep (real worker processes) -> records -> report, as a user runs it."""

from __future__ import annotations

from pathlib import Path

from locbench.cli.main import main
from locbench.records import read_records
from locbench.reports.page import build_report
from locbench.reports.tables import comparison_table

TINY = ["--nets", "smallnet", "--K", "2", "--dataset", "synthetic", "--epochs", "1",
        "--measure-steps", "2", "--no-progress"]  # fmt: skip


def test_a_hyperparameter_sweep_gives_one_bp_row_and_two_labelled_dgl_rows(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["sweep", "--methods", "bp,dgl", "--hp", "hidden_dim=64,128", *TINY, "--out", str(out)]
    assert main(argv) == 0
    assert "3 configurations, 0 already done, 3 run, 0 failed" in capsys.readouterr().out
    records = read_records(out)
    assert sorted((r.config["method"], r.config["method_params"].get("hidden_dim")) for r in
                  records) == [("bp", None), ("dgl", 64), ("dgl", 128)]  # fmt: skip
    report = build_report(out, tmp_path / "report")
    from locbench.records import results_frame

    table = comparison_table(results_frame(records))
    assert sorted(table["variant"]) == ["bp", "dgl hidden_dim=128", "dgl hidden_dim=64"]
    assert table["seeds"].tolist() == [1, 1, 1]
    page = Path(report.path).read_text()
    assert "dgl hidden_dim=64" in page and "dgl hidden_dim=128" in page


def test_an_edited_method_file_reruns_and_an_unchanged_one_is_skipped(tmp_path, capsys):
    method = tmp_path / "mine.py"
    method.write_text("from locbench import Method\n\n\nclass Mine(Method):\n    pass\n")
    out = tmp_path / "runs"
    argv = ["sweep", "--methods", f"{method}:Mine", *TINY, "--out", str(out)]
    assert main(argv) == 0
    assert main(argv) == 0
    method.write_text(method.read_text() + "\n# a new default would go here\n")
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sweep:")]
    assert [line.split(";")[0] for line in lines] == [
        "sweep: 1 configurations, 0 already done, 1 run, 0 failed",
        "sweep: 1 configurations, 1 already done, 0 run, 0 failed",
        "sweep: 1 configurations, 0 already done, 1 run, 0 failed",
    ]
    records = read_records(out)
    assert len(records) == 2
    assert len({r.method_sha256 for r in records}) == 2
    assert len({r.run_id for r in records}) == 2
