"""A sweep's grid: the axes (methods x nets x K x auxiliary depth x batch size x seeds) over
shared run settings, from flags, a preset (:mod:`bench.presets`) or a TOML file."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import RunConfig
from bench.errors import UserError


@dataclass(frozen=True)
class Grid:
    """The axes of a sweep; ``run`` holds the other :class:`RunConfig` fields."""

    methods: tuple[str, ...] = ("bp", "dgl")
    nets: tuple[str, ...] = ("smallnet",)
    K: tuple[int | None, ...] = (None,)
    aux_depth: tuple[int | None, ...] = (None,)
    batch_size: tuple[int | None, ...] = (None,)
    seeds: tuple[int, ...] = (0,)
    run: dict = field(default_factory=dict)

    def configs(self) -> list[RunConfig]:
        """Every configuration of the grid once, in a stable order."""
        from methods.loading import resolve_method

        seen, out = set(), []
        axes = itertools.product(
            self.nets, self.K, self.batch_size, self.methods, self.aux_depth, self.seeds
        )
        for net, K, batch, method, depth, seed in axes:
            params = dict(self.run.get("method_params", {}))
            has_depth = "depth" in {
                f.name for f in dataclasses.fields(resolve_method(method).Params)
            }
            if depth is not None and has_depth:
                params["depth"] = depth
            settings = {**self.run, "method_params": params}
            config = RunConfig.from_dict(
                {
                    **settings,
                    "method": method,
                    "net": net,
                    "K": K,
                    "batch_size": batch,
                    "seed": seed,
                }
            )
            key = json.dumps(config.to_dict(), sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                out.append(config)
        return out

    def override(self, **axes: object) -> Grid:
        """This grid with the non-None ``axes`` replaced (flags over a preset or file)."""
        changes = {k: v for k, v in axes.items() if v is not None and k != "run"}
        run = {**self.run, **(axes.get("run") or {})}
        return dataclasses.replace(self, **changes, run=run)


def load_grid(path: str | Path) -> Grid:
    """A grid from TOML: a ``[grid]`` table with the axes, a ``[run]`` table with settings."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep config {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - {"grid", "run"})
    if unknown:
        raise UserError(f"{path}: unknown tables {unknown}; accepted: [grid], [run]")
    grid = data.get("grid", {})
    names = {f.name for f in dataclasses.fields(Grid)} - {"run"}
    bad = sorted(set(grid) - names)
    if bad:
        raise UserError(f"{path}: unknown [grid] keys {bad}; accepted: {sorted(names)}")
    for key, value in grid.items():
        if not isinstance(value, list) or not value:
            raise UserError(f"{path}: [grid] {key} must be a non-empty list, got {value!r}")
    run = data.get("run", {})
    RunConfig.from_dict(run)  # unknown keys: one clear line
    return Grid(**{k: tuple(v) for k, v in grid.items()}, run=run)


def parse_list(text: str | None, kind: type = str) -> tuple | None:
    """``"a,b"`` -> ``("a", "b")``; ``none`` stands for None (e.g. K = every unit)."""
    if text is None:
        return None
    try:
        return tuple(None if v.strip().lower() == "none" else kind(v) for v in text.split(","))
    except ValueError:
        raise UserError(
            f"cannot read {text!r} as a comma-separated list of {kind.__name__}"
        ) from None


def axes_from_args(values: dict[str, str | None]) -> dict[str, Sequence | None]:
    return {
        "methods": parse_list(values.get("methods")),
        "nets": parse_list(values.get("nets")),
        "K": parse_list(values.get("K"), int),
        "aux_depth": parse_list(values.get("aux_depth"), int),
        "batch_size": parse_list(values.get("batch_size"), int),
        "seeds": parse_list(values.get("seeds"), int),
    }
