"""The ``locbench`` command line: one function per command; flags of run settings come from
the settings schema (:mod:`locbench.cli.flags`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from locbench.cli.flags import (
    add_setting_flags,
    axes_from_args,
    config_from_args,
    depth_axis,
    hp_axes_from_args,
)
from locbench.errors import UserError
from locbench.settings.schema import SECTIONS
from locbench.study.executors.options import (
    EXECUTORS,
    RayOptions,
    SlurmOptions,
    add_option_flags,
    given_option_flags,
    options_from_args,
)

# Run settings that change what describe and estimate count: the step's dtypes and layout.
SHAPE = ("precision", "channels_last")
DEMO_METHODS = (("bp", None), ("dgl", 4))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="locbench",
        description="Benchmark supervised local learning: memory, time and accuracy per method.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="known methods, backbones and datasets")
    run = sub.add_parser("run", help="train and measure one configuration")
    add_setting_flags(run, SECTIONS)
    run.add_argument("--out", type=Path, default=Path("runs"), help="results folder")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    describe = sub.add_parser(
        "describe", help="the split, auxiliary nets, parameters and FLOPs of a configuration"
    )
    add_setting_flags(describe, ("model", "method"), defaults={"net": "resnet32"}, also=SHAPE)
    describe.add_argument("--batch-size", type=int, default=64, help="batch for FLOPs per step")
    describe.add_argument(
        "--classes", type=int, default=None, help="number of classes (default: the dataset's)"
    )
    describe.add_argument(
        "--dataset", default=None, help="sets the number of classes only; no data is read"
    )
    describe.add_argument("--json", action="store_true", help="print one JSON object")
    est = sub.add_parser(
        "estimate", help="predicted peak training memory per method, without a GPU"
    )
    add_setting_flags(
        est, ("model", "method"), defaults={"net": "resnet32"}, also=SHAPE, hidden=("method",)
    )
    est.add_argument(
        "--methods", default=None, help="comma-separated methods (default: all registered)"
    )
    est.add_argument("--batch", "--batch-size", dest="batch_size", type=int, default=1024)
    est.add_argument("--image-size", type=int, default=None, help="input side (default: net's)")
    est.add_argument("--classes", type=int, default=10, help="number of classes")
    est.add_argument("--max-batch", action="store_true", help="find the largest batch that fits")
    est.add_argument("--budget", default="24GiB", help="memory budget for --max-batch")
    est.add_argument("--json", action="store_true", help="print a JSON list, one object each")
    est.add_argument(
        "--timeline",
        nargs="?",
        type=Path,
        const=Path("estimate_timeline"),
        default=None,
        metavar="STEM",
        help="also write each method's live memory over one training step, allocation by "
        "allocation, with its phases and modules: chart STEM.png and STEM.svg, points STEM.json "
        "(default STEM: estimate_timeline)",
    )
    sw = sub.add_parser("sweep", help="a grid of runs, one process each, resumable")
    source = sw.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None, help="a named grid (see `locbench list`)")
    source.add_argument(
        "--config", type=Path, default=None, help="a TOML file: [grid], [run], [method.NAME]"
    )
    add_setting_flags(sw, SECTIONS, lists=True)
    sw.add_argument(
        "--executor",
        default="local",
        choices=EXECUTORS,
        help="where the runs execute: processes of this machine, a Ray cluster, or SLURM jobs "
        "(through submitit); default local",
    )
    sw.add_argument(
        "--workers",
        type=int,
        default=None,
        help="--executor local: runs at once (one per GPU, or CPU processes); default 1",
    )
    sw.add_argument("--out", type=Path, default=Path("runs/sweep"), help="results folder")
    sw.add_argument(
        "--status",
        action="store_true",
        help="show each configuration of --out: done, failed, running or pending; run nothing",
    )
    add_option_flags(sw, RayOptions, "ray")
    add_option_flags(sw, SlurmOptions, "slurm")
    sw.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again every configuration whose record is not ok (oom, diverged, error)",
    )
    sw.add_argument("--no-progress", action="store_true")
    cfg = sub.add_parser("config", help="every run setting: default, accepted values, help")
    cfg.add_argument("--list", action="store_true", help="print the settings table (default)")
    cfg.add_argument("--markdown", action="store_true", help="as a Markdown table")
    rep = sub.add_parser("report", help="tables, charts and an HTML page from stored records")
    rep.add_argument("runs", type=Path, help="a results folder (records *.json)")
    rep.add_argument("--out", type=Path, default=None, help="default: RUNS/report")
    plot = sub.add_parser("plot", help="one chart of the report from stored records")
    plot.add_argument(
        "kind",
        help="breakdown, modules, timeline, accuracy-memory, memory-k, memory-batch, "
        "step-overhead or curves",
    )
    plot.add_argument("runs", type=Path, help="a results folder (records *.json)")
    plot.add_argument("--out", type=Path, default=None, help="default: RUNS/report")
    cmp = sub.add_parser("compare", help="gate: figures of HEAD against a BASE baseline")
    cmp.add_argument("base", type=Path, help="baseline pytest-benchmark JSON")
    cmp.add_argument("head", type=Path, help="new pytest-benchmark JSON")
    cmp.add_argument(
        "--time-factor", type=float, default=1.5, help="fail when a step is this much slower"
    )
    cmp.add_argument("--ignore-time", action="store_true", help="gate memory and FLOPs only")
    dbench = sub.add_parser(
        "data-bench", help="images/s of one training epoch through each data loader"
    )
    dbench.add_argument("--dataset", required=True, help="cifar10, svhn or stl10")
    dbench.add_argument("--data-root", type=Path, required=True, help="folder holding its files")
    dbench.add_argument("--batch", "--batch-size", dest="batch", type=int, default=1024)
    dbench.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:N")
    dbench.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes (torchvision)"
    )
    dbench.add_argument(
        "--loaders", default="tensor,torchvision", help="comma-separated: tensor, torchvision"
    )
    dbench.add_argument("--download", action="store_true", help="download the dataset if missing")
    demo = sub.add_parser("demo", help="BP vs DGL on the bundled digits data, table and chart")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="results folder")
    demo.add_argument("--epochs", type=int, default=None, help="default: the digits preset")
    demo.add_argument("--no-progress", action="store_true")
    return parser


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
    with tqdm(total=total, desc=label, disable=not shown, unit="step", leave=False) as bar:
        record = execute(
            cfg, on_step=lambda step, info: bar.update(1), prepared=prepared, ranks=ranks
        )
    return record, save_record(record, out) if leader else None


def summary_line(record, path: Path) -> str:
    acc = f"{record.final_test_acc:.2f}%" if record.final_test_acc is not None else "n/a"
    msg = f" ({record.message})" if record.message else ""
    return (
        f"{record.config['method']}: status {record.status}{msg}, test accuracy {acc}, "
        f"record {path}"
    )


def cmd_list(_: argparse.Namespace) -> None:
    from locbench.data.catalog import DATASETS
    from locbench.methods import METHODS
    from locbench.methods.loading import method_entry_points
    from locbench.nets.backbone import BACKBONES

    plugins = sorted(set(method_entry_points()) - set(METHODS.names()))  # clashes fail first
    print("methods:  " + ", ".join(METHODS.names()))
    if plugins:  # installed packages' `locbench.methods` entry points
        print("plugins:  " + ", ".join(plugins))
    print("nets:     " + ", ".join(BACKBONES.names()))
    print("datasets: " + ", ".join(DATASETS.names()))
    from locbench.study.presets import PRESETS

    print("presets:  " + ", ".join(PRESETS.names()))


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from locbench.harness.build import resolve
    from locbench.harness.distributed import Ranks, launch

    config = config_from_args(args)
    ranks = Ranks.from_env()  # set by torchrun, or by launch() below
    if config.stages > 1:
        return run_stages_cmd(config, args.out)
    if ranks is None and config.nproc > 1:
        from locbench.records import check_out_dir

        check_nproc(resolve(config).config)  # bad input fails here, once, not in every rank
        check_out_dir(args.out)
        return launch(args.argv, config.nproc)
    if ranks is None:
        record, path = run_one(config, args.out, not args.no_progress)
        print(summary_line(record, path))
        return 0 if record.status == "ok" else 1
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


def run_stages_cmd(config, out: Path) -> int:
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


def check_nproc(config) -> None:
    """A CUDA data-parallel run needs a GPU per rank."""
    import torch

    from locbench.harness.environment import check_device

    check_device(config.device)
    if config.device.startswith("cuda") and config.nproc > torch.cuda.device_count():
        raise UserError(
            f"--nproc {config.nproc} needs {config.nproc} GPUs, this machine has "
            f"{torch.cuda.device_count()}; use --nproc {torch.cuda.device_count()} or --device cpu"
        )


def cmd_describe(args: argparse.Namespace) -> int:
    import json

    from locbench.analysis.describe import describe, format_description

    if args.classes is None:  # an explicit --classes wins over the dataset's count
        args.classes = dataset_classes(args.dataset)
    check_probe(args)
    d = describe(config_from_args(args), args.batch_size, args.classes)
    print(json.dumps(d) if args.json else format_description(d))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    import json

    from locbench.analysis.estimate import estimate_methods, format_estimates, parse_bytes
    from locbench.methods import METHODS

    if args.method is not None:
        raise UserError("estimate compares methods: use --methods a,b,c instead of --method")
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else METHODS.names()
    if not all(methods):
        raise UserError(f"--methods has an empty name in {args.methods!r}; e.g. bp,dgl")
    if "bp" in methods:  # BP first: the others are compared with it
        methods = ["bp"] + [m for m in methods if m != "bp"]
    check_probe(args)
    if args.image_size is not None and not 1 <= args.image_size <= 8192:
        raise UserError(f"--image-size must be between 1 and 8192, got {args.image_size}")
    budget = parse_bytes(args.budget) if args.max_batch else None
    config = config_from_args(args)
    rows = estimate_methods(
        config, methods, args.batch_size, args.image_size, args.classes, budget, args.timeline
    )
    written = write_estimate_timeline(rows, config.net, args.timeline) if args.timeline else []
    if args.json:
        print(json.dumps(rows))
        return 0
    size = f", image {args.image_size}" if args.image_size else ""
    what = f"largest batch within {args.budget}" if budget else f"batch {args.batch_size}"
    title = (
        f"estimated peak memory of one training step: {config.net}, K={config.K or 'every unit'}"
        f", {what}{size}, {config.precision} (fake tensors, CUDA 512-byte rounding)"
    )
    print(format_estimates(rows, title))
    for path in written:
        print(path)
    return 0


def write_estimate_timeline(rows: list[dict], net: str, stem: Path) -> list[Path]:
    """The estimate rows' timelines as ``<stem>.json`` (the rows) and a chart
    (``<stem>.png``, ``<stem>.svg``) with one panel per method that has a peak."""
    import json

    from locbench.records import write_atomic
    from locbench.reports.charts import save, timelines_figure

    path = Path(f"{stem}.json")
    write_atomic(path, json.dumps(rows, indent=1))  # makes the folder
    panels = [
        (f"{net}, batch {r['batch_size']}, estimated\n{r['method']} K={r['K']}", r["method"], tl)
        for r in rows
        if (tl := r.get("timeline"))
    ]
    return [path, *save(timelines_figure(panels), stem)] if panels else [path]


def cmd_sweep(args: argparse.Namespace) -> int:
    from locbench.study.grid import Grid, load_grid
    from locbench.study.presets import PRESETS
    from locbench.study.sweep import LocalExecutor, sweep

    if args.status:
        from locbench.study.status import print_status

        return print_status(args.out)
    own_flags = {  # the flags each executor takes, as given
        "local": ["--workers"] if args.workers is not None else [],
        "ray": given_option_flags(args, "ray"),
        "slurm": given_option_flags(args, "slurm"),
    }
    for executor, given in own_flags.items():
        if given and executor != args.executor:
            raise UserError(f"{given[0]} applies to --executor {executor}, not {args.executor}")
    ray_options = options_from_args(args, RayOptions, "ray")
    slurm_options = options_from_args(args, SlurmOptions, "slurm")
    if args.preset:
        grid = PRESETS.get(args.preset)
    elif args.config:
        grid = load_grid(args.config)
    else:
        grid = Grid()
    grid = grid.override(
        axes=axes_from_args(args), hp=hp_axes_from_args(args), aux_depth=depth_axis(args)
    )
    progress, retry = not args.no_progress, args.retry_failed
    if args.executor == "slurm":
        from locbench.study.executors.slurm import sweep_slurm

        result = sweep_slurm(grid, args.out, slurm_options, progress=progress, retry_failed=retry)
    else:
        if args.executor == "ray":
            from locbench.study.executors.ray_tasks import RayExecutor

            executor = RayExecutor(ray_options)
        else:
            executor = LocalExecutor(1 if args.workers is None else args.workers)
        result = sweep(grid, args.out, progress=progress, retry_failed=retry, executor=executor)
    print(result.summary(args.out))
    for line in result.failed:
        print(f"  failed: {line}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from locbench.cli.settings_table import settings_markdown, settings_text

    print(settings_markdown() if args.markdown else settings_text())
    return 0


def dataset_classes(dataset: str | None) -> int:
    """The class count of a registered dataset, without reading it (10 when none is named)."""
    from locbench.data.catalog import DATASETS

    if dataset is None:
        return 10
    return DATASETS.get(dataset).num_classes


def check_probe(args: argparse.Namespace) -> None:
    """``describe``/``estimate``'s own batch and class count."""
    from locbench.settings.run_config import BY_NAME
    from locbench.settings.schema import check

    check(BY_NAME["batch_size"], args.batch_size, "--batch-size")  # the run setting's rule
    if not 2 <= args.classes <= 1_000_000:
        raise UserError(f"--classes must be between 2 and 1000000, got {args.classes}")


def cmd_report(args: argparse.Namespace) -> int:
    from locbench.reports.page import build_report

    report = build_report(args.runs, args.out or args.runs / "report")
    for path, reason in report.skipped:
        print(f"locbench: skipped {path}: {reason}", file=sys.stderr)
    print(f"report: {report.path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from locbench.reports.charts import save
    from locbench.reports.page import PLOT_KINDS, chart_figure, load_runs

    # checked here, not by argparse choices: a bad kind is one error line, like bad records
    if args.kind not in PLOT_KINDS:
        raise UserError(f"unknown chart kind {args.kind!r}; known: {', '.join(PLOT_KINDS)}")
    results, curves, skipped = load_runs(args.runs, what="plot")
    for path, reason in skipped:
        print(f"locbench: skipped {path}: {reason}", file=sys.stderr)
    name = PLOT_KINDS[args.kind]
    fig = chart_figure(name, results, curves)
    if fig is None:
        raise UserError(f"the records in {args.runs} hold no data for the {args.kind} chart")
    for path in save(fig, (args.out or args.runs / "report") / name):
        print(path)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from locbench.analysis.regress import compare, format_changes, load_figures

    if not 1 <= args.time_factor < float("inf"):  # NaN fails this too
        raise UserError(f"--time-factor must be a finite number >= 1, got {args.time_factor}")
    base, head = load_figures(args.base), load_figures(args.head)
    if args.ignore_time:
        base = {c: {k: v for k, v in f.items() if k != "step_time_s"} for c, f in base.items()}
    changes = compare(base, head, args.time_factor)
    print(format_changes(changes))
    failed = [c for c in changes if c.failed]
    print(f"{len(failed)} of {sum(len(f) for f in base.values())} figures over their limit")
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from locbench.records import curves_frame, results_frame
    from locbench.reports.charts import plot_curves
    from locbench.reports.tables import format_table, summary_table
    from locbench.settings.run_config import RunConfig

    records = []
    for method, K in DEMO_METHODS:
        config = RunConfig(method=method, K=K, net="smallnet", dataset="digits", epochs=args.epochs)
        record, path = run_one(config, args.out, not args.no_progress)
        print(summary_line(record, path), file=sys.stderr)
        records.append(record)
    print(format_table(summary_table(results_frame(records))))
    chart = plot_curves(curves_frame(records), args.out / "demo_curves.png")
    print(f"chart: {chart}")
    return 0 if all(r.status == "ok" for r in records) else 1


def cmd_data_bench(args: argparse.Namespace) -> int:
    import torch

    from locbench.analysis.data_speed import LOADERS, check_args, epoch_speed, format_speeds
    from locbench.harness.environment import check_device, pick_device

    check_args(args.dataset, args.data_root, args.batch, args.workers)
    loaders = [s.strip() for s in args.loaders.split(",")]
    if not loaders or any(s not in LOADERS for s in loaders):
        raise UserError(f"--loaders must name some of {', '.join(LOADERS)}, got {args.loaders!r}")
    device = pick_device(args.device)
    check_device(device)
    speeds = [
        epoch_speed(
            args.dataset,
            loader,
            args.data_root,
            args.batch,
            torch.device(device),
            args.workers,
            download=args.download,
        )
        for loader in dict.fromkeys(loaders)
    ]
    print(format_speeds(args.dataset, speeds, args.batch, device, args.workers))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `run --nproc N` starts its ranks with the same arguments
    commands = {
        "list": cmd_list,
        "run": cmd_run,
        "describe": cmd_describe,
        "estimate": cmd_estimate,
        "sweep": cmd_sweep,
        "report": cmd_report,
        "plot": cmd_plot,
        "compare": cmd_compare,
        "config": cmd_config,
        "demo": cmd_demo,
        "data-bench": cmd_data_bench,
    }
    try:
        return commands[args.command](args) or 0
    except UserError as e:
        print(f"locbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("locbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
