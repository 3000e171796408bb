"""One sweep run in its own process: ``python -m locbench.study.executors.worker CONFIG_JSON
OUT_DIR``.

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
    from locbench.measure.isolation import TimingLock
    from locbench.records import RunRecord
    from locbench.settings.run_config import RunConfig

from locbench.harness.children import end_with_parent

# Only the standard library above (locbench.harness.children is too): the handlers go in
# before the slow imports (torch), so a signal at any point of the run leaves no record.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was asked to stop. A BaseException: the harness turns every Exception of a
    failed run into a row, and this must not become one."""


def _on_signal(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def catch_stop_signals() -> None:
    """From here SIGINT or SIGTERM raise :class:`Interrupted`: the run ends without a record."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)


def hold_stop_signals() -> None:
    """From here a stop signal is dropped: once the record is being written the run is
    finished. Ignored process-wide rather than blocked in this thread: another thread (a claim
    heartbeat, torch's) could take the signal and the handler would still run here."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def run_config(config: RunConfig, lock: TimingLock | None = None) -> RunRecord:
    """Run one configuration and return its record; a bad configuration is an ``error`` row
    of the sweep, not a crash. Shared by this worker and the SLURM jobs. ``lock``: the
    process's timing lock, if it took it already."""
    from locbench.errors import UserError
    from locbench.harness.build import resolve
    from locbench.harness.run import execute

    try:
        return execute(config, lock=lock)
    except UserError as e:
        # K None: the split was never built (a bp run asked for K = 4 trains one module).
        return resolve(config).record(status="error", message=str(e), K=None)


def main(argv: list[str]) -> int:
    catch_stop_signals()
    end_with_parent()  # the sweep may die by SIGKILL: no run goes on without it
    try:
        from pathlib import Path

        settings = json.loads(argv[0])
        # Before the slow imports: loading torch is work another run's timed window must not
        # share the cores with (locbench.measure.isolation; standard library only).
        lock = None
        if not isinstance(settings, dict) or settings.get("exclusive_timing", True) is not False:
            from locbench.measure.isolation import TimingLock

            lock = TimingLock.available()

        from locbench.settings.run_config import RunConfig

        config = RunConfig.from_dict(settings)
        if lock is not None and not config.exclusive_timing:
            lock.close()  # e.g. "false" as text: this run opts out
            lock = None
        record = run_config(config, lock)
        out = Path(argv[1])
        hold_stop_signals()
    except Interrupted as e:
        print("locbench worker: interrupted; no record written", file=sys.stderr)
        return 128 + int(e.args[0])
    from locbench.records import save_record

    save_record(record, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
