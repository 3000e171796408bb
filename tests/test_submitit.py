"""``locbench sweep --executor slurm``: submitit's real code path, through its local executor
(jobs are processes of this machine), and against a real SLURM when one answers here."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from waiting import live_processes

from locbench.harness.build import resolve
from locbench.records import save_record
from locbench.settings.run_config import RunConfig
from locbench.study.claims import CLAIMS
from locbench.study.executors.slurm import Ledger, LedgerJob

pytest.importorskip("submitit")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
DIGITS = ["--dataset", "digits", "--epochs", "1", "--nets", "smallnet", "--K", "2",
          "--seeds", "0", "--no-progress"]  # fmt: skip

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def locbench(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "locbench", *argv], env=ENV, cwd=cwd,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def records(out: Path) -> dict[str, list[dict]]:
    by_id: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*.json")):
        by_id.setdefault(path.stem.rsplit("-", 1)[-1], []).append(json.loads(path.read_text()))
    return by_id


def ledger(out: Path) -> dict[str, str]:
    """run id -> job id of the sweep's job ledger."""
    return {run_id: job.job_id for run_id, job in Ledger(out).read().items()}


def job_task(out: Path, method: str, timeout: float = 120.0) -> int:
    """The pid of the submitit local task running ``method`` (the child of the job's controller,
    whose pid is the job id its log names)."""
    logs = out / ".slurm" / "submitit"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in logs.glob("*_0_log.out") if logs.is_dir() else []:
            if f": {method} smallnet, run" in log.read_text(errors="replace"):
                controller = int(log.name.split("_")[0])
                for proc in live_processes():
                    if proc.ppid == controller and b"submitit.core._submit" in proc.cmdline:
                        return proc.pid
        time.sleep(0.1)
    raise AssertionError(f"no running job for {method}")


@pytest.mark.integration
def test_a_killed_job_leaves_a_died_row_and_only_it_is_resubmitted(tmp_path):
    out = tmp_path / "runs"
    argv = ["sweep", "--executor", "slurm", "--slurm-cluster", "local",
            "--methods", "bp,dgl,predsim", *DIGITS, "--out", str(out)]  # fmt: skip
    sweep = subprocess.Popen([sys.executable, "-m", "locbench", *argv], env=ENV, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        os.kill(job_task(out, "dgl"), signal.SIGKILL)
    finally:
        stdout, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, stderr
    assert "3 configurations, 0 already done, 3 run, 1 failed" in stdout
    first = records(out)
    assert sorted(r[0]["config"]["method"] for r in first.values()) == ["bp", "dgl", "predsim"]
    (died_id,) = [k for k, r in first.items() if r[0]["config"]["method"] == "dgl"]
    (died,) = first[died_id]
    assert died["status"] == "error" and died["worker_died"] is True
    jobs = ledger(out)
    assert f"submitit local job {jobs[died_id]} ended" in died["message"]
    assert all(r[0]["status"] == "ok" for k, r in first.items() if k != died_id)
    # every job ran this worktree's code
    logs = "".join(p.read_text() for p in (out / ".slurm" / "submitit").glob("*_0_log.out"))
    assert logs.count(f"bench from {REPO / 'locbench'}") == 3

    status = locbench("sweep", "--status", "--out", str(out), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[-1].endswith(f"3 configurations in {out}: 2 done, 1 failed, 0 running, 0 pending")
    (failed,) = [line for line in lines if line.startswith("failed")]
    assert " dgl " in failed and died_id in failed and "error (worker_died)" in failed

    again = locbench(*argv, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "3 configurations, 2 already done, 1 run (1 retried), 0 failed" in again.stdout
    resubmitted = ledger(out)
    assert [k for k in jobs if jobs[k] != resubmitted[k]] == [died_id]  # exactly one new job
    final = records(out)
    assert all(len(r) == 1 and r[0]["status"] == "ok" for r in final.values()) and len(final) == 3
    assert not list((out / CLAIMS).glob("*.claim"))
    status = locbench("sweep", "--status", "--out", str(out), cwd=tmp_path)
    assert status.stdout.splitlines()[-1].endswith("3 done, 0 failed, 0 running, 0 pending")


def test_status_shows_each_configuration_state(tmp_path):
    """done / failed (a record, or a job that ended without one) / running (a live claim)."""
    configs = [
        resolve(RunConfig(method="bp", dataset="synthetic", seed=s)).config for s in range(4)
    ]
    ids = [resolve(c).run_id for c in configs]
    save_record(resolve(configs[0]).record(status="ok"), tmp_path)
    save_record(resolve(configs[1]).record(status="oom", message="CUDA out of memory at 3 GiB"),
                tmp_path)  # fmt: skip
    # a job of the ledger whose process is gone (pid 0 names no submitit controller)
    gone = LedgerJob(ids[2], "0", "local", str(tmp_path), configs[2].to_dict(), "2024-01-01")
    Ledger(tmp_path).add([gone])
    (tmp_path / CLAIMS).mkdir()
    claim = {"host": os.uname().nodename, "pid": os.getpid(), "token": "t"}
    (tmp_path / CLAIMS / f"{ids[3]}.claim").write_text(json.dumps(claim))  # this live process

    status = locbench("sweep", "--status", "--out", str(tmp_path), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[-1] == f"4 configurations in {tmp_path}: 1 done, 2 failed, 1 running, 0 pending"
    by_id = {run_id: line for line in lines[:-1] for run_id in ids if run_id in line}
    assert by_id[ids[0]].startswith("done     bp ")
    assert by_id[ids[1]].startswith("failed") and "oom: CUDA out of memory" in by_id[ids[1]]
    assert by_id[ids[2]].startswith("failed") and "job 0 ended without a record" in by_id[ids[2]]
    assert by_id[ids[3]].startswith("running") and "claimed by a running sweep" in by_id[ids[3]]


def test_status_of_a_missing_folder_is_one_line(tmp_path):
    done = locbench("sweep", "--status", "--out", str(tmp_path / "nope"), cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"locbench: error: --out {tmp_path / 'nope'} does not exist; give the results folder "
        "of a sweep"
    ]


def test_a_bad_slurm_flag_is_one_line(tmp_path):
    done = locbench("sweep", "--executor", "slurm", "--slurm-time", "0", "--methods", "bp",
                    *DIGITS, "--out", str(tmp_path / "runs"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("locbench: error: --slurm-time") and not (tmp_path / "runs").exists()


def test_without_submitit_the_error_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['submitit'] = None\n"
        "from locbench.cli.main import main\n"
        f"sys.exit(main(['sweep', '--executor', 'slurm', '--methods', 'bp', '--out', "
        f"{str(tmp_path / 'runs')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "locbench[slurm]" in line and line.startswith("locbench: error: ")


def _slurm_answers() -> str | None:
    """Why the real-SLURM test cannot run here, None when it can."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM here (sinfo/sbatch not on PATH); scripts/slurm-localhost.sh starts one"
    try:
        said = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                              timeout=10)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "sinfo does not answer"
    if said.returncode != 0 or not said.stdout.strip():
        return f"sinfo fails: {said.stderr.strip()[:100]}"
    return None


@pytest.mark.integration
@pytest.mark.slurm
def test_a_sweep_on_real_slurm(tmp_path):
    why = _slurm_answers()
    if why:
        pytest.skip(why)
    out = tmp_path / "runs"
    argv = ["sweep", "--executor", "slurm", "--slurm-time", "10", "--methods", "bp", *DIGITS,
            "--out", str(out)]  # fmt: skip
    bad = locbench(*argv, "--slurm-partition", "no-such-partition", cwd=tmp_path)
    assert bad.returncode == 2
    (line,) = bad.stderr.splitlines()
    assert line.startswith("locbench: error: --executor slurm: submitting the jobs failed")
    done = locbench(*argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 configurations, 0 already done, 1 run, 0 failed" in done.stdout
    ((record,),) = records(out).values()
    assert record["status"] == "ok"
    status = locbench("sweep", "--status", "--out", str(out), cwd=tmp_path)
    assert status.stdout.splitlines()[-1].endswith("1 done, 0 failed, 0 running, 0 pending")
    assert locbench(*argv, cwd=tmp_path).stdout.startswith("sweep: 1 configurations, 1 already")
