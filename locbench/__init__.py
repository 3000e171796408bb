"""locbench: memory profiling and benchmarking for supervised local learning.

This module is the public API for method files: everything a method needs, under one name that
no research repository's own ``methods/`` or ``bench/`` package can shadow::

    from locbench import Batch, Cut, Method, param, register

The names live in :mod:`locbench.api` and load on first use, so that importing any other part
of the package (the records and reports, which never need torch; a sweep's worker process,
which must catch stop signals before torch loads) does not import the method contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and editors: the names as they are
    from locbench.api import (  # noqa: F401
        METHODS,
        Backbone,
        Batch,
        Capabilities,
        Cut,
        Method,
        ModulesView,
        NoParams,
        Paths,
        Shape,
        Split,
        StepContext,
        UserError,
        build_unit,
        param,
        register,
        spatial_size,
    )

__all__ = [
    "METHODS",
    "Backbone",
    "Batch",
    "Capabilities",
    "Cut",
    "Method",
    "ModulesView",
    "NoParams",
    "Paths",
    "Shape",
    "Split",
    "StepContext",
    "UserError",
    "build_unit",
    "param",
    "register",
    "spatial_size",
]


def __getattr__(name: str) -> object:
    """``locbench.Method`` and the other public names, loaded from :mod:`locbench.api` on
    first use (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module 'locbench' has no attribute {name!r}")
    from locbench.api import PUBLIC

    return PUBLIC[name]
