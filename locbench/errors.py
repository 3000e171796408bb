"""The exception types that the CLI turns into a single line instead of a traceback."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: the message says what is wrong and what is accepted."""


class BadDataFile(UserError):
    """A data file that cannot be read, found only when a run reads it (ImageNet's images are
    decoded lazily: all of them up front would take hours). The run that meets it keeps its
    record, with status ``error``, in :attr:`record`; the CLI then reports it as bad input.

    Raised in a DataLoader worker, it reaches the main process rebuilt from one string: the
    worker's traceback, whose last line is ``<module>.BadDataFile: <message>``. The message is
    taken back from that line, so it stays one line."""

    record = None  # the RunRecord of the run that met the file, once it has one

    def __init__(self, message: str) -> None:
        lines = str(message).strip().splitlines() or [""]
        prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
        super().__init__(lines[-1].removeprefix(prefix))
