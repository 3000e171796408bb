"""``locbench run``: train and measure one configuration (``--nproc N`` data-parallel ranks,
``--stages P`` pipeline stages); one record."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from locbench.cli.command import Command
from locbench.cli.flags import add_setting_flags, config_from_args
from locbench.errors import BadDataFile, UserError
from locbench.settings.schema import SECTIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_flags(parser, SECTIONS)
    parser.add_argument("--out", type=Path, default=Path("runs"), help="results folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_one(config, out: Path, progress: bool, ranks=None):
    """Prepare (user errors surface here, before any training), train, save; return the record
    and its file. ``ranks``: one rank of a data-parallel run (its process group started); only
    rank 0 shows progress and writes the record (the path is None on the others)."""
    from tqdm import tqdm

    from locbench.harness.run import execute, prepare
    from locbench.records import check_out_dir, save_record

    prepared = prepare(config)
    check_out_dir(out)  # a results folder that cannot take the record fails before training
    cfg = prepared.config
    leader = ranks is None or ranks.leader
    total = cfg.epochs * len(prepared.data.train)
    label = f"{cfg.method} {cfg.net} K={prepared.split.K}"
    shown = progress and leader
    try:
        with tqdm(total=total, desc=label, disable=not shown, unit="step", leave=False) as bar:
            record = execute(
                cfg, on_step=lambda step, info: bar.update(1), prepared=prepared, ranks=ranks
            )
    except BadDataFile as e:  # found mid-run: the failed run's record, then the one line
        if leader and e.record is not None:
            save_record(e.record, out)
        raise
    return record, save_record(record, out) if leader else None


def summary_line(record, path: Path) -> str:
    acc = f"{record.final_test_acc:.2f}%" if record.final_test_acc is not None else "n/a"
    msg = f" ({record.message})" if record.message else ""
    return (
        f"{record.config['method']}: status {record.status}{msg}, test accuracy {acc}, "
        f"record {path}"
    )


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from locbench.harness.build import resolve
    from locbench.harness.children import end_with_parent
    from locbench.harness.distributed import Ranks, launch

    config = config_from_args(args)
    ranks = Ranks.from_env()  # set by torchrun, or by launch() below
    if config.stages > 1:
        return run_stages(config, args.out)
    if ranks is None and config.nproc > 1:
        from locbench.harness.run import timing_lock
        from locbench.records import check_out_dir

        resolved = resolve(config).config
        check_nproc(resolved)  # bad input fails here, once, not in every rank
        check_out_dir(args.out)
        check_before_the_ranks(resolved)
        return launch(args.argv, config.nproc, timing_lock(resolved), verbose=args.verbose)
    if ranks is None:
        record, path = run_one(config, args.out, not args.no_progress)
        print(summary_line(record, path))
        return 0 if record.status == "ok" else 1
    end_with_parent()  # a rank of `run --nproc N`: it ends with its launcher, however it ends
    if args.nproc is not None and config.nproc != ranks.world:
        raise UserError(f"--nproc {config.nproc}, but this run was started with {ranks.world}")
    config = dataclasses.replace(config, nproc=ranks.world)
    ranks.start(ranks.device(torch_device(config)))
    try:
        record, path = run_one(config, args.out, not args.no_progress, ranks)
    finally:
        ranks.stop()
    if ranks.leader:
        print(summary_line(record, path))
    elif record.status != "ok":  # the launcher shows this line and stops the other ranks
        print(f"status {record.status}: {record.message}", file=sys.stderr)
    return 0 if record.status == "ok" else 1


def run_stages(config, out: Path) -> int:
    """``run --stages P``: the sequential harness, then the P pipeline stages; one record."""
    from locbench.harness.run import prepare
    from locbench.harness.stages import execute_stages
    from locbench.records import check_out_dir, save_record

    prepared = prepare(config)
    check_out_dir(out)
    record = execute_stages(prepared.config, prepared=prepared)
    path = save_record(record, out)
    s, line = record.stages, summary_line(record, path)
    if s is not None:  # a failed run has no stage figures
        line += f"; {s['P']} stages {s['groups']}: speed-up {s['speedup']:.2f}x "
        line += f"(bound {s['bound']:.2f}x)"
    print(line)
    return 0 if record.status == "ok" else 1


def torch_device(config):
    import torch

    from locbench.harness.environment import pick_device

    return torch.device(pick_device(config.device))


def check_before_the_ranks(config) -> None:
    """What every rank would find wrong with the data, the net or the method (a dataset that
    is missing or damaged, a method that cannot be built), found once, here: the run prepared
    as one process on the CPU, then let go. Ranks take seconds to start and meet, and would
    all fail alike."""
    import dataclasses

    from locbench.harness.run import prepare

    prepare(dataclasses.replace(config, device="cpu", nproc=1))


def check_nproc(config) -> None:
    """The ranks fit this machine: a GPU per rank on CUDA, a CPU core per rank elsewhere (more
    ranks than cores only queue for them, and thousands of processes exhaust the memory)."""
    import torch

    from locbench.harness.environment import check_device, cores

    check_device(config.device)
    if config.device.startswith("cuda") and config.nproc > torch.cuda.device_count():
        raise UserError(
            f"--nproc {config.nproc} needs {config.nproc} GPUs, this machine has "
            f"{torch.cuda.device_count()}; use --nproc {torch.cuda.device_count()} or --device cpu"
        )
    if not config.device.startswith("cuda") and config.nproc > cores():
        raise UserError(
            f"--nproc {config.nproc} on the CPU needs a core per rank, this machine gives "
            f"locbench {cores()}; use --nproc 1..{cores()}"
        )


COMMAND = Command("run", "train and measure one configuration", add_arguments, run)
