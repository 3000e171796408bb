"""The ``locbench`` command line: ``list``, ``run``, ``demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.errors import UserError

DEMO_METHODS = (("bp", None), ("dgl", 4))


# --cuts and --hp are parsed in config_from_args, not by argparse ``type=``: argparse would
# answer a malformed value with its usage block, and bad input must get one line.
def parse_cuts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise UserError(
            f"--cuts must be comma-separated hidden-unit indices like 3,7,11, got {text!r}"
        ) from None


def parse_hparam(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--hp takes KEY=VALUE (e.g. --hp variant=paper), got {text!r}")
    return key.strip(), value.strip()


def add_model_arguments(p: argparse.ArgumentParser, net: str) -> None:
    """What is built: method, backbone, split and method hyperparameters."""
    p.add_argument(
        "--method",
        default="bp",
        help="training method: a name (see `locbench list`) or path/to/file.py:ClassName",
    )
    p.add_argument("--net", default=net, help="backbone (see `locbench list`)")
    split = p.add_mutually_exclusive_group()
    split.add_argument(
        "--K",
        type=int,
        default=None,
        help="modules (default: one per hidden unit, the published K of every preset net)",
    )
    split.add_argument("--cuts", default=None, help="cut after these hidden units, e.g. 3,7,11")
    p.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method hyperparameter, repeatable (e.g. --hp variant=paper)",
    )
    p.add_argument(
        "--aux-depth",
        type=int,
        default=None,
        metavar="D",
        help="auxiliary depth d (same as --hp depth=D; auglocal)",
    )


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, net="smallnet")
    p.add_argument("--dataset", default="digits", help="dataset (see `locbench list`)")
    p.add_argument("--epochs", type=int, default=None, help="default: the dataset's preset")
    p.add_argument("--batch-size", type=int, default=None, help="default: the dataset's preset")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: preset)")
    p.add_argument("--warmup-epochs", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--data-root", default=None, help="folder holding cifar10/svhn/stl10 files")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument(
        "--memory",
        default="auto",
        choices=("auto", "tracked", "cuda", "both"),
        help="auto: the CUDA allocator on a GPU, the storage tracker otherwise",
    )
    p.add_argument("--warmup-steps", type=int, default=3, help="steps before the measured window")
    p.add_argument("--track-steps", type=int, default=2, help="steps under the memory tracker")
    p.add_argument("--measure-steps", type=int, default=20, help="steps in the measured window")
    p.add_argument("--out", type=Path, default=Path("runs"), help="results folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="locbench",
        description="Benchmark supervised local learning: memory, time and accuracy per method.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="known methods, backbones and datasets")
    run = sub.add_parser("run", help="train and measure one configuration")
    add_run_arguments(run)
    describe = sub.add_parser(
        "describe", help="the split, auxiliary nets, parameters and FLOPs of a configuration"
    )
    add_model_arguments(describe, net="resnet32")
    describe.add_argument("--batch-size", type=int, default=64, help="batch for FLOPs per step")
    describe.add_argument("--classes", type=int, default=10, help="number of classes")
    describe.add_argument("--json", action="store_true", help="print one JSON object")
    est = sub.add_parser(
        "estimate", help="predicted peak training memory per method, without a GPU"
    )
    add_model_arguments(est, net="resnet32")
    est.set_defaults(method=None)
    est.add_argument(
        "--methods", default=None, help="comma-separated methods (default: all registered)"
    )
    est.add_argument("--batch", "--batch-size", dest="batch_size", type=int, default=1024)
    est.add_argument("--image-size", type=int, default=None, help="input side (default: net's)")
    est.add_argument("--classes", type=int, default=10, help="number of classes")
    est.add_argument("--max-batch", action="store_true", help="find the largest batch that fits")
    est.add_argument("--budget", default="24GiB", help="memory budget for --max-batch")
    est.add_argument("--json", action="store_true", help="print a JSON list, one object each")
    sw = sub.add_parser("sweep", help="a grid of runs, one process each, resumable")
    source = sw.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None, help="a named grid (see `locbench list`)")
    source.add_argument("--config", type=Path, default=None, help="a TOML file: [grid], [run]")
    sw.add_argument("--methods", default=None, help="comma-separated, e.g. bp,dgl,auglocal")
    sw.add_argument("--nets", default=None, help="comma-separated backbones")
    sw.add_argument("--K", default=None, help="comma-separated K values (none: every unit)")
    sw.add_argument("--aux-depth", default=None, help="comma-separated depths (auglocal)")
    sw.add_argument("--batch-size", default=None, help="comma-separated batch sizes")
    sw.add_argument("--seeds", default=None, help="comma-separated seeds")
    sw.add_argument("--dataset", default=None)
    sw.add_argument("--epochs", type=int, default=None)
    sw.add_argument("--device", default=None)
    sw.add_argument("--data-root", default=None)
    sw.add_argument("--workers", type=int, default=1, help="runs at once (one per GPU)")
    sw.add_argument("--out", type=Path, default=Path("runs/sweep"), help="results folder")
    sw.add_argument("--no-progress", action="store_true")
    rep = sub.add_parser("report", help="tables, charts and an HTML page from stored records")
    rep.add_argument("runs", type=Path, help="a results folder (records *.json)")
    rep.add_argument("--out", type=Path, default=None, help="default: RUNS/report")
    cmp = sub.add_parser("compare", help="gate: figures of HEAD against a BASE baseline")
    cmp.add_argument("base", type=Path, help="baseline pytest-benchmark JSON")
    cmp.add_argument("head", type=Path, help="new pytest-benchmark JSON")
    cmp.add_argument(
        "--time-factor", type=float, default=1.5, help="fail when a step is this much slower"
    )
    cmp.add_argument("--ignore-time", action="store_true", help="gate memory and FLOPs only")
    demo = sub.add_parser("demo", help="BP vs DGL on the bundled digits data, table and chart")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="results folder")
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--no-progress", action="store_true")
    return parser


def model_settings(args: argparse.Namespace) -> dict:
    params = dict(parse_hparam(h) for h in args.hp)
    if args.aux_depth is not None:
        params["depth"] = args.aux_depth
    return {
        "method": args.method,
        "net": args.net,
        "K": args.K,
        "cuts": parse_cuts(args.cuts) if args.cuts is not None else None,
        "method_params": params,
    }


def config_from_args(args: argparse.Namespace):
    from bench.config import RunConfig

    return RunConfig(
        **model_settings(args),
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay,
        seed=args.seed,
        device=args.device,
        data_root=str(args.data_root) if args.data_root else None,
        download=args.download,
        augment=not args.no_augment,
        num_workers=args.workers,
        warmup_steps=args.warmup_steps,
        track_steps=args.track_steps,
        memory=args.memory,
        measure_steps=args.measure_steps,
    )


def run_one(config, out: Path, progress: bool):
    """Prepare (user errors surface here, before any training), train, save; return the record."""
    from tqdm import tqdm

    from bench.records import save_record
    from bench.run import execute, prepare

    prepared = prepare(config)
    cfg = prepared.config
    total = cfg.epochs * len(prepared.data.train)
    label = f"{cfg.method} {cfg.net} K={prepared.split.K}"
    with tqdm(total=total, desc=label, disable=not progress, unit="step", leave=False) as bar:
        record = execute(cfg, on_step=lambda step, info: bar.update(1), prepared=prepared)
    path = save_record(record, out)
    return record, path


def summary_line(record, path: Path) -> str:
    acc = f"{record.final_test_acc:.2f}%" if record.final_test_acc is not None else "n/a"
    msg = f" ({record.message})" if record.message else ""
    return (
        f"{record.config['method']}: status {record.status}{msg}, test accuracy {acc}, "
        f"record {path}"
    )


def cmd_list(_: argparse.Namespace) -> None:
    from bench.backbone import BACKBONES
    from bench.data import DATASETS
    from methods import METHODS
    from methods.loading import method_entry_points

    print("methods:  " + ", ".join(METHODS.names()))
    plugins = sorted(set(method_entry_points()) - set(METHODS.names()))
    if plugins:  # installed packages' `locbench.methods` entry points
        print("plugins:  " + ", ".join(plugins))
    print("nets:     " + ", ".join(BACKBONES.names()))
    print("datasets: " + ", ".join(DATASETS.names()))
    from bench.presets import PRESETS

    print("presets:  " + ", ".join(PRESETS.names()))


def cmd_run(args: argparse.Namespace) -> int:
    record, path = run_one(config_from_args(args), args.out, not args.no_progress)
    print(summary_line(record, path))
    return 0 if record.status == "ok" else 1


def cmd_describe(args: argparse.Namespace) -> int:
    import json

    from bench.config import RunConfig
    from bench.describe import describe, format_description

    if args.batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {args.batch_size}")
    if args.classes < 2:
        raise UserError(f"need at least 2 classes, got {args.classes}")
    d = describe(RunConfig(**model_settings(args)), args.batch_size, args.classes)
    print(json.dumps(d) if args.json else format_description(d))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    import json

    from bench.config import RunConfig
    from bench.estimate import estimate_methods, format_estimates, parse_bytes
    from methods import METHODS

    if args.method is not None:
        raise UserError("estimate compares methods: use --methods a,b,c instead of --method")
    args.method = "bp"
    methods = args.methods.split(",") if args.methods else METHODS.names()
    if "bp" in methods:  # BP first: the others are compared with it
        methods = ["bp"] + [m for m in methods if m != "bp"]
    if args.image_size is not None and args.image_size < 1:
        raise UserError(f"image size must be at least 1, got {args.image_size}")
    budget = parse_bytes(args.budget) if args.max_batch else None
    config = RunConfig(**model_settings(args))
    rows = estimate_methods(config, methods, args.batch_size, args.image_size, args.classes, budget)
    if args.json:
        print(json.dumps(rows))
        return 0
    size = f", image {args.image_size}" if args.image_size else ""
    what = f"largest batch within {args.budget}" if budget else f"batch {args.batch_size}"
    title = (
        f"estimated peak memory of one training step: {config.net}, K={config.K or 'every unit'}"
        f", {what}{size} (fake tensors, CUDA 512-byte rounding)"
    )
    print(format_estimates(rows, title))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from bench.grid import Grid, axes_from_args, load_grid
    from bench.presets import PRESETS
    from bench.sweep import sweep

    if args.preset:
        grid = PRESETS.get(args.preset)
    elif args.config:
        grid = load_grid(args.config)
    else:
        grid = Grid()
    run = {
        key: value
        for key, value in {
            "dataset": args.dataset,
            "epochs": args.epochs,
            "device": args.device,
            "data_root": args.data_root,
        }.items()
        if value is not None
    }
    grid = grid.override(**axes_from_args(vars(args)), run=run)
    result = sweep(grid, args.out, workers=args.workers, progress=not args.no_progress)
    print(
        f"sweep: {result.total} configurations, {result.skipped} already done, "
        f"{result.ran} run, {len(result.failed)} failed; records in {args.out}"
    )
    for line in result.failed:
        print(f"  failed: {line}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from reports.page import build_report

    page = build_report(args.runs, args.out or args.runs / "report")
    print(f"report: {page}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.regress import compare, format_changes, load_figures

    if args.time_factor < 1:
        raise UserError(f"--time-factor must be at least 1, got {args.time_factor}")
    base, head = load_figures(args.base), load_figures(args.head)
    if args.ignore_time:
        base = {c: {k: v for k, v in f.items() if k != "step_time_s"} for c, f in base.items()}
    changes = compare(base, head, args.time_factor)
    print(format_changes(changes))
    failed = [c for c in changes if c.failed]
    print(f"{len(failed)} of {sum(len(f) for f in base.values())} figures over their limit")
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from bench.config import RunConfig
    from bench.records import curves_frame, results_frame
    from reports.charts import plot_curves
    from reports.tables import format_table, summary_table

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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "list": cmd_list,
        "run": cmd_run,
        "describe": cmd_describe,
        "estimate": cmd_estimate,
        "sweep": cmd_sweep,
        "report": cmd_report,
        "compare": cmd_compare,
        "demo": cmd_demo,
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
