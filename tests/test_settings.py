"""The settings schema: one declaration per setting, generated flags/TOML/axes/table, checks
in one place, and the run identity built from it."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import pytest

import locbench.harness.build
from locbench.cli.flags import axes_from_args, config_from_args
from locbench.cli.main import build_parser
from locbench.cli.settings_table import settings_markdown
from locbench.errors import UserError
from locbench.harness.build import resolve
from locbench.methods import METHODS
from locbench.settings.run_config import BY_NAME, SPECS, RunConfig
from locbench.settings.schema import SECTIONS, convert, specs
from locbench.study.grid import Grid, load_grid

REPO = Path(__file__).resolve().parents[1]


def test_every_run_setting_is_declared_with_a_section_and_help():
    assert [s.name for s in SPECS] == [f.name for f in dataclasses.fields(RunConfig)]
    for spec in SPECS:
        assert spec.section in SECTIONS, spec.name
        assert spec.help, spec.name


def test_every_builtin_hyperparameter_has_help_and_its_default_passes_its_own_check():
    for name in METHODS.names():
        for spec in specs(METHODS.get(name).Params):
            assert spec.help, f"{name}.{spec.name}"
            assert convert(spec, spec.default, spec.name) == spec.default


def test_readme_shows_the_generated_settings_table():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", readme, re.S)
    assert block, "README.md lacks the settings table markers"
    assert block.group(1) == settings_markdown(), (
        "README settings table is stale: paste `locbench config --list --markdown`"
    )


@pytest.mark.parametrize(
    "name, text, value",
    [
        ("K", "4", 4),
        ("K", "none", None),
        ("cuts", "3,7,11", (3, 7, 11)),
        ("lr", "0.5", 0.5),
        ("lr", "1", 1.0),
        ("augment", "false", False),
        ("nesterov", "yes", True),
        ("memory", "both", "both"),
        ("seed", str(2**32 - 1), 2**32 - 1),
    ],
)
def test_text_converts_to_the_declared_type(name, text, value):
    got = convert(BY_NAME[name], text, "--x")
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("lr", "nan", "--x must be a finite number > 0 (or none), got nan"),
        ("seed", str(2**32), "--x must be an integer >= 0, <= 4294967295, got 4294967296"),
        ("K", "0", "--x must be an integer >= 1 (or none), got 0"),
        ("memory", "x", "--x must be one of auto, tracked, cuda, both, got 'x'"),
        ("augment", "maybe", "--x must be true or false, got 'maybe'"),
        ("epochs", True, "--x must be an integer >= 1, <= 100000 (or none), got True"),
        ("momentum", 1.5, "--x must be a finite number >= 0, <= 1, got 1.5"),
    ],
)
def test_a_bad_value_is_one_line_naming_what_is_accepted(name, value, message):
    with pytest.raises(UserError) as e:
        convert(BY_NAME[name], value, "--x")
    assert str(e.value) == message


def test_python_values_are_checked_and_normalised_so_one_config_has_one_id():
    assert RunConfig(lr=1) == RunConfig(lr=1.0)
    assert isinstance(RunConfig(lr=1).lr, float)
    assert RunConfig(cuts=[1, 2]).cuts == (1, 2)
    with pytest.raises(UserError, match="--lr must be a finite number"):
        RunConfig(lr=float("inf"))
    with pytest.raises(UserError, match="--epochs must be an integer"):
        RunConfig(epochs=2.5)
    a = resolve(RunConfig(method="dgl", K=4, method_params={"hidden_dim": "64"})).config
    b = resolve(RunConfig(method="dgl", K=4, method_params={"hidden_dim": 64})).config
    assert a == b and resolve(a).run_id == resolve(b).run_id


def test_resolved_config_holds_every_hyperparameter_typed_with_defaults():
    cfg = resolve(RunConfig(method="dgl", method_params={"hidden_dim": "64"})).config
    assert cfg.method_params == {"variant": "auglocal", "hidden_dim": 64, "mlp_layers": 3}
    cfg = resolve(RunConfig(method="auglocal", dataset="cifar10")).config
    assert cfg.method_params == {"depth": 2, "tau": 0.5, "pyramid": True, "widen": 1.0}
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.warmup_epochs) == (400, 1024, 0.8, 10.0)
    assert resolve(cfg).config == cfg  # resolving twice changes nothing
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # records round-trip


def test_the_run_id_covers_every_hyperparameter_the_method_source_and_the_version(
    tmp_path, monkeypatch
):
    base = resolve(RunConfig(method="dgl")).config
    assert resolve(RunConfig(method="dgl", method_params={"hidden_dim": 64})).run_id != (
        resolve(base).run_id
    )
    identity = resolve(base).identity
    dgl_file = REPO / "locbench" / "methods" / "dgl.py"
    assert identity["method_sha256"] == hashlib.sha256(dgl_file.read_bytes()).hexdigest()
    monkeypatch.setattr(locbench.harness.build, "package_version", lambda: "9.9.9")
    assert resolve(base).identity["package_version"] == "9.9.9"
    monkeypatch.undo()
    method = tmp_path / "mine.py"
    method.write_text("from locbench import Method\n\nclass Mine(Method):\n    pass\n")
    cfg = resolve(RunConfig(method=f"{method}:Mine")).config
    first = resolve(cfg).run_id
    method.write_text(method.read_text() + "# edited\n")
    assert resolve(cfg).run_id != first


def test_the_package_version_is_part_of_the_id(monkeypatch):
    cfg = resolve(RunConfig()).config
    before = resolve(cfg).run_id
    monkeypatch.setattr(locbench.harness.build, "package_version", lambda: "9.9.9")
    assert resolve(cfg).run_id != before


def test_run_flags_are_generated_for_every_cli_setting():
    parser = build_parser()
    run_help = parser.parse_args(["run"])  # every setting flag defaults to None: not given
    for spec in SPECS:
        if spec.cli:
            assert vars(run_help)[spec.name] is None, spec.name
    # (a key the run's method has: the flags check --hp keys against it)
    argv = ["run", "--lr", "0.2", "--no-augment", "--method", "auglocal", "--hp", "depth=3"]
    cfg = config_from_args(parser.parse_args(argv))
    assert (cfg.lr, cfg.augment, cfg.method_params) == (0.2, False, {"depth": "3"})
    unset = dict(lr=None, augment=True, method="bp", method_params={})
    assert dataclasses.replace(cfg, **unset) == RunConfig()


def test_describe_keeps_its_own_default_net():
    args = build_parser().parse_args(["describe"])
    assert config_from_args(args).net == "resnet32"


def test_sweep_flags_are_axes_of_the_same_settings():
    args = build_parser().parse_args(
        ["sweep", "--methods", "bp,dgl", "--lr", "0.1,0.2", "--K", "2,none", "--cuts", "0;1,2"]
    )
    axes = axes_from_args(args)
    assert axes == {
        "method": ("bp", "dgl"),
        "K": (2, None),
        "cuts": ((0,), (1, 2)),
        "lr": (0.1, 0.2),
    }


def test_unscoped_hyperparameters_go_only_to_the_methods_that_have_them():
    grid = Grid(methods=("bp", "dgl", "infopro"), hp={"hidden_dim": ("64", "128")})
    params = [(c.method, c.method_params.get("hidden_dim")) for c in grid.configs()]
    assert params == [
        ("bp", None),
        ("dgl", 64),
        ("dgl", 128),
        ("infopro", 64),
        ("infopro", 128),
    ]
    scoped = Grid(methods=("dgl", "infopro"), hp={"dgl.hidden_dim": ("64", "128")})
    params = [(c.method, c.method_params["hidden_dim"]) for c in scoped.configs()]
    assert params == [("dgl", 64), ("dgl", 128), ("infopro", 128)]


def test_toml_grid_takes_hyperparameter_axes_method_tables_and_any_setting(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(
        "[grid]\n"
        'methods = ["dgl", "auglocal"]\n'
        "lr = [0.1, 0.2]\n"
        "[grid.hp]\n"
        '"dgl.hidden_dim" = [32, 64]\n'
        "[run]\n"
        'dataset = "synthetic"\n'
        "epochs = 1\n"
        "[method.auglocal]\n"
        "depth = 1\n"
    )
    configs = load_grid(path).configs()
    got = sorted(
        (c.method, c.lr, c.method_params.get("hidden_dim"), c.method_params.get("depth"))
        for c in configs
    )
    assert got == [
        ("auglocal", 0.1, None, 1),
        ("auglocal", 0.2, None, 1),
        ("dgl", 0.1, 32, None),
        ("dgl", 0.1, 64, None),
        ("dgl", 0.2, 32, None),
        ("dgl", 0.2, 64, None),
    ]
    assert all(c.epochs == 1 and c.dataset == "synthetic" for c in configs)


def test_unscoped_fixed_parameters_no_longer_break_methods_without_them(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('[grid]\nmethods = ["bp", "dgl"]\n[run]\nmethod_params = {variant = "paper"}\n')
    configs = load_grid(path).configs()
    assert [(c.method, c.method_params.get("variant")) for c in configs] == [
        ("bp", None),
        ("dgl", "paper"),
    ]


def test_the_readme_sweep_file_is_a_valid_grid(tmp_path):
    readme = (REPO / "README.md").read_text()
    toml = re.search(r"```toml\n(.*?)```", readme, re.S).group(1)
    path = tmp_path / "grid.toml"
    path.write_text(toml)
    configs = load_grid(path).configs()
    by_method = {m: [c for c in configs if c.method == m] for m in ("bp", "dgl", "auglocal")}
    # K x lr = 4 each; dgl x hidden_dim 2, auglocal x depth 2; bp has neither
    assert [len(v) for v in by_method.values()] == [4, 8, 8]
    assert {c.method_params["variant"] for c in by_method["dgl"]} == {"paper"}


def test_settings_take_dotted_paths_and_section_tables(tmp_path):
    assert RunConfig.from_dict({"train.lr": 0.1, "env": {"seed": 3}}) == RunConfig(lr=0.1, seed=3)
    with pytest.raises(UserError, match=r"config: env\.lr is not a setting; lr is train\.lr"):
        RunConfig.from_dict({"env.lr": 0.1})
    path = tmp_path / "grid.toml"
    path.write_text(
        '[grid]\nmethods = ["bp"]\n"train.lr" = [0.1, 0.2]\n[grid.env]\nseed = [0, 1]\n'
        "[run.train]\nepochs = 1\n"
    )
    configs = load_grid(path).configs()
    assert sorted((c.lr, c.seed, c.epochs) for c in configs) == [
        (0.1, 0, 1),
        (0.1, 1, 1),
        (0.2, 0, 1),
        (0.2, 1, 1),
    ]


@pytest.mark.parametrize(
    "doc, prefix", [("docs/slurm.md", "slurm"), ("docs/ray.md", "ray")], ids=["slurm", "ray"]
)
def test_the_executor_docs_show_their_generated_flag_tables(doc, prefix):
    from locbench.cli.settings_table import options_markdown
    from locbench.study.executors.builtin import EXECUTORS

    text = (REPO / doc).read_text()
    block = re.search(
        rf"<!-- {prefix}-options:start -->\n(.*?)\n<!-- {prefix}-options:end -->", text, re.S
    )
    assert block, f"{doc} lacks the {prefix}-options markers"
    assert block.group(1) == options_markdown(EXECUTORS.get(prefix)), f"{doc}: the table is stale"


def test_the_extending_page_shows_the_generated_table_of_executors():
    from locbench.cli.settings_table import executors_markdown

    text = (REPO / "docs/extending.md").read_text()
    block = re.search(r"<!-- executors:start -->\n(.*?)\n<!-- executors:end -->", text, re.S)
    assert block, "docs/extending.md lacks the executors markers"
    assert block.group(1) == executors_markdown()
    assert block.group(1).splitlines()[2].startswith("| `local` | processes of this machine |")


def test_the_methods_page_shows_each_methods_generated_hyperparameter_table():
    from locbench.cli.settings_table import method_params_markdown
    from locbench.methods import METHODS

    text = (REPO / "docs/methods.md").read_text()
    shown = 0
    for name in METHODS.names():
        block = re.search(
            rf"<!-- params:{name}:start -->\n(.*?)\n<!-- params:{name}:end -->", text, re.S
        )
        has_params = bool(specs(METHODS.get(name).Params))
        assert bool(block) == has_params, f"docs/methods.md: {name}'s table is missing or extra"
        if block:
            assert block.group(1) == method_params_markdown(name), f"{name}'s table is stale"
            shown += 1
    # bp-accum, dgl, infopro, predsim, auglocal, man, hpff, mlaan; bp and bp-ckpt have none
    assert shown == 8
