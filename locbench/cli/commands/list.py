"""``locbench list``: the registered methods, nets, datasets and presets."""

from __future__ import annotations

import argparse

from locbench.cli.command import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(_: argparse.Namespace) -> int:
    from locbench.data.catalog import DATASETS
    from locbench.methods import METHODS
    from locbench.methods.loading import method_entry_points
    from locbench.nets.backbone import BACKBONES

    plugins = sorted(set(method_entry_points()) - set(METHODS.names()))  # clashes fail first
    print("methods:  " + ", ".join(METHODS.names()))
    if plugins:  # installed packages' `locbench.methods` entry points
        print("plugins:  " + ", ".join(plugins))
    print("nets:     " + ", ".join(BACKBONES.names()))
    print("datasets: " + ", ".join(DATASETS.names()))
    from locbench.study.presets import PRESETS

    print("presets:  " + ", ".join(PRESETS.names()))
    return 0


COMMAND = Command("list", "known methods, backbones and datasets", add_arguments, run)
