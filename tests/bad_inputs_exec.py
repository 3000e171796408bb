"""Bad inputs where runs execute (part of tests/test_bad_inputs.py): a Ray address that does not
answer, a sweep on SLURM where none answers, more ranks or workers than the machine runs, and
rank variables without a rendezvous. Each fails in seconds, before any training, in one line.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from locbench.harness.distributed import RENDEZVOUS_TIMEOUT_ENV
from locbench.harness.environment import cores

FAST = ["--dataset", "synthetic", "--epochs", "1", "--no-progress"]
RUN = ["run", *FAST, "--out", "{out}"]
SWEEP = ["sweep", *FAST, "--out", "{out}"]
RAY = [*SWEEP, "--executor", "ray", "--ray-address"]
SLURM = [*SWEEP, "--executor", "slurm"]
RAY_FORMS = "--ray-address must be auto, HOST:PORT"
TOO_MANY = str(cores() + 1)  # one rank or worker more than this machine gives locbench


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(rank: str, port: str, **more: str) -> dict[str, str]:
    """The variables of one rank of two, meeting at 127.0.0.1:``port``, waiting 0.5 s."""
    return {"RANK": rank, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
            RENDEZVOUS_TIMEOUT_ENV: "0.5", **more}  # fmt: skip


CASES: dict[str, tuple] = {
    # ---- run --nproc: what every rank would find wrong is found once, before the launch
    "run nproc 2 without the dataset": (
        [*RUN, "--dataset", "cifar10", "--data-root", "{tmp}/no-data", "--nproc", "2"],
        ["cifar10 not found under {tmp}/no-data"],
    ),
    # ---- sweep on Ray: an address is checked before Ray waits on it (forever, for a silent one)
    "sweep ray address on a closed port": (
        [*RAY, "127.0.0.1:1"],
        ["--ray-address 127.0.0.1:1: nothing answers at 127.0.0.1:1 within 5 s", "refused"],
    ),
    "sweep ray address unknown host": (
        [*RAY, "nowhere.invalid:6379"],
        ["nothing answers at nowhere.invalid:6379", "ray start --head"],
    ),
    "sweep ray address without port": ([*RAY, "localhost"], [RAY_FORMS, "'localhost'"]),
    "sweep ray address port text": ([*RAY, "127.0.0.1:gcs"], [RAY_FORMS, "ray://HOST[:PORT]"]),
    "sweep ray address port 0": ([*RAY, "127.0.0.1:0"], [RAY_FORMS]),
    "sweep ray address http": ([*RAY, "http://127.0.0.1:8265"], [RAY_FORMS, "'http://"]),
    # ---- sweep on SLURM, where none answers (no SLURM is the case here, whatever the machine)
    "sweep slurm without its commands": (
        SLURM,
        [
            "--executor slurm: no SLURM on this machine (sbatch and squeue not on PATH)",
            "--slurm-cluster local",
        ],  # fmt: skip
        {"PATH": "{tmp}/no-slurm"},
    ),
    "sweep slurm controller down": (
        SLURM,
        ["--executor slurm: SLURM does not answer", "Unable to contact slurm controller"],
        {"PATH": "{tmp}/slurm-down" + os.pathsep + os.environ.get("PATH", "")},
    ),
    # ---- more processes than the machine runs
    "run nproc above the cores": (
        [*RUN, "--device", "cpu", "--batch-size", "512", "--nproc", TOO_MANY],
        [f"--nproc {TOO_MANY} on the CPU needs a core per rank", f"--nproc 1..{cores()}"],
    ),
    "run nproc 4096": (
        [*RUN, "--device", "cpu", "--nproc", "4096"],
        ["cannot be shared among 4096 ranks"],  # the global batch first: 64 of 512 images
    ),
    "run nproc 4097": ([*RUN, "--nproc", "4097"], ["--nproc", "<= 4096", "4097"]),
    "run nproc -1": ([*RUN, "--nproc", "-1"], ["--nproc must be an integer >= 1", "got -1"]),
    "sweep nproc 4096": ([*SWEEP, "--nproc", "4096"], ["cannot be shared among 4096 ranks"]),
    # ---- rank variables without a launcher
    "run RANK without WORLD_SIZE": (
        RUN,
        ["RANK is set but WORLD_SIZE is not", "RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"],
        {"RANK": "0"},
    ),
    "run WORLD_SIZE without RANK": (
        RUN,
        ["WORLD_SIZE is set but RANK is not", "unset WORLD_SIZE to run one process"],
        {"WORLD_SIZE": "2"},
    ),
    "run ranks without a master": (
        RUN,
        ["RANK and WORLD_SIZE are set but MASTER_ADDR and MASTER_PORT are not", "torchrun"],
        {"RANK": "0", "WORLD_SIZE": "2"},
    ),
    "run ranks MASTER_PORT text": (
        RUN,
        ["MASTER_PORT must be a port number 1..65535, got 'http'"],
        _ranks("1", "http"),
    ),
    "run RANK text": (RUN, ["RANK, WORLD_SIZE and LOCAL_RANK must be integers"], _ranks("a", "1")),
    "run RANK of WORLD_SIZE": (
        RUN,
        ["RANK must be in 0..WORLD_SIZE-1, got 2 of 2"],
        _ranks("2", "1"),
    ),
    "run rank 1 and a closed MASTER_PORT": (
        RUN,
        ["rank 1 of 2 found no rendezvous at 127.0.0.1:1", "rank 0 did not answer within 0.5 s"],
        _ranks("1", "1"),
    ),
    "run rank 0 whose peer never comes": (
        RUN,
        ["rank 0 of 2 listened at 127.0.0.1:", "did not all arrive within 0.5 s", "torchrun"],
        _ranks("0", str(_free_port())),
    ),
    "run rendezvous wait text": (
        RUN,
        [f"{RENDEZVOUS_TIMEOUT_ENV} must be a number of seconds > 0, got 'soon'"],
        _ranks("1", "1", **{RENDEZVOUS_TIMEOUT_ENV: "soon"}),
    ),
}

if not torch.cuda.device_count():  # a GPU machine runs one worker per GPU, whatever is asked
    CASES["sweep workers above the cores"] = (
        [*SWEEP, "--workers", TOO_MANY],
        [f"--workers {TOO_MANY}: a CPU machine runs a worker per core", f"1..{cores()}"],
    )

SLURM_DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"


def write_fixtures(root: Path) -> None:
    """An empty PATH folder (no SLURM), and one whose sbatch and squeue fail as they do where
    the controller is down."""
    (root / "no-slurm").mkdir()
    (root / "no-data").mkdir()
    down = root / "slurm-down"
    down.mkdir()
    for command in ("sbatch", "squeue", "sinfo"):
        script = down / command
        script.write_text(f"#!/bin/sh\necho '{SLURM_DOWN}' >&2\nexit 1\n")
        script.chmod(0o755)
