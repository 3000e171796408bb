"""``locbench sweep --executor slurm``: each configuration a SLURM job, through submitit.

Unlike the local and Ray executors, the jobs outlive the process that submitted them, so the
sweep keeps what it submitted in a ledger, ``OUT/.slurm/jobs.json`` (run id -> job id, cluster,
submitit folder, configuration, submission time), and works from it and the records:

* A sweep plans as every sweep does (:func:`locbench.study.sweep.plan_sweep`), then
  :class:`SlurmExecutor` submits every configuration to run as ONE job array, except those
  whose ledger job is still pending or running, or that another sweep holds a live claim on
  (counted as ``claimed``). Each ended job is counted as every sweep counts its runs
  (:meth:`locbench.study.sweep.SweepResult.add_run`).
* Each job (:func:`run_job`) claims its run id (:class:`locbench.study.claims.Claims`, the
  claim naming the job), runs the configuration as ``locbench.study.executors.worker`` does,
  writes its record on the shared --out and releases the claim. A job whose configuration
  another sweep claimed, or ran meanwhile, ends without running it.
* Unless ``detach``, the sweep then waits, polling the job states (``squeue``: SLURM's
  accounting, which submitit's own states rely on through ``sacct``, is often not there). A job
  that ended without a record (killed, cancelled, timed out, node failure) gets a
  ``worker_died`` ``error`` row naming the job and its final state, so the next sweep submits
  it again. With ``detach`` the sweep returns after submitting: ``ran`` counts the submitted
  jobs; ``locbench sweep --status`` follows them.
* Ctrl-C while waiting stops the waiting only: SLURM jobs run on. submitit's local jobs
  (``--slurm-cluster local``) are processes of this machine in the terminal's process group,
  so a Ctrl-C at the terminal reaches them too: they end without records and run on resume
  (a SIGINT sent to the sweep's process alone leaves them running).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from locbench.errors import UserError
from locbench.harness.build import resolve
from locbench.records import read_record
from locbench.settings.run_config import RunConfig
from locbench.study.claims import Claims, JobClaims
from locbench.study.executors.base import ExecutorKind, register_executor
from locbench.study.executors.options import SlurmOptions, import_extra
from locbench.study.sweep import (
    Existing,
    SweepPlan,
    SweepResult,
    died_record,
    existing,
    keep_record,
    now_utc,
    record_files,
)

LEDGER_DIR = ".slurm"  # inside --out: the ledger and submitit's folder (job scripts, logs)
POLL_S = 2.0  # how often a waiting sweep asks for the job states
# squeue states of a job that has not ended (COMPLETING: its record may still be on its way).
LIVE = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
})  # fmt: skip


@dataclass(frozen=True)
class LedgerJob:
    """The job a sweep submitted for one configuration."""

    run_id: str
    job_id: str  # SLURM: ARRAY_TASK (e.g. 12_3) or a plain id; local: the controller's pid
    cluster: str  # slurm or local
    folder: str  # submitit's folder: the job's script and logs
    config: dict
    submitted_at: str

    @property
    def tag(self) -> str:
        """The job as its claims name it: pids of local jobs and SLURM ids may coincide."""
        return f"{self.cluster}:{self.job_id}"


class Ledger:
    """``OUT/.slurm/jobs.json``: the latest job of each run id. Updates hold an flock, so
    sweeps submitting on the same --out at once keep each other's entries; writes are atomic."""

    def __init__(self, out: Path) -> None:
        self.dir = Path(out) / LEDGER_DIR
        self.path = self.dir / "jobs.json"

    def read(self) -> dict[str, LedgerJob]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as e:
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{self.path}: not a readable job ledger ({text})") from None
        if not isinstance(data, dict):
            raise UserError(f"{self.path}: not a job ledger (a JSON object of run id -> job)")
        return {run_id: ledger_job(run_id, entry, self.path) for run_id, entry in data.items()}

    @contextlib.contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "jobs.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def add(self, jobs: list[LedgerJob]) -> None:
        with self._locked():
            entries = {k: asdict(v) for k, v in self.read().items()}
            entries.update({job.run_id: asdict(job) for job in jobs})
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".jobs-", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f, indent=1, sort_keys=True)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from the others sharing --out
            os.replace(tmp, self.path)


#: Where submitit ran a ledger's jobs (SlurmOptions.cluster's choices).
CLUSTERS = ("slurm", "local")
#: The type of each field of a ledger entry (LedgerJob's, as JSON gives them back).
LEDGER_TYPES = {
    "run_id": str, "job_id": str, "cluster": str, "folder": str, "config": dict,
    "submitted_at": str,
}  # fmt: skip


def ledger_job(run_id: str, entry: object, path: Path) -> LedgerJob:
    """One entry of the ledger at ``path``, its fields checked: a damaged ledger is one line."""
    where = f"{path}: damaged job ledger, entry {run_id!r}"
    if not isinstance(entry, dict):
        raise UserError(f"{where} is not a JSON object")
    missing = [k for k in LEDGER_TYPES if k not in entry]
    extra = sorted(set(entry) - set(LEDGER_TYPES))
    if missing or extra:
        raise UserError(
            f"{where}: missing {missing}, unknown {extra}; fields: {list(LEDGER_TYPES)}"
        )
    for field, kind in LEDGER_TYPES.items():
        if not isinstance(entry[field], kind):
            got = type(entry[field]).__name__
            raise UserError(f"{where}: {field} must be a {kind.__name__}, got a {got}")
    if entry["run_id"] != run_id or entry["cluster"] not in CLUSTERS:
        raise UserError(f"{where}: run_id must be its key and cluster one of {', '.join(CLUSTERS)}")
    if entry["cluster"] == "local" and not entry["job_id"].isdigit():
        raise UserError(f"{where}: a local job's job_id is a process id, got {entry['job_id']!r}")
    return LedgerJob(**entry)


def job_states(jobs: list[LedgerJob]) -> dict[str, str] | None:
    """The state of each job by job id: a live state (:data:`LIVE`), a final one (COMPLETED,
    CANCELLED, TIMEOUT, ...) while SLURM still remembers the job, or absent: it ended. None when
    SLURM cannot be asked (its controller down): nothing is known."""
    states: dict[str, str] = {}
    if any(job.cluster == "local" for job in jobs):
        # submitit's local jobs are controller processes of this host, their pid the job id.
        for job in jobs:
            if job.cluster == "local" and _is_local_job(int(job.job_id)):
                states[job.job_id] = "RUNNING"
    if any(job.cluster == "slurm" for job in jobs):
        # --array: one line per array task; --states all: also jobs that ended a short while
        # ago (SLURM's MinJobAge), with their final state, accounting or not.
        command = ["squeue", "--noheader", "--array", "--states", "all", "--format", "%i|%T",
                   "--user", getpass.getuser()]  # fmt: skip
        try:
            lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None
        for line in lines.splitlines():
            job_id, _, state = line.strip().partition("|")
            states[job_id] = state.split()[0] if state else "UNKNOWN"
    return states


#: Seconds SLURM's controller has to answer ``squeue`` before the sweep gives up on it.
CONTROLLER_TIMEOUT_S = 15.0
NO_SLURM_HINT = "run the sweep where sbatch works, or try it with --slurm-cluster local"


def check_slurm(timeout_s: float = CONTROLLER_TIMEOUT_S) -> None:
    """SLURM answers here: its commands are on PATH and its controller answers ``squeue``
    within ``timeout_s``; else one line saying which is missing."""
    missing = [command for command in ("sbatch", "squeue") if shutil.which(command) is None]
    if missing:
        raise UserError(
            f"--executor slurm: no SLURM on this machine ({' and '.join(missing)} not on "
            f"PATH); {NO_SLURM_HINT}"
        )
    command = ["squeue", "--noheader", "--format", "%i", "--user", getpass.getuser()]
    try:
        said = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise UserError(
            f"--executor slurm: the SLURM controller did not answer squeue within "
            f"{timeout_s:g} s; {NO_SLURM_HINT}"
        ) from None
    except OSError as e:
        raise UserError(f"--executor slurm: cannot run squeue ({e}); {NO_SLURM_HINT}") from None
    if said.returncode != 0:
        lines = [line.strip() for line in said.stderr.splitlines() if line.strip()]
        why = lines[-1][:300] if lines else f"exit status {said.returncode}"
        raise UserError(f"--executor slurm: SLURM does not answer (squeue: {why}); {NO_SLURM_HINT}")


def _is_local_job(pid: int) -> bool:
    try:  # a reaped or zombie controller has no command line
        return b"submitit.local._local" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def is_live(job: LedgerJob, states: dict[str, str] | None) -> bool:
    """Whether ``job`` may still run (also when its state cannot be known now)."""
    return states is None or states.get(job.job_id, "") in LIVE


class SlurmJobs:
    """What ``sweep --status`` learns from the job ledger of ``out``
    (:class:`~locbench.study.executors.base.JobTracker`): each job's configuration and, from
    ``squeue``, whether it is pending, running or ended."""

    def __init__(self, out: Path) -> None:
        self.ledger = Ledger(out).read()
        # None: squeue cannot be asked (its controller down): nothing is known
        self.states = job_states(list(self.ledger.values())) if self.ledger else {}

    def run_ids(self) -> set[str]:
        return set(self.ledger)

    def config(self, run_id: str) -> dict:
        job = self.ledger.get(run_id)
        return job.config if job is not None else {}

    def live(self, run_id: str, has_record: bool) -> tuple[str, str] | None:
        job = self.ledger.get(run_id)
        if job is None:
            return None
        if self.states is None:  # unknown: a job without a record may still run
            return (
                None
                if has_record
                else ("pending", f"job {job.job_id} state unknown: squeue failed")
            )
        state = self.states.get(job.job_id)
        if state not in LIVE:
            return None
        return (
            "running" if state in ("RUNNING", "COMPLETING") else "pending",
            f"job {job.job_id} {state}",
        )

    def ended_without_record(self, run_id: str) -> str | None:
        job = self.ledger.get(run_id)
        return None if job is None else f"job {job.job_id} ended without a record"

    def ended(self) -> set[str]:
        return {job.tag for job in self.ledger.values() if not is_live(job, self.states)}


def run_job(config: dict, out: str, snapshot: frozenset, retry_failed: bool) -> str:
    """One job of the array (pickled by reference, run by submitit): claim the configuration,
    run it as ``locbench.study.executors.worker`` does, write its record, release the claim.
    Returns what it did:
    ``claimed`` (another sweep runs it), ``skipped`` (someone ran it meanwhile), ``interrupted``
    (SIGINT or SIGTERM: scancel, the time limit; no record) or the record's status."""
    from locbench.study.executors import worker

    worker.catch_stop_signals()  # replaces submitit's handlers, which only log a SIGTERM
    try:
        import submitit

        job = f"{os.environ.get('SUBMITIT_EXECUTOR', 'slurm')}:{submitit.JobEnvironment().job_id}"
        import locbench

        cfg = RunConfig.from_dict(config)
        run_id, folder = resolve(cfg).run_id, Path(out)
        # In the job's log: which code ran (the job's Python environment is the cluster's).
        print(f"locbench job {job}: {cfg.method} {cfg.net}, run {run_id}, bench from "
              f"{Path(locbench.__file__).parent}", flush=True)  # fmt: skip
        with Claims(folder, job=job) as claims:
            if not claims.acquire(run_id):
                return "claimed"
            try:
                now = existing(folder, run_id)
                if now.snapshot != snapshot or not now.needs_run(retry_failed):
                    return "skipped"
                record = worker.run_config(cfg)
                worker.hold_stop_signals()
                keep_record(record, folder)
            finally:
                claims.release(run_id)
    except worker.Interrupted:
        print("locbench job: interrupted; no record written", file=sys.stderr)
        return "interrupted"
    return record.status


def _executor(options: SlurmOptions, folder: Path):
    """submitit's executor for ``options``; no SLURM here is one line."""
    submitit = import_extra("submitit", "slurm", "--executor slurm")
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
    except RuntimeError as e:  # submitit: no srun on PATH
        raise UserError(
            f"--executor slurm: no SLURM on this machine ({e}); run the sweep where sbatch "
            "works, or try it with --slurm-cluster local"
        ) from None
    executor.update_parameters(
        timeout_min=options.time,
        cpus_per_task=options.cpus_per_task,
        name="locbench",
        slurm_partition=options.partition,
        slurm_gpus_per_task=options.gpus_per_task or None,
        slurm_array_parallelism=options.array_parallelism,
        slurm_setup=[options.setup] if options.setup else None,
        local_setup=[options.setup] if options.setup else None,
    )
    if options.cluster == "local" and options.gpus_per_task:
        executor.update_parameters(gpus_per_node=options.gpus_per_task)
    return executor


def submit(
    todo: list[tuple[RunConfig, str, Existing]], out: Path, options: SlurmOptions, retry: bool
) -> list[LedgerJob]:
    """Submit ``todo`` as one job array; the jobs, already in the ledger."""
    folder = out.resolve() / LEDGER_DIR / "submitit"
    executor = _executor(options, folder)
    try:
        # submitit prints sbatch's stderr when it fails: the error below says it in one line.
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            handles = [
                executor.submit(run_job, c.to_dict(), str(out.resolve()), seen.snapshot, retry)
                for c, _, seen in todo
            ]
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError) as e:
        # sbatch missing or refusing (bad partition, time over the limit): its own words.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        said = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else e)
        raise UserError(f"--executor slurm: submitting the jobs failed: {said}") from None
    submitted_at = now_utc()
    jobs = [
        LedgerJob(run_id, str(h.job_id), options.cluster, str(folder), c.to_dict(), submitted_at)
        for (c, run_id, _), h in zip(todo, handles)
    ]
    Ledger(out).add(jobs)
    return jobs


class SlurmExecutor:
    """Runs a sweep's plan as SLURM jobs of one array (see the module's docstring). Not a
    :class:`~locbench.study.executors.base.RunExecutor`: the jobs outlive the sweep and claim
    their own configurations, so the sweep submits them all at once and then only waits."""

    def __init__(self, options: SlurmOptions) -> None:
        import_extra("submitit", "slurm", "--executor slurm")
        if options.cluster == "slurm":
            check_slurm()  # before planning: a sweep without SLURM fails as it starts
        self.options = options
        # A job gets the GPUs it asks for, wherever it runs: "auto" resolves to that device
        # here (a login node without GPUs included), so the run ids planned are the jobs' own.
        self.device = "cuda" if options.gpus_per_task else "cpu"

    def execute(self, plan: SweepPlan, progress: bool) -> SweepResult:
        """Submit every configuration of ``plan`` that needs a run and has no live job or
        claim, as one array; wait for the jobs unless ``detach``. Raises KeyboardInterrupt on
        Ctrl-C while waiting; the jobs run on."""
        out, result = plan.out, plan.result()
        ledger = Ledger(out).read()
        known = [ledger[run_id] for _, run_id, _ in plan.todo if run_id in ledger]
        states = job_states(known) if known else {}
        claims = JobClaims(out, {job.tag for job in known if not is_live(job, states)})
        todo = []
        for config, run_id, seen in plan.todo:
            job = ledger.get(run_id)
            if (job is not None and is_live(job, states)) or claims.held_elsewhere(run_id):
                result.claimed += 1  # its job is queued or running: left to it
            else:
                todo.append((config, run_id, seen))
        if not todo:
            return result
        jobs = submit(todo, out, self.options, plan.retry_failed)
        if self.options.detach:
            result.ran = len(jobs)  # submitted; their outcomes are for --status
            return result
        try:
            _wait(jobs, {run_id: (c, seen) for c, run_id, seen in todo}, out, result, progress)
        except KeyboardInterrupt:
            print(_interrupted_line(jobs, out), file=sys.stderr, flush=True)
            raise
        return result

    def close(self) -> None:
        pass  # the jobs are SLURM's: nothing of theirs to release here


def _wait(
    jobs: list[LedgerJob],
    todo: dict[str, tuple[RunConfig, Existing]],
    out: Path,
    result: SweepResult,
    progress: bool,
) -> None:
    """Poll the jobs until each has ended, counting each (its record, or a died row)."""
    from tqdm import tqdm

    waiting = {job.run_id: job for job in jobs}
    done_before = result.total - len(waiting)
    with tqdm(total=result.total, initial=done_before, disable=not progress, unit="run") as bar:
        while waiting:
            states = job_states(list(waiting.values()))
            ended = [job for job in waiting.values() if not is_live(job, states)]
            for job in ended:
                config, seen = todo[job.run_id]
                _account(job, config, seen, out, states or {}, result)
                del waiting[job.run_id]
                bar.update(1)
            if waiting:
                time.sleep(POLL_S)


def _account(
    job: LedgerJob,
    config: RunConfig,
    seen: Existing,
    out: Path,
    states: dict[str, str],
    result: SweepResult,
) -> None:
    """Count one ended job: the record it wrote, or else a ``worker_died`` row written here."""
    now = existing(out, job.run_id)
    if now.snapshot == seen.snapshot:  # nothing new: the job wrote no record
        claims = JobClaims(out, {job.tag})
        if not claims.acquire(job.run_id):  # another sweep runs it now
            result.claimed += 1
            return
        try:
            if existing(out, job.run_id).snapshot != seen.snapshot:  # written meanwhile
                result.skipped += 1
                return
            state = states.get(job.job_id) or _final_state(job)
            message = f"{_kind(job)} job {job.job_id} ended ({state}) without writing its record"
            tail = _log_tail(job)
            record = died_record(
                resolve(config),
                message + (f": {tail}" if tail else ""),
                job.submitted_at,
                _seconds_since(job.submitted_at),
            )
            keep_record(record, out)
        finally:
            claims.release(job.run_id)
    else:
        record = read_record(record_files(out, job.run_id)[-1])
    result.add_run(config, record, seen)


def _kind(job: LedgerJob) -> str:
    return "SLURM" if job.cluster == "slurm" else "submitit local"


def _final_state(job: LedgerJob) -> str:
    """How a job that SLURM no longer lists ended, if accounting (sacct) can tell."""
    if job.cluster == "local":
        return "no result: killed or crashed" if not _result_pickle(job).exists() else "finished"
    command = ["sacct", "--noheader", "--allocations", "--parsable2", "--format", "State",
               "--jobs", job.job_id]  # fmt: skip
    try:
        said = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        said = None
    if said is not None and said.returncode == 0 and said.stdout.strip():
        return said.stdout.split()[0]
    return "no longer listed by squeue; no accounting to say how"


def _result_pickle(job: LedgerJob) -> Path:
    return Path(job.folder) / f"{job.job_id}_0_result.pkl"


def _log_tail(job: LedgerJob) -> str:
    """The last line of the job's stderr log (e.g. slurmstepd's CANCELLED or TIME LIMIT)."""
    try:
        text = (Path(job.folder) / f"{job.job_id}_0_log.err").read_text(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _seconds_since(iso: str) -> float:
    from datetime import datetime, timezone

    return max(0.0, (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds())


def _interrupted_line(jobs: list[LedgerJob], out: Path) -> str:
    follow = f"follow them with `locbench sweep --status --out {out}`"
    if jobs[0].cluster == "local":
        pids = " ".join(job.job_id for job in jobs)
        return (
            f"locbench: stopped waiting; submitit local jobs left running unless the interrupt "
            f"reached them too (pids {pids}); {follow}, stop them with `kill <pid>`"
        )
    arrays = sorted({job.job_id.split("_")[0] for job in jobs})
    return (
        f"locbench: stopped waiting; the SLURM jobs keep running: {follow}, cancel them with "
        f"`scancel {' '.join(arrays)}`"
    )


register_executor(
    ExecutorKind(
        "slurm",
        "SLURM jobs of one array, through submitit",
        SlurmOptions,
        SlurmExecutor,
        tracker=SlurmJobs,
    )
)
