"""One sweep run in its own process: ``python -m bench.worker CONFIG_JSON OUT_DIR``.

Writes exactly one record (``ok``, ``oom``, ``diverged`` or ``error``) and exits 0; a non-zero
exit means the process died before it could, and the sweep writes the ``error`` row.

SIGINT or SIGTERM (the sweep stopping) ends the run without a record: exit status 128 + the
signal number, so that the configuration runs again when the sweep is resumed."""

from __future__ import annotations

import json
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from bench.config import RunConfig
    from bench.records import RunRecord

# Only the standard library above: the handlers go in before the slow imports (torch), so a
# signal at any point of the run leaves no record.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was asked to stop. A BaseException: the harness turns every Exception of a
    failed run into a row, and this must not become one."""


def _on_signal(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main(argv: list[str]) -> int:
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    try:
        record, out = _run(argv)
        # From here a signal is held until exit, when it is dropped: once the record is being
        # written the run is finished and the exit status is 0.
        if hasattr(signal, "pthread_sigmask"):  # POSIX
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    except Interrupted as e:
        print("locbench worker: interrupted; no record written", file=sys.stderr)
        return 128 + int(e.args[0])
    from bench.records import save_record

    save_record(record, out)
    return 0


def _run(argv: list[str]) -> tuple[RunRecord, Path]:
    from pathlib import Path

    from bench.config import RunConfig

    return run_config(RunConfig.from_dict(json.loads(argv[0]))), Path(argv[1])


def run_config(config: RunConfig) -> RunRecord:
    """The record of one configuration, as every sweep executor runs it (this worker, a Ray
    task): a bad configuration is a failed row of the sweep, not a crash."""
    from bench.errors import UserError
    from bench.records import RunRecord
    from bench.run import execute

    try:
        return execute(config)
    except UserError as e:
        # K None: the split was never built (a bp run asked for K = 4 trains one module).
        return RunRecord.of(config.resolved(), status="error", message=str(e), K=None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
