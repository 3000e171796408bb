"""Bad inputs of faults at the edges: a plug-in method's declarations, ``--hp`` keys, TOML
shapes, ``sweep --status`` on what is not a sweep, and ``compare`` figures (the cases of
``tests/test_bad_inputs.py``: argv, the texts of the one error line)."""

from __future__ import annotations

import json
from pathlib import Path

FAST = ["--dataset", "synthetic", "--epochs", "1", "--no-progress"]
RUN = ["run", *FAST, "--out", "{out}"]
SWEEP = ["sweep", *FAST, "--out", "{out}"]
EST = ["estimate", "--net", "smallnet", "--K", "2"]
DESCRIBE = ["describe", "--net", "smallnet", "--K", "2"]
STATUS = ["sweep", "--status", "--out"]


def method(name: str) -> str:
    return "{tmp}/decl/" + f"{name.lower()}.py:{name}"


CASES: dict[str, tuple[list[str], list[str]]] = {
    # ---- a plug-in's Params declaration, checked as the method is loaded, in every command
    "run Params not a dataclass": (
        [*RUN, "--method", method("NotDataclass")],
        ["method 'notdataclass'", "Params must be a dataclass declared @dataclass(frozen=True)"],
    ),
    "sweep Params not a dataclass": (
        [*SWEEP, "--methods", method("NotDataclass")],
        ["method 'notdataclass'", "Params must be a dataclass"],
    ),
    "describe Params not a dataclass": (
        [*DESCRIBE, "--method", method("NotDataclass")],
        ["method 'notdataclass'", "Params must be a dataclass"],
    ),
    "estimate Params not a dataclass": (
        [*EST, "--methods", "bp," + method("NotDataclass")],
        ["method 'notdataclass'", "Params must be a dataclass"],
    ),
    "run Params not frozen": (
        [*RUN, "--method", method("NotFrozen")],
        ["method 'notfrozen'", "Params must be frozen"],
    ),
    "describe Params not frozen": (
        [*DESCRIBE, "--method", method("NotFrozen")],
        ["method 'notfrozen'", "Params must be frozen"],
    ),
    "run Params field without param()": (
        [*RUN, "--method", method("PlainField")],
        ["method 'plainfield'", "field 'width' is not declared with locbench.param(...)"],
    ),
    "estimate Params field without param()": (
        [*EST, "--methods", method("PlainField")],
        ["field 'width' is not declared with locbench.param"],
    ),
    "sweep Params field of a type no flag reads": (
        [*SWEEP, "--methods", method("ListField")],
        ["method 'listfield'", "field 'sizes' has type", "accepted: int, float, str, bool"],
    ),
    "run Params check raising": (
        [*RUN, "--method", method("CheckRaises")],
        ["method 'checkraises'", "Params check failed: ZeroDivisionError: division by zero"],
    ),
    "sweep Params check raising": (
        [*SWEEP, "--methods", method("CheckRaises")],
        ["method 'checkraises'", "ZeroDivisionError"],
    ),
    "describe Params check raising": (
        [*DESCRIBE, "--method", method("CheckRaises")],
        ["method 'checkraises'", "ZeroDivisionError"],
    ),
    "estimate Params check raising": (
        [*EST, "--methods", method("CheckRaises")],
        ["method 'checkraises'", "ZeroDivisionError"],
    ),
    "run Params check refusing a value": (
        [*RUN, "--method", method("CheckRefuses"), "--hp", "low=5"],
        ["method 'checkrefuses'", "low must not exceed high"],
    ),
    # ---- --hp keys: one check (hp_targets) for run, sweep, describe and estimate
    "run hp empty method scope": (
        [*RUN, "--method", "dgl", "--hp", ".hidden_dim=16"],
        ["--hp .hidden_dim: no method before '.'"],
    ),
    "sweep hp empty method scope": (
        [*SWEEP, "--methods", "dgl", "--hp", ".hidden_dim=16"],
        ["--hp .hidden_dim: no method before '.'"],
    ),
    "describe hp empty method scope": (
        [*DESCRIBE, "--method", "dgl", "--hp", ".hidden_dim=16"],
        ["--hp .hidden_dim: no method before '.'"],
    ),
    "estimate hp empty method scope": (
        [*EST, "--methods", "bp,dgl", "--hp", ".hidden_dim=16"],
        ["--hp .hidden_dim: no method before '.'"],
    ),
    "sweep hp empty name": (
        [*SWEEP, "--methods", "dgl", "--hp", "dgl.=1"],
        ["--hp dgl.: '' is not a hyperparameter name"],
    ),
    "estimate hp typo": (
        [*EST, "--methods", "bp,dgl", "--hp", "hiden_dim=64"],
        ["--hp hiden_dim: none of ['bp', 'dgl'] has a hyperparameter 'hiden_dim'"],
    ),
    "estimate hp no selected method has": (
        [*EST, "--methods", "bp", "--hp", "hidden_dim=64"],
        ["method 'bp' has no parameter hidden_dim"],
    ),
    "estimate hp scoped to a method not selected": (
        [*EST, "--methods", "bp,dgl", "--hp", "auglocal.widen=2"],
        ["method 'auglocal' is not in --methods (bp, dgl)"],
    ),
    "estimate aux depth no selected method has": (
        [*EST, "--methods", "bp,dgl", "--aux-depth", "2"],
        ["--aux-depth: none of ['bp', 'dgl'] has a hyperparameter 'depth'"],
    ),
    "run hp scoped to another method": (
        [*RUN, "--method", "dgl", "--hp", "auglocal.widen=2"],
        ["method 'auglocal' is not in the run (dgl)"],
    ),
    "describe hp scoped to an unknown method": (
        [*DESCRIBE, "--method", "dgl", "--hp", "nope.hidden_dim=2"],
        ["method 'nope' is not in the run (dgl)"],
    ),
    "describe hp typo": (
        [*DESCRIBE, "--method", "dgl", "--hp", "hiden_dim=2"],
        ["method 'dgl' has no parameter hiden_dim; known: variant, hidden_dim"],
    ),
    # ---- TOML shapes
    "sweep config method_params in grid": (
        [*SWEEP, "--config", "{tmp}/decl/grid_params.toml"],
        ["[grid] method_params is not an axis", "[grid.hp]"],
    ),
    "sweep config grid.method_params table": (
        [*SWEEP, "--config", "{tmp}/decl/grid_params_table.toml"],
        ["[grid] method_params is not an axis"],
    ),
    "sweep config run method_params a list": (
        [*SWEEP, "--config", "{tmp}/decl/run_params_list.toml"],
        ["[run] method_params must be a table"],
    ),
    "sweep config run method_params typo": (
        [*SWEEP, "--config", "{tmp}/decl/run_params_typo.toml"],
        ["[run] method_params hiden_dim: method 'dgl' has no parameter hiden_dim"],
    ),
    "sweep config method table typo": (
        [*SWEEP, "--config", "{tmp}/decl/method_typo.toml"],
        ["[method.dgl] hiden_dim: method 'dgl' has no parameter hiden_dim"],
    ),
    "sweep config methods not names": (
        [*SWEEP, "--config", "{tmp}/decl/methods_numbers.toml"],
        ["[grid] methods must be a string, got 1"],
    ),
    "sweep config K a list of lists": (
        [*SWEEP, "--config", "{tmp}/decl/k_lists.toml"],
        ["[grid] K must be an integer >= 1 (or none), got [2]"],
    ),
    "sweep config aux_depth text": (
        [*SWEEP, "--config", "{tmp}/decl/depth_text.toml"],
        ["[grid] aux_depth must be integers >= 1, got 'x'"],
    ),
    "sweep config grid an array of tables": (
        [*SWEEP, "--config", "{tmp}/decl/grid_array.toml"],
        ["grid must be a table ([grid])"],
    ),
    "sweep config grid.hp nested table": (
        [*SWEEP, "--config", "{tmp}/decl/hp_nested.toml"],
        ["[grid] hp.dgl must be a non-empty list"],
    ),
    "sweep config grid.hp empty scope": (
        [*SWEEP, "--config", "{tmp}/decl/hp_empty_scope.toml"],
        ["--hp .hidden_dim: no method before '.'"],
    ),
    # ---- sweep --status on what is not a sweep's folder
    "status of an empty folder": (
        [*STATUS, "{tmp}/decl/empty"],
        ["holds no sweep (no records, job ledger or claims)"],
    ),
    "status of a folder with records in a subfolder": (
        [*STATUS, "{tmp}/decl/nested"],
        ["holds no sweep", "nested/sub holds records"],
    ),
    "status ledger entry missing fields": (
        [*STATUS, "{tmp}/decl/ledger_missing"],
        ["damaged job ledger, entry 'abc'", "missing ['job_id'"],
    ),
    "status ledger of the wrong type": (
        [*STATUS, "{tmp}/decl/ledger_list"],
        ["not a job ledger (a JSON object of run id -> job)"],
    ),
    "status ledger field of the wrong type": (
        [*STATUS, "{tmp}/decl/ledger_types"],
        ["entry 'abc': job_id must be a str, got a int"],
    ),
    "status ledger unknown cluster": (
        [*STATUS, "{tmp}/decl/ledger_cluster"],
        ["cluster one of slurm, local"],
    ),
    "status ledger nested too deeply": (
        [*STATUS, "{tmp}/decl/ledger_deep"],
        ["not a readable job ledger", "recursion"],
    ),
    # ---- compare
    "compare deeply nested JSON": (
        ["compare", "{tmp}/decl/deep.json", "{tmp}/decl/bench.json"],
        ["deep.json is not pytest-benchmark JSON (nested too deeply)"],
    ),
    "compare negative median": (
        ["compare", "{tmp}/decl/bench.json", "{tmp}/decl/negative_median.json"],
        ["stats.median must be > 0, got -0.1"],
    ),
    "compare zero median": (
        ["compare", "{tmp}/decl/zero_median.json", "{tmp}/decl/bench.json"],
        ["stats.median must be > 0, got 0"],
    ),
    "compare negative bytes": (
        ["compare", "{tmp}/decl/bench.json", "{tmp}/decl/negative_bytes.json"],
        ["extra_info.tracked_peak_bytes must be >= 0, got -10"],
    ),
}

HEAD = "from dataclasses import dataclass\n\nfrom locbench import Method, param\n\n\n"
METHOD_FILES = {
    "NotDataclass": "class NotDataclass(Method):\n    class Params:\n        width = 3\n",
    "NotFrozen": (
        "@dataclass\nclass Params:\n    width: int = param(3, 'w', low=1)\n\n\n"
        "class NotFrozen(Method):\n    Params = Params\n"
    ),
    "PlainField": (
        "@dataclass(frozen=True)\nclass Params:\n    width: int = 3\n\n\n"
        "class PlainField(Method):\n    Params = Params\n"
    ),
    "ListField": (
        "@dataclass(frozen=True)\nclass Params:\n    sizes: list = param([1], 's')\n\n\n"
        "class ListField(Method):\n    Params = Params\n"
    ),
    "CheckRaises": (
        "@dataclass(frozen=True)\nclass Params:\n    width: int = param(3, 'w', low=1)\n\n"
        "    def check(self):\n        return 1 / 0\n\n\n"
        "class CheckRaises(Method):\n    Params = Params\n"
    ),
    "CheckRefuses": (
        "from locbench.errors import UserError\n\n\n"
        "@dataclass(frozen=True)\nclass Params:\n"
        "    low: int = param(1, 'l')\n    high: int = param(2, 'h')\n\n"
        "    def check(self):\n        if self.low > self.high:\n"
        "            raise UserError('low must not exceed high')\n\n\n"
        "class CheckRefuses(Method):\n    Params = Params\n"
    ),
}

TOML = {
    "grid_params.toml": '[grid]\nmethods = ["dgl"]\nmethod_params = [{hidden_dim = 16}]\n',
    "grid_params_table.toml": '[grid]\nmethods = ["dgl"]\n[grid.method_params]\nx = [1]\n',
    "run_params_list.toml": '[grid]\nmethods = ["dgl"]\n[run]\nmethod_params = [1]\n',
    "run_params_typo.toml": '[grid]\nmethods = ["dgl"]\n[run]\nmethod_params = {hiden_dim = 3}\n',
    "method_typo.toml": '[grid]\nmethods = ["dgl"]\n[method.dgl]\nhiden_dim = 3\n',
    "methods_numbers.toml": "[grid]\nmethods = [1, 2]\n",
    "k_lists.toml": "[grid]\nK = [[2]]\n",
    "depth_text.toml": '[grid]\nmethods = ["auglocal"]\naux_depth = ["x"]\n',
    "grid_array.toml": '[[grid]]\nmethods = ["bp"]\n',
    "hp_nested.toml": '[grid]\nmethods = ["dgl"]\n[grid.hp.dgl]\nhidden_dim = [3]\n',
    "hp_empty_scope.toml": '[grid]\nmethods = ["dgl"]\n[grid.hp]\n".hidden_dim" = [3]\n',
}


def ledger_entry(**changes: object) -> dict:
    entry = {"run_id": "abc", "job_id": "1_0", "cluster": "slurm", "folder": "f", "config": {}}
    return {**entry, "submitted_at": "2024-01-01T00:00:00", **changes}


LEDGERS = {
    "ledger_missing": json.dumps({"abc": {"run_id": "abc"}}),
    "ledger_list": "[1, 2]",
    "ledger_types": json.dumps({"abc": ledger_entry(job_id=5)}),
    "ledger_cluster": json.dumps({"abc": ledger_entry(cluster="ray")}),
    "ledger_deep": '{"a":' * 100_000 + "1" + "}" * 100_000,
}


def benchmark(median: float, peak: float = 10) -> str:
    entry = {"name": "t", "param": "bp", "extra_info": {"tracked_peak_bytes": peak}}
    return json.dumps({"benchmarks": [{**entry, "stats": {"median": median}}]})


def write_fixtures(root: Path) -> None:
    """The method files, TOML files, folders and JSON files the cases read, under ``root/decl``."""
    folder = root / "decl"
    files = {f"{name.lower()}.py": HEAD + text for name, text in METHOD_FILES.items()}
    files |= TOML
    files |= {f"{name}/.slurm/jobs.json": text for name, text in LEDGERS.items()}
    files["nested/sub/bp-smallnet-K1-synthetic-s0-abc.json"] = json.dumps({"status": "ok"})
    files["deep.json"] = "[" * 100_000 + "]" * 100_000
    files["bench.json"] = benchmark(0.1)
    files["negative_median.json"] = benchmark(-0.1)
    files["zero_median.json"] = benchmark(0)
    files["negative_bytes.json"] = benchmark(0.1, peak=-10)
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (folder / "empty").mkdir()
