"""``locbench plan``: what fits a budget, for each method."""

import dataclasses
import json

from locbench.analysis.estimate import estimate, max_batch
from locbench.analysis.plan import plan
from locbench.cli.main import main
from locbench.harness.build import hidden_units, resolve
from locbench.nets.split import Split
from locbench.settings.run_config import RunConfig

CONFIG = RunConfig(net="smallnet", K=4)
BUDGET = 4 * 2**20


def test_without_a_batch_each_method_gets_its_largest_batch():
    rows = plan(CONFIG, ["bp", "dgl"], BUDGET)
    for row in rows:
        run = resolve(dataclasses.replace(CONFIG, method=row["method"]))
        batch, peak = max_batch(run, BUDGET)
        assert (row["batch_size"], row["peak_bytes"]) == (batch, peak.peak_bytes_rounded)
        assert row["fits"] and row["flops"] > 0
    assert [r["K"] for r in rows] == [1, 4]
    uniform = Split.uniform(hidden_units("smallnet"), 4)
    assert rows[1]["cuts"] == [uniform.last_unit(k) for k in range(3)]


def test_at_a_batch_bp_accum_gets_the_fewest_micro_batches_that_fit(capsys):
    rows = {r["method"]: r for r in plan(CONFIG, ["bp", "bp-accum"], BUDGET, batch_size=64)}
    assert not rows["bp"]["fits"]
    m = rows["bp-accum"]["micro_batches"]
    assert rows["bp-accum"]["fits"] and m > 2

    def rounded(micro_batches: int) -> int:
        config = dataclasses.replace(CONFIG, method="bp-accum",
                                     method_params={"micro_batches": micro_batches})  # fmt: skip
        return estimate(resolve(config), 64).peak_bytes_rounded

    assert rounded(m) <= BUDGET < rounded(m - 1)
    assert main(["plan", "--net", "smallnet", "--K", "4", "--budget", "4MiB", "--batch", "64",
                 "--methods", "bp,bp-accum", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out) == list(rows.values())


def test_plan_errors_are_one_line(capsys):
    assert main(["plan", "--budget", "lots"]) == 2
    assert "cannot read 'lots'" in capsys.readouterr().err
    assert main(["plan", "--method", "dgl"]) == 2
    assert "use --methods" in capsys.readouterr().err


NEEDS_VALUES = """
from locbench.methods.dgl import DGL


class NeedsValues(DGL):
    def local_loss(self, k, out, batch):
        loss = super().local_loss(k, out, batch)
        return loss * (1.0 if loss.item() < 1e9 else 0.0)  # a value: none on fake tensors
"""


def test_a_method_that_cannot_be_estimated_costs_only_its_row(tmp_path, capsys):
    path = tmp_path / "needs_values.py"
    path.write_text(NEEDS_VALUES)
    methods = f"bp,{path}:NeedsValues,dgl"
    argv = ["plan", "--net", "smallnet", "--K", "4", "--budget", "4MiB", "--methods", methods]
    assert main([*argv, "--json", "--jobs", "1"]) == 2
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert [r["method"] for r in rows] == ["bp", f"{path}:NeedsValues", "dgl"]
    assert [r["fits"] for r in rows] == [True, False, True]
    assert rows[1]["peak_bytes"] is None and rows[1]["flops"] is None
    assert err.startswith(f"locbench: error: {path}:NeedsValues: no batch of 4 or fewer trains")
    assert len(err.splitlines()) == 1
