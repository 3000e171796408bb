"""The settings schema: every setting declared once, with its type, default, range and help.

A setting is a dataclass field made by :func:`setting`. Its type is the field's annotation
(``int``, ``float``, ``str``, ``bool``, ``X | None``, ``tuple[int, ...] | None``) and its range
lives in the field's metadata as a :class:`Rule`. Run settings
(:class:`locbench.settings.run_config.RunConfig`) and every method's hyperparameters (a method's
``Params``) are declared this way, so one function reads a value from text or TOML (:func:`convert`)
and one checks it (:func:`check`): CLI flags, TOML keys, sweep axes, the record's config section and
``locbench config --list`` all come from these declarations.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from locbench.errors import UserError

#: Sections of the run settings, in the order the settings table shows them.
SECTIONS = ("model", "method", "train", "data", "measure", "env")


@dataclass(frozen=True)
class Rule:
    """What values a setting accepts besides its type. ``low``/``high`` are inclusive bounds,
    ``above`` an exclusive lower bound; floats must always be finite."""

    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple | None = None
    # Words a non-text setting also takes, kept as given in lower case (``cuts = "balanced"``).
    words: tuple[str, ...] = ()

    def text(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        bounds = (("> ", self.above), (">= ", self.low), ("<= ", self.high))
        return ", ".join(op + _number_text(v) for op, v in bounds if v is not None)

    def word(self, value: Any) -> str | None:
        """``value`` as one of :attr:`words` (None when it is not one)."""
        if isinstance(value, str) and value.strip().lower() in self.words:
            return value.strip().lower()
        return None


def _number_text(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def setting(
    default: Any,
    help: str,
    *,
    section: str | None = None,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    choices: tuple | None = None,
    flag: str | None = None,
    cli: bool = True,
    words: tuple[str, ...] = (),
) -> Any:
    """A dataclass field declaring one setting. ``flag``: the CLI name when it is not the
    field name with dashes; ``cli=False``: no generated flag (set through another one);
    ``words``: words it takes besides values of its type."""
    rule = Rule(low, high, above, choices, words)
    meta = {"help": help, "section": section, "rule": rule, "flag": flag, "cli": cli}
    if isinstance(default, dict | list):
        return dataclasses.field(default_factory=type(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Spec:
    """One declared setting as the tools see it."""

    name: str
    type: Any  # the annotation, resolved
    default: Any
    help: str
    section: str | None
    rule: Rule
    flag: str
    cli: bool

    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.type)

    @property
    def base(self) -> Any:
        """``int`` for ``int | None``; ``tuple[int, ...]`` stays as it is."""
        args = [a for a in typing.get_args(self.type) if a is not type(None)]
        if typing.get_origin(self.type) in (typing.Union, types.UnionType) and len(args) == 1:
            return args[0]
        return self.type

    def accepted(self) -> str:
        """``an integer >= 1 (or none)``: what the error messages and the table say."""
        base = self.base
        if typing.get_origin(base) is tuple:
            kind = "a comma-separated list of integers"
        else:
            kind = {int: "an integer", float: "a finite number", bool: "true or false"}.get(
                base, "a string" if base is str else "a table"
            )
        rule = self.rule.text()
        if self.rule.choices is not None:
            kind = rule
        elif rule:
            kind = f"{kind} {rule}"
        if self.rule.words:
            kind += ", or " + " or ".join(self.rule.words)
        return kind + (" (or none)" if self.optional else "")


def specs(cls: type) -> list[Spec]:
    """The declared settings of dataclass ``cls`` in declaration order. Plain fields (no
    :func:`setting`) count too, with no range and no help."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append(
            Spec(
                name=f.name,
                type=hints[f.name],
                default=default,
                help=meta.get("help", ""),
                section=meta.get("section"),
                rule=meta.get("rule", Rule()),
                flag=meta.get("flag") or "--" + f.name.replace("_", "-"),
                cli=meta.get("cli", True),
            )
        )
    return out


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def convert(spec: Spec, value: Any, where: str) -> Any:
    """``value`` (text from a flag, or a TOML/JSON value) as the setting's type, checked.
    ``where`` names the setting in the one-line error (``--lr``, ``config lr``, ...)."""
    base = spec.base
    if isinstance(value, str) and value.strip().lower() == "none" and spec.optional:
        value = None
    if value is None:
        if not spec.optional:
            raise UserError(f"{where} must be {spec.accepted()}, got none")
        return None
    word = spec.rule.word(value)
    if word is not None:
        return word
    try:
        if typing.get_origin(base) is tuple:
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list | tuple):
                raise ValueError
            value = tuple(_integer(v) for v in items if not (isinstance(v, str) and not v.strip()))
        elif base is bool:
            value = _boolean(value)
        elif base is int:
            value = _integer(value)
        elif base is float:
            value = _number(value)
        elif (base is str and not isinstance(value, str)) or (
            base is dict and not isinstance(value, dict)
        ):
            raise ValueError
    except (ValueError, TypeError, OverflowError):
        raise UserError(f"{where} must be {spec.accepted()}, got {value!r}") from None
    check(spec, value, where)
    return value


def check(spec: Spec, value: Any, where: str) -> None:
    """The range, choices and finiteness of an already typed value."""
    if value is None:
        if not spec.optional:
            raise UserError(f"{where} must be {spec.accepted()}, got none")
        return
    if spec.rule.word(value) == value:
        return
    rule, bad = spec.rule, False
    items = value if isinstance(value, tuple) else (value,)
    for v in items:
        if isinstance(v, float) and not math.isfinite(v):
            bad = True
        elif rule.choices is not None:
            bad = bad or v not in rule.choices
        elif isinstance(v, int | float) and not isinstance(v, bool):
            bad = bad or (rule.low is not None and v < rule.low)
            bad = bad or (rule.high is not None and v > rule.high)
            bad = bad or (rule.above is not None and v <= rule.above)
    if isinstance(value, tuple) and not value:
        bad = True
    if bad:
        raise UserError(f"{where} must be {spec.accepted()}, got {_show(value)}")


def coerce_typed(spec: Spec, value: Any, where: str) -> Any:
    """A value given in Python (not text): ints widen to float, lists become tuples; then
    checked. Text goes through :func:`convert` instead."""
    base = spec.base
    if isinstance(value, str) and base is not str:
        return convert(spec, value, where)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typing.get_origin(base) is tuple and isinstance(value, list):
        value = tuple(value)
    if value is not None and not _has_type(value, base):
        raise UserError(f"{where} must be {spec.accepted()}, got {_show(value)}")
    check(spec, value, where)
    return value


def _has_type(value: Any, base: Any) -> bool:
    if typing.get_origin(base) is tuple:
        return isinstance(value, tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, float)
    return isinstance(value, base) if isinstance(base, type) else True


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    text = str(value).strip()
    if len(text) > 30:  # ints of hundreds of digits are never meant; keep the message short
        raise ValueError
    return int(text)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str) and len(value.strip()) > 40:
        raise ValueError
    return float(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
