"""Methods from outside the package: ``--method path/to/file.py:Class`` and entry points."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from locbench.analysis.describe import describe
from locbench.cli.main import main
from locbench.data.base import DataInfo
from locbench.errors import UserError
from locbench.harness.build import resolve
from locbench.harness.run import prepare
from locbench.harness.trainer import LocalTrainer
from locbench.methods import METHODS, Batch, Method, make_params
from locbench.methods.dgl import DGL
from locbench.methods.loading import import_file, resolve_method
from locbench.nets.backbone import get_backbone
from locbench.nets.split import Split
from locbench.settings.run_config import RunConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "greedy_linear.py"
PREFIX = "locbench: error: "
FAST = ["--dataset", "synthetic", "--epochs", "1", "--batch-size", "64", "--no-progress"]
INFO = DataInfo("x", 10, (3, 16, 16), (0.0,) * 3, (1.0,) * 3)
# smallnet's hidden units output 16, 16, 32, 64 channels; K=4 cuts after units 0, 1, 2, and
# each head is Linear(C, 10) on pooled features: C * 10 weights + 10 biases.
HEAD_PARAMS = [16 * 10 + 10, 16 * 10 + 10, 32 * 10 + 10]


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(cls: type[Method], K: int = 4, **params) -> Method:
    backbone = get_backbone("smallnet")
    return cls(backbone, Split.uniform(backbone.n_hidden, K), INFO, make_params(cls, params))


@pytest.fixture
def keep_registry(monkeypatch):
    """Registrations made by plugin files in a test are undone after it."""
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


# --- resolving -------------------------------------------------------------------------------


def locbench_process(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    """``python -m locbench ARGV`` in a fresh process run from ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "locbench", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
    )


def research_folder(tmp_path: Path) -> Path:
    """A research repository as users have them: its own ``bench`` and ``reports`` packages
    (failing loudly if imported), its own ``methods`` package (no method registry in it), and a
    method file that imports from that package and from locbench's public API."""
    for package in ("methods", "bench", "reports"):
        (tmp_path / package).mkdir()
        write(tmp_path / package, "__init__.py", f"raise ImportError('their {package}')\n")
    write(tmp_path / "methods", "__init__.py", "")
    write(tmp_path / "methods", "heads.py", "WIDTH = 3\n")
    write(
        tmp_path,
        "mine.py",
        "from torch import nn\n\n"
        "from locbench import Method\n"
        "from methods.heads import WIDTH\n\n\n"
        "class Mine(Method):\n"
        "    def build_aux(self, backbone, cut):\n"
        "        return nn.Sequential(\n"
        "            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cut.shape[0], WIDTH),\n"
        "            nn.Linear(WIDTH, 10),\n"
        "        )\n",
    )
    return tmp_path


@pytest.mark.parametrize("launcher", ["python -m locbench", "locbench"])
def test_locbench_runs_from_a_folder_with_its_own_methods_bench_and_reports(tmp_path, launcher):
    folder = research_folder(tmp_path)
    script = Path(sys.executable).parent / "locbench"
    if launcher == "locbench" and not script.exists():
        pytest.skip(f"no console script at {script}: install the package (pip install -e .)")
    command = [sys.executable, "-m", "locbench"] if launcher != "locbench" else [str(script)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, *argv], capture_output=True, text=True, cwd=folder, env=env, timeout=120
        )

    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0] == "methods:  " + ", ".join(METHODS.names())
    described = run(
        "describe", "--method", "mine.py:Mine", "--net", "smallnet", "--K", "2", "--json"
    )
    assert described.returncode == 0, described.stderr
    # Module 0's aux head is theirs, WIDTH = 3 from their own methods package.
    module = json.loads(described.stdout)["modules"][0]
    channels = module["output_shape"][0]
    assert module["layers"] == [
        "AdaptiveAvgPool2d",
        "Flatten",
        f"Linear({channels}->3)",
        "Linear(3->10)",
    ]


def test_registered_name_gives_the_registered_class():
    assert resolve_method("dgl") is DGL
    assert resolve_method("bp") is METHODS.get("bp")


def test_example_loads_by_path_with_linear_heads():
    cls = resolve_method(f"{EXAMPLE}:GreedyLinear")
    assert issubclass(cls, Method) and cls is not Method
    assert cls.__name__ == "GreedyLinear"
    assert cls.name == "greedylinear"  # unregistered: named after the class
    assert "greedylinear" not in METHODS  # loading by path registers nothing
    method = build(cls)
    assert [count(a) for a in method.aux] == HEAD_PARAMS
    assert count(method) == 670
    assert method.params == cls.Params(loss_scale=1.0)
    # The same file is imported once: resolving it again gives the very same class.
    assert resolve_method(f"{EXAMPLE}:GreedyLinear") is cls


def test_relative_path_is_relative_to_the_working_directory(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    assert resolve_method("examples/greedy_linear.py:GreedyLinear") is resolve_method(
        f"{EXAMPLE}:GreedyLinear"
    )


def test_a_file_that_registers_its_class_keeps_that_name(tmp_path, keep_registry):
    path = write(
        tmp_path,
        "named.py",
        "from locbench import Method, register\n\n\n"
        '@register("my-greedy")\nclass Named(Method):\n    pass\n',
    )
    cls = resolve_method(f"{path}:Named")
    assert cls.name == "my-greedy"
    assert METHODS.get("my-greedy") is cls


def test_subclass_of_a_registered_method_gets_its_own_name(tmp_path):
    path = write(
        tmp_path,
        "sub.py",
        "from locbench.methods.dgl import DGL\n\n\nclass MyDGL(DGL):\n    pass\n",
    )
    cls = resolve_method(f"{path}:MyDGL")
    assert issubclass(cls, DGL)
    assert cls.name == "mydgl" and DGL.name == "dgl"


def test_loss_scale_reaches_the_method_and_scales_the_local_loss():
    spec = f"{EXAMPLE}:GreedyLinear"
    params = {"loss_scale": "2"}
    config = RunConfig(method=spec, K=4, method_params=params, dataset="synthetic", epochs=1)
    prepared = prepare(config)
    assert prepared.config.method == spec
    assert prepared.method.params == prepared.method.Params(loss_scale=2.0)
    one = build(resolve_method(spec), loss_scale=1.0)
    two = build(resolve_method(spec), loss_scale=2.0)
    two.load_state_dict(one.state_dict())
    g = torch.Generator().manual_seed(0)
    out = torch.randn(8, 16, 16, 16, generator=g)
    batch = Batch(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g))
    assert torch.equal(two.local_loss(0, out, batch), 2 * one.local_loss(0, out, batch))


def test_example_keeps_gradients_isolated():
    """loss_scale=2 doubles exactly the gradients of modules 0..2 and their heads; the last
    module, which only sees the output loss through detached inputs, gets identical gradients."""
    cls = resolve_method(f"{EXAMPLE}:GreedyLinear")
    trainers = []
    for scale in (1.0, 2.0):
        torch.manual_seed(0)
        net = get_backbone("smallnet")
        split = Split.uniform(net.n_hidden, 4)
        method = cls(net, split, INFO, make_params(cls, {"loss_scale": scale}))
        settings = RunConfig(lr=0.1, epochs=1)
        trainers.append(LocalTrainer(net, split, method, settings, torch.device("cpu")))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)
    for t in trainers:
        t.train_step(x, y)

    def grads(module):
        return [p.grad for p in module.parameters()]

    one, two = trainers
    for k in range(3):
        for a, b in zip(grads(one.modules[k]), grads(two.modules[k])):
            assert torch.equal(2 * a, b)
        for a, b in zip(grads(one.method.aux[k]), grads(two.method.aux[k])):
            assert torch.equal(2 * a, b)
    assert all(map(torch.equal, grads(one.modules[3]), grads(two.modules[3])))


# --- the acceptance test: a method file outside the packages, through the real CLI -----------


def test_method_file_outside_the_packages_runs_through_the_cli(tmp_path):
    plugin = tmp_path / "greedy_linear.py"
    shutil.copy(EXAMPLE, plugin)
    spec = f"{tmp_path}/greedy_linear.py:GreedyLinear"
    out_dir = tmp_path / "runs"
    proc = locbench_process(
        tmp_path, "run", "--method", spec, "--net", "smallnet", "--K", "4", "--dataset",
        "synthetic", "--epochs", "1", "--no-progress", "--out", str(out_dir),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    records = sorted(tmp_path.rglob("*.json"))  # anywhere: a record must not escape --out
    assert [r.parent for r in records] == [out_dir]
    record = json.loads(records[0].read_text())
    assert record["config"]["method"] == spec
    assert record["config"]["method_params"] == {"loss_scale": 1.0}  # typed defaults
    assert record["K"] == 4
    assert record["status"] == "ok", record.get("message")
    assert record["params_aux"] == sum(HEAD_PARAMS) == 670
    assert proc.stdout.startswith(f"{spec}: status ok")


def test_hyperparameter_of_a_method_file_reaches_the_record(tmp_path, monkeypatch, capsys):
    shutil.copy(EXAMPLE, tmp_path / "greedy_linear.py")
    monkeypatch.chdir(tmp_path)
    spec = "greedy_linear.py:GreedyLinear"  # relative to the working directory
    argv = ["run", "--method", spec, "--net", "smallnet", "--K", "4", "--hp", "loss_scale=2"]
    code = main([*argv, *FAST, "--out", "runs"])
    err = capsys.readouterr().err
    assert code == 0, err
    records = sorted(tmp_path.rglob("*.json"))
    assert [r.parent for r in records] == [tmp_path / "runs"]
    record = json.loads(records[0].read_text())
    assert record["config"]["method"] == spec
    assert record["config"]["method_params"] == {"loss_scale": 2.0}  # typed
    assert record["status"] == "ok", record.get("message")
    assert record["params_aux"] == 670


# --- malformed --method values: one line, exit 2 ---------------------------------------------


@pytest.fixture
def plugins(tmp_path) -> Path:
    """A folder of plugin files, good and bad."""
    shutil.copy(EXAMPLE, tmp_path / "greedy_linear.py")
    shutil.copy(EXAMPLE, tmp_path / "greedy_linear.txt")
    write(tmp_path, "boom.py", "import torch\n\nraise RuntimeError('boom\\nsecond line')\n")
    write(tmp_path, "syntax.py", "class Broken(:\n    pass\n")
    write(tmp_path, "nomethods.py", "from locbench import Method\n\nVALUE = 1\n")
    write(
        tmp_path,
        "clash.py",
        "from locbench import Method, register\n\n\n"
        '@register("dgl")\nclass Clash(Method):\n    pass\n',
    )
    (tmp_path / "folder.py").mkdir()
    return tmp_path


# (the --method value, with {d} for the plugin folder; substrings the one error line must hold)
BAD_METHODS = {
    "file without class": ("{d}/greedy_linear.py", ["greedy_linear.py' names no class"]),
    "empty class": ("{d}/greedy_linear.py:", ["names no class after ':'"]),
    "empty path": (":GreedyLinear", ["':GreedyLinear' names no file"]),
    "two colons": ("{d}/greedy_linear.py:A:B", ["more than one ':'"]),
    "not a .py file": ("{d}/greedy_linear.txt:GreedyLinear", ["greedy_linear.txt'", "not a .py"]),
    "path without .py": ("{d}/greedy_linear", ["not a method name or a .py file"]),
    "class not an identifier": ("{d}/greedy_linear.py:Greedy.Linear", ["not a class name"]),
    "file not found": ("{d}/missing.py:GreedyLinear", ["missing.py' not found"]),
    "relative file not found": ("missing.py:X", ["'missing.py' not found (relative to"]),
    "a folder": ("{d}/folder.py:X", ["folder.py' is not a file"]),
    "class missing": (
        "{d}/greedy_linear.py:Nope",
        ["has no class 'Nope'; it defines GreedyLinear"],
    ),
    "no method in the file": ("{d}/nomethods.py:X", ["no class 'X'; it defines no Method"]),
    "not a Method subclass": (
        "{d}/greedy_linear.py:Params",
        ["Params in ", "is not a subclass of locbench.methods.base.Method (it is a class"],
    ),
    "a module, not a class": ("{d}/greedy_linear.py:torch", ["not a subclass", "it is a module"]),
    "the base class itself": ("{d}/greedy_linear.py:Method", ["(it is the base class itself)"]),
    "file raising on import": (
        "{d}/boom.py:X",
        ["importing ", "boom.py failed: RuntimeError: boom"],
    ),
    "syntax error": ("{d}/syntax.py:Broken", ["syntax.py failed: SyntaxError: "]),
    "file re-registering a name": (
        "{d}/clash.py:Clash",
        ["clash.py failed: ValueError: method 'dgl' is already registered"],
    ),
    "unknown short name": ("nope", ["unknown method 'nope'; known: ", "bp", "dgl"]),
}


@pytest.mark.parametrize("method, expected", BAD_METHODS.values(), ids=BAD_METHODS.keys())
def test_malformed_method_is_one_error_line(plugins, capsys, keep_registry, method, expected):
    out_dir = plugins / "runs"
    code = main(["run", "--method", method.format(d=plugins), *FAST, "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX)
    for text in expected:
        assert text in lines[0]
    assert out == ""
    assert not out_dir.exists()


def test_failed_import_leaves_no_half_module_behind(plugins):
    with pytest.raises(UserError, match="boom"):
        resolve_method(f"{plugins}/boom.py:X")
    assert not [m for m in sys.modules if m.startswith("locbench_plugin_boom_")]


def test_subprocess_missing_class_is_one_line_without_traceback(plugins):
    spec = f"{plugins}/greedy_linear.py:Nope"
    proc = subprocess.run(
        [sys.executable, "-m", "locbench", "run", "--method", spec, *FAST]
        + ["--out", str(plugins / "runs")],
        capture_output=True,
        text=True,
        cwd=plugins,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        f"{PREFIX}{plugins}/greedy_linear.py has no class 'Nope'; it defines GreedyLinear\n"
    )
    assert proc.stdout == ""
    assert not (plugins / "runs").exists()


# --- the locbench.methods entry-point group --------------------------------------------------


class FakeEntryPoint:
    def __init__(self, name: str, load, value: str | None = None) -> None:
        self.name, self.group = name, "locbench.methods"
        self.value = value or f"fake.{name}:Class"
        self._load = load

    def load(self):
        return self._load()


def fake_entry_points(monkeypatch, *eps) -> None:
    def entry_points(*, group: str):
        assert group == "locbench.methods"
        return list(eps)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def fresh_example_class(folder: Path) -> type[Method]:
    """GreedyLinear from a copy of the example, never resolved (so not yet named)."""
    shutil.copy(EXAMPLE, folder / "greedy_copy.py")
    return import_file((folder / "greedy_copy.py").resolve()).GreedyLinear


def test_entry_point_name_resolves_to_its_class(monkeypatch, tmp_path):
    cls = fresh_example_class(tmp_path)
    fake_entry_points(monkeypatch, FakeEntryPoint("greedy-ep", lambda: cls))
    assert resolve_method("greedy-ep") is cls
    assert cls.name == "greedy-ep"
    assert [count(a) for a in build(cls).aux] == HEAD_PARAMS


def test_real_entry_point_object_loads_a_module_on_sys_path(monkeypatch, tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "locbench_ep_plugin.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(
        name="greedy-real", value="locbench_ep_plugin:GreedyLinear", group="locbench.methods"
    )
    fake_entry_points(monkeypatch, ep)
    cls = resolve_method("greedy-real")
    assert cls.__module__ == "locbench_ep_plugin" and issubclass(cls, Method)
    monkeypatch.delitem(sys.modules, "locbench_ep_plugin")


def test_entry_point_that_is_not_a_method_is_a_user_error(monkeypatch):
    fake_entry_points(monkeypatch, FakeEntryPoint("not-a-method", lambda: dict))
    with pytest.raises(UserError, match=r"entry point 'not-a-method' \(fake.not-a-method:Class\)"):
        resolve_method("not-a-method")
    with pytest.raises(UserError, match="is not a subclass of locbench.methods.base.Method"):
        resolve_method("not-a-method")


def test_entry_point_failing_to_load_is_a_user_error(monkeypatch):
    def broken():
        raise ModuleNotFoundError("No module named 'fake'")

    fake_entry_points(monkeypatch, FakeEntryPoint("broken", broken))
    with pytest.raises(
        UserError, match="^loading entry point 'broken' .* failed: ModuleNotFoundError: No module"
    ):
        resolve_method("broken")


def never_loaded():
    raise AssertionError("an entry point was loaded for another name")


def test_registered_names_never_load_entry_points(monkeypatch):
    fake_entry_points(monkeypatch, FakeEntryPoint("other", never_loaded))
    assert resolve_method("dgl") is DGL


def test_plugin_named_like_a_registered_method_is_refused_in_one_line(monkeypatch, capsys):
    fake_entry_points(monkeypatch, FakeEntryPoint("dgl", never_loaded, "theirs.dgl:DGL"))
    expected = (
        "method name 'dgl' is both the registered method locbench.methods.dgl:DGL and plug-in "
        "entry point 'dgl' (theirs.dgl:DGL); rename or uninstall the plug-in"
    )
    with pytest.raises(UserError) as exc:
        resolve_method("dgl")
    assert str(exc.value) == expected
    assert resolve_method("bp") is METHODS.get("bp")  # other names are not affected
    for argv in (["list"], ["run", "--method", "dgl", *FAST], ["describe", "--method", "dgl"]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert err == f"{PREFIX}{expected}\n" and "plugins:" not in out


def test_plugin_pointing_at_the_registered_class_itself_is_no_clash(monkeypatch, capsys):
    fake_entry_points(monkeypatch, FakeEntryPoint("dgl", never_loaded, "locbench.methods.dgl:DGL"))
    assert resolve_method("dgl") is DGL
    assert main(["list"]) == 0
    assert "plugins:" not in capsys.readouterr().out


def test_two_plugins_of_one_name_are_refused_unless_they_agree(monkeypatch, tmp_path, capsys):
    cls = fresh_example_class(tmp_path)
    mine = FakeEntryPoint("greedy-ep", lambda: cls, "mine.greedy:GreedyLinear")
    theirs = FakeEntryPoint("greedy-ep", never_loaded, "theirs.greedy:Greedy")
    fake_entry_points(monkeypatch, mine, theirs)
    expected = (
        "method name 'greedy-ep' is claimed by two plug-ins, entry point 'greedy-ep' "
        "(mine.greedy:GreedyLinear) and entry point 'greedy-ep' (theirs.greedy:Greedy); rename "
        "or uninstall one of them"
    )
    with pytest.raises(UserError) as exc:
        resolve_method("greedy-ep")
    assert str(exc.value) == expected
    assert main(["list"]) == 2
    assert capsys.readouterr().err == f"{PREFIX}{expected}\n"
    # the same package found twice (same value) claims the name once
    fake_entry_points(monkeypatch, mine, FakeEntryPoint("greedy-ep", never_loaded, mine.value))
    assert resolve_method("greedy-ep") is cls
    assert main(["list"]) == 0
    assert "plugins:  greedy-ep\n" in capsys.readouterr().out


def test_unknown_name_lists_entry_point_names(monkeypatch, capsys, tmp_path):
    fake_entry_points(monkeypatch, FakeEntryPoint("greedy-ep", lambda: dict))
    known = ", ".join(sorted([*METHODS.names(), "greedy-ep"]))
    with pytest.raises(UserError) as exc:
        resolve_method("nope")
    assert str(exc.value) == f"unknown method 'nope'; known: {known}"
    assert main(["list"]) == 0
    assert "plugins:  greedy-ep\n" in capsys.readouterr().out


# --- a method file's own state and its neighbours -------------------------------------------

LOCKED = """
import threading

from locbench.methods.dgl import DGL


class Locked(DGL):
    def __init__(self, *args):
        super().__init__(*args)
        self.lock = threading.Lock()  # cannot be deep-copied (or pickled)
"""


def test_a_method_holding_a_lock_runs_and_has_its_flops_counted(tmp_path, capsys):
    import copy

    path = write(tmp_path, "locked.py", LOCKED)
    spec = f"{path}:Locked"
    with pytest.raises(TypeError):  # what `run` used to do to count FLOPs
        copy.deepcopy(prepare(RunConfig(method=spec, K=2, dataset="synthetic")).method)
    out_dir = tmp_path / "runs"
    code = main(["run", "--method", spec, "--K", "2", *FAST, "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err
    record = json.loads(next(out_dir.glob("*.json")).read_text())
    assert record["status"] == "ok" and not record["message"]
    # the same FLOPs as DGL's: counted on a fresh build of the configuration
    dgl = describe(RunConfig(method="dgl", K=2), batch_size=64)
    assert record["flops"] == dgl["flops_per_step"]


def test_a_method_file_imports_a_module_beside_it(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "my_method"
    folder.mkdir()
    write(
        folder,
        "locbench_test_heads.py",
        "from torch import nn\n\n\n"
        "def linear_head(channels, classes):\n"
        "    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), "
        "nn.Linear(channels, classes))\n",
    )
    write(
        folder,
        "beside.py",
        "import locbench_test_heads\n\nfrom locbench import Method\n\n\n"
        "class Beside(Method):\n"
        "    def build_aux(self, backbone, cut):\n"
        "        return locbench_test_heads.linear_head(cut.shape[0], self.data.num_classes)\n",
    )
    monkeypatch.chdir(tmp_path)  # the working directory is not the method's folder
    path_before = list(sys.path)
    cls = resolve_method("my_method/beside.py:Beside")
    monkeypatch.delitem(sys.modules, "locbench_test_heads")
    assert sys.path == path_before  # on sys.path only while the file was imported
    assert [count(a) for a in build(cls).aux] == HEAD_PARAMS
    # and through `locbench run`, in a fresh process
    proc = locbench_process(
        tmp_path, "run", "--method", "my_method/beside.py:Beside", "--K", "4", *FAST,
        "--out", "runs",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    assert record["status"] == "ok" and record["params_aux"] == sum(HEAD_PARAMS)


def test_a_method_file_is_its_class_and_content_not_its_path(tmp_path, monkeypatch):
    source = EXAMPLE.read_text()
    first = write(tmp_path, "greedy.py", source)
    (tmp_path / "copy").mkdir()
    copied = write(tmp_path / "copy", "other_name.py", source)
    monkeypatch.chdir(tmp_path)

    def run_id(spec: str) -> str:
        return resolve(RunConfig(method=spec, K=2, dataset="synthetic")).run_id

    same = {run_id(f"{p}:GreedyLinear") for p in (first, "greedy.py", "./greedy.py", copied)}
    assert len(same) == 1  # absolute, relative, dotted, a byte-identical copy elsewhere
    write(tmp_path, "greedy.py", source + "\n# edited\n")
    assert run_id("greedy.py:GreedyLinear") not in same  # the content is the method


def test_config_lists_a_method_files_hyperparameters(capsys):
    assert main(["config", "--method", f"{EXAMPLE}:GreedyLinear"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["setting", "flag", "default", "accepted", "help"]
    assert lines[1].split()[:4] == ["GreedyLinear.loss_scale", "--hp", "loss_scale=", "1.0"]
    assert len(lines) == 2
    assert main(["config", "--method", "bp"]) == 0
    assert capsys.readouterr().out == "bp has no hyperparameters\n"
    assert main(["config", "--method", "nope"]) == 2
    assert capsys.readouterr().err.startswith(f"{PREFIX}unknown method 'nope'")
