"""``locbench sweep --status --out DIR``: what each configuration known in DIR is doing, from
its records, the jobs of every registered executor whose runs outlive the sweep (its
:class:`~locbench.study.executors.base.JobTracker`: the SLURM ledger) and the claims of running
sweeps.

States: ``done`` (an ok record), ``failed`` (any other record, or a job that ended without
one: oom, error, diverged, worker_died; a resumed sweep runs it again where it must),
``running`` (a running job, or a live claim of any sweep) and ``pending`` (a queued job)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import NamedTuple

from locbench.errors import UserError
from locbench.study.claims import CLAIMS, JobClaims
from locbench.study.executors.base import JobTracker
from locbench.study.executors.builtin import EXECUTORS
from locbench.study.sweep import existing

STATES = ("done", "failed", "running", "pending")


class Row(NamedTuple):
    run_id: str
    state: str  # one of STATES
    config: dict  # the record's (resolved) or the ledger's; empty for a bare claim
    K: object  # the record's split K (bp: 1), else the configuration's
    detail: str

    def line(self) -> str:
        method, net, seed = (self.config.get(k, "?") for k in ("method", "net", "seed"))
        K = "-" if self.K is None else self.K
        detail = f"  {self.detail}" if self.detail else ""
        return f"{self.state:<8} {method:<10} {net:<10} K={K} seed={seed}  {self.run_id}{detail}"


def _record(out: Path, run_id: str) -> dict | None:
    """The JSON of ``run_id``'s best record (as a sweep ranks them), None without one."""
    seen = existing(out, run_id)
    if seen.best is None:
        return None
    try:
        data = json.loads(seen.best.read_text())
    except (OSError, ValueError, RecursionError):  # deeply nested: not a record either
        data = None
    if isinstance(data, dict) and str(data.get("status", "")) == seen.status:
        return data
    return {"status": seen.status, "message": "the record cannot be read"}


def _first_words(message: str, n: int = 12) -> str:
    words = message.split()
    return " ".join(words[:n]) + (" ..." if len(words) > n else "")


def status_of(out: Path, run_id: str, trackers: list[JobTracker], claims: JobClaims | None) -> Row:
    """The state of one run id: a live job's, else a live claim's, else its record's."""
    record = _record(out, run_id)
    config = (record or {}).get("config") or next(
        (c for t in trackers if (c := t.config(run_id))), {}
    )
    K = (record or {}).get("K")  # the split's: bp's is 1; None in a died row
    row = functools.partial(Row, run_id, config=config, K=config.get("K") if K is None else K)
    for tracker in trackers:
        if said := tracker.live(run_id, record is not None):
            return row(said[0], detail=said[1])
    if claims is not None and claims.held_elsewhere(run_id):
        return row("running", detail="claimed by a running sweep")
    if record is None:
        why = (t.ended_without_record(run_id) for t in trackers)
        return row("failed", detail=next(filter(None, why), "a claim left by a sweep that is gone"))
    if record.get("status") == "ok":
        return row("done", detail="")
    died = " (worker_died)" if record.get("worker_died") else ""
    detail = f"{record.get('status')}{died}: {_first_words(str(record.get('message', '')))}"
    return row("failed", detail=detail)


def print_status(out: Path) -> int:
    """Print one line per configuration known in ``out`` and a count line; exit status 0. A
    folder without records, job ledger or claims is not a sweep's: one line."""
    out = Path(out)
    if not out.is_dir():
        what = "is not a folder" if out.exists() else "does not exist"
        raise UserError(f"--out {out} {what}; give the results folder of a sweep")
    run_ids = {p.stem.rsplit("-", 1)[-1] for p in out.glob("*.json") if p.is_file()}
    trackers = []
    for name in EXECUTORS.names():
        kind = EXECUTORS.get(name)
        if kind.tracker is not None:
            trackers.append(kind.tracker(out))
    for tracker in trackers:
        run_ids |= tracker.run_ids()
    claims = None  # no claims folder: no sweep ever claimed anything here
    if (out / CLAIMS).is_dir():
        claimed = (out / CLAIMS).glob("*.claim")
        run_ids |= {p.name.removesuffix(".claim") for p in claimed if p.is_file()}
        claims = JobClaims(out, set().union(*(t.ended() for t in trackers)))
    if not run_ids and claims is None:
        nested = sorted(p.parent for p in out.glob("*/*.json") if p.is_file())
        hint = f" ({nested[0]} holds records: that one?)" if nested else ""
        raise UserError(
            f"--out {out} holds no sweep (no records, job ledger or claims); give the results "
            f"folder of a sweep{hint}"
        )
    rows = [status_of(out, run_id, trackers, claims) for run_id in run_ids]
    for row in sorted(rows, key=lambda r: (STATES.index(r.state), r.line())):
        print(row.line())
    counts = ", ".join(f"{sum(r.state == s for r in rows)} {s}" for s in STATES)
    print(f"{len(rows)} configurations in {out}: {counts}")
    return 0
