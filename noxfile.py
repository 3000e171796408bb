"""Developer sessions (`nox -l` lists them): tests (the default run, without the slow
integration tests), integration (only those: real processes, Ray, submitit, SLURM, browser,
multi-process runs; `python -m pytest -m integration`), lint, bench (the regression gate),
bench_refresh (rewrite the baseline), speed (speed targets), demo, slurm (a sweep on a
single-node SLURM of this machine; needs root and apt)."""

import shutil
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
BASELINE = "tests/benchmarks/baseline.json"


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def integration(session: nox.Session) -> None:
    """The slow integration tests the default run deselects (`-m integration`)."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "-m", "integration", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and the import contracts of pyproject.toml (the layers; reports never importing
    torch or the harness). import-linter reads the source, so the package is installed without
    its dependencies."""
    session.install("ruff", "import-linter")
    session.install("--no-deps", "-e", ".")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def bench(session: nox.Session) -> None:
    """Regression gate: benchmark every method, compare with the committed baseline (memory and
    FLOPs may not grow over 1%, time not over 1.5x). Posargs go to `locbench compare`."""
    session.install("-e", ".[dev]")
    head = ".benchmarks/head.json"
    session.run(
        "python", "-m", "pytest", "tests/benchmarks", "-m", "regression", "--benchmark-enable",
        f"--benchmark-json={head}", "-q",
    )  # fmt: skip
    session.run("locbench", "compare", BASELINE, head, *session.posargs)


@nox.session
def bench_refresh(session: nox.Session) -> None:
    """Rewrite the committed baseline from this machine (deliberately: see the README)."""
    session.install("-e", ".[dev]")
    session.run(
        "python", "-m", "pytest", "tests/benchmarks", "-m", "regression", "--benchmark-enable",
        f"--benchmark-json={BASELINE}", "-q",
    )  # fmt: skip


@nox.session
def speed(session: nox.Session) -> None:
    """Speed targets: each method's step time relative to BP; estimate in under 60 s."""
    session.install("-e", ".[dev]")
    session.run(
        "python", "-m", "pytest", "tests/benchmarks", "-m", "speed", "--benchmark-enable",
        *session.posargs,
    )  # fmt: skip


@nox.session
def demo(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("locbench", "demo", *session.posargs)


# Every record of the slurm session's sweep must be ok; argv[1] is the results folder.
CHECK_ALL_OK = """
import json, sys
from pathlib import Path
rows = [json.loads(p.read_text()) for p in Path(sys.argv[1]).glob("*.json")]
bad = [(r["config"]["method"], r["status"], r["message"]) for r in rows if r["status"] != "ok"]
if len(rows) != 3 or bad:
    sys.exit(f"expected 3 ok records, got {len(rows)}; not ok: {bad}")
print(f"all {len(rows)} records ok")
"""


@nox.session
def slurm(session: nox.Session) -> None:
    """A 3-configuration digits sweep through real SLURM (sbatch, squeue) on a single-node SLURM
    of this machine (scripts/slurm-localhost.sh: installs slurm-wlm and munge with apt, needs
    root), then `sweep --status`; fails unless every record is ok."""
    session.install("-e", ".[dev]")
    session.run("scripts/slurm-localhost.sh", external=True)
    out = Path(session.create_tmp()) / "slurm-sweep"
    shutil.rmtree(out, ignore_errors=True)  # a fresh sweep each time, not a resumed one
    session.run(
        "locbench", "sweep", "--executor", "slurm", "--dataset", "digits", "--epochs", "1",
        "--nets", "smallnet", "--methods", "bp,dgl,predsim", "--K", "2", "--seeds", "0",
        "--out", str(out), "--slurm-time", "10", "--slurm-cpus-per-task", "1", "--no-progress",
    )  # fmt: skip
    session.run("locbench", "sweep", "--status", "--out", str(out))
    session.run("python", "-c", CHECK_ALL_OK, str(out))
