"""``locbench config``: every run setting with its default, accepted values and help."""

from __future__ import annotations

import argparse

from locbench.cli.command import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="print the settings table (default)")
    parser.add_argument("--markdown", action="store_true", help="as a Markdown table")


def run(args: argparse.Namespace) -> int:
    from locbench.cli.settings_table import settings_markdown, settings_text

    print(settings_markdown() if args.markdown else settings_text())
    return 0


COMMAND = Command("config", "every run setting: default, accepted values, help", add_arguments, run)
