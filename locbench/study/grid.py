"""A sweep's grid: the axes (methods x nets x K x auxiliary depth x batch size x seeds) over
shared run settings, from flags, a preset (:mod:`locbench.study.presets`) or a TOML file."""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from locbench.errors import UserError
from locbench.harness.build import check_split, resolve
from locbench.settings.run_config import BY_NAME, RunConfig, flatten_sections
from locbench.settings.schema import convert

BASELINES = ("none", "equal-memory")

# Grid fields that are axes of one run setting each (the rest go in ``axes``).
NAMED_AXES = {
    "methods": "method",
    "nets": "net",
    "K": "K",
    "batch_size": "batch_size",
    "seeds": "seed",
}


@dataclass(frozen=True)
class Grid:
    """The axes of a sweep. ``methods`` .. ``seeds`` and ``axes`` (any other run setting) take a
    tuple of values each; ``hp`` holds hyperparameter axes, keyed ``KEY`` (every selected method
    that has it) or ``METHOD.KEY`` (that method only); ``aux_depth`` is the axis ``depth``
    for the methods that have it. ``run`` holds fixed run settings (its ``method_params``: fixed
    hyperparameters, unscoped), ``method_params`` fixed hyperparameters per method."""

    methods: tuple[str, ...] = ("bp", "dgl")
    nets: tuple[str, ...] = ("smallnet",)
    K: tuple[int | None, ...] = (None,)
    aux_depth: tuple[int | None, ...] = (None,)
    batch_size: tuple[int | None, ...] = (None,)
    seeds: tuple[int, ...] = (0,)
    axes: dict = field(default_factory=dict)
    hp: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    method_params: dict = field(default_factory=dict)
    #: "equal-memory": every local method's configuration brings BP baselines configured to
    #: at most its estimated peak (bp-ckpt, bp-accum: locbench.analysis.equal_memory).
    baselines: str = "none"

    def __post_init__(self) -> None:
        if self.baselines not in BASELINES:
            raise UserError(
                f"unknown baselines {self.baselines!r}; accepted: {', '.join(BASELINES)}"
            )

    def setting_axes(self) -> dict[str, tuple]:
        """Run setting -> values, every axis of the grid."""
        named = {NAMED_AXES[k]: v for k, v in vars(self).items() if k in NAMED_AXES}
        return {**named, **self.axes}

    def configs(self, device: str | None = None) -> list[RunConfig]:
        """Every configuration of the grid once, resolved, in a stable order. Every one is
        checked here, before anything runs: the first bad one is a one-line error naming it.
        ``device``: what device ``auto`` stands for when the runs execute elsewhere (see
        :func:`locbench.study.sweep.plan_sweep`); None: this machine's."""
        axes = self.setting_axes()
        methods = axes["method"]
        per_method = self.hyperparameters(methods)
        fixed = {k: v for k, v in self.run.items() if k != "method_params"}
        seen, out = set(), []
        names = list(axes)
        for values in itertools.product(*(axes[n] for n in names)):
            settings = {**fixed, **dict(zip(names, values))}
            if device is not None and settings.get("device", "auto") == "auto":
                settings["device"] = device
            hp_axes = per_method[settings["method"]]
            for hp_values in itertools.product(*hp_axes.values()):
                params = dict(zip(hp_axes, hp_values))
                label = config_label(settings, params)
                try:
                    config = resolve(
                        RunConfig.from_dict({**settings, "method_params": params}, where=label)
                    ).config
                    check_split(config)
                except UserError as e:
                    raise UserError(f"configuration {len(out) + 1} ({label}): {e}") from None
                key = json.dumps(config.to_dict(), sort_keys=True, default=str)
                if key not in seen:
                    seen.add(key)
                    out.append(config)
        if self.baselines == "equal-memory":
            from locbench.analysis.equal_memory import equal_memory_baselines

            out += equal_memory_baselines(out)
        return out

    def hyperparameters(self, methods: tuple[str, ...]) -> dict[str, dict[str, tuple]]:
        """``method -> {key: values}``: fixed values are axes of one value. An unscoped key goes
        to the selected methods that have it; a key no selected method has is an error."""
        from locbench.methods.loading import resolve_method
        from locbench.methods.params import hp_targets

        classes = {m: resolve_method(m) for m in methods}
        out: dict[str, dict[str, tuple]] = {m: {} for m in methods}
        for method in self.method_params:
            if method not in classes:
                raise UserError(f"[method.{method}] names a method not in the sweep: {methods}")
        # (key, values, where it was given, required): a key that no method has is an error,
        # except aux_depth, which applies only where it means something
        entries = [
            (k, (v,), f"[run] method_params {k}", True)
            for k, v in self.run.get("method_params", {}).items()
        ]
        entries += [
            (f"{m}.{k}", (v,), f"[method.{m}] {k}", True)
            for m, table in self.method_params.items()
            for k, v in table.items()
        ]
        entries += [(k, tuple(v), None, True) for k, v in self.hp.items()]
        depths = tuple(d for d in self.aux_depth if d is not None)
        if depths:
            entries.append(("depth", depths, "--aux-depth", False))
        for key, values, where, required in entries:
            having, name = hp_targets(key, classes, "the sweep", required=required, where=where)
            for m in having:
                out[m][name] = values
        return out

    def override(self, **changes: object) -> Grid:
        """This grid with the given axes replaced (flags over a preset or file). ``axes``:
        run setting -> values; ``hp``, ``run`` and ``method_params`` are merged."""
        replace = {
            k: v
            for k, v in changes.items()
            if (k in NAMED_AXES or k in ("aux_depth", "baselines")) and v is not None
        }
        axes = dict(self.axes)
        for setting, values in dict(changes.get("axes") or {}).items():
            named = next((n for n, s in NAMED_AXES.items() if s == setting), None)
            if named is not None:
                replace[named] = values
            else:
                axes[setting] = values
        return dataclasses.replace(
            self,
            **replace,
            axes=axes,
            hp={**self.hp, **dict(changes.get("hp") or {})},
            run={**self.run, **dict(changes.get("run") or {})},
            method_params={**self.method_params, **dict(changes.get("method_params") or {})},
        )


def config_label(settings: dict, params: dict) -> str:
    """``dgl smallnet K=4 seed=0 hidden_dim=64``: a configuration in error messages."""
    text = f"{settings.get('method')} {settings.get('net')} K={settings.get('K')}"
    text += f" seed={settings.get('seed')}"
    return text + "".join(f" {k}={v}" for k, v in params.items())


def load_grid(path: str | Path) -> Grid:
    """A grid from TOML: ``[grid]`` with axes (lists: ``methods``, ``nets``, ``K``,
    ``aux_depth``, ``batch_size``, ``seeds`` or any run setting; a ``[grid.hp]`` table of
    hyperparameter axes, keys ``KEY`` or ``"METHOD.KEY"``; ``baselines``, one of
    :data:`BASELINES`), ``[run]`` with fixed settings and
    ``[method.NAME]`` tables with fixed hyperparameters of one method."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep config {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - {"grid", "run", "method"})
    if unknown:
        raise UserError(f"{path}: unknown tables {unknown}; accepted: [grid], [run], [method.NAME]")
    for table in ("grid", "run", "method"):
        if not isinstance(data.get(table, {}), dict):
            raise UserError(f"{path}: {table} must be a table ([{table}])")
    grid = dict(data.get("grid", {}))
    hp = grid.pop("hp", {})
    baselines = grid.pop("baselines", "none")
    if not isinstance(baselines, str):
        raise UserError(f"{path}: [grid] baselines must be one of {', '.join(BASELINES)}")
    grid = flatten_sections(grid, f"{path} [grid]")
    if not isinstance(hp, dict):
        raise UserError(f"{path}: [grid] hp must be a table ([grid.hp])")
    names = set(NAMED_AXES) | {"aux_depth"}
    bad = sorted(set(grid) - names - set(BY_NAME))
    if bad:
        raise UserError(
            f"{path}: unknown [grid] keys {bad}; accepted: {sorted(names)}, hp, or a run setting "
            "(see `locbench config --list`)"
        )
    not_axes = sorted(k for k in grid if k in BY_NAME and not BY_NAME[k].cli)
    if not_axes:
        hint = (
            "hyperparameter axes go in [grid.hp], fixed hyperparameters in [method.NAME]"
            if not_axes[0] == "method_params"
            else "no command-line flag sets it either"
        )
        raise UserError(f"{path}: [grid] {not_axes[0]} is not an axis; {hint}")
    for key, value in {**grid, **{f"hp.{k}": v for k, v in hp.items()}}.items():
        if not isinstance(value, list) or not value:
            raise UserError(f"{path}: [grid] {key} must be a non-empty list, got {_short(value)}")
    grid = {
        k: [axis_value(k, v, f"{path}: [grid] {k}") for v in values] for k, values in grid.items()
    }
    run = data.get("run", {})
    if not isinstance(run.get("method_params", {}), dict):
        raise UserError(f"{path}: [run] method_params must be a table of hyperparameters")
    fixed = {k: v for k, v in run.items() if k != "method_params"}
    RunConfig.from_dict(fixed, where=f"{path} [run]")  # unknown keys, bad values: one line
    methods = data.get("method", {})
    for name, table in methods.items():
        if not isinstance(table, dict):
            raise UserError(f"{path}: [method.{name}] must be a table of hyperparameters")
    named = {k: tuple(v) for k, v in grid.items() if k in names}
    axes = {k: tuple(v) for k, v in grid.items() if k not in names}
    hp_axes = {k: tuple(v) for k, v in hp.items()}
    try:
        return Grid(
            **named, axes=axes, hp=hp_axes, run=run, method_params=methods, baselines=baselines
        )
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def axis_value(key: str, value: object, where: str) -> object:
    """One value of the [grid] axis ``key``, typed as its run setting (``aux_depth``: a depth)."""
    if key == "aux_depth":
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{where} must be integers >= 1, got {_short(value)}")
        return value
    return convert(BY_NAME[NAMED_AXES.get(key, key)], value, where)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
