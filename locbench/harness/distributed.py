"""Data-parallel runs: N processes (ranks), each training on its share of every global batch.

``locbench run --nproc N`` starts the ranks itself (:func:`launch`); ``torchrun
--nproc-per-node N -m locbench run ...`` starts them the same way (each rank reads ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, :meth:`Ranks.from_env`).

What the harness guarantees in such a run:

* ``batch_size`` stays the *global* batch (the one presets and learning rates refer to); each
  rank takes its contiguous share of every batch (:meth:`Ranks.share`), so N ranks see, in
  total, the batches of the same run on one process.
* Each module's gradients are averaged across ranks right after that module's backward, as
  one flat all-reduce started asynchronously, so it overlaps the next module's forward; the
  optimizer steps once all have arrived (:class:`GradSync`). Every rank keeps identical
  parameters. Shares of unequal size (a last batch that does not divide) are weighted by their
  size, so the average is the gradient of the global batch's mean loss.
* BatchNorm normalises each rank's share by default; with ``sync_bn`` it uses the statistics
  of the whole global batch (:class:`GlobalBatchNorm`), which makes N ranks compute what one
  process computes on the global batch. Running statistics are made equal across ranks
  (rank 0's) before every evaluation.
* A loss that couples the samples of a batch (e.g. PredSim's similarity matching) is computed
  within each rank's share, as in any data-parallel training.
* Rank 0 writes the record: its tracked and CUDA memory, plus every rank's peaks.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.constants import default_pg_timeout

from locbench.errors import UserError
from locbench.harness.children import start_child, terminate_all
from locbench.harness.environment import MACHINE_HELD_ENV
from locbench.measure.isolation import TimingLock

#: The environment every rank reads (set by torchrun, or by :func:`launch`).
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
NEEDED = "RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"
#: Seconds the ranks have to meet at MASTER_ADDR:MASTER_PORT (default
#: :data:`RENDEZVOUS_TIMEOUT_S`): long enough for ranks that start seconds apart.
RENDEZVOUS_TIMEOUT_ENV = "LOCBENCH_RENDEZVOUS_TIMEOUT_S"
RENDEZVOUS_TIMEOUT_S = 60.0


def rendezvous_timeout() -> float:
    """How long a rank waits for the others to meet (:data:`RENDEZVOUS_TIMEOUT_ENV`)."""
    text = os.environ.get(RENDEZVOUS_TIMEOUT_ENV)
    if text is None:
        return RENDEZVOUS_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not (0 < seconds < float("inf")):
        raise UserError(f"{RENDEZVOUS_TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return seconds


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a data-parallel run."""

    rank: int
    world: int
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks | None:
        """The ranks torchrun (or :func:`launch`) described, or None outside such a run.
        Variables that describe no rank (one of RANK and WORLD_SIZE, no rendezvous address)
        are refused here, before anything trains."""
        given = [name for name in ("RANK", "WORLD_SIZE") if name in os.environ]
        if not given:
            return None
        if len(given) == 1:
            other = "WORLD_SIZE" if given == ["RANK"] else "RANK"
            raise UserError(
                f"{given[0]} is set but {other} is not: a data-parallel rank needs {NEEDED} "
                f"(torchrun sets them; `locbench run --nproc N` starts its own ranks); unset "
                f"{given[0]} to run one process"
            )
        try:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local = int(os.environ.get("LOCAL_RANK", rank))
        except ValueError:
            raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
        if not 0 <= rank < world:
            raise UserError(f"RANK must be in 0..WORLD_SIZE-1, got {rank} of {world}")
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise UserError(
                f"RANK and WORLD_SIZE are set but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not: a data-parallel rank needs "
                f"{NEEDED} (torchrun sets them; `locbench run --nproc N` starts its own ranks)"
            )
        port = os.environ["MASTER_PORT"]
        if not (port.isdigit() and 1 <= int(port) <= 65535):
            raise UserError(f"MASTER_PORT must be a port number 1..65535, got {port!r}")
        return cls(rank, world, local)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """A CUDA run's rank uses the GPU of its local rank."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def start(self, device: torch.device) -> None:
        """Join the process group: NCCL between GPUs, gloo on the CPU. The ranks must meet at
        MASTER_ADDR:MASTER_PORT within :func:`rendezvous_timeout`, or this is one line."""
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if dist.is_initialized():
            return
        store = self._rendezvous(rendezvous_timeout())
        store.set_timeout(default_pg_timeout)  # the short wait was for the meeting only
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world)

    def _rendezvous(self, timeout_s: float) -> dist.Store:
        """torch's own env:// rendezvous (torchrun's agent store included), but bounded: its
        default wait is 30 minutes, a hang for a rank whose peers never come."""
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        try:
            store, _, _ = next(
                dist.rendezvous(
                    "env://", self.rank, self.world, timeout=timedelta(seconds=timeout_s)
                )
            )
        except (RuntimeError, ValueError, OSError) as e:  # DistNetworkError, DistStoreError
            how = _first_line(e)
            if self.leader:
                what = f"rank 0 of {self.world} listened at {where}"
                waited = f"the other {self.world - 1} rank(s) did not all arrive"
            else:
                what = f"rank {self.rank} of {self.world} found no rendezvous at {where}"
                waited = "rank 0 did not answer"
            raise UserError(
                f"{what}: {waited} within {timeout_s:g} s ({how}); start the ranks together "
                f"(torchrun, or `locbench run --nproc N`), or unset RANK and WORLD_SIZE to run "
                f"one process; {RENDEZVOUS_TIMEOUT_ENV} sets the wait"
            ) from None
        return store

    def stop(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def share(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This rank's contiguous share of a global batch, and the global batch's size."""
        return (
            torch.tensor_split(x, self.world)[self.rank],
            torch.tensor_split(y, self.world)[self.rank],
            len(y),
        )

    def sum_(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor over the ranks, in place."""
        for t in tensors:
            dist.all_reduce(t)

    def same_buffers(self, modules: list[nn.Module]) -> None:
        """Every rank takes rank 0's buffers (BatchNorm running statistics)."""
        for module in modules:
            for buffer in module.buffers():
                dist.broadcast(buffer, 0)

    def gather(self, value: object) -> list[object]:
        """``value`` of every rank, in rank order (on every rank)."""
        out: list[object] = [None] * self.world
        dist.all_gather_object(out, value)
        return out


class GradSync:
    """Averages the gradients of ``parameters`` (trainable ones: a frozen parameter has no
    gradient hook to register) across ranks one module at a time.

    Every parameter reports when its gradient has been accumulated (a post-accumulate-grad
    hook); :meth:`after_backward`, called after each local backward, starts one asynchronous
    all-reduce of the gradients that backward produced; :meth:`finish` waits for them before the
    optimizer step."""

    def __init__(
        self,
        parameters: list[nn.Parameter],
        ranks: Ranks,
        once_per_step: list[nn.Parameter] = (),
    ) -> None:
        self.ranks = ranks
        self.weight = 1.0 / ranks.world
        self.ready: list[nn.Parameter] = []
        self.sent: set[int] = set()
        self.pending: list[tuple[object, torch.Tensor, list[torch.Tensor]]] = []
        self.lock = threading.Lock()  # hooks may run on autograd's device threads
        # Parameters two backward passes of one step reach (a declared overlap): averaged once,
        # when the step's backwards are done.
        self.deferred = {id(p) for p in once_per_step}
        # Ranks must flatten the same gradients in the same order, whatever order autograd
        # accumulated them in: buckets follow the parameters' order.
        self.index = {id(p): i for i, p in enumerate(parameters)}
        for p in parameters:
            p.register_post_accumulate_grad_hook(self._ready)

    def _ready(self, p: nn.Parameter) -> None:
        with self.lock:
            self.ready.append(p)

    def begin_step(self, local: int, total: int) -> None:
        """This rank's share of the global batch is ``local`` of ``total`` samples."""
        self.weight = local / total

    def after_backward(self, last: bool = False) -> None:
        """Start averaging the gradients the backward just done produced (``last``: the
        step's backwards are done, the deferred ones too)."""
        with self.lock:
            held = [p for p in self.ready if id(p) in self.deferred and not last]
            ready = {id(p): p for p in self.ready if last or id(p) not in self.deferred}
            params = sorted(ready.values(), key=lambda p: self.index[id(p)])
            self.ready = held
        if not params:
            return
        if any(id(p) in self.sent for p in params):
            raise UserError(
                "a parameter received gradients from two backward passes of one step; "
                "data-parallel runs average each module's gradients once, after its backward"
            )
        self.sent.update(id(p) for p in params)
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).mul_(self.weight)
        self.pending.append((dist.all_reduce(flat, async_op=True), flat, grads))

    def finish(self) -> None:
        self.after_backward(last=True)  # whatever a last backward left, and the deferred
        for work, flat, grads in self.pending:
            work.wait()
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))
        self.pending.clear()
        self.sent.clear()


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks; its gradient is the sum of the ranks' gradients
    (every rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.Module):
    """BatchNorm over the global batch of all ranks: mean and variance all-reduced (through
    autograd, so the backward pass is the global batch's too). Two passes, mean then variance,
    as BatchNorm's own kernels compute them. Works with gloo (CPU) and NCCL; in eval mode it is
    the plain BatchNorm of its running statistics."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps, self.momentum = bn.eps, bn.momentum
        self.weight, self.bias = bn.weight, bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                self.eps,
            )  # fmt: skip
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        sums = _SumOverRanks.apply(torch.cat([xf.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = xf - mean.view(shape)
        var = _SumOverRanks.apply(centred.pow(2).sum(dims)) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
            unbiased = var.detach() * n / (n - 1).clamp(min=1)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def global_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm layer replaced by one over the global batch, sharing its
    parameters and buffers: PyTorch's ``SyncBatchNorm`` on CUDA (what data-parallel users
    run there), :class:`GlobalBatchNorm` elsewhere (``SyncBatchNorm`` refuses the CPU)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and child.track_running_stats:
            module.add_module(name, GlobalBatchNorm(child))
        else:
            global_batchnorm(child, device)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    argv: list[str], nproc: int, lock: TimingLock | None = None, verbose: bool = False
) -> int:
    """Run ``python -m locbench ARGV`` as ``nproc`` ranks on this machine and wait for them.

    Rank 0's progress bar and summary are shown; diagnostics (torch.distributed's warnings, a
    traceback) only with ``verbose``. When a rank fails, the others are stopped, so none waits
    forever in a collective, and one line says why. The ranks end with this process, whatever
    ends it (:mod:`locbench.harness.children`): SIGTERM and SIGINT stop them first. The CPU
    cores are shared out (``OMP_NUM_THREADS``) unless already set. With a timing ``lock``, the
    ranks run with the machine to themselves: the lock is held (exclusively) from their start
    to their end, and they know it (``MACHINE_HELD_ENV``)."""
    if lock is None:
        return _launch(argv, nproc, held=False, verbose=verbose)
    with lock.window():
        return _launch(argv, nproc, held=True, verbose=verbose)


def _launch(argv: list[str], nproc: int, held: bool, verbose: bool) -> int:
    base = {
        **os.environ,
        MACHINE_HELD_ENV: "1" if held else "0",
        "WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    procs: list[subprocess.Popen] = []
    outputs: list[_RankOutput] = []
    with _sigterm_as_interrupt():
        try:
            for rank in range(nproc):
                env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
                proc = start_child(
                    [sys.executable, "-m", "locbench", *argv],
                    env,
                    stdin=subprocess.DEVNULL,
                    stdout=None if rank == 0 else subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                procs.append(proc)
                outputs.append(_RankOutput(proc, shown=rank == 0, verbose=verbose))
            failed = _wait_all(procs)
        except BaseException:  # KeyboardInterrupt (SIGINT, SIGTERM) or a failed start
            terminate_all(procs)
            raise
        finally:
            if any(p.poll() not in (None, 0) for p in procs):
                for output in outputs:
                    output.silence()  # the others are stopping: their last words are noise
            for p in procs:
                p.wait()
            for output in outputs:
                output.join()
    if failed is None:
        return 0
    rank, code = failed
    line = _failure_line(rank, code, outputs)
    if line:
        print(line, file=sys.stderr)
    return code if code > 0 else 1


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile (the launcher stops its ranks, as on
    Ctrl-C), where this is the main thread (only it may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


#: Lines of a rank's stderr held back (unless verbose): a rank's own error line (the launcher
#: prints one line for the run), a traceback, torch's C++ log lines ([W ...], [E ...]).
_HELD = ("locbench: ", "Traceback", "[W", "[E", "[I")


class _RankOutput:
    """One rank's stderr, read by a thread: shown as it comes (rank 0: its progress bar) but
    for the diagnostics of :data:`_HELD` (and what follows a traceback), which are kept for
    :func:`_failure_line`; with ``verbose`` all of it is shown."""

    def __init__(self, proc: subprocess.Popen, shown: bool, verbose: bool) -> None:
        self.shown, self.verbose = shown, verbose
        self.lines: list[str] = []  # every complete line, held or shown
        self._silenced = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def silence(self) -> None:
        self._silenced.set()

    def join(self) -> None:
        self._thread.join()

    def _show(self, text: str) -> None:
        if self.shown and (self.verbose or not self._silenced.is_set()):
            sys.stderr.write(text)
            sys.stderr.flush()

    def _read(self, stream: object) -> None:
        pending, holding = "", False
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := os.read(stream.fileno(), 65536):
            pending += decoder.decode(chunk)
            # Complete pieces end at a newline or a carriage return (a progress bar's update).
            while (end := _piece_end(pending)) is not None:
                piece, pending = pending[: end + 1], pending[end + 1 :]
                if piece.endswith("\n") and piece.strip():
                    self.lines.append(piece.strip("\r\n"))
                held = holding or piece.lstrip("\r").startswith(_HELD)
                holding = holding or piece.lstrip("\r").startswith("Traceback")
                if self.verbose or not held:
                    self._show(piece)
            if pending and not holding and not _may_become_held(pending):
                self._show(pending)  # a partial progress bar: shown at once
                pending = ""
        stream.close()
        if pending.strip():
            self.lines.append(pending.strip("\r\n"))
            if self.verbose or not (holding or pending.lstrip("\r").startswith(_HELD)):
                self._show(pending)


def _piece_end(text: str) -> int | None:
    ends = [i for i in (text.find("\n"), text.find("\r", 1)) if i >= 0]
    return min(ends) if ends else None


def _may_become_held(text: str) -> bool:
    start = text.lstrip("\r")
    return any(start.startswith(p) or p.startswith(start) for p in _HELD)


def _failure_line(rank: int, code: int, outputs: list[_RankOutput]) -> str | None:
    """One line for a run whose ``rank`` failed first: a rank's own error line (every rank
    checks the same input: the first one that said it), else that rank's last words."""
    for output in (outputs[rank], *outputs):
        said = [line for line in output.lines if line.startswith("locbench: error: ")]
        if said:
            return said[0]
    lines = outputs[rank].lines
    if rank == 0 and not any(line.lstrip("\r").startswith(_HELD) for line in lines):
        return None  # rank 0 said what it had to (its summary line on stdout)
    last = lines[-1].strip().rsplit("\r", 1)[-1] if lines else ""
    if last:
        return f"locbench: rank {rank} failed: {last}"
    return f"locbench: rank {rank} failed with exit status {code}"


def _wait_all(procs: list[subprocess.Popen]) -> tuple[int, int] | None:
    """Wait until every rank ended; at the first failure stop the others and return (rank,
    exit status)."""
    while True:
        codes = [p.poll() for p in procs]
        for rank, code in enumerate(codes):
            if code not in (None, 0):
                terminate_all(procs)
                return rank, code
        if all(c == 0 for c in codes):
            return None
        time.sleep(0.05)
