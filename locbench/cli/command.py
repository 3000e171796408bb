"""What a ``locbench`` command declares: its name, its one-line help, its flags and what it
does. Each command is one module of :mod:`locbench.cli.commands` holding one :class:`Command`;
the table there lists them in the order ``locbench --help`` shows."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str  # as typed: ``locbench NAME``
    help: str  # its line in ``locbench --help``
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # the exit status; UserError: one line, exit 2

    def add_parser(self, subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(self.name, help=self.help)
        self.add_arguments(parser)
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="also show the warnings and logs of the libraries locbench runs on (Ray, "
            "submitit, torch.distributed); without it they print errors only",
        )
        return parser
