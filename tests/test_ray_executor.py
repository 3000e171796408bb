"""``locbench sweep --executor ray`` on a real local Ray cluster: Ray task workers killed in the
middle of a run, and Ray missing. Every configuration still ends with exactly one record."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from waiting import live_processes, wait_for

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["--dataset", "digits", "--epochs", "2", "--nets", "smallnet", "--K", "2", "--no-progress"]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray head of 4 CPUs on this machine, for this module only: its address and the
    environment that reaches it (its own auth token, which also tells its processes apart)."""
    pytest.importorskip("ray")
    token = os.urandom(16).hex()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": token}  # fmt: skip
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "head.log"
    # Its own temp dir (short: Ray's socket paths must fit 107 bytes): its address file does
    # not point this machine's later ray.init() calls at a cluster that is gone.
    temp = Path(tempfile.mkdtemp(prefix="lbray"))
    argv = ["ray", "start", "--head", "--block", "--num-cpus", "4", "--port", str(port),
            "--node-ip-address", "127.0.0.1", "--include-dashboard=false",
            "--disable-usage-stats", "--temp-dir", str(temp)]  # fmt: skip
    with open(log, "w") as f:
        head = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: "Ray runtime started" in log.read_text() or head.poll() is not None,
                 timeout=120, what="the Ray head")  # fmt: skip
        assert head.poll() is None, log.read_text()
        yield f"127.0.0.1:{port}", env
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM
        try:
            head.wait(timeout=60)
        finally:
            if head.poll() is None:
                os.killpg(head.pid, signal.SIGKILL)
    wait_for(lambda: not ray_processes(token), timeout=60, what="the Ray processes to end")
    shutil.rmtree(temp, ignore_errors=True)


def ray_processes(token: str, title: bytes = b"") -> list[int]:
    """Pids of the live processes of the cluster with ``token`` whose title starts ``title``."""
    pids = []
    for proc in live_processes():
        try:
            mine = f"RAY_AUTH_TOKEN={token}".encode() in proc.environ()
        except OSError:
            continue
        if mine and proc.pid != os.getpid() and proc.cmdline.startswith(title):
            pids.append(proc.pid)
    return pids


def task_workers(env: dict) -> list[int]:
    return ray_processes(env["RAY_AUTH_TOKEN"], b"ray::locbench_run")


def kill_a_task_worker(env: dict) -> int:
    """SIGKILL one Ray worker while it runs a locbench task; its pid, once it is gone."""
    pid = wait_for(lambda: task_workers(env), 120, "a running locbench task")[0]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    os.kill(pid, signal.SIGKILL)
    assert cmdline.startswith(b"ray::locbench_run"), cmdline  # a task worker, running a run
    wait_for(lambda: pid not in task_workers(env), timeout=30, what="the killed worker to end")
    return pid


def sweep(address: str, env: dict, out: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "locbench", "sweep", "--executor", "ray", "--ray-address",
            address, *SWEEP, "--out", str(out), *extra]  # fmt: skip
    return subprocess.Popen(argv, env=env, cwd=out.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def records(out: Path) -> dict[str, list[dict]]:
    """Every record file's JSON, by run id."""
    by_id: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*.json")):
        by_id.setdefault(path.stem.rsplit("-", 1)[-1], []).append(json.loads(path.read_text()))
    return by_id


@pytest.mark.integration
def test_a_killed_task_worker_is_retried_and_every_configuration_has_one_ok_record(
    cluster, tmp_path
):
    address, env = cluster
    out = tmp_path / "runs"
    proc = sweep(address, env, out, "--methods", "bp,dgl", "--seeds", "0,1")
    try:
        killed = kill_a_task_worker(env)
    finally:
        stdout, stderr = proc.communicate(timeout=300)
    assert killed > 0
    assert proc.returncode == 0, stderr
    assert "4 configurations, 0 already done, 4 run, 0 failed" in stdout, stdout
    by_id = records(out)
    assert len(by_id) == 4 and all(len(rs) == 1 for rs in by_id.values())
    assert all(rs[0]["status"] == "ok" and not rs[0]["worker_died"] for rs in by_id.values())
    ran = {(rs[0]["config"]["method"], rs[0]["config"]["seed"]) for rs in by_id.values()}
    assert ran == {("bp", 0), ("bp", 1), ("dgl", 0), ("dgl", 1)}
    assert not [p for p in out.iterdir() if p.is_file() and p.suffix != ".json"]  # no temp files
    wait_for(lambda: not task_workers(env), timeout=30, what="the task workers to end")


@pytest.mark.integration
def test_a_task_failing_for_good_leaves_a_died_row_that_the_next_sweep_reruns(cluster, tmp_path):
    address, env = cluster
    out = tmp_path / "runs"
    proc = sweep(address, env, out, "--methods", "bp", "--seeds", "0", "--ray-max-retries", "0")
    try:
        kill_a_task_worker(env)
    finally:
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "1 configurations, 0 already done, 1 run, 1 failed" in stdout, stdout
    ((died,),) = records(out).values()
    assert died["status"] == "error" and died["worker_died"] is True and died["K"] is None
    assert died["message"].startswith("Ray task failed (1 attempt): "), died["message"]
    assert "\n" not in died["message"]

    again = sweep(address, env, out, "--methods", "bp", "--seeds", "0")
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert "1 configurations, 0 already done, 1 run (1 retried), 0 failed" in stdout, stdout
    ((record,),) = records(out).values()
    assert record["status"] == "ok" and record["run_id"] == died["run_id"]


def test_without_ray_the_sweep_says_which_extra_to_install(tmp_path):
    # `ray` unimportable, as where the extra is not installed.
    code = ("import sys; sys.modules['ray'] = None; from locbench.cli.main import main; "
            "sys.exit(main(sys.argv[1:]))")  # fmt: skip
    argv = [sys.executable, "-c", code, "sweep", "--executor", "ray", *SWEEP,
            "--out", str(tmp_path / "runs")]  # fmt: skip
    done = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "locbench[ray]" in lines[0], done.stderr
    assert lines[0].startswith("locbench: error: --executor ray needs the ray package")
    assert done.stdout == "" and not list((tmp_path / "runs").glob("*.json"))


@pytest.mark.integration
def test_a_run_larger_than_the_local_ray_is_refused_before_anything_runs(tmp_path):
    pytest.importorskip("ray")
    cores = os.cpu_count() or 1
    argv = [sys.executable, "-m", "locbench", "sweep", "--executor", "ray", *SWEEP,
            "--ray-cpus-per-run", str(cores + 1), "--out", str(tmp_path / "runs")]  # fmt: skip
    done = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"locbench: error: --ray-cpus-per-run {cores + 1} exceeds the {cores} CPUs of this "
        "machine's Ray"
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.integration
def test_a_ray_sweep_prints_only_locbench_lines_unless_verbose(cluster, tmp_path):
    # Ray's own notices (connecting, a token set up, a slow GCS) need --verbose
    address, env = cluster
    out = tmp_path / "out"
    proc = sweep(address, env, out, "--methods", "bp", "--epochs", "1")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stderr == ""
    assert "1 configurations, 0 already done, 1 run, 0 failed" in stdout
