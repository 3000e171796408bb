"""The report page's statements and structure, without a browser: every measured statement is
computed from the records shown (tracked vs CUDA ratio, step-time flags), one section per net
and dataset embeds every chart :func:`build_report` wrote, each run has its details."""

from __future__ import annotations

import re

import pytest
from page_records import RUNS, write_runs

from locbench.records import load_results
from locbench.reports.charts import CHARTS
from locbench.reports.page import build_report
from locbench.reports.runs import (
    NOISY_FLAG,
    SHORT_FLAG,
    configuration_flags,
    memory_sentences,
    run_table,
    step_flags,
)
from locbench.reports.tables import comparison_table


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page")
    runs = write_runs(tmp / "runs")
    report = build_report(runs, tmp / "out")
    return load_results(runs), report.path.read_text(), tmp / "out"


def by_method(results, values, net="smallnet") -> dict:
    rows = results["config.net"].eq(net)
    return dict(zip(results.loc[rows, "config.method"], values[rows]))


def test_flags_noisy_and_short_runs_only(built):
    results, _, _ = built
    flags = by_method(results, step_flags(results))
    assert flags == {"bp": [], "dgl": [NOISY_FLAG], "infopro": [SHORT_FLAG]}
    table = comparison_table(results)
    notes = dict(zip(table["variant"] + " " + table["net"], configuration_flags(results, table)))
    assert notes["dgl smallnet"] == "noisy 1/1" and notes["infopro smallnet"] == "short 1/1"
    assert notes["bp smallnet"] == "" and notes["dgl resnet20"] == ""


def test_tracked_cuda_ratio_is_measured_where_runs_hold_both(built):
    results, page, _ = built
    table = run_table(results)
    ratios = dict(zip(table["run"], table["tracked / CUDA"]))
    cuda_runs = results[results["cuda.peak_allocated_bytes"].notna()]
    assert sorted(round(ratios[r], 4) for r in cuda_runs["run_id"]) == [0.95, 1.0333]
    assert memory_sentences(results)["agreement"].startswith(
        "Tracked peak / CUDA allocated peak, measured on the 2 runs here holding both: 0.95 to 1.03"
    )
    assert "0.95 to 1.03" in page and "within 10%" not in page


def test_cpu_only_page_says_not_measured(tmp_path):
    runs = write_runs(tmp_path / "runs", [r for r in RUNS if r[-1] is None])
    page = build_report(runs, tmp_path / "out").path.read_text()
    assert "no run here has both a tracked and a CUDA peak" in page
    assert "max_memory_allocated" not in page  # no CUDA run: no CUDA method text
    assert "tracked / CUDA</th>" not in page and "within 10%" not in page


def test_one_section_per_net_and_dataset_embedding_every_written_chart(built):
    _, page, out = built
    written = [c.name for c in CHARTS if (out / f"{c.name}.png").exists()]
    sections = re.findall(r'<section id="([^"]+)">(.*?)</section>', page, re.S)
    assert [s for s, _ in sections] == ["section-resnet20-digits", "section-smallnet-digits"]
    charts = {s: re.findall(r'<figure data-chart="([^"]+)"', body) for s, body in sections}
    assert set(charts["section-resnet20-digits"]) | set(charts["section-smallnet-digits"]) == set(
        written
    )
    assert page.count("data:image/png;base64,") == sum(len(c) for c in charts.values())


def test_every_run_row_links_to_its_details(built):
    results, page, _ = built
    for run_id in results["run_id"]:
        assert f'<a href="#run-{run_id}">' in page
        details = re.search(rf'<details id="run-{run_id}">(.*?)</details>', page, re.S)
        body = details.group(1)
        for heading in ("Configuration", "Training curve", "Memory", "Step time"):
            assert f"<h4>{heading}</h4>" in body
        assert "backbone activations (MiB)" in body and "measure_steps" in body
