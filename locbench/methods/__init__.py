"""Training methods, one file each, registered by short name in :data:`METHODS`."""

from locbench.methods.base import METHODS, Batch, Cut, Method, NoParams, register
from locbench.methods.params import make_params

# Importing the seed methods registers them.
from locbench.methods import auglocal, bp, bp_accum, bp_ckpt, dgl, hpff, infopro  # noqa: E402,F401  isort: skip
from locbench.methods import man, mlaan, predsim  # noqa: E402,F401  isort: skip

__all__ = [
    "METHODS",
    "Batch",
    "Cut",
    "Method",
    "NoParams",
    "copy_module",
    "make_params",
    "register",
]
