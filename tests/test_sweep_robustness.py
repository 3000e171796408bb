"""Sweeps that get interrupted, lose a worker or share --out with another sweep: every
configuration ends with exactly one record, run once. Real processes throughout."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from waiting import live_processes, wait_for

from locbench.study.claims import CLAIMS, Claims
from locbench.study.grid import Grid
from locbench.study.sweep import existing, record_files, resolved_id, sweep

REPO = Path(__file__).resolve().parents[1]
FAST = {
    "dataset": "synthetic",
    "epochs": 1,
    "warmup_steps": 1,
    "measure_steps": 2,
    "track_steps": 1,
}
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def sweep_argv(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "locbench", "sweep", "--nets", "smallnet", "--K", "2",
            "--dataset", "synthetic", "--epochs", "1", "--track-steps", "1", "--out", str(out),
            "--no-progress", *extra]  # fmt: skip


def workers_of(out: Path) -> list[int]:
    """Pids of the live `locbench.study.executors.worker` processes writing to ``out``."""
    return [
        proc.pid
        for proc in live_processes()
        if b"locbench.study.executors.worker" in proc.argv and str(out).encode() in proc.argv
    ]


def records(out: Path) -> dict[str, list[dict]]:
    """Every record file's JSON, by run id."""
    by_id: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*.json")):
        by_id.setdefault(path.stem.rsplit("-", 1)[-1], []).append(json.loads(path.read_text()))
    return by_id


def claim_files(out: Path) -> list[Path]:
    return sorted((out / CLAIMS).iterdir()) if (out / CLAIMS).exists() else []


@pytest.mark.integration
def test_sigint_stops_the_workers_and_interrupted_configurations_run_on_resume(tmp_path):
    out = tmp_path / "runs"
    argv = sweep_argv(out, "--methods", "bp", "--seeds", "0,1", "--workers", "2")
    proc = subprocess.Popen(argv, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: len(workers_of(out)) == 2, what="two running workers")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "locbench: interrupted; stopping 2 running workers" in err
    assert err.strip().endswith("locbench: interrupted")
    assert workers_of(out) == []
    # the interrupted configurations have no record and no claim: they run on resume
    assert not list(out.glob("*.json")) and claim_files(out) == []
    assert not [p for p in out.iterdir() if p.is_file()]  # no half-written record either
    done = subprocess.run(argv, env=ENV, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 configurations, 0 already done, 2 run, 0 failed" in done.stdout
    by_id = records(out)
    assert sorted(r[0]["config"]["seed"] for r in by_id.values()) == [0, 1]
    assert all(len(r) == 1 and r[0]["status"] == "ok" for r in by_id.values())


def test_sigterm_stops_the_sweep_like_sigint(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.Popen(sweep_argv(out, "--methods", "bp"), env=ENV, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: workers_of(out), what="a running worker")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopping 1 running worker " in err
    assert workers_of(out) == [] and not list(out.glob("*.json")) and claim_files(out) == []


def test_a_worker_asked_to_stop_writes_no_record(tmp_path):
    config = json.dumps({"method": "bp", "net": "smallnet", "dataset": "synthetic", "epochs": 1})
    argv = [sys.executable, "-m", "locbench.study.executors.worker", config, str(tmp_path)]
    proc = subprocess.Popen(argv, env=ENV, stderr=subprocess.PIPE, text=True)
    time.sleep(2)  # somewhere in its imports or its run: either way it must stop cleanly
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "interrupted; no record written" in err
    assert list(tmp_path.iterdir()) == []


def test_a_killed_worker_leaves_a_died_row_and_runs_again_on_resume(tmp_path):
    out = tmp_path / "runs"
    grid = Grid(methods=("bp",), K=(2,), run=FAST)
    (run_id,) = [resolved_id(c) for c in grid.configs()]
    killed: list[int] = []

    def kill_the_worker() -> None:
        pids = wait_for(lambda: workers_of(out), what="the worker")
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    killer = threading.Thread(target=kill_the_worker)
    killer.start()
    first = sweep(grid, out, progress=False)
    killer.join()
    assert killed and (first.ran, len(first.failed), first.retried) == (1, 1, 0)
    (died,) = records(out)[run_id]
    assert died["status"] == "error" and died["worker_died"] is True and died["K"] is None
    assert "killed by SIGKILL" in died["message"] and died["run_id"] == run_id

    again = sweep(grid, out, progress=False)
    assert (again.skipped, again.ran, again.retried, again.failed) == (0, 1, 1, [])
    assert len(record_files(out, run_id)) == 1  # the died row was replaced, not kept beside
    (ok,) = records(out)[run_id]
    assert ok["status"] == "ok" and ok["worker_died"] is False
    # the died row carried the very configuration and identity of the real record
    for key in ("run_id", "config", "method_sha256", "package_version"):
        assert died[key] == ok[key], key
    assert claim_files(out) == []
    assert sweep(grid, out, progress=False).skipped == 1  # and now it is done


def test_failed_rows_are_kept_unless_retry_failed(tmp_path):
    marker = tmp_path / "fail"
    marker.touch()
    flaky = tmp_path / "flaky.py"
    flaky.write_text(
        "import os\n"
        "from locbench.methods.bp import BP\n"
        "class Flaky(BP):\n"
        "    def output_loss(self, logits, batch):\n"
        f"        if os.path.exists({str(marker)!r}):\n"
        "            raise RuntimeError('flaky failure')\n"
        "        return super().output_loss(logits, batch)\n"
    )
    out = tmp_path / "runs"
    grid = Grid(methods=(f"{flaky}:Flaky",), run=FAST)
    (run_id,) = [resolved_id(c) for c in grid.configs()]
    first = sweep(grid, out, progress=False)
    assert first.ran == 1 and "flaky failure" in first.failed[0]
    (row,) = records(out)[run_id]
    assert row["status"] == "error" and row["worker_died"] is False
    marker.unlink()
    kept = sweep(grid, out, progress=False)  # a failed run is a result: not run again
    assert (kept.skipped, kept.ran) == (1, 0)
    retried = sweep(grid, out, progress=False, retry_failed=True)
    assert (retried.skipped, retried.ran, retried.retried, retried.failed) == (0, 1, 1, [])
    (row,) = records(out)[run_id]
    assert row["status"] == "ok" and len(record_files(out, run_id)) == 1


@pytest.mark.integration
def test_two_sweeps_on_one_folder_split_the_work(tmp_path):
    out = tmp_path / "runs"
    argv = sweep_argv(out, "--methods", "bp", "--seeds", "0,1,2,3")
    sweeps = [subprocess.Popen(argv, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    results = [p.communicate(timeout=300) + (p.returncode,) for p in sweeps]
    assert [rc for _, _, rc in results] == [0, 0], results
    ran = [int(re.search(r"(\d+) run\b", stdout).group(1)) for stdout, _, _ in results]
    assert sum(ran) == 4, results  # each configuration ran in exactly one of them
    by_id = records(out)
    assert len(by_id) == 4
    assert all(len(r) == 1 and r[0]["status"] == "ok" for r in by_id.values())
    assert len({r[0]["started_at"] + r[0]["run_id"] for r in by_id.values()}) == 4
    assert claim_files(out) == []


def test_a_configuration_claimed_by_a_live_sweep_is_left_to_it(tmp_path):
    grid = Grid(methods=("bp",), K=(2,), run=FAST)
    (run_id,) = [resolved_id(c) for c in grid.configs()]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claims = tmp_path / CLAIMS
        claims.mkdir()
        claim = {"host": socket.gethostname(), "pid": other.pid, "started_at": "now"}
        (claims / f"{run_id}.claim").write_text(json.dumps(claim))
        result = sweep(grid, tmp_path, progress=False)
        assert (result.total, result.skipped, result.ran, result.claimed) == (1, 0, 0, 1)
        assert "1 claimed by another sweep" in result.summary(tmp_path)
        assert not list(tmp_path.glob("*.json"))
        assert json.loads((claims / f"{run_id}.claim").read_text()) == claim  # untouched
    finally:
        other.kill()
        other.wait()


def test_a_finished_configuration_loses_the_claim_its_dead_sweep_left(tmp_path):
    # a sweep killed between writing a record and removing its claim
    grid = Grid(methods=("bp",), K=(2,), run=FAST)
    (run_id,) = [resolved_id(c) for c in grid.configs()]
    (tmp_path / f"bp-smallnet-K1-synthetic-s0-{run_id}.json").write_text('{"status": "ok"}')
    claims = Claims(tmp_path)
    write_claim(claims, run_id, host=socket.gethostname(), pid=dead_pid())
    result = sweep(grid, tmp_path, progress=False)
    assert (result.skipped, result.ran) == (1, 0) and claim_files(tmp_path) == []


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_claim(claims: Claims, run_id: str, age_s: float = 0.0, **info) -> Path:
    path = claims.path(run_id)
    path.write_text(json.dumps(info) if info else "")
    if age_s:
        os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_claims_of_dead_sweeps_are_recovered_and_live_ones_respected(tmp_path):
    claims = Claims(tmp_path)
    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # this host: the pid decides
        write_claim(claims, "dead", host=host, pid=dead_pid())
        assert claims.acquire("dead")
        mine = json.loads(claims.path("dead").read_text())
        assert (mine["host"], mine["pid"]) == (host, os.getpid())
        live = write_claim(claims, "live", host=host, pid=sleeper.pid)
        before = live.read_text()
        assert not claims.acquire("live") and live.read_text() == before
        # the same pid now held by a later process: stale
        write_claim(claims, "reused", host=host, pid=sleeper.pid, pid_start="1")
        assert claims.acquire("reused")
        # another host: the heartbeat (mtime) decides
        write_claim(claims, "far", host="elsewhere", pid=sleeper.pid)
        assert not claims.acquire("far")
        write_claim(claims, "far-dead", 2 * claims.stale_s, host="elsewhere", pid=1)
        assert claims.acquire("far-dead")
        # empty: being written right now, or its writer died before writing
        write_claim(claims, "empty")
        assert not claims.acquire("empty")
        write_claim(claims, "empty-old", 2 * claims.stale_s)
        assert claims.acquire("empty-old")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not [p for p in (tmp_path / CLAIMS).iterdir() if ".stale-" in p.name]
    # release removes only our own claims
    claims.release("dead")
    assert not claims.path("dead").exists()
    write_claim(claims, "reused", host=host, pid=os.getpid(), token="someone else")
    claims.release("reused")
    assert claims.path("reused").exists()


def contend(claims: Claims, run_id: str, start: threading.Barrier, won: list[bool]) -> None:
    start.wait()
    won.append(claims.acquire(run_id))


def test_a_stale_claim_is_recovered_by_exactly_one_of_many(tmp_path):
    for round_ in range(20):
        run_id = f"r{round_}"
        write_claim(Claims(tmp_path), run_id, host=socket.gethostname(), pid=dead_pid())
        won: list[bool] = []
        start = threading.Barrier(8)
        threads = [
            threading.Thread(target=contend, args=(Claims(tmp_path), run_id, start, won))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert won.count(True) == 1, (round_, won)
    # neither guards nor moved-aside claims stay behind
    assert {p.name for p in (tmp_path / CLAIMS).iterdir()} == {f"r{i}.claim" for i in range(20)}


def test_heartbeat_keeps_held_claims_fresh(tmp_path):
    with Claims(tmp_path, heartbeat_s=0.05) as claims:
        assert claims.acquire("x")
        os.utime(claims.path("x"), (0, 0))
        wait_for(lambda: claims.path("x").stat().st_mtime > time.time() - 60, 5, "a heartbeat")
    assert not claims.path("x").exists()  # released on exit


def test_a_row_superseded_by_an_ok_record_is_tidied(tmp_path):
    died = {"status": "error", "worker_died": True}
    (tmp_path / "bp-smallnet-KNone-synthetic-s0-abc.json").write_text(json.dumps(died))
    assert existing(tmp_path, "abc").needs_run(retry_failed=False)
    (tmp_path / "bp-smallnet-K1-synthetic-s0-abc.json").write_text('{"status": "ok"}')
    state = existing(tmp_path, "abc", tidy=True)
    assert state.status == "ok" and not state.needs_run(retry_failed=True)
    assert [p.name for p in tmp_path.glob("*.json")] == ["bp-smallnet-K1-synthetic-s0-abc.json"]
