"""``locbench config``: every run setting with its default, accepted values and help."""

from __future__ import annotations

import argparse

from locbench.cli.command import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="print the settings table (default)")
    parser.add_argument("--markdown", action="store_true", help="as a Markdown table")
    parser.add_argument(
        "--method", default=None, metavar="METHOD",
        help="only this method's hyperparameters: a registered name or path/to/file.py:Class",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from locbench.cli.settings_table import method_rows, settings_markdown, settings_text

    if args.method is None:
        print(settings_markdown() if args.markdown else settings_text())
        return 0
    from locbench.methods.loading import is_file_spec, resolve_method

    method_cls = resolve_method(args.method)
    name = method_cls.__name__ if is_file_spec(args.method) else args.method
    body = method_rows(name, method_cls)
    if not body:
        print(f"{args.method} has no hyperparameters")
        return 0
    print(settings_markdown(body) if args.markdown else settings_text(body))
    return 0


COMMAND = Command("config", "every run setting: default, accepted values, help", add_arguments, run)
