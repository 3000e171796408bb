"""What a decoded split must be before any training step: uint8 (N, C, H, W) images of the
dataset's shape and one integer label per image, each in 0..classes-1.

One check for every dataset read from files, its tensor cache and ``data-bench``: a bad file is
refused in one line naming it, instead of training until a loss indexes a label that is not a
class (or, worse, training on labels that silently outnumber the images).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from locbench.errors import UserError

Shape = tuple[int, ...]


def describe_files(files: Sequence[Path]) -> str:
    """``files`` in one short phrase: ``folder/name`` for one, ``folder/{a, b}`` for several in
    one folder."""
    paths = [Path(f) for f in files]
    folders = {p.parent for p in paths}
    if len(paths) == 1 or len(folders) > 1:
        return ", ".join(str(p) for p in paths)
    return f"{paths[0].parent}/{{{', '.join(p.name for p in paths)}}}"


def check_split(
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    num_classes: int,
    image_shape: Shape,
    source: str,
    stored_as: str = "",
) -> None:
    """Raise a one-line :class:`UserError` naming ``source`` (the files read) unless
    ``images`` is uint8 of shape (N, *image_shape) and ``labels`` holds N integers in
    0..num_classes-1. ``stored_as``: how the file stores the labels, when not as 0..classes-1
    (the message then says so, since the file's own values differ from those reported)."""
    x = np.asarray(images)
    y = np.asarray(labels)
    accepted = f"(N, {', '.join(map(str, image_shape))})"
    if x.dtype != np.uint8:
        raise UserError(f"{source}: the images are {x.dtype}; accepted: uint8 pixels 0..255")
    if x.ndim != 4 or x.shape[1:] != tuple(image_shape):
        raise UserError(f"{source}: the images have shape {x.shape}; accepted: {accepted}")
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise UserError(
            f"{source}: the labels are {y.dtype} of shape {y.shape}; accepted: one integer label "
            "per image"
        )
    if len(y) != len(x):
        raise UserError(
            f"{source}: {len(y)} labels for {len(x)} images; accepted: one label per image"
        )
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        first = bad[0]
        others = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        note = f", stored as {stored_as}" if stored_as else ""
        raise UserError(
            f"{source}: label {y[first]} of image {first} is not a class{others}; accepted: "
            f"0..{num_classes - 1}{note}"
        )
