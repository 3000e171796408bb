"""Pipeline stages: ``locbench run --stages P`` runs the K modules as P processes.

Module k needs nothing back from module k+1 (its input is the detached boundary output of
module k-1), so contiguous groups of modules can train as a pipeline: stage s runs its modules'
forward, local losses, backward and its own SGD step on batch i while stage s+1 works on batch
i-1. Each stage is a process on the CPU (gloo; the cores shared out) or on one GPU (NCCL).

* Every stage builds the whole backbone and method from the run's seed (identical initial
  parameters) and steps only its modules' parameters and their auxiliary networks'
  (``method.aux_modules(k)``); BatchNorm running statistics live in their stage. With the
  default detach boundary, each parameter gets the update of the sequential harness.
* Stage 0 reads the data; it sends (x, y, h) to stage 1 and so on: x always travels, since a
  local loss may read ``batch.x`` (InfoPro's reconstruction). At most :data:`DEPTH` batches are
  in flight between two stages: a stage further ahead waits (backpressure).
* The last stage computes the output loss and accuracy; evaluation runs forward through the
  stages the same way.
* Each stage runs the one step loop, :func:`~locbench.harness.loop.fit`, through a
  :class:`StageSeam` (where its steps' inputs come from and its outputs go): the schedule,
  the step context, the sums, divergence (agreed by all stages after each epoch), evaluation
  and the curve are the sequential harness's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from locbench.errors import UserError
from locbench.harness.distributed import free_port
from locbench.harness.environment import cores
from locbench.harness.loop import fit
from locbench.harness.run import first_line
from locbench.harness.trainer import LocalTrainer
from locbench.measure.isolation import TimingLock
from locbench.measure.meters import PhaseClock, synchronize
from locbench.measure.pipeline_bound import best_grouping
from locbench.methods.base import Method
from locbench.nets.split import Split
from locbench.records import RunRecord
from locbench.settings.run_config import MeasureSettings, RunConfig

#: Batches in flight between two neighbouring stages (sent, not yet received).
DEPTH = 2
#: Dtypes a message may carry, by code; a header describes each tensor of a message.
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64)
MAX_TENSORS, MAX_DIMS = 4, 6
HEADER = 1 + MAX_TENSORS * (2 + MAX_DIMS)

Grouping = Callable[[list[float], int], list[range]]


def balanced_groups(weights: list[float], P: int) -> list[range]:
    """P contiguous, non-empty groups of modules whose largest total weight is the smallest
    possible (:func:`locbench.measure.pipeline_bound.best_grouping`, exact)."""
    K = len(weights)
    if not 1 <= P <= K:
        raise UserError(f"cannot make {P} stages of {K} modules; use 1 <= stages <= K")
    groups, _ = best_grouping(weights, P)
    return [range(g[0], g[-1] + 1) for g in groups]


def unit_counts(split: Split) -> list[float]:
    """Hidden units per module (the last module's output head counted as one more)."""
    return [len(split.unit_range(k)) + (k == split.K - 1) for k in range(split.K)]


def _name(method: Method) -> str:
    # a plug-in subclass inherits its parent's registered name: show its class then
    return vars(type(method)).get("name") or type(method).__name__


def check_stages(method: Method, split: Split, P: int, device: torch.device) -> None:
    """Refuse, in one line, what cannot run as P pipeline stages (before anything starts)."""
    name = _name(method)
    if P < 1:
        raise UserError(f"--stages {P}: use at least 1 stage")
    if P > 1 and split.K == 1:
        raise UserError(f"--stages {P}: {name} trains one module end to end; nothing to pipeline")
    if P > split.K:
        raise UserError(f"--stages {P}: {name} has K={split.K} modules; use --stages <= K")
    if type(method).boundary is not Method.boundary:
        raise UserError(
            f"--stages: {name} overrides boundary(); only the default detach can be pipelined"
        )
    if any(method.overlap(k) for k in range(1, split.K)):
        raise UserError(
            f"--stages: {name} declares an overlap (module k reruns units of module k-1): "
            "the two may train in different stages"
        )
    if method.capabilities.reads_modules:
        raise UserError(
            f"--stages: {name} reads other modules' parameters (Capabilities(reads_modules="
            "True)); a module it reads may train in another stage"
        )
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and gpus < P:
        raise UserError(f"--stages {P} needs {P} GPUs, this machine has {gpus}")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--stages runs on cpu or cuda, not {device.type}")


def check_local_losses(p) -> None:
    """Refuse, before any training step, a method with no local loss for some module before
    the last (prepared run ``p``): its modules' losses are counted on one step on fake tensors
    (shapes only; the global random state is left as it was). A method that cannot step on
    fake tensors is left to the same count on the sequential baseline's first real step
    (:func:`sequential_times`), the one check that can still see it."""
    from locbench.harness.fake import fake_batch, fake_modes, fake_trainer

    try:
        with torch.random.fork_rng(devices=[]), fake_modes(p.run):
            trainer, shape = fake_trainer(p.run, None, p.data.info.num_classes)
            local = trainer.train_step(*fake_batch(trainer, shape, p.config.batch_size)).local
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - not steppable on fake tensors: counted on the real step
        return
    if len(local) < p.split.K - 1:
        refuse_missing_loss(p.method)


def refuse_missing_loss(method: Method) -> None:
    name = _name(method)
    raise UserError(
        f"--stages: {name} has no local loss for a module before the last (local_loss "
        "returned None): its gradients would cross the stages"
    )


def module_state(trainer: LocalTrainer, group: range) -> dict[str, torch.Tensor]:
    """Parameters and buffers (on the CPU) of modules ``group`` and their auxiliary nets."""
    state = {}
    for k in group:
        for n, t in trainer.modules[k].state_dict().items():
            state[f"modules.{k}.{n}"] = t.detach().cpu()
        for j, m in enumerate(trainer.method.aux_modules(k) if k < trainer.split.K - 1 else []):
            state.update({f"aux.{k}.{j}.{n}": t.detach().cpu() for n, t in m.state_dict().items()})
    return state


class Link:
    """Messages (a few tensors) to or from one neighbouring stage, in order. :meth:`send`
    returns at once unless :data:`DEPTH` messages are still in flight: then it waits for the
    oldest, which holds a stage that runs ahead (backpressure)."""

    def __init__(self, peer: int, device: torch.device, depth: int = DEPTH) -> None:
        self.peer, self.device, self.depth = peer, device, depth
        self.pending: deque[list] = deque()

    def send(self, tensors: list[torch.Tensor]) -> float:
        """Start sending ``tensors``; the seconds spent waiting for a free slot."""
        waited = self.wait(self.depth - 1)
        header = torch.zeros(HEADER, dtype=torch.int64)
        header[0] = len(tensors)
        for i, t in enumerate(tensors):
            base = 1 + i * (2 + MAX_DIMS)
            header[base], header[base + 1] = DTYPES.index(t.dtype), t.dim()
            header[base + 2 : base + 2 + t.dim()] = torch.tensor(t.shape)
        tensors = [header.to(self.device)] + [t.contiguous() for t in tensors]
        # the tensors stay referenced until their send completed
        self.pending.append([(dist.isend(t, self.peer), t) for t in tensors])
        return waited

    def recv(self) -> list[torch.Tensor]:
        header = torch.empty(HEADER, dtype=torch.int64, device=self.device)
        dist.recv(header, self.peer)
        header = header.tolist()
        out = []
        for i in range(header[0]):
            base = 1 + i * (2 + MAX_DIMS)
            shape = header[base + 2 : base + 2 + header[base + 1]]
            t = torch.empty(shape, dtype=DTYPES[header[base]], device=self.device)
            dist.recv(t, self.peer)
            out.append(t)
        return out

    def wait(self, keep: int = 0) -> float:
        """Wait until at most ``keep`` messages are in flight; the seconds it took."""
        t0 = time.perf_counter()
        while len(self.pending) > keep:
            for work, _ in self.pending.popleft():
                work.wait()
        return time.perf_counter() - t0


class StageSeam:
    """Stage ``rank`` of a pipeline (the :class:`~locbench.harness.trainer.Seam` that
    :func:`~locbench.harness.loop.fit` runs it through): its modules, its links to the
    neighbouring stages, and over the timed steps its busy and idle seconds (idle: waiting for
    the stage before, or for room in the link to the stage after) and when each step ended."""

    def __init__(self, rank: int, groups: list[range], device: torch.device) -> None:
        self.modules = groups[rank]
        self.first, self.last = rank == 0, rank == len(groups) - 1
        self.prev = Link(rank - 1, device) if not self.first else None
        self.next = Link(rank + 1, device) if not self.last else None
        self.device, self.timed = device, range(0)
        self.busy = self.idle = 0.0
        self.ends: list[float] = []
        self._started = self._idle_before = 0.0

    def _counts(self, step: int | None) -> bool:
        return step is not None and step in self.timed

    def recv(self, step: int | None) -> list[torch.Tensor]:
        t0 = time.perf_counter()
        message = self.prev.recv()
        if self._counts(step):
            self.idle += time.perf_counter() - t0
        return message

    def send(self, tensors: list[torch.Tensor], step: int | None) -> None:
        waited = self.next.send(tensors)
        if self._counts(step):
            self.idle += waited

    def start(self, timed: range) -> None:
        self.timed = timed

    def begin(self, step: int) -> None:
        self._started, self._idle_before = time.perf_counter(), self.idle

    def end(self, step: int) -> None:
        synchronize(self.device)  # on CUDA, the step's kernels belong to its time
        now = time.perf_counter()
        if self._counts(step):
            self.busy += now - self._started - (self.idle - self._idle_before)
        self.ends.append(now)

    def any(self, flag: bool) -> bool:
        votes = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return bool(votes.item())

    def close(self) -> None:
        """Wait until the last messages to the stage after are delivered."""
        if self.next is not None:
            self.next.wait()


def stage_main(
    rank: int,
    config: RunConfig,
    groups: list[range],
    port: int,
    out_dir: str,
    max_steps: int | None,
    threads: int,
    held: bool = False,
) -> None:
    """One stage (process ``rank``): :func:`~locbench.harness.loop.fit` over its modules,
    then what it measured (and its state) saved to ``out_dir/stage{rank}.pt``."""
    from locbench.harness.run import prepare

    P = len(groups)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = config.device.startswith("cuda")
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(threads)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=P)
    try:
        p = prepare(config)  # same seed in every stage: the same initial parameters
        seam = StageSeam(rank, groups, device)
        trainer = LocalTrainer.for_config(
            p.config, p.backbone, p.split, p.method, device, seam=seam
        )
        measure = p.config.section(MeasureSettings)
        result = fit(trainer, p.data.train, p.data.test, measure, max_steps=max_steps, held=held)
        seam.close()
        group = groups[rank]
        outcome = {
            "rank": rank,
            "group": [group.start, group.stop],
            "busy_s": seam.busy,
            "idle_s": seam.idle,
            "ends": seam.ends,
            "timed": [seam.timed.start, seam.timed.stop],
            "curve": result.curve,
            "diverged": result.diverged,
            "state": module_state(trainer, group),
        }
        torch.save(outcome, Path(out_dir) / f"stage{rank}.pt")
    except Exception as e:
        # When one stage fails the others fail too (a closed connection): the parent reports
        # the stage that failed first, the cause.
        (Path(out_dir) / f"stage{rank}.err").write_text(
            f"{time.time()!r}\n{type(e).__name__}: {first_line(e)}"
        )
        raise
    finally:
        dist.destroy_process_group()


def merged_curve(results: list[dict]) -> list[dict]:
    """The run's curve from its stages' curves: every stage's local losses in module order,
    the data wait of the first stage (the one that reads the data), the rest (losses,
    accuracy, evaluation, epoch time) from the last."""
    first, last = results[0]["curve"], results[-1]["curve"]
    return [
        {
            **c,
            "local_losses": [v for r in results for v in r["curve"][e]["local_losses"]],
            "data_wait_s": first[e]["data_wait_s"],
        }
        for e, c in enumerate(last)
    ]


def stage_threads(P: int) -> int:
    """Intra-op threads of each CPU stage: the cores shared out."""
    return max(1, cores() // P)


def run_stages(
    config: RunConfig,
    groups: list[range],
    max_steps: int | None = None,
    lock: TimingLock | None = None,
) -> list[dict]:
    """Run the P stages as processes (resolved ``config``); every stage's result, in order.
    ``max_steps``: stop after that many training steps, without evaluation (tests). With this
    process's timing ``lock``, the stages run with the machine to themselves: it is held
    exclusively from their start to their end."""
    P = len(groups)
    threads = stage_threads(P)
    with tempfile.TemporaryDirectory(prefix="locbench-stages-") as tmp:
        args = (config, groups, free_port(), tmp, max_steps, threads, lock is not None)
        try:
            with lock.window() if lock is not None else contextlib.nullcontext():
                mp.spawn(stage_main, args=args, nprocs=P, join=True)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            errors = sorted(
                (float(when), rank, text)
                for rank, (when, text) in (
                    (int(f.stem[5:]), f.read_text().split("\n", 1))
                    for f in Path(tmp).glob("stage*.err")
                )
            )
            if not errors:  # a stage died without a word (killed)
                raise StageFailed(f"a stage failed: {first_line(e)}") from None
            _, rank, text = errors[0]
            raise StageFailed(f"stage {rank} failed: {text}") from None
        return [torch.load(Path(tmp) / f"stage{s}.pt") for s in range(P)]


class StageFailed(RuntimeError):
    """A stage of a pipeline run failed; the message names the first to fail and why."""


def sequential_times(
    p, trainer: LocalTrainer, measure: MeasureSettings, lock: TimingLock | None = None
) -> dict:
    """The sequential harness's own timed window (:func:`~locbench.harness.loop.fit`, the
    one step loop) over ``steps`` steps after the warm-up: the median step time and each
    module's forward + local loss + backward (medians). Its first step also counts the local
    losses, for a method :func:`check_local_losses` could not step on fake tensors."""
    x, y = trainer.to_device(*next(iter(p.data.train)))
    if len(trainer.train_step(x, y).local) < trainer.split.K - 1:
        refuse_missing_loss(trainer.method)
    steps = measure.warmup_steps + measure.measure_steps
    # timed alone (the process's timing lock), at the threads the caller set
    threads = torch.get_num_threads()
    result = fit(
        trainer, p.data.train, p.data.test, measure, max_steps=steps, lock=lock,
        timed_threads=threads,
    )  # fmt: skip
    return {
        "step_time_s": statistics.median(result.step_times.times),
        "module_times_s": PhaseClock.module_times(result.module_times),
    }


def speedup_bound(module_times: list[float], groups: list[range]) -> float:
    """What P stages could gain at best: the sequential module time over the slowest stage's
    (communication and the optimizer step left out)."""
    slowest = max(sum(module_times[k] for k in g) for g in groups)
    return sum(module_times) / slowest if slowest > 0 else float("nan")


def pipeline_step_times(results: list[dict]) -> list[float]:
    """Seconds between consecutive steps' ends at the last stage over the timed steps: the
    pipeline's throughput once it is full."""
    last = results[-1]
    ends, (start, stop) = last["ends"], last["timed"]
    return [ends[i] - ends[i - 1] for i in range(max(start, 1), stop)]


def sequential_baseline(p, P: int, device: torch.device, lock: TimingLock | None = None) -> dict:
    """The sequential harness on the cores (or the one GPU) the stages get: on the CPU at the
    stages' total thread count and at one stage's, keeping the faster. On cores shared with
    other work, more intra-op threads than free cores can stall every op (seen: 40x), and a
    sequential run would not be configured that way."""
    steps = max(p.config.measure_steps, 1)
    # The baseline's windows: the warm-up, then the timed steps (no tracked ones), as many
    # epochs as they take.
    per_epoch = len(p.data.train)
    epochs = max(p.config.epochs, -(-(p.config.warmup_steps + steps) // per_epoch))
    cfg = dataclasses.replace(p.config, track_steps=0, measure_steps=steps, epochs=epochs)
    measure = cfg.section(MeasureSettings)
    on = torch.device("cuda", 0) if device.type == "cuda" else device
    trainer = LocalTrainer.for_config(cfg, p.backbone, p.split, p.method, on)
    if device.type == "cuda":
        return sequential_times(p, trainer, measure, lock)
    before = torch.get_num_threads()
    runs = {}
    try:
        for threads in sorted({stage_threads(P) * P, stage_threads(P)}, reverse=True):
            torch.set_num_threads(threads)
            runs[threads] = sequential_times(p, trainer, measure, lock)
    finally:
        torch.set_num_threads(before)
    threads = min(runs, key=lambda t: runs[t]["step_time_s"])
    by_threads = {t: r["step_time_s"] for t, r in runs.items()}
    return {**runs[threads], "threads": threads, "by_threads": by_threads}


def execute_stages(
    config: RunConfig, grouping: Grouping = balanced_groups, prepared=None
) -> RunRecord:
    """``locbench run --stages P``: the sequential harness first (its step time, per-module
    times, and the check that every module has a local loss), then the P stages; one record.
    ``grouping(weights, P)`` makes the groups from each module's unit count."""
    from locbench.harness.run import finish, prepare, record_curve, start_record
    from locbench.measure.meters import StepTimer

    p = prepared or prepare(config)
    cfg = p.config
    P = cfg.stages
    device = torch.device(cfg.device)
    check_stages(p.method, p.split, P, device)
    check_local_losses(p)  # every refusal before the first step
    groups = grouping(unit_counts(p.split), P)
    started = time.perf_counter()
    record = start_record(p)
    lock = TimingLock.available() if cfg.exclusive_timing else None
    try:
        seq = sequential_baseline(p, P, device, lock)
        results = run_stages(dataclasses.replace(cfg, stages=P), groups, lock=lock)
    except torch.cuda.OutOfMemoryError as e:
        record.status, record.message = "oom", first_line(e)
        return finish(record, started)
    except StageFailed as e:  # the others were stopped: a row, as a failed sequential run is
        record.status, record.message = "error", str(e)
        return finish(record, started)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a failed run is a row, not a crash (locbench.harness.run)
        record.status, record.message = "error", f"{type(e).__name__}: {first_line(e)}"
        return finish(record, started)
    finally:
        if lock is not None:
            lock.close()
    timer = StepTimer(device)
    timer.times = pipeline_step_times(results)
    record.__dict__.update(timer.summary(cfg.batch_size))
    record_curve(record, merged_curve(results), any(r["diverged"] for r in results))
    pipelined = record.step_time_median_s
    record.stages = {
        "P": P,
        "groups": [list(g) for g in groups],
        "busy_s": [r["busy_s"] for r in results],
        "idle_s": [r["idle_s"] for r in results],
        "sequential_step_time_s": seq["step_time_s"],
        "sequential_threads": seq.get("threads"),
        "sequential_by_threads": seq.get("by_threads"),
        "pipeline_step_time_s": pipelined,
        "speedup": seq["step_time_s"] / pipelined if pipelined else None,
        "exclusive": lock is not None,  # baseline and stages timed with the machine to themselves
        "bound": speedup_bound(seq["module_times_s"], groups),
        "module_times_s": seq["module_times_s"],
    }
    return finish(record, started)
