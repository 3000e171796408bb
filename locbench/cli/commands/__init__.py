"""Every ``locbench`` command, one module each; a new command is its module plus its line here
(the order is that of ``locbench --help``)."""

from __future__ import annotations

from locbench.cli.command import Command
from locbench.cli.commands import (
    compare,
    config,
    data_bench,
    demo,
    describe,
    estimate,
    plan,
    plot,
    report,
    run,
    sweep,
)
from locbench.cli.commands import list as list_

COMMANDS: tuple[Command, ...] = (
    list_.COMMAND,
    run.COMMAND,
    describe.COMMAND,
    estimate.COMMAND,
    plan.COMMAND,
    sweep.COMMAND,
    config.COMMAND,
    report.COMMAND,
    plot.COMMAND,
    compare.COMMAND,
    data_bench.COMMAND,
    demo.COMMAND,
)
