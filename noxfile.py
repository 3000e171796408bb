"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s demo` (`nox -l` lists them)."""

import nox

nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Speed targets and step-time benchmarks (timed, so not part of `tests`)."""
    session.install("-e", ".[dev]")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/benchmarks",
        "-m",
        "speed",
        "--benchmark-enable",
        *session.posargs,
    )


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def demo(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("locbench", "demo", *session.posargs)
