"""One sweep run in its own process: ``python -m bench.worker CONFIG_JSON OUT_DIR``.

Writes exactly one record (``ok``, ``oom``, ``diverged`` or ``error``) and exits 0; a non-zero
exit means the process died before it could, and the sweep writes the ``error`` row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.config import RunConfig
from bench.errors import UserError
from bench.records import RunRecord, environment, save_record
from bench.run import execute


def main(argv: list[str]) -> int:
    config = RunConfig.from_dict(json.loads(argv[0]))
    out = Path(argv[1])
    try:
        record = execute(config)
    except UserError as e:  # a bad configuration is a failed row of the sweep, not a crash
        cfg = config.resolved()
        record = RunRecord(
            run_id=cfg.run_id(),
            config=cfg.to_dict(),
            env=environment(cfg.device),
            status="error",
            message=str(e),
            K=config.K,
        )
    save_record(record, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
