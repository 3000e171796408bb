"""Developer sessions (`nox -l` lists them): tests, lint, bench (the regression gate),
bench_refresh (rewrite the baseline), speed (speed targets), demo."""

import nox

nox.options.sessions = ["lint", "tests"]
BASELINE = "tests/benchmarks/baseline.json"


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


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
