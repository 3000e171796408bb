"""Method hyperparameters: a method's ``Params`` dataclass, declared with :func:`param`.

Each field is a setting of :mod:`locbench.settings.schema` (type from the annotation, range in the
metadata), so hyperparameters are read, checked and listed exactly as run settings are::

    @dataclass(frozen=True)
    class Params:
        hidden_dim: int = param(128, "width of the MLP", low=1)
        variant: str = param("auglocal", "which MLP", choices=("auglocal", "paper"))

A ``check(self)`` method on ``Params``, if defined, runs after the per-field checks for constraints
across fields; it raises :class:`~locbench.errors.UserError`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

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


def make_params(method: type[Method], values: dict[str, object]) -> object:
    """``method.Params`` from ``name -> value``: text is converted to the field's type, every
    field (defaults included) is checked against its declared range."""
    fields = {s.name: s for s in specs(method.Params)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise UserError(
            f"method {method.name!r} has no parameter {', '.join(unknown)}; known: {known}"
        )
    typed = {}
    for name, spec in fields.items():
        value = values.get(name, spec.default)
        typed[name] = convert(spec, value, f"parameter {name} of {method.name!r}")
    params = method.Params(**typed)
    check = getattr(params, "check", None)
    if callable(check):
        check()
    return params


def resolve_params(method: type[Method], values: dict[str, object]) -> dict[str, object]:
    """Every hyperparameter of ``method``, typed, defaults included: the form records keep."""
    return dataclasses.asdict(make_params(method, values))


def has_param(method: type[Method], name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(method.Params)}
