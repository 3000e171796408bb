"""No process outlives the command that started it: the ranks of ``locbench run --nproc 2`` and
the workers of ``locbench sweep --workers 2`` end when their parent is killed (SIGKILL: the
kernel or their watchdog ends them), terminated (SIGTERM) or interrupted (SIGINT); and a Ray
sweep's stderr holds locbench's own lines only, unless ``--verbose``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from waiting import live_processes, wait_for

REPO = Path(__file__).resolve().parents[1]
MARKER = "LOCBENCH_TEST_CLEANUP"  # set in the parent's environment, inherited by its children
LONG = ["--dataset", "synthetic", "--epochs", "200", "--no-progress", "--device", "cpu"]
COMMANDS = {
    "run --nproc 2": ["run", *LONG, "--net", "smallnet", "--nproc", "2"],
    "sweep --workers 2": [
        "sweep",
        *LONG,
        "--nets",
        "smallnet",
        "--methods",
        "bp",
        "--seeds",
        "0,1",
        "--workers",
        "2",
    ],  # fmt: skip
}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
TWO_CORES = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two processes need two cores")


def marked(tag: str) -> list[int]:
    """Pids of the live processes whose environment carries ``tag``."""
    needle = f"{MARKER}={tag}".encode()
    pids = []
    for proc in live_processes():
        try:
            if needle in proc.environ():
                pids.append(proc.pid)
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


SIGNALS = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT]


@pytest.mark.integration
@TWO_CORES
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_no_child_outlives_its_parent(tmp_path, command, sig):
    tag = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(REPO), MARKER: tag}
    # Its own session: the signal reaches the parent only, as `kill PID` does.
    parent = subprocess.Popen(
        [sys.executable, "-m", "locbench", *command, "--out", str(tmp_path / "out")],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        children = wait_for(
            lambda: [pid for pid in marked(tag) if pid != parent.pid][1:] and parent.poll() is None,
            timeout=120,
            what="the parent's two children",
        )
        assert children and parent.poll() is None
        time.sleep(2)  # the children past their start (torch imported, training)
        assert len([pid for pid in marked(tag) if pid != parent.pid]) >= 2
        t0 = time.monotonic()
        parent.send_signal(sig)
        parent.wait(timeout=60)
        wait_for(lambda: not marked(tag), timeout=20, what="every child to end")
        print(f"{command[0]} {sig.name}: all gone {time.monotonic() - t0:.1f} s after the signal")
    finally:
        for pid in marked(tag):
            os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
        parent.wait()
        parent.stderr.close()


# A parent that starts one child the way the ranks and workers are started, but with the
# kernel's guard (prctl) off: the child's watchdog alone must end it.
WATCHED = """
import subprocess, sys, time
from locbench.harness import children
children._PRCTL = None  # as on macOS
child = children.start_child(
    [sys.executable, "-c", "from locbench.harness.children import end_with_parent;"
     "import time; end_with_parent(); time.sleep(120)"],
    dict(__import__("os").environ), stdout=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_without_prctl_the_child_still_ends_with_its_parent(tmp_path):
    tag = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(REPO), MARKER: tag}
    parent = subprocess.Popen([sys.executable, "-c", WATCHED], env=env, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)  # fmt: skip
    try:
        child = int(parent.stdout.readline())
        assert child in marked(tag)  # it runs: the test can fail
        parent.kill()
        parent.wait()
        wait_for(lambda: child not in marked(tag), timeout=10, what="the child to end")
    finally:
        for pid in marked(tag):
            os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()


@pytest.mark.integration
@TWO_CORES
def test_ranks_that_fail_alike_print_one_line(tmp_path):
    # a failure only the ranks meet (the launcher's own check builds the method as one
    # process): both ranks print their error, the launcher shows one line
    (tmp_path / "solo.py").write_text(SOLO_ONLY)
    argv = [sys.executable, "-m", "locbench", "run", "--dataset", "synthetic", "--net",
            "smallnet", "--method", "solo.py:SoloOnly", "--epochs", "1", "--no-progress",
            "--device", "cpu", "--nproc", "2", "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line == "locbench: error: SoloOnly runs in one process only", line


SOLO_ONLY = """
import torch.distributed as dist

from locbench import Method, UserError


class SoloOnly(Method):
    def __init__(self, *args):
        super().__init__(*args)
        if dist.is_available() and dist.is_initialized():
            raise UserError("SoloOnly runs in one process only")
"""
