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
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from locbench.errors import UserError
from locbench.harness.distributed import free_port
from locbench.harness.optim import make_sgd, set_lr, warmup_cosine
from locbench.harness.run import first_line
from locbench.harness.trainer import LocalTrainer, Windows
from locbench.measure.meters import PhaseClock, synchronize
from locbench.measure.pipeline_bound import best_grouping
from locbench.methods.base import Batch, Method, StepContext
from locbench.nets.split import Split
from locbench.records import RunRecord
from locbench.settings.run_config import RunConfig

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
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and gpus < P:
        raise UserError(f"--stages {P} needs {P} GPUs, this machine has {gpus}")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--stages runs on cpu or cuda, not {device.type}")


def refuse_missing_loss(method: Method) -> None:
    name = _name(method)
    raise UserError(
        f"--stages: {name} has no local loss for a module before the last (local_loss "
        "returned None): its gradients would cross the stages"
    )


def own_parameters(trainer: LocalTrainer, group: range) -> list[nn.Parameter]:
    """The parameters a stage steps: its modules' and their auxiliary networks'."""
    params = [p for k in group for p in trainer.modules[k].parameters()]
    params += [p for k in group if k < trainer.split.K - 1 for m in trainer.method.aux_modules(k)
               for p in m.parameters()]  # fmt: skip
    return list({id(p): p for p in params}.values())


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


class Clock:
    """Busy and idle seconds of one stage over the timed steps, and when each step ended."""

    def __init__(self, device: torch.device, timed: range) -> None:
        self.device, self.timed = device, timed
        self.busy = self.idle = 0.0
        self.ends: list[float] = []

    @contextmanager
    def idle_in(self, step: int) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        if step in self.timed:
            self.idle += time.perf_counter() - t0

    def step_ended(self, step: int, started: float, idle_before: float) -> None:
        synchronize(self.device)  # on CUDA, the step's kernels belong to its time
        now = time.perf_counter()
        if step in self.timed:
            self.busy += now - started - (self.idle - idle_before)
        self.ends.append(now)


def stage_main(
    rank: int,
    config: RunConfig,
    groups: list[range],
    port: int,
    out_dir: str,
    max_steps: int | None,
    threads: int,
) -> None:
    """One stage (process ``rank``): trains its modules on every batch, evaluates after each
    epoch, and saves what it measured (and its state) to ``out_dir/stage{rank}.pt``."""
    from locbench.harness.run import prepare

    P, last = len(groups), rank == len(groups) - 1
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
        cfg = p.config
        trainer = LocalTrainer(p.backbone, p.split, p.method, cfg, device)
        group = groups[rank]
        # a stage's own optimizer over its own parameters, with the run's schedule per step
        trainer.optimizer = make_sgd(
            own_parameters(trainer, group), cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov
        )
        prev = Link(rank - 1, device) if rank > 0 else None
        nxt = Link(rank + 1, device) if not last else None
        per_epoch = len(p.data.train)
        total = cfg.epochs * per_epoch
        if max_steps is not None:
            total = min(total, max_steps)
        clock = Clock(device, Windows.plan(total, cfg.warmup_steps, 0, cfg.measure_steps).timed)
        epochs, step = [], 0
        for epoch in range(cfg.epochs):
            if step >= total:
                break
            sums = {"loss": 0.0, "correct": 0, "seen": 0, "local": [0.0] * (len(group) - last)}
            batches = iter(p.data.train) if rank == 0 else None
            for i in range(per_epoch):
                if step >= total:
                    break
                started, idle_before = time.perf_counter(), clock.idle
                with clock.idle_in(step):
                    if prev is None:
                        x, y = trainer.to_device(*next(batches))
                        h = x
                    else:
                        x, y, h = prev.recv()
                lr = warmup_cosine(
                    epoch + i / per_epoch, cfg.lr, cfg.epochs, cfg.warmup_epochs,
                    cfg.warmup_start_lr,
                )  # fmt: skip
                set_lr(trainer.optimizer, lr)
                batch = Batch(x, y, StepContext(step, epoch, per_epoch, cfg.epochs * per_epoch, lr))
                trainer.modules.train()
                trainer.method.train()
                trainer.optimizer.zero_grad(set_to_none=True)
                losses = []
                for k in group:
                    h, loss = trainer.module_step(k, h, batch)
                    if loss is None:  # only methods refused before the start get here
                        refuse_missing_loss(trainer.method)
                    losses.append(loss)
                if nxt is not None:
                    waited = nxt.send([x, y, h])
                    clock.idle += waited if step in clock.timed else 0.0
                trainer.amp.step(trainer.optimizer)
                # sums on the host: the stage syncs anyway at its next send or receive
                n = len(y)
                for j, loss in enumerate(losses[: len(group) - last]):
                    sums["local"][j] += loss.item() * n
                if last:
                    sums["loss"] += losses[-1].item() * n
                    sums["correct"] += int((h.argmax(1) == y).sum())
                sums["seen"] += n
                clock.step_ended(step, started, idle_before)
                step += 1
            if max_steps is None:
                sums["test"] = evaluate_stage(trainer, group, p.data.test, prev, nxt)
            epochs.append(sums)
        if nxt is not None:
            nxt.wait()
        result = {
            "rank": rank,
            "group": [group.start, group.stop],
            "busy_s": clock.busy,
            "idle_s": clock.idle,
            "ends": clock.ends,
            "timed": [clock.timed.start, clock.timed.stop],
            "epochs": epochs,
            "state": module_state(trainer, group),
        }
        torch.save(result, Path(out_dir) / f"stage{rank}.pt")
    except Exception as e:
        # When one stage fails the others fail too (a closed connection): the parent reports
        # the stage that failed first, the cause.
        (Path(out_dir) / f"stage{rank}.err").write_text(
            f"{time.time()!r}\n{type(e).__name__}: {first_line(e)}"
        )
        raise
    finally:
        dist.destroy_process_group()


@torch.no_grad()
def evaluate_stage(
    trainer: LocalTrainer, group: range, loader, prev: Link | None, nxt: Link | None
) -> dict | None:
    """Forward only through the stages: the last one returns test accuracy (%) and loss."""
    trainer.modules.eval()
    trainer.method.eval()
    correct = seen = 0
    loss_sum = 0.0
    batches = iter(loader) if prev is None else None
    for _ in range(len(loader)):
        if prev is None:
            h, y = trainer.to_device(*next(batches))
        else:
            y, h = prev.recv()
        with trainer.amp.autocast():
            for k in group:
                h = trainer.modules[k](h)
        if nxt is not None:
            nxt.send([y, h])
            continue
        logits = h.to(trainer.dtype)
        correct += int((logits.argmax(1) == y).sum())
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        seen += len(y)
    if nxt is not None:
        return None
    return {"test_acc": 100.0 * correct / max(seen, 1), "test_loss": loss_sum / max(seen, 1)}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def stage_threads(P: int) -> int:
    """Intra-op threads of each CPU stage: the cores shared out."""
    return max(1, cores() // P)


def run_stages(config: RunConfig, groups: list[range], max_steps: int | None = None) -> list[dict]:
    """Run the P stages as processes (resolved ``config``); every stage's result, in order.
    ``max_steps``: stop after that many training steps, without evaluation (tests)."""
    P = len(groups)
    threads = stage_threads(P)
    with tempfile.TemporaryDirectory(prefix="locbench-stages-") as tmp:
        args = (config, groups, free_port(), tmp, max_steps, threads)
        try:
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


def sequential_times(trainer: LocalTrainer, loader, warmup: int, steps: int) -> dict:
    """The sequential harness on the same batches: median step time and median per-module
    time (forward + local loss + backward) over ``steps`` steps after ``warmup``. Refuses a
    method with no local loss for some module (checked on the first step)."""
    step_times, module_times = [], []
    batches = (b for _ in range(warmup + steps) for b in loader)  # loops over short loaders
    for i, (x, y) in zip(range(warmup + steps), batches):
        x, y = trainer.to_device(x, y)
        clock = PhaseClock(trainer.split.K, trainer.device)
        t0 = time.perf_counter()
        losses = trainer.train_step(x, y, clock=clock)
        synchronize(trainer.device)  # the clock's CUDA events are complete
        parts = clock.end_step()
        if i == 0 and len(losses.local) < trainer.split.K - 1:
            refuse_missing_loss(trainer.method)
        if i >= warmup:
            step_times.append(time.perf_counter() - t0)
            module_times.append(
                [sum(parts[name][k] for name in ("forward_s", "local_s", "backward_s"))
                 for k in range(trainer.split.K)]
            )  # fmt: skip
    per_module = [statistics.median(col) for col in zip(*module_times)]
    return {"step_time_s": statistics.median(step_times), "module_times_s": per_module}


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


def sequential_baseline(p, P: int, device: torch.device) -> dict:
    """The sequential harness on the cores (or the one GPU) the stages get: on the CPU at the
    stages' total thread count and at one stage's, keeping the faster. On cores shared with
    other work, more intra-op threads than free cores can stall every op (seen: 40x), and a
    sequential run would not be configured that way."""
    cfg = p.config
    on = torch.device("cuda", 0) if device.type == "cuda" else device
    trainer = LocalTrainer(p.backbone, p.split, p.method, cfg, on)
    steps = max(cfg.measure_steps, 1)
    if device.type == "cuda":
        return sequential_times(trainer, p.data.train, cfg.warmup_steps, steps)
    before = torch.get_num_threads()
    runs = {}
    try:
        for threads in sorted({stage_threads(P) * P, stage_threads(P)}, reverse=True):
            torch.set_num_threads(threads)
            runs[threads] = sequential_times(trainer, p.data.train, cfg.warmup_steps, steps)
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
    from locbench.harness.run import finish, prepare, start_record
    from locbench.measure.meters import StepTimer

    p = prepared or prepare(config)
    cfg = p.config
    P = cfg.stages
    device = torch.device(cfg.device)
    check_stages(p.method, p.split, P, device)
    groups = grouping(unit_counts(p.split), P)
    started = time.perf_counter()
    record = start_record(p)
    try:
        seq = sequential_baseline(p, P, device)
        results = run_stages(dataclasses.replace(cfg, stages=P), groups)
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
    timer = StepTimer(device)
    timer.times = pipeline_step_times(results)
    record.__dict__.update(timer.summary(cfg.batch_size))
    curve = []
    for e, last in enumerate(results[-1]["epochs"]):
        seen = max(last["seen"], 1)
        local = [v / seen for r in results for v in r["epochs"][e]["local"]]
        curve.append({
            "epoch": e + 1,
            "train_loss": last["loss"] / seen,
            "train_acc": 100.0 * last["correct"] / seen,
            "local_losses": local,
            **(last.get("test") or {}),
        })  # fmt: skip
    record.curve = curve
    if curve:
        record.final_test_acc = curve[-1].get("test_acc")
        record.best_test_acc = max(c.get("test_acc", 0.0) for c in curve)
        record.final_train_loss = curve[-1]["train_loss"]
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
        "bound": speedup_bound(seq["module_times_s"], groups),
        "module_times_s": seq["module_times_s"],
    }
    return finish(record, started)
