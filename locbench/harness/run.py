"""One run end to end: config -> backbone -> split -> method -> harness -> record."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import torch

from locbench.data.base import DataBundle, DataRequest
from locbench.data.catalog import load_dataset
from locbench.errors import BadDataFile, UserError
from locbench.harness.build import Resolved, build, input_shape, resolve
from locbench.harness.distributed import Ranks
from locbench.harness.environment import check_device, machine_held, timed_threads
from locbench.harness.flops import config_flops, meta_backbone
from locbench.harness.loop import fit
from locbench.harness.trainer import LocalTrainer
from locbench.measure.isolation import TimingLock
from locbench.measure.meters import PhaseClock
from locbench.measure.pipeline_bound import pipeline_bounds
from locbench.methods import Method
from locbench.nets.backbone import Backbone, get_backbone
from locbench.nets.split import Split
from locbench.records import RunRecord
from locbench.settings.run_config import DataSettings, MeasureSettings, RunConfig


@dataclass
class Prepared:
    """A run with everything built and checked, before any training step."""

    run: Resolved
    backbone: Backbone
    split: Split
    data: DataBundle
    method: Method

    @property
    def config(self) -> RunConfig:
        return self.run.config


def prepare(config: RunConfig, net: Callable[[int], Backbone] | None = None) -> Prepared:
    """Resolve and check the config, seed, and build everything. Raises UserError on bad input.

    ``net``: a factory ``num_classes -> Backbone`` used instead of the registered
    ``config.net`` (which then only labels the record), e.g. for a user's own
    ``Backbone.from_sequential(...)`` that is not registered."""
    run = resolve(config)  # every setting and hyperparameter checked: bad input fails first
    config = run.config
    check_device(config.device)
    # The backbone fixes the input shape, the dataset the number of classes: the shape is read
    # from a meta build, so the one real build happens after the data (seeded, in build).
    request = DataRequest.of(
        config.section(DataSettings),
        input_shape(net or (lambda n: get_backbone(config.net, n))),
        config.batch_size,
        config.seed,
        torch.device(config.device),
    )
    data = load_dataset(config.dataset, request)
    backbone, method = build(run, data.info, net=net)
    return Prepared(run, backbone, method.split, data, method)


def execute(
    config: RunConfig,
    on_step: Callable[[int, dict], None] | None = None,
    prepared: Prepared | None = None,
    ranks: Ranks | None = None,
    lock: TimingLock | None = None,
) -> RunRecord:
    """Train and evaluate one configuration. User errors raise; failures during training
    (out of memory, NaN loss, anything else) come back as a record with that status. A data
    file found unreadable during training raises :class:`~locbench.errors.BadDataFile`
    holding the run's record (status ``error``).

    ``ranks``: this process is one rank of a data-parallel run (:mod:`locbench.harness.distributed`,
    process group started); the record then also holds every rank's peaks. ``lock``: this
    process's timing lock (:mod:`locbench.measure.isolation`), when its caller took it early;
    otherwise the run takes its own (with ``exclusive_timing``; a rank runs inside its
    launcher's exclusive window instead)."""
    own = lock is None and ranks is None and config.exclusive_timing
    if own:
        lock = TimingLock.available()
    try:
        return _execute(config, on_step, prepared, ranks, lock)
    finally:
        if own and lock is not None:
            lock.close()


def _execute(
    config: RunConfig,
    on_step: Callable[[int, dict], None] | None,
    prepared: Prepared | None,
    ranks: Ranks | None,
    lock: TimingLock | None,
) -> RunRecord:
    p = prepared or prepare(config)
    cfg = p.config
    record = start_record(p)
    device = torch.device(cfg.device)
    if ranks is not None:
        device = ranks.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    t0 = time.perf_counter()
    try:
        trainer = LocalTrainer.for_config(cfg, p.backbone, p.split, p.method, device, ranks=ranks)
        measure = cfg.section(MeasureSettings)
        isolation = {"lock": lock, "timed_threads": timed_threads(), "held": machine_held()}
        result = fit(trainer, p.data.train, p.data.test, measure, on_step, **isolation)
        if trainer.ranks is not None:
            record.distributed = rank_peaks(trainer.ranks, result.memory, result.cuda)
    except torch.cuda.OutOfMemoryError as e:
        record.status, record.message = "oom", first_line(e)
        return finish(record, t0)
    except BadDataFile as e:
        # Found mid-run (images are decoded lazily): the run keeps its record, then the caller
        # reports the file as bad input.
        record.status, record.message = "error", str(e)
        e.record = finish(record, t0)
        raise
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a failed run is a row, not a crash
        record.status, record.message = "error", f"{type(e).__name__}: {first_line(e)}"
        return finish(record, t0)
    record.__dict__.update(result.step_times.summary(cfg.batch_size))
    if result.timing is not None:
        record.timing = result.timing.as_dict()
    if result.cuda is not None:
        record.cuda = vars(result.cuda)
    if result.memory is not None:
        record.memory = result.memory.as_dict()
    if result.module_times is not None:
        record.module_times = result.module_times
        bounds = pipeline_bounds(PhaseClock.module_times(result.module_times))
        record.pipeline_bound_speedup, record.pipeline_stages = bounds["speedup"], bounds["stages"]
    record_curve(record, result.curve, result.diverged)
    return finish(record, t0)


def timing_lock(config: RunConfig) -> TimingLock | None:
    """The machine-wide timing lock when ``config`` asks for exclusive timing (and this
    platform has one)."""
    return TimingLock.available() if config.exclusive_timing else None


def record_curve(record: RunRecord, curve: list[dict], diverged: bool) -> None:
    """The curve of :func:`~locbench.harness.loop.fit` and what the record takes from it
    (final and best accuracy, final loss, the data-wait share, ``diverged``): the same for a
    run and for a pipeline run's merged stages."""
    record.curve = curve
    if curve:
        epochs = sum(c["epoch_time_s"] for c in curve)
        waited = sum(c["data_wait_s"] for c in curve)
        record.data_wait_share = waited / epochs if epochs > 0 else None
        record.final_test_acc = curve[-1]["test_acc"]
        record.best_test_acc = max(c["test_acc"] for c in curve)
        record.final_train_loss = curve[-1]["train_loss"]
    if diverged:
        record.status = "diverged"
        record.message = f"non-finite training loss in epoch {len(curve)}"


def rank_peaks(ranks: Ranks, memory, cuda) -> dict:
    """World size and every rank's tracked and CUDA peaks (bytes; max, mean, per rank)."""
    mine = (
        memory.peak_bytes if memory is not None else None,
        cuda.peak_allocated_bytes if cuda is not None else None,
    )
    peaks = ranks.gather(mine)

    def stats(values: list) -> dict | None:
        if any(v is None for v in values):
            return None
        return {"max": max(values), "mean": sum(values) / len(values), "per_rank": values}

    return {
        "world_size": ranks.world,
        "tracked_peak_bytes": stats([t for t, _ in peaks]),
        "cuda_peak_allocated_bytes": stats([c for _, c in peaks]),
    }


def start_record(p: Prepared) -> RunRecord:
    """The record of a prepared run before it trains: identity, split, parameter counts, start
    time and FLOPs per step (or why they were not counted, as its message)."""
    record = p.run.record(
        K=p.split.K,
        module_starts=list(p.split.starts),
        params_backbone=p.backbone.num_params(),
        params_aux=sum(x.numel() for x in p.method.parameters()),
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    record.flops, record.message = count_flops(p)
    return record


def count_flops(p: Prepared) -> tuple[dict | None, str]:
    """FLOPs per step of the prepared run, or ``None`` and why they were not counted.

    Counted on a fresh build of the configuration on the meta device, with the prepared
    backbone's structure: the run's own modules are neither touched nor copied (a method may
    hold anything, e.g. a lock). A method whose step needs real values (e.g. ``.item()``)
    cannot be traced there: no FLOPs, but the run goes on."""
    cfg = p.config
    try:
        total, aux = config_flops(p.run, p.data.info, cfg.batch_size, net=meta_backbone(p.backbone))
    except Exception as e:  # noqa: BLE001 - FLOPs are best effort: the run goes on without
        return None, f"FLOPs not counted: {first_line(e)}"
    return {"backbone": total - sum(aux), "aux": sum(aux), "total": total}, ""


def finish(record: RunRecord, t0: float) -> RunRecord:
    record.wall_time_s = time.perf_counter() - t0
    return record


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
