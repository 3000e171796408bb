"""What third-party libraries may print on stderr: without ``--verbose``, only their errors.

Ray, submitit and torch.distributed log warnings (a token set-up notice, a GCS that is slow to
answer, a peer that went away) that would come before locbench's own one-line error or
summary. :func:`third_party_output` keeps them off stderr for one command, and restores what it
changed afterwards (a command may run inside another program, e.g. the tests)."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

#: The libraries whose Python warnings need ``--verbose``.
LIBRARIES = ("ray", "submitit", "torch.distributed", "torch.multiprocessing")
#: Their C++ parts log to stderr at the level these variables say, read as a process starts
#: (each rank's torch.distributed). Not Ray's RAY_BACKEND_LOG_LEVEL: setting it prints a line.
LOG_LEVEL_ENV = {"TORCH_CPP_LOG_LEVEL": "ERROR"}


@contextlib.contextmanager
def third_party_output(verbose: bool) -> Iterator[None]:
    """Meanwhile, unless ``verbose``: logging passes errors only and the Python warnings of
    :data:`LIBRARIES` are ignored; their C++ log levels are set for what starts now."""
    if verbose:
        yield
        return
    disabled = logging.root.manager.disable
    env = {name: os.environ.get(name) for name in LOG_LEVEL_ENV}
    try:
        # Every logger, not each library's: importing Ray (lazily, later) resets its own.
        # locbench itself does not log; it prints its lines.
        logging.disable(logging.WARNING)
        for name, level in LOG_LEVEL_ENV.items():
            os.environ.setdefault(name, level)  # a level the user set stays
        with warnings.catch_warnings():
            for name in LIBRARIES:
                warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")
            yield
    finally:
        logging.disable(disabled)
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
