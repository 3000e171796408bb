"""What ``describe`` and ``estimate`` share: they count one configuration without data, at
their own batch size and class count."""

from __future__ import annotations

import argparse

from locbench.errors import UserError

# Run settings that change what describe and estimate count: the step's dtypes and layout.
SHAPE = ("precision", "channels_last")


def dataset_classes(dataset: str | None) -> int:
    """The class count of a registered dataset, without reading it (10 when none is named)."""
    from locbench.data.catalog import DATASETS

    if dataset is None:
        return 10
    return DATASETS.get(dataset).num_classes


def check_probe(args: argparse.Namespace) -> None:
    """``describe``/``estimate``'s own batch and class count."""
    from locbench.settings.run_config import BY_NAME
    from locbench.settings.schema import check

    check(BY_NAME["batch_size"], args.batch_size, "--batch-size")  # the run setting's rule
    if not 2 <= args.classes <= 1_000_000:
        raise UserError(f"--classes must be between 2 and 1000000, got {args.classes}")
