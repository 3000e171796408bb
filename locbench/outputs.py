"""Where a command's files go: one check of an output folder before any work, and writes that
leave a file whole or absent.

Every command that writes (run, sweep, demo, report, plot, ``estimate --timeline``) checks its
folder with :func:`check_folder` before it trains or draws anything, and writes through
:func:`write_atomic`; :class:`Outputs` takes back what a command wrote when a later write
fails. A write that fails midway (a full disk, an I/O error) is one line naming the
file and the reason (a :class:`~locbench.errors.UserError`), never a traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from locbench.errors import UserError

MIB = 2**20
#: Room every check asks for beyond the expected size: file-system blocks, metadata, logs.
HEADROOM_BYTES = 1 * MIB
#: What the file system accepts when it does not say (Linux's NAME_MAX and PATH_MAX).
NAME_MAX, PATH_MAX = 255, 4096


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long to look up
        return False


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if _exists(candidate):
            return candidate
    return Path(".")


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


def check_names(path: Path, flag: str, extra: int = 0) -> None:
    """Every component of ``path`` within the file system's name length, and the whole path
    (plus ``extra`` bytes of file names to come inside it) within its path length."""
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise UserError(f"{flag} {path}: {ancestor} is not a folder")
    name_max = _limit(ancestor, "PC_NAME_MAX", NAME_MAX)
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise UserError(
                f"{flag} {path}: the name {part[:24]}... is {len(os.fsencode(part))} bytes long; "
                f"this file system accepts at most {name_max}"
            )
    length = len(os.fsencode(os.path.abspath(path))) + extra
    path_max = _limit(ancestor, "PC_PATH_MAX", PATH_MAX)
    if length > path_max:
        raise UserError(
            f"{flag} {path}: the path and the files in it reach {length} bytes; this file "
            f"system accepts at most {path_max}"
        )


def check_folder(path: str | Path, flag: str = "--out", need_bytes: int = 0) -> Path:
    """``path`` as an output folder, created if missing, checked before any work: a folder (not
    a file, not under one), names the file system accepts, writable (a probe file is written
    and removed) and with room for ``need_bytes`` (plus :data:`HEADROOM_BYTES`). One line
    naming ``flag`` on failure; the folders it made are removed again then."""
    path = Path(path)
    check_names(path, flag, extra=NAME_MAX)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is not a folder; give a folder for the outputs")
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".locbench-probe-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
        free = shutil.disk_usage(path).free
        if free < need_bytes + HEADROOM_BYTES:
            raise UserError(
                f"{flag} {path} has {free / MIB:.1f} MiB free; the outputs need about "
                f"{(need_bytes + HEADROOM_BYTES) / MIB:.1f} MiB"
            )
    except OSError as e:
        _remove_empty(made)
        raise UserError(f"{flag} {path} is not a writable folder ({_reason(e)})") from None
    except UserError:
        _remove_empty(made)
        raise
    return path


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return


def _reason(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    return e.strerror or str(e) or type(e).__name__


def write_atomic(path: Path, write: Callable[[IO[bytes]], None] | str | bytes) -> Path:
    """Write ``path`` whole or not at all: into a temporary file beside it, then renamed over.
    ``write`` is the text, the bytes, or a function that writes to the binary file it is given.
    A failure (a full disk, an I/O error) removes the temporary file and is one line."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"could not write {path}: {_reason(e)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(write):
                write(f)
            else:
                f.write(write.encode() if isinstance(write, str) else write)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for everyone who reads them
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"could not write {path}: {_reason(e)}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class Outputs:
    """The files one command has written so far: when a later step fails, :meth:`collect`
    removes them, so that a failed command leaves no partial set of outputs behind."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def add(self, *paths: Path) -> list[Path]:
        """Register ``paths`` (written whole, by :func:`write_atomic`); returns them."""
        self.paths.extend(Path(p) for p in paths)
        return list(paths)

    @classmethod
    @contextmanager
    def collect(cls) -> Iterator[Outputs]:
        outputs = cls()
        try:
            yield outputs
        except BaseException:
            for path in outputs.paths:
                path.unlink(missing_ok=True)
            raise
