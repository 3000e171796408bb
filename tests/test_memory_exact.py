"""Exact bytes: the tracked peak of small training steps, worked out by hand.

Each test walks one step tensor by tensor: which storage every op allocates, which ones autograd
saves for the backward, and when each is released. Expected bytes come from named shapes only,
and the tracker must match them exactly, on real tensors and on ``FakeTensorMode`` alike.

What the walks rely on (PyTorch 2.x on the CPU):

* Views cost nothing: ``W.t()``, ``flatten``, ``view``, ``detach`` share their base's storage.
* ``nn.Linear`` is ``addmm(b, x, W.t())``. Its backward (``AddmmBackward``) saved ``x`` and
  ``W`` (not the output); it computes ``mm(g, W)`` for the input only when the input needs a
  gradient, ``mm(g.t(), x)`` for the weight and ``sum(g, 0)`` for the bias.
* ``relu`` saves its *output* (``threshold_backward(g, out, 0)``): the pre-activation is freed
  as soon as ``nn.Sequential`` moves on.
* ``F.cross_entropy`` is ``log_softmax``, which saves its output, then ``nll_loss_forward``,
  which returns the loss *and* a ``total_weight`` scalar that ``NllLossBackward`` saves. The
  logits themselves are saved by nothing.
* ``loss.backward()`` seeds the graph with ``ones_like(loss)``, held until it returns. A node's
  saved tensors are released right after it runs, and the gradient flowing into it once it has
  consumed it.
* ``AccumulateGrad`` into a ``.grad`` that is ``None`` steals the incoming gradient (nobody else
  holds it) instead of copying it: a parameter's gradient is the very ``mm``/``sum`` output.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from locbench.data.base import DataInfo
from locbench.harness.trainer import LocalTrainer
from locbench.harness.windows import MemoryWindow
from locbench.measure.memory import CUDA_BLOCK, MemoryTracker, round_up
from locbench.methods.base import Method
from locbench.methods.bp import BP
from locbench.nets.backbone import Backbone
from locbench.nets.split import Split
from locbench.settings.run_config import RunConfig

INT64 = 8  # bytes of a label (and of num_batches_tracked)
REAL_AND_FAKE = pytest.mark.parametrize("fake", [False, True], ids=["real", "fake"])


def tensors_mode(fake: bool):
    """Build and run the net on real tensors, or on fake ones (no kernels, no allocation)."""
    return FakeTensorMode() if fake else contextlib.nullcontext()


class Walk:
    """A hand-written allocation timeline: named storages made and freed in order."""

    def __init__(self) -> None:
        self.live: dict[str, int] = {}
        self.events: list[tuple[int, int]] = []  # (+1 | -1, bytes), as the tracker logs them
        self.current = self.peak = self.current_rounded = self.peak_rounded = 0
        self.peak_at = ""

    def alloc(self, name: str, nbytes: int) -> None:
        assert name not in self.live, name
        self.live[name] = nbytes
        self.events.append((+1, nbytes))
        self.current += nbytes
        self.current_rounded += round_up(nbytes)
        if self.current > self.peak:
            self.peak, self.peak_at = self.current, name
        self.peak_rounded = max(self.peak_rounded, self.current_rounded)

    def free(self, *names: str) -> None:
        for name in names:
            nbytes = self.live.pop(name)
            self.events.append((-1, nbytes))
            self.current -= nbytes
            self.current_rounded -= round_up(nbytes)


def tracked_events(tracker: MemoryTracker) -> list[tuple[int, int]]:
    """The tracker's log as (+1 | -1, bytes): registrations, allocations and releases (read
    from its private event log, the one place these tests look inside it)."""
    records = tracker._records
    return [
        (+1, records[code].nbytes) if code >= 0 else (-1, records[-code - 1].nbytes)
        for code, _ in tracker._events
    ]


# -- an MLP: Linear(D, H) - ReLU - Linear(H, C), batch N --------------------------------------

N, D, H, C = 5, 4, 3, 2


def mlp_walk(e: int) -> Walk:
    """One plain step of the MLP, ``e`` bytes per float."""
    w = Walk()
    for name, nbytes in [("W1", H * D), ("b1", H), ("W2", C * H), ("b2", C), ("x", N * D)]:
        w.alloc(name, nbytes * e)  # registered before the step
    w.alloc("y", N * INT64)
    # forward
    w.alloc("h1", N * H * e)  # addmm(b1, x, W1.t())
    w.alloc("a1", N * H * e)  # relu: saved by ReluBackward and (as the input) by layer 2
    w.free("h1")  # the pre-activation: saved by nothing
    w.alloc("z", N * C * e)  # addmm: the logits
    w.alloc("ls", N * C * e)  # log_softmax, saved (by its backward and by nll_loss's)
    w.alloc("loss", e)  # nll_loss_forward returns the loss ...
    w.alloc("total_weight", e)  # ... and total_weight, saved by NllLossBackward
    w.free("z")  # the logits die with cross_entropy's temporaries: saved by nothing
    # backward
    w.alloc("g_loss", e)  # ones_like(loss)
    w.alloc("g_ls", N * C * e)  # nll_loss_backward
    w.free("total_weight")  # NllLossBackward has run: its saved tensors go
    w.alloc("g_z", N * C * e)  # _log_softmax_backward_data
    w.free("g_ls", "ls")
    w.alloc("g_a1", N * H * e)  # layer 2: mm(g_z, W2) ...
    w.alloc("g_W2", C * H * e)  # ... mm(g_z.t(), a1), stolen by AccumulateGrad ...
    w.alloc("g_b2", C * e)  # ... sum(g_z, 0), stolen too
    w.free("g_z")
    w.alloc("g_h1", N * H * e)  # threshold_backward(g_a1, a1, 0): the peak
    w.free("g_a1", "a1")
    w.alloc("g_W1", H * D * e)  # layer 1: x needs no gradient, so no mm for it
    w.alloc("g_b1", H * e)
    w.free("g_h1")
    w.free("g_loss")  # backward() returns
    return w


@REAL_AND_FAKE
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_step_peak_by_hand(dtype, fake):
    with tensors_mode(fake):
        model = nn.Sequential(nn.Linear(D, H, dtype=dtype), nn.ReLU(), nn.Linear(H, C, dtype=dtype))
        x, y = torch.randn(N, D, dtype=dtype), torch.arange(N) % C
        tracker = MemoryTracker()
        tracker.register(model.parameters(), "parameters")
        tracker.register([x, y], "other")
        with tracker:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        events, current = tracked_events(tracker), tracker.current

    e = dtype.itemsize
    params = (H * D + H + C * H + C) * e
    batch = N * D * e + N * INT64
    loss_and_seed = 2 * e  # the loss and ones_like(loss)
    a1 = N * H * e  # ReLU output, still saved by ReluBackward
    grads_layer2 = (C * H + C) * e  # made, stolen as .grad
    g_a1 = g_h1 = N * H * e  # threshold_backward's input and output
    # Peak: threshold_backward of the ReLU. The highest moment before it is
    # _log_softmax_backward_data, with ls, g_ls, g_z, total_weight (3 N C e + e = 31 e) where
    # the peak has g_W2, g_b2, g_a1, g_h1 (38 e); after it, a1 and g_a1 go before layer 1's
    # gradients, (H D + H) e, come.
    peak = params + batch + loss_and_seed + a1 + grads_layer2 + g_a1 + g_h1
    assert tracker.peak == peak
    # After the step: the gradients (as big as the parameters) and the loss stay.
    assert current == params + batch + params + e
    # The whole walk, event by event (this is what makes the comments above true).
    walk = mlp_walk(e)
    assert (walk.peak, walk.peak_at, walk.current) == (peak, "g_h1", current)
    assert events == walk.events


def test_mlp_rounded_peak_counts_blocks_by_hand():
    """With CUDA's 512-byte rounding, each of these tiny storages costs one block."""
    model = nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, C))
    x, y = torch.randn(N, D), torch.arange(N) % C
    tracker = MemoryTracker()
    tracker.register(model.parameters(), "parameters")
    tracker.register([x, y], "other")
    with tracker:
        F.cross_entropy(model(x), y).backward()
    result = tracker.result(resident_bytes=0, n_modules=1)
    # At the byte peak (threshold_backward) these storages are live, every one < 512 bytes:
    # W1 b1 W2 b2 | x y | loss g_loss | a1 | g_W2 g_b2 | g_a1 g_h1
    blocks = 4 + 2 + 2 + 1 + 2 + 2
    # No other moment has more: e.g. layer 1's backward frees a1 and g_a1 before it adds
    # g_W1 and g_b1, and the backward of the loss holds at most 12.
    assert result.peak_bytes_rounded == blocks * CUDA_BLOCK == mlp_walk(4).peak_rounded
    assert result.peak_bytes == mlp_walk(4).peak


# -- a CNN: Conv2d(1, CH, 3, pad 1, no bias) - BatchNorm2d - ReLU - Flatten - Linear --------------

CH, S, CLASSES = 2, 4, 3  # channels, side of the (N, 1, S, S) input, classes


def cnn_walk() -> Walk:
    e = 4
    w = Walk()
    fmap = N * CH * S * S * e  # every (N, CH, S, S) feature map and its gradient
    registered = [
        ("conv_w", CH * 1 * 3 * 3 * e),
        ("bn_w", CH * e),
        ("bn_b", CH * e),
        ("fc_W", CLASSES * CH * S * S * e),
        ("fc_b", CLASSES * e),
        ("running_mean", CH * e),
        ("running_var", CH * e),
        ("num_batches_tracked", INT64),  # incremented in place by the forward
        ("x", N * 1 * S * S * e),
        ("y", N * INT64),
    ]
    for name, nbytes in registered:
        w.alloc(name, nbytes)
    # forward
    w.alloc("c", fmap)  # convolution; ConvolutionBackward saves x and conv_w, not c
    w.alloc("reserve", 0)  # _batch_norm_impl_index's reserve (cuDNN's): 0 bytes on the CPU
    w.alloc("b", fmap)  # native_batch_norm returns the output ...
    w.alloc("save_mean", CH * e)  # ... and the batch mean ...
    w.alloc("save_invstd", CH * e)  # ... and 1/std, both saved with c for its backward
    w.free("reserve")
    w.alloc("r", fmap)  # relu, saved; its flatten (a view) is saved by the Linear
    w.free("b")  # BN's output: saved by nothing
    w.alloc("z", N * CLASSES * e)
    w.alloc("ls", N * CLASSES * e)
    w.alloc("loss", e)
    w.alloc("total_weight", e)
    w.free("z")
    # backward
    w.alloc("g_loss", e)
    w.alloc("g_ls", N * CLASSES * e)
    w.free("total_weight")
    w.alloc("g_z", N * CLASSES * e)
    w.free("g_ls", "ls")
    w.alloc("g_flat", fmap)  # mm(g_z, fc_W): flatten's backward is a view of it
    w.alloc("g_fc_W", CLASSES * CH * S * S * e)
    w.alloc("g_fc_b", CLASSES * e)
    w.free("g_z")
    w.alloc("g_r", fmap)  # threshold_backward: the peak
    w.free("g_flat", "r")
    w.alloc("g_c", fmap)  # native_batch_norm_backward: input gradient ...
    w.alloc("g_bn_w", CH * e)  # ... and the affine ones
    w.alloc("g_bn_b", CH * e)
    w.free("g_r", "c", "save_mean", "save_invstd")
    w.alloc("g_conv_w", CH * 1 * 3 * 3 * e)  # convolution_backward, mask (False, True, False)
    w.free("g_c")
    w.free("g_loss")
    return w


def run_cnn(fake: bool):
    with tensors_mode(fake):
        model = nn.Sequential(
            nn.Conv2d(1, CH, 3, padding=1, bias=False),
            nn.BatchNorm2d(CH),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(CH * S * S, CLASSES),
        )
        x, y = torch.randn(N, 1, S, S), torch.arange(N) % CLASSES
        tracker = MemoryTracker()
        tracker.register([*model.parameters(), *model.buffers()], "parameters")
        tracker.register([x, y], "other")
        with tracker:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        return tracker, tracked_events(tracker), tracker.current


@REAL_AND_FAKE
def test_cnn_step_peak_by_hand(fake):
    tracker, events, current = run_cnn(fake)
    e = 4
    fmap = N * CH * S * S * e
    params = (CH * 9 + 2 * CH + CLASSES * CH * S * S + CLASSES) * e
    buffers = 2 * CH * e + INT64
    batch = N * S * S * e + N * INT64
    bn_saved = fmap + 2 * CH * e  # conv output c, save_mean, save_invstd
    relu_out = fmap  # r, saved by ReluBackward (and, flattened, by the Linear)
    loss_and_seed = 2 * e
    grads_fc = (CLASSES * CH * S * S + CLASSES) * e
    g_flat = g_r = fmap  # threshold_backward's input and output
    # Peak: threshold_backward of the ReLU, with three feature maps saved and two gradients.
    peak = params + buffers + batch + bn_saved + relu_out + loss_and_seed + grads_fc + g_flat + g_r
    assert tracker.peak == peak
    assert current == params + buffers + batch + params + e  # + grads + the loss
    walk = cnn_walk()
    assert (walk.peak, walk.peak_at, walk.current) == (peak, "g_r", current)
    assert events == walk.events


@REAL_AND_FAKE
def test_cnn_rounded_peak_by_hand(fake):
    """Each storage rounded up to 512 bytes: tiny ones cost 512, 640-byte feature maps 1024."""
    tracker, _, _ = run_cnn(fake)
    fmap_blocks = round_up(N * CH * S * S * 4) // CUDA_BLOCK  # 640 bytes -> 2 blocks
    assert fmap_blocks == 2
    # Live at the byte peak: 5 parameters, 3 buffers, x (320 B), y, save_mean, save_invstd,
    # loss, g_loss, g_fc_W (384 B), g_fc_b: 16 storages under 512 bytes, one block each;
    # and 4 feature maps c, r, g_flat, g_r.
    blocks = 16 + 4 * fmap_blocks
    # No moment has more: the one before (the Linear's backward) has g_z (1 block) instead of
    # g_r (2), and the one after frees g_flat and r (4 blocks) before it adds g_c, g_bn_w and
    # g_bn_b (4 blocks).
    assert tracker.result(0, 1).peak_bytes_rounded == blocks * CUDA_BLOCK
    assert cnn_walk().peak_rounded == blocks * CUDA_BLOCK


# -- through the harness: a 2-module local step versus BP ---------------------------------------

NB, WIDE = 16, 16  # batch, width inside a unit (the input and the units' outputs are H wide)


class LinearAux(Method):
    """A local-learning method whose auxiliary net is one Linear on the flat features."""

    def build_aux(self, backbone, cut):
        return nn.Linear(cut.shape[0], self.data.num_classes)


def mlp_unit() -> nn.Module:
    return nn.Sequential(nn.Linear(D, WIDE), nn.ReLU(), nn.Linear(WIDE, D), nn.ReLU())


def harness_step(method_cls, fake: bool):
    """A steady-state tracked step, as ``fit`` and ``estimate`` measure it."""
    with tensors_mode(fake):
        torch.manual_seed(0)
        backbone = Backbone.from_sequential(
            nn.Sequential(mlp_unit(), mlp_unit(), nn.Linear(D, C)), (D,)
        )
        split = method_cls.plan_split(Split(2, (0, 1)), None)
        data = DataInfo("tiny", C, (D,), (0.0,), (1.0,))
        method = method_cls(backbone, split, data, method_cls.Params())
        trainer = LocalTrainer(
            backbone, split, method, RunConfig(lr=0.1, epochs=1), torch.device("cpu")
        )
        x, y = torch.randn(NB, D), torch.arange(NB) % C
        trainer.train_step(x, y)  # makes the gradients and momentum buffers (losses dropped)
        window = MemoryWindow(trainer)
        losses = window.step(x, y)
        current = window.tracker.current
        del losses
        return window.close(), current


@REAL_AND_FAKE
def test_local_step_peak_below_bp_by_hand(fake):
    """Module 0 = unit 0 (D -> WIDE -> D); module 1 = unit 1 (same) + head (D -> C); the local
    method trains module 0 through a Linear(D, C) aux head. SGD: momentum, nesterov, decay."""
    bp, bp_end = harness_step(BP, fake)
    local, local_end = harness_step(LinearAux, fake)

    e = 4
    unit = (D * WIDE + WIDE + WIDE * D + D) * e  # parameters of one unit
    head = aux = (D * C + C) * e  # the head and the aux net have the same shape
    layer4 = (WIDE * D + D) * e  # unit 1's second Linear
    wide, narrow, logits = NB * WIDE * e, NB * D * e, NB * C * e
    batch = NB * D * e + NB * INT64
    # zero_grad(set_to_none=True) frees last step's gradients first: parameters and momentum
    # buffers stay (the step's own temporaries, (decayed grad, nesterov grad) per parameter,
    # come after the backward and are far smaller).
    bp_params = 2 * unit + head
    local_params = bp_params + aux

    # The last backward's peak (both methods): threshold_backward of unit 1's wide ReLU. Live
    # from module 1: its wide ReLU output a3 (saved), the logits (train_step's `out` holds
    # them), the loss and its seed, the head's and layer 4's gradients, and the wide gradient
    # in and out of threshold_backward. (Unit 1's narrow output a4 is freed just before.)
    tail = wide + logits + 2 * e + head + layer4 + 2 * wide
    # BP also still holds unit 0's activations: its wide ReLU output a1 and output a2.
    bp_peak = 2 * bp_params + batch + wide + narrow + tail
    # The local method freed a1 when module 0's backward ended; it holds unit 0's output a2
    # (module 1's input), module 0's local loss, and the gradients of unit 0 and the aux net.
    local_peak = 2 * local_params + batch + narrow + e + unit + aux + tail
    assert bp.peak_bytes == bp_peak
    assert local.peak_bytes == local_peak
    # Saved: a1, less what the local method adds: the aux net's parameters, momentum and
    # gradients, unit 0's gradients (already made) and the local loss.
    assert bp_peak - local_peak == wide - 3 * aux - unit - e
    assert bp_peak - local_peak > 0

    # Module 0's own peak, at threshold_backward of unit 0's wide ReLU: a1, a2, the local loss
    # and its seed, the aux net's and layer 2's gradients, and the two wide gradients.
    local_m0 = 2 * local_params + batch + wide + narrow + 2 * e + aux + layer4 + 2 * wide
    assert bp.module_peaks == [bp_peak]
    assert local.module_peaks == [local_m0, local_peak]

    # The breakdown at the peak.
    assert bp.breakdown == {
        "parameters": bp_params,
        "frozen": 0,
        "gradients": head + layer4,
        "optimizer_state": bp_params,
        "backbone_activations": wide + narrow + wide + logits,  # a1 a2 a3, logits
        "aux_activations": 0,
        "other": batch + 2 * e + 2 * wide,  # x y, loss and seed, the wide gradients
    }
    assert local.breakdown == {
        "parameters": local_params,
        "frozen": 0,
        "gradients": unit + aux + head + layer4,
        "optimizer_state": local_params,
        "backbone_activations": narrow + wide + logits,  # a2 a3, logits
        "aux_activations": e,  # module 0's local loss
        "other": batch + 2 * e + 2 * wide,
    }
    # After the step: parameters, gradients, momentum, the batch, and the returned losses
    # (output loss, local loss) and the int64 count of correct predictions.
    assert bp_end == 3 * bp_params + batch + e + INT64
    assert local_end == 3 * local_params + batch + 2 * e + INT64
    assert bp.resident_bytes == 3 * bp_params
    assert local.resident_bytes == 3 * local_params


def test_storages_grown_in_place_are_recounted():
    a, b = torch.randn(1000), torch.randn(1000)
    tracker = MemoryTracker()
    tracker.register([a, b], "other")
    with tracker:
        out = torch.empty(0)
        torch.add(a, b, out=out)
    assert tracker.current == 3 * 1000 * 4
    with MemoryTracker() as grown:
        c = torch.empty(0)
        c.resize_(1000)
    assert grown.current == 1000 * 4
    del c
    assert grown.current == 0


def test_sparse_gradients_count_their_indices_and_values():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    idx = torch.tensor([1, 2])
    with MemoryTracker() as tracker:
        emb(idx).sum().backward()
    grad = emb.weight.grad
    expected = grad._indices().numel() * 8 + grad._values().numel() * 4
    assert expected == 2 * 8 + 2 * 3 * 4
    # the sparse gradient's own storages are counted (the tracker used to crash on them)
    assert tracker.current >= expected


@REAL_AND_FAKE
@pytest.mark.parametrize("regions", [1, 2])
def test_autocast_weight_cache_casts_a_weight_once_per_region(fake, regions):
    """What autocast adds (locbench/harness/precision.py): a bf16 copy of each float32 weight an op
    casts, once per autocast region (its weight cache), kept while autograd saves it. The harness
    opens one region per module forward and per loss, so a weight shared by two regions is
    cast twice. Real and fake tensors hit and miss the cache alike."""
    bf16 = 2
    with tensors_mode(fake):
        layer = nn.Linear(D, D, bias=False)
        # x needs a gradient, so each matmul saves the weight's cast for its backward
        x = torch.randn(N, D, requires_grad=True)
        tracker = MemoryTracker()
        with tracker:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                h = layer(x)  # casts x and the weight
                if regions == 1:
                    out = layer(h)  # the cached cast: no copy
            if regions == 2:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = layer(h)  # the cache was emptied at the first region's exit
            held = tracker.current
            del h, out  # the graph goes, and the casts it saved go with it
            released = tracker.current
    weight_casts = regions * D * D * bf16
    assert held == weight_casts + N * D * bf16 + 2 * N * D * bf16  # + the cast x, h and out
    assert released == 0
