"""Command-line flags generated from the settings schema (:mod:`locbench.settings.schema`).

``run`` gets one flag per run setting; ``describe`` and ``estimate`` the model and method
ones; ``sweep`` the same flags taking comma-separated lists, each list an axis. Values arrive
as text and are converted by the schema, so a bad value is one line naming the flag and what
it accepts (argparse's own ``type=`` would print its usage block instead).
"""

from __future__ import annotations

import argparse
import typing

from locbench.errors import UserError
from locbench.settings.run_config import BY_NAME, SPECS, RunConfig
from locbench.settings.schema import Spec, convert

# Sweep axes read better in the plural; the singular works too.
PLURAL = {"method": "--methods", "net": "--nets", "seed": "--seeds"}
HP_HELP = "a method hyperparameter, repeatable"


def add_setting_flags(
    parser: argparse.ArgumentParser,
    sections: tuple[str, ...],
    *,
    lists: bool = False,
    defaults: dict[str, object] | None = None,
    also: tuple[str, ...] = (),
    hidden: tuple[str, ...] = (),
) -> None:
    """One flag per run setting of ``sections`` (``--hp`` and ``--aux-depth`` with the method
    section) and of the settings named in ``also``. ``lists``: every flag takes comma-separated
    values (a sweep axis). ``defaults``: this command's own defaults (e.g. ``describe`` builds
    ResNet-32 by default). ``hidden``: settings whose flag exists (so that using it gets the
    command's own one-line error) but is not listed in ``--help``."""
    defaults = defaults or {}
    for spec in SPECS:
        if (spec.section not in sections and spec.name not in also) or not spec.cli:
            continue
        default = defaults.get(spec.name, spec.default)
        shown = "none" if default is None else str(default)
        if isinstance(default, tuple):
            shown = ",".join(map(str, default))
        help_text = f"{spec.help}; {spec.accepted()}; default {shown}"
        names = [spec.flag]
        if lists:
            names = [PLURAL[spec.name], spec.flag] if spec.name in PLURAL else names
            separator = "; lists separated by ';'" if _is_list(spec) else ""
            help_text += f" (comma-separated values make an axis{separator})"
        if spec.name in hidden:
            help_text = argparse.SUPPRESS
        if lists:
            parser.add_argument(*names, dest=spec.name, default=None, help=help_text)
        elif spec.base is bool:
            parser.add_argument(
                *names, dest=spec.name, default=None, action=argparse.BooleanOptionalAction,
                help=help_text,
            )  # fmt: skip
        else:
            parser.add_argument(*names, dest=spec.name, default=None, help=help_text)
    if "method" in sections:
        metavar = "KEY=V1,V2" if lists else "KEY=VALUE"
        scope = "; values make an axis; METHOD.KEY=... for one method only" if lists else ""
        parser.add_argument(
            "--hp", action="append", default=[], metavar=metavar, help=HP_HELP + scope
        )
        parser.add_argument(
            "--aux-depth",
            default=None,
            metavar="D" + (",D2" if lists else ""),
            help="auxiliary depth d of the methods that have one (auglocal): --hp depth=D",
        )
    if defaults:
        parser.set_defaults(**{f"default_{k}": v for k, v in defaults.items()})


def _is_list(spec: Spec) -> bool:
    return typing.get_origin(spec.base) is tuple


def given_settings(args: argparse.Namespace) -> dict[str, object]:
    """The run settings given on the command line, converted and checked (one value each)."""
    values = vars(args)
    out = {}
    for spec in SPECS:
        if values.get(spec.name) is not None:
            out[spec.name] = convert(spec, values[spec.name], spec.flag)
    return out


def command_defaults(args: argparse.Namespace) -> dict[str, object]:
    return {
        k.removeprefix("default_"): v for k, v in vars(args).items() if k.startswith("default_")
    }


def hyperparameters(args: argparse.Namespace, methods: list[str]) -> dict[str, str]:
    """``--hp KEY=VALUE`` (and ``--aux-depth``) as ``key -> text``, every key checked against
    ``methods`` (:func:`~locbench.methods.params.hp_targets`: ``KEY`` or ``METHOD.KEY``); the
    method converts the values. With one method, its own names (the scope dropped)."""
    from locbench.methods.loading import resolve_method
    from locbench.methods.params import assign_hyperparameters, hp_targets

    params = dict(split_hp(h) for h in args.hp)
    classes = {m: resolve_method(m) for m in methods}
    selection = "the run" if len(methods) == 1 else "--methods"
    assigned = assign_hyperparameters(params, classes, selection)
    if args.aux_depth is not None:
        having, _ = hp_targets("depth", classes, selection, where="--aux-depth")
        params["depth"] = args.aux_depth
        for m in having:
            assigned[m]["depth"] = args.aux_depth
    return assigned[methods[0]] if len(methods) == 1 else params


def split_hp(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--hp takes KEY=VALUE (e.g. --hp variant=paper), got {text!r}")
    return key.strip(), value.strip()


def config_from_args(args: argparse.Namespace, methods: list[str] | None = None) -> RunConfig:
    """The run configuration the flags describe (over the command's own defaults). ``methods``:
    those a comparing command (estimate, plan) selected, whose ``--hp`` keys the configuration
    keeps as given (each method takes its own: :func:`locbench.analysis.estimate.for_method`);
    otherwise the configuration's one method."""
    settings = {**command_defaults(args), **given_settings(args)}
    method = settings.get("method", BY_NAME["method"].default)
    params = hyperparameters(args, methods or [method])
    return RunConfig(**settings, method_params=params)


def axes_from_args(args: argparse.Namespace) -> dict[str, tuple]:
    """Sweep axes: setting -> values, for the list flags given. ``none`` is None (K = one
    module per unit); list settings (``--cuts``) separate their lists with ``;``."""
    values = vars(args)
    axes = {}
    for spec in SPECS:
        text = values.get(spec.name)
        if text is None:
            continue
        items = text.split(";") if _is_list(spec) else text.split(",")
        if not all(item.strip() for item in items):
            raise UserError(f"{spec.flag} has an empty value in {text!r}; give e.g. 1,2,3")
        axes[spec.name] = tuple(convert(spec, item.strip(), spec.flag) for item in items)
    return axes


def hp_axes_from_args(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """``--hp KEY=V1,V2`` -> ``{KEY: (V1, V2)}`` (``METHOD.KEY`` keeps its scope)."""
    axes = {}
    for text in args.hp:
        key, value = split_hp(text)
        items = tuple(v.strip() for v in value.split(","))
        if not all(items):
            raise UserError(f"--hp {key} has an empty value in {value!r}; give e.g. {key}=1,2")
        axes[key] = items
    return axes


def depth_axis(args: argparse.Namespace) -> tuple[int, ...] | None:
    if args.aux_depth is None:
        return None
    try:
        return tuple(int(d) for d in args.aux_depth.split(","))
    except ValueError:
        raise UserError(
            f"--aux-depth must be comma-separated integers like 1,2,3, got {args.aux_depth!r}"
        ) from None
