"""The ``locbench`` command line: the parser of every command of
:data:`locbench.cli.commands.COMMANDS` (one module each), and the one place that turns a
:class:`~locbench.errors.UserError` into one line and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from locbench.cli.commands import COMMANDS
from locbench.cli.verbosity import third_party_output
from locbench.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="locbench",
        description="Benchmark supervised local learning: memory, time and accuracy per method.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `run --nproc N` starts its ranks with the same arguments
    run = {c.name: c.run for c in COMMANDS}[args.command]
    try:
        with third_party_output(args.verbose):
            return run(args) or 0
    except UserError as e:
        print(f"locbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("locbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
