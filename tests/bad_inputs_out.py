"""Bad output paths for every command that writes (run, sweep, demo, report, plot and
``estimate --timeline``): a folder that cannot be made, a file where a folder goes, a name the
file system refuses. Each is refused before any work. Full and read-only file systems, which
need a mount, are in ``tests/test_bad_inputs.py`` (``MOUNTED``)."""

from __future__ import annotations

from pathlib import Path

from tests.page_records import write_runs

FAST = ["--dataset", "synthetic", "--epochs", "1", "--no-progress"]
LONG = "x" * 300  # a name of 300 bytes: Linux file systems take 255

# Where each writing command puts its files, as argv with {dest} for the folder (or stem).
WRITERS = {
    "run": ["run", *FAST, "--out", "{dest}"],
    "sweep": ["sweep", "--methods", "bp", *FAST, "--out", "{dest}"],
    "demo": ["demo", "--epochs", "1", "--no-progress", "--out", "{dest}"],
    "report": ["report", "{tmp}/records", "--out", "{dest}"],
    "plot": ["plot", "breakdown", "{tmp}/records", "--out", "{dest}"],
    "timeline": [
        "estimate",
        "--net",
        "smallnet",
        "--K",
        "2",
        "--methods",
        "dgl",
        "--timeline",
        "{dest}",
    ],  # fmt: skip
}


def writer(command: str, dest: str) -> list[str]:
    return [a.replace("{dest}", dest) for a in WRITERS[command]]


CASES: dict[str, tuple[list[str], list[str]]] = {}
for command in WRITERS:
    CASES[f"{command} out under /dev/null"] = (
        writer(command, "/dev/null/results"),
        ["/dev/null is not a folder"],
    )
    CASES[f"{command} out with a 300-byte name"] = (
        writer(command, f"{{tmp}}/{LONG}"),
        ["bytes long; this file system accepts at most 255"],
    )
for command in ("sweep", "demo", "report", "plot", "timeline"):
    CASES[f"{command} out in /proc"] = (
        writer(command, "/proc/locbench/results"),
        ["--", "/proc/locbench", "is not a writable folder"],
    )
for command in ("report", "plot"):
    CASES[f"{command} out is a file"] = (writer(command, "{tmp}/file.txt"), ["is not a folder"])
CASES["timeline stem under a file"] = (
    writer("timeline", "{tmp}/file.txt/timeline"),
    ["file.txt is not a folder"],
)
CASES["timeline path too long"] = (
    writer("timeline", "{tmp}/" + "/".join(["y" * 250] * 17)),
    ["bytes; this file system accepts at most 4096"],
)


def write_fixtures(root: Path) -> None:
    """Valid records in ``root/records``, for report and plot to get as far as their output."""
    write_runs(root / "records")
