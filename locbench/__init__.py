"""locbench: memory profiling and benchmarking for supervised local learning.

This module is the public API for method files: everything a method needs, under one name that no
research repository's own ``methods/`` or ``bench/`` package can shadow::

    from locbench import Batch, Cut, Method, param, register

The contract each name is part of is written out in :mod:`locbench.methods.base`.
"""

from locbench.errors import UserError
from locbench.methods.base import METHODS, Batch, Cut, Method, NoParams, StepContext, register
from locbench.methods.params import param
from locbench.nets.backbone import Backbone, Shape, build_unit, spatial_size
from locbench.nets.split import Split

__all__ = [
    "METHODS",
    "Backbone",
    "Batch",
    "Cut",
    "Method",
    "NoParams",
    "Shape",
    "Split",
    "StepContext",
    "UserError",
    "build_unit",
    "param",
    "register",
    "spatial_size",
]
