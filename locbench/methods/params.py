"""Method hyperparameters: a method's ``Params`` dataclass, declared with :func:`param`.

Each field is a setting of :mod:`locbench.settings.schema` (type from the annotation, range in the
metadata), so hyperparameters are read, checked and listed exactly as run settings are::

    @dataclass(frozen=True)
    class Params:
        hidden_dim: int = param(128, "width of the MLP", low=1)
        variant: str = param("auglocal", "which MLP", choices=("auglocal", "paper"))

A ``check(self)`` method on ``Params``, if defined, runs after the per-field checks for constraints
across fields; it raises :class:`~locbench.errors.UserError` (any other exception is reported as
one line naming the method, as a failed check).

A plug-in's ``Params`` is checked once, when the method is loaded (:func:`check_declaration`):
a frozen dataclass whose every field is a :func:`param` of a supported type, its defaults
accepted. ``--hp`` keys (``KEY`` or ``METHOD.KEY``) are matched to the selected methods by
:func:`hp_targets`, for every command that takes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from locbench.errors import UserError
from locbench.settings.schema import convert, setting, specs

if TYPE_CHECKING:
    from locbench.methods.base import Method


def param(
    default: Any,
    help: str = "",
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    choices: tuple | None = None,
) -> Any:
    """A hyperparameter field: its default, help and accepted range."""
    return setting(default, help, low=low, high=high, above=above, choices=choices)


V = TypeVar("V")
#: The field types a hyperparameter may have (each also ``X | None``): what :func:`convert` reads.
SUPPORTED = (int, float, str, bool, tuple[int, ...])


def make_params(method: type[Method], values: dict[str, object]) -> object:
    """``method.Params`` from ``name -> value``: text is converted to the field's type, every
    field (defaults included) is checked against its declared range, then ``Params.check()``
    (whatever it raises is one line naming the method)."""
    fields = {s.name: s for s in specs(method.Params)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(no_parameter(method, ", ".join(unknown)))
    typed = {}
    for name, spec in fields.items():
        value = values.get(name, spec.default)
        typed[name] = convert(spec, value, f"parameter {name} of {method.name!r}")
    try:
        params = method.Params(**typed)
        check = getattr(params, "check", None)
        if callable(check):
            check()
    except UserError as e:
        raise UserError(f"method {method.name!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a plug-in's own check: one line, not a traceback
        text = str(e).strip().splitlines()
        raise UserError(
            f"method {method.name!r}: its Params check failed: {type(e).__name__}"
            + (f": {text[0]}" if text else "")
        ) from None
    return params


def no_parameter(method: type[Method], name: str) -> str:
    """The message for a hyperparameter ``method`` does not have, with those it has."""
    known = ", ".join(f.name for f in dataclasses.fields(method.Params)) or "none"
    return f"method {method.name!r} has no parameter {name}; known: {known}"


def check_declaration(method: type[Method], what: str) -> None:
    """One line naming ``what`` (the method as loaded) unless its ``Params`` is a frozen
    dataclass of :func:`param` fields of :data:`SUPPORTED` types whose defaults are accepted
    (``Params.check()`` included): a plug-in is trusted with nothing it declares."""
    cls = method.Params
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise UserError(
            f"{what}: Params must be a dataclass declared @dataclass(frozen=True), got {cls!r}"
        )
    if not cls.__dataclass_params__.frozen:
        raise UserError(f"{what}: Params must be frozen: declare it @dataclass(frozen=True)")
    try:
        declared = specs(cls)
    except Exception as e:  # noqa: BLE001 - an annotation that does not resolve
        raise UserError(f"{what}: the annotations of Params cannot be read ({e})") from None
    for field, spec in zip(dataclasses.fields(cls), declared):
        if "rule" not in field.metadata:
            raise UserError(
                f"{what}: Params field {field.name!r} is not declared with locbench.param(...)"
            )
        if spec.base not in SUPPORTED:
            accepted = "int, float, str, bool, tuple[int, ...] (each also X | None)"
            raise UserError(
                f"{what}: Params field {field.name!r} has type {spec.type}; accepted: {accepted}"
            )
    make_params(method, {})  # the defaults, and check(), once at load


def hp_targets(
    key: str,
    classes: Mapping[str, type[Method]],
    selection: str,
    *,
    required: bool = True,
    where: str | None = None,
) -> tuple[list[str], str]:
    """The selected methods (keys of ``classes``) that hyperparameter key ``key`` sets, and the
    hyperparameter's name. ``KEY`` sets every selected method that has it, ``METHOD.KEY`` that
    method alone. An empty scope or name, a scope not selected and a key no selected method has
    are one-line errors (``selection`` says where the methods were selected: "the sweep");
    ``required=False`` gives no methods instead for the last two. ``where``: what gave the key,
    as the error names it (default ``--hp KEY``)."""
    where = where or f"--hp {key}"
    scope, dot, name = key.rpartition(".")
    if dot and not scope:
        raise UserError(f"{where}: no method before '.'; give KEY or METHOD.KEY")
    if not name.isidentifier():
        raise UserError(f"{where}: {name!r} is not a hyperparameter name; give KEY or METHOD.KEY")
    if scope and scope not in classes:
        if not required:
            return [], name
        raise UserError(f"{where}: method {scope!r} is not in {selection} ({', '.join(classes)})")
    targets = [scope] if scope else list(classes)
    having = [m for m in targets if has_param(classes[m], name)]
    if not having and required:
        if len(targets) == 1:
            raise UserError(f"{where}: {no_parameter(classes[targets[0]], name)}")
        raise UserError(f"{where}: none of {targets} has a hyperparameter {name!r}")
    return having, name


def assign_hyperparameters(
    values: Mapping[str, V],
    classes: Mapping[str, type[Method]],
    selection: str,
    *,
    required: bool = True,
) -> dict[str, dict[str, V]]:
    """``method -> {name: value}`` for the selected methods, each key placed by
    :func:`hp_targets` (``required=False``: keys of other methods or of none are left out)."""
    out: dict[str, dict[str, V]] = {m: {} for m in classes}
    for key, value in values.items():
        methods, name = hp_targets(key, classes, selection, required=required)
        for m in methods:
            out[m][name] = value
    return out


def resolve_params(method: type[Method], values: dict[str, object]) -> dict[str, object]:
    """Every hyperparameter of ``method``, typed, defaults included: the form records keep."""
    return dataclasses.asdict(make_params(method, values))


def has_param(method: type[Method], name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(method.Params)}
