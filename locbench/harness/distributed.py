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

import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from locbench.errors import UserError
from locbench.harness.environment import MACHINE_HELD_ENV
from locbench.measure.isolation import TimingLock

#: The environment every rank reads (set by torchrun, or by :func:`launch`).
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a data-parallel run."""

    rank: int
    world: int
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks | None:
        """The ranks torchrun (or :func:`launch`) described, or None outside such a run."""
        if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
            return None
        try:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local = int(os.environ.get("LOCAL_RANK", rank))
        except ValueError:
            raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
        if not 0 <= rank < world:
            raise UserError(f"RANK must be in 0..WORLD_SIZE-1, got {rank} of {world}")
        return cls(rank, world, local)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """A CUDA run's rank uses the GPU of its local rank."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def start(self, device: torch.device) -> None:
        """Join the process group: NCCL between GPUs, gloo on the CPU."""
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

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


def launch(argv: list[str], nproc: int, lock: TimingLock | None = None) -> int:
    """Run ``python -m locbench ARGV`` as ``nproc`` ranks on this machine and wait for them.

    Rank 0 keeps the terminal (progress bar, summary); the others' error output is shown only
    when a rank fails. When one rank fails the others are stopped, so none waits forever in a
    collective. The CPU cores are shared out (``OMP_NUM_THREADS``) unless already set. With a
    timing ``lock``, the ranks run with the machine to themselves: the lock is held
    (exclusively) from their start to their end, and they know it (``MACHINE_HELD_ENV``)."""
    if lock is None:
        return _launch(argv, nproc, held=False)
    with lock.window():
        return _launch(argv, nproc, held=True)


def _launch(argv: list[str], nproc: int, held: bool) -> int:
    base = {
        **os.environ,
        MACHINE_HELD_ENV: "1" if held else "0",
        "WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    procs = []
    for rank in range(nproc):
        env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "locbench", *argv],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=None if rank == 0 else subprocess.DEVNULL,
                stderr=None if rank == 0 else subprocess.PIPE,
                text=True,
                errors="replace",
            )
        )
    errors: dict[int, str] = {}
    readers = [
        threading.Thread(target=lambda r=r, p=p: errors.__setitem__(r, p.stderr.read()))
        for r, p in enumerate(procs)
        if p.stderr is not None
    ]
    for t in readers:
        t.start()
    try:
        failed = _wait_all(procs)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        for p in procs:
            p.wait()
        for t in readers:
            t.join()
    if failed is None:
        return 0
    rank, code = failed
    lines = [line for line in errors.get(rank, "").splitlines() if line.strip()]
    if rank != 0 and lines:
        print(f"locbench: rank {rank} failed: {lines[-1].strip()}", file=sys.stderr)
    elif rank != 0:
        print(f"locbench: rank {rank} failed with exit status {code}", file=sys.stderr)
    return code if code > 0 else 1


def _wait_all(procs: list[subprocess.Popen]) -> tuple[int, int] | None:
    """Wait until every rank ended; at the first failure stop the others and return (rank,
    exit status)."""
    import time

    while True:
        codes = [p.poll() for p in procs]
        for rank, code in enumerate(codes):
            if code not in (None, 0):
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                return rank, code
        if all(c == 0 for c in codes):
            return None
        time.sleep(0.05)
