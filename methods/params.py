"""Method hyperparameters: building a method's ``Params`` dataclass from user values."""

from __future__ import annotations

import dataclasses
import typing
from typing import TYPE_CHECKING

from bench.errors import UserError

if TYPE_CHECKING:
    from methods.base import Method


def make_params(method: type[Method], values: dict[str, object]) -> object:
    """Build ``method.Params`` from ``name -> value`` (strings are converted to the field type)."""
    fields = {f.name: f for f in dataclasses.fields(method.Params)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise UserError(
            f"method {method.name!r} has no parameter {', '.join(unknown)}; known: {known}"
        )
    hints = typing.get_type_hints(method.Params)
    converted = {}
    for key, value in values.items():
        kind = concrete_type(hints[key])
        try:
            converted[key] = parse_value(value, kind) if isinstance(value, str) else kind(value)
        except ValueError:
            raise UserError(
                f"parameter {key} of {method.name!r} must be a {kind.__name__}, got {value!r}"
            ) from None
    return method.Params(**converted)


def concrete_type(hint: object) -> type:
    """``float`` for ``float``, ``float | None`` and ``Optional[float]``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint  # type: ignore[return-value]


def parse_value(text: str, kind: type) -> object:
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    return kind(text)
