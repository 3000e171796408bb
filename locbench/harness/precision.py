"""Mixed precision and memory layout of a training step: what the harness, never a method, wraps
around each forward pass, loss and backward (``precision`` and ``channels_last`` settings).

* ``fp32``: nothing is wrapped.
* ``bf16``: ``torch.autocast`` to bfloat16 around each module's forward and around each loss
  (local and output); every backward runs outside autocast, as PyTorch prescribes.
* ``fp16``: the same autocast to float16, plus ONE ``torch.amp.GradScaler`` for the whole step:
  each loss is multiplied by the scale before its backward, the gradients are unscaled once
  before the optimizer step, and a step whose gradients hold an inf or NaN anywhere is skipped
  for every module (one optimizer holds every parameter), the scale lowered.

Parameters, gradients and optimizer state stay in the run's dtype (float32): autocast casts
weights per op, so only activations (and those casts) are in low precision.

What the memory tracker counts for the casts: an op autocast runs in low precision casts its
float32 parameters with ``_to_copy``, which the tracker sees as a new storage made in the
current phase (module k's forward: backbone activations; a local loss: aux activations). Inside
one autocast region, autocast caches the cast of a leaf parameter that requires grad (its
weight cache), so a parameter used twice in a region is cast, and counted, once; the cache is
emptied when the region exits, and the cast lives on only while autograd saved it for module
k's backward. The cache sits above the dispatch modes in PyTorch's dispatcher, so real tensors
and ``FakeTensorMode`` (``locbench estimate``) take the same cache hits and misses: the tracked
and estimated peaks stay equal to the byte. A checkpointed forward (``bp-ckpt``) recomputes
under the autocast state it was run with, casting again during its backward.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from locbench.errors import UserError

#: The autocast dtype of each ``precision`` setting (None: no autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
#: What PyTorch says when an op has no low-precision kernel, or autocast refuses an op (CUDA
#: autocast refuses ``binary_cross_entropy``): a setting the step cannot run, not a crash.
UNSUPPORTED = ("not implemented for 'Half'", "not implemented for 'BFloat16'", "unsafe to autocast")


class MixedPrecision:
    """Autocast and, for fp16, the loss scaler of one trainer.

    ``fake``: the trainer's tensors are fake (``FakeTensorMode``), so no value can be read;
    the fp16 step is then always taken (see :meth:`step`). On the ``meta`` device (FLOPs,
    ``locbench describe``) nothing is wrapped: autocast has no meta backend, and casts and loss
    scaling are no FLOPs, so a step counts the same FLOPs in every precision."""

    def __init__(self, precision: str, device: torch.device, fake: bool = False) -> None:
        if precision not in AUTOCAST_DTYPES:
            raise UserError(f"unknown precision {precision!r}; accepted: fp32, bf16, fp16")
        self.name, self.device_type, self.fake = precision, device.type, fake
        dtype = AUTOCAST_DTYPES[precision]
        self.dtype = dtype if device.type != "meta" else None
        if self.dtype is not None:
            check_autocast(precision, device.type, self.dtype)
        self.scaler = (
            torch.amp.GradScaler(device.type)
            if self.dtype is not None and precision == "fp16"
            else None
        )

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to the low-precision dtype (nothing in fp32)."""
        if self.dtype is None:
            yield
            return
        with self.unsupported(), torch.autocast(self.device_type, dtype=self.dtype):
            yield

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        """``loss.backward(**kwargs)``, the loss scaled first in fp16 (outside autocast)."""
        with self.unsupported():
            (loss if self.scaler is None else self.scaler.scale(loss)).backward(**kwargs)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step; in fp16 the gradients are unscaled once, the step skipped if any
        is not finite, and the scale updated."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.unscale_(optimizer)
        if self.fake:
            # Whether a gradient overflowed is a value that fake tensors lack: count the step
            # as taken, the steady state. The check itself reads one number and allocates
            # nothing, so the memory of a taken step is the same either way.
            optimizer.step()
        else:
            self.scaler.step(optimizer)
        self.scaler.update()

    def loss_scale(self) -> torch.Tensor | float:
        """What this step's gradients are multiplied by (``Batch.loss_scale``): 1.0, or the
        scaler's current scale, a 0-dim tensor (read without synchronising)."""
        if self.scaler is None:
            return 1.0
        if getattr(self.scaler, "_scale", None) is None:  # made on the first scale()
            self.scaler.scale(torch.zeros((), device=self.device_type))
        return self.scaler._scale

    def state_tensors(self) -> list[torch.Tensor]:
        """The scaler's resident tensors: its scale and growth counter (0-dim, made on the first
        ``scale``; GradScaler offers them only as private attributes)."""
        if self.scaler is None:
            return []
        names = ("_scale", "_growth_tracker")
        found = [getattr(self.scaler, name, None) for name in names]
        return [t for t in found if isinstance(t, torch.Tensor)]

    @contextlib.contextmanager
    def unsupported(self) -> Iterator[None]:
        """A kernel without a low-precision version becomes one line naming the setting."""
        try:
            yield
        except RuntimeError as e:
            text = str(e).strip()
            if self.dtype is None or not any(s in text for s in UNSUPPORTED):
                raise
            raise UserError(
                f"--precision {self.name} cannot run this step on {self.device_type}: "
                f"{text.splitlines()[0]}"
            ) from None


def check_autocast(precision: str, device_type: str, dtype: torch.dtype) -> None:
    """One line if this PyTorch build cannot autocast ``device_type`` to ``dtype`` (older
    builds warn and run in float32 instead, which would mislabel every figure)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast(device_type, dtype=dtype):
                ok = torch.is_autocast_enabled(device_type)
                ok = ok and torch.get_autocast_dtype(device_type) == dtype
    except RuntimeError:
        ok = False
    if not ok:
        raise UserError(
            f"--precision {precision} is not supported on {device_type} by torch "
            f"{torch.__version__}; use --precision fp32"
        )


def to_channels_last(module: nn.Module) -> None:
    """Every 4-D parameter and buffer of ``module`` (convolution weights) in channels-last
    memory format, in place: parameters stay the same objects, so an optimizer that holds them
    still does. Other tensors keep their layout, so layers without 4-D weights run as before."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last):
                t.data = t.data.contiguous(memory_format=torch.channels_last)


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last format if it is a 4-D image batch (no copy if it already is)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
