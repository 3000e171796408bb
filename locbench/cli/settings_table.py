"""``locbench config --list``: every run setting and every built-in method's hyperparameters,
with default, accepted values and help, generated from their declarations. The README's
settings table is this output (``--markdown``); a test keeps the two equal."""

from __future__ import annotations

from locbench.settings.run_config import SPECS
from locbench.settings.schema import SECTIONS, Spec, specs
from locbench.study.executors.base import ExecutorKind

HEADER = ("setting", "flag", "default", "accepted", "help")


def _default(spec: Spec) -> str:
    value = spec.default
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return "{}"
    return str(value)


def rows() -> list[tuple[str, ...]]:
    """One row per run setting (``section.name``), then one per method hyperparameter
    (``METHOD.name``, set with ``--hp name=VALUE``)."""
    from locbench.methods import METHODS

    out = []
    for section in SECTIONS:
        for spec in SPECS:
            if spec.section == section:
                flag = spec.flag if spec.cli else "--hp KEY=VALUE"
                if not spec.cli and spec.name != "method_params":
                    flag = "(set when resolved)"  # cuts_balanced: no flag of its own
                out.append(
                    (f"{section}.{spec.name}", flag, _default(spec), spec.accepted(), spec.help)
                )
    for name in METHODS.names():
        out += method_rows(name, METHODS.get(name))
    return out


def method_rows(name: str, method_cls: type) -> list[tuple[str, ...]]:
    """The rows of one method's hyperparameters (``name.key``)."""
    return [
        (f"{name}.{spec.name}", f"--hp {spec.name}=", _default(spec), spec.accepted(), spec.help)
        for spec in specs(method_cls.Params)
    ]


def settings_text(body: list[tuple[str, ...]] | None = None) -> str:
    """``body`` (default: :func:`rows`) as an aligned text table."""
    table = [HEADER, *(rows() if body is None else body)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in table]
    return "\n".join(line.rstrip() for line in lines)


def settings_markdown(body: list[tuple[str, ...]] | None = None) -> str:
    """``body`` (default: :func:`rows`) as a Markdown table."""
    return _markdown(HEADER, rows() if body is None else body)


def method_params_markdown(method: str) -> str:
    """One method's hyperparameter rows of the settings table, as docs/methods.md shows them."""
    return _markdown(HEADER, [r for r in rows() if r[0].startswith(f"{method}.")])


def options_markdown(kind: ExecutorKind) -> str:
    """The flags of a sweep executor's options (:mod:`locbench.study.executors.options`), as the
    docs show them."""
    header = ("flag", "default", "accepted", "help")
    body = [(kind.flag(s), _default(s), s.accepted(), s.help) for s in specs(kind.options)]
    return _markdown(header, body, code=1)


def executors_markdown() -> str:
    """Every ``--executor`` and its flags, as docs/extending.md shows them."""
    from locbench.study.executors.builtin import EXECUTORS

    body = []
    for name in EXECUTORS.names():
        kind = EXECUTORS.get(name)
        flags = ", ".join(f"`{kind.flag(s)}`" for s in specs(kind.options))
        body.append((name, kind.help, f"`{kind.options.__name__}`", flags))
    return _markdown(("executor", "what runs the configurations", "options", "flags"), body, 1)


def _markdown(header: tuple[str, ...], body: list[tuple[str, ...]], code: int = 2) -> str:
    """A Markdown table; the first ``code`` cells of each row in backticks."""

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rows_ = [line(tuple(f"`{c}`" if i < code else c for i, c in enumerate(r))) for r in body]
    return "\n".join([line(header), "|" + "---|" * len(header), *rows_])
