"""The harness: gradient isolation, K = 1 equals plain backprop, determinism, the window."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from locbench.data.base import DataInfo
from locbench.harness.optim import warmup_cosine
from locbench.harness.run import execute
from locbench.harness.trainer import LocalTrainer, build_modules
from locbench.methods import METHODS, make_params
from locbench.methods.dgl import DGL
from locbench.nets.backbone import get_backbone
from locbench.nets.split import Split
from locbench.settings.run_config import RunConfig

CPU = torch.device("cpu")
INFO = DataInfo("synthetic", 10, (3, 16, 16), (0.0,) * 3, (1.0,) * 3)


def make_trainer(method_cls, K, seed=0, **params):
    torch.manual_seed(seed)
    net = get_backbone("smallnet")
    split = method_cls.plan_split(Split.uniform(net.n_hidden, K), None)
    method = method_cls(net, split, INFO, make_params(method_cls, params))
    return LocalTrainer(net, split, method, RunConfig(lr=0.1, epochs=1), CPU)


def batch(seed=1, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def grads(module):
    return [p.grad.clone() for p in module.parameters()]


class ScaledDGL(DGL):
    """DGL whose local loss of one module is changed (scaled and shifted by a square)."""

    target = 1

    def local_loss(self, k, out, batch):
        loss = super().local_loss(k, out, batch)
        return 3.0 * loss + out.pow(2).mean() if k == self.target else loss


@pytest.mark.parametrize("k", [1, 2])
def test_changing_module_k_loss_leaves_earlier_gradients_unchanged(k):
    ScaledDGL.target = k
    base, changed = make_trainer(DGL, K=4), make_trainer(ScaledDGL, K=4)
    x, y = batch()
    base.train_step(x, y)
    changed.train_step(x, y)
    for j in range(k):
        assert all(map(torch.equal, grads(base.modules[j]), grads(changed.modules[j])))
        assert all(map(torch.equal, grads(base.method.aux[j]), grads(changed.method.aux[j])))
    # ... and module k's own gradients do change, so the test can fail.
    assert not all(map(torch.equal, grads(base.modules[k]), grads(changed.modules[k])))


def test_boundary_detaches_module_inputs():
    trainer = make_trainer(DGL, K=4)
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for m in trainer.modules]
    trainer.train_step(*batch())
    for h in hooks:
        h.remove()
    assert [t.requires_grad for t in inputs] == [False] * 4


def test_K1_harness_equals_plain_backward():
    torch.manual_seed(0)
    net = get_backbone("smallnet")
    plain = copy.deepcopy(torch.nn.Sequential(*net.units))
    split = Split(net.n_hidden, (0,))
    bp = METHODS.get("bp")
    trainer = LocalTrainer(
        net, split, bp(net, split, INFO, make_params(bp, {})), RunConfig(lr=0.1, epochs=1), CPU
    )
    x, y = batch()
    trainer.train_step(x, y)
    F.cross_entropy(plain(x), y).backward()
    got, want = grads(trainer.modules), grads(plain)
    assert len(got) == len(want) == 29
    assert all(map(torch.equal, got, want))


def test_bp_plans_one_module_whatever_K():
    assert METHODS.get("bp").plan_split(Split.uniform(16, 8), None) == Split(16, (0,))


def test_build_modules_puts_head_in_last_module():
    net = get_backbone("smallnet")
    mods = build_modules(net, Split.from_cuts(4, [0, 2]))
    assert [len(m) for m in mods] == [1, 2, 2]
    assert mods[-1][-1] is net.units[-1]


def test_two_runs_with_the_same_seed_are_bitwise_identical():
    config = RunConfig(method="dgl", net="smallnet", dataset="digits", K=2, epochs=2, seed=3)
    a, b = execute(config), execute(config)
    assert a.status == b.status == "ok"
    timings = ("epoch_time_s", "data_wait_s")
    drop = lambda c: {k: v for k, v in c.items() if k not in timings}  # noqa: E731
    assert [drop(c) for c in a.curve] == [drop(c) for c in b.curve]
    assert a.final_test_acc == b.final_test_acc
    c = execute(RunConfig(method="dgl", net="smallnet", dataset="digits", K=2, epochs=2, seed=4))
    assert [drop(x) for x in c.curve] != [drop(x) for x in a.curve]


def test_measured_windows_are_clipped_to_the_run():
    from locbench.harness.windows import Windows

    assert Windows.plan(total=30, warmup=3, track=2, measure=20) == Windows(
        range(3, 5), range(5, 25)
    )
    assert Windows.plan(total=4, warmup=3, track=2, measure=20) == Windows(range(3, 4), range(4, 4))
    assert Windows.plan(total=2, warmup=3, track=0, measure=5) == Windows(range(1, 1), range(1, 2))
    # synthetic: 512 samples at batch 128 -> 4 steps; warm-up 2, one tracked, one timed.
    r = execute(
        RunConfig(
            method="bp",
            dataset="synthetic",
            epochs=1,
            batch_size=128,
            warmup_steps=2,
            track_steps=1,
        )
    )
    assert r.memory["steps"] == 1
    assert r.measured_steps == 1
    assert r.step_time_p10_s == r.step_time_median_s == r.step_time_p90_s
    assert r.images_per_s == pytest.approx(128 / r.step_time_median_s)
    assert r.cuda is None  # CPU run: no allocator figures


def test_diverged_run_is_a_record_not_a_crash():
    r = execute(RunConfig(method="bp", dataset="synthetic", epochs=3, lr=1e6, warmup_epochs=0))
    assert r.status == "diverged"
    assert "non-finite" in r.message
    assert len(r.curve) < 3


def test_warmup_cosine_schedule():
    lr = lambda e: warmup_cosine(e, 0.8, 400, 10, 0.01)  # noqa: E731
    assert lr(0) == 0.01
    assert lr(5) == pytest.approx(0.01 + 0.79 / 2)
    assert lr(10) == pytest.approx(0.8)
    assert lr(205) == pytest.approx(0.4)
    assert lr(400) == pytest.approx(0.0, abs=1e-12)
    assert lr(300) == pytest.approx(0.4 * (1 + math.cos(math.pi * 290 / 390)))


@pytest.mark.parametrize(
    "name, K",
    [("bp", None), ("bp-ckpt", 3), ("dgl", 3), ("infopro", 3), ("predsim", 3), ("auglocal", 4)],
)
def test_every_method_lowers_its_training_loss_on_digits(name, K):
    r = execute(RunConfig(method=name, K=K, dataset="digits", epochs=3))
    assert r.status == "ok", r.message
    losses = [c["train_loss"] for c in r.curve]
    assert losses[-1] < 0.5 * losses[0], losses
    local = [c["local_losses"] for c in r.curve]
    assert len(local[0]) == (0 if name in ("bp", "bp-ckpt") else r.K - 1)
    assert all(last < first for first, last in zip(local[0], local[-1]))


def test_a_users_own_sequential_trains_unregistered():
    from torch import nn

    from locbench.harness.run import prepare
    from locbench.nets.backbone import Backbone

    def my_net(num_classes: int) -> Backbone:
        seq = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
            nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes)),
        )
        return Backbone.from_sequential(seq, (3, 12, 12), name="mine")

    config = RunConfig(method="dgl", net="mine", K=3, dataset="digits", epochs=2)
    p = prepare(config, net=my_net)
    assert p.backbone.shapes[:3] == [(8, 12, 12), (16, 6, 6), (16, 6, 6)]
    r = execute(config, prepared=p)
    assert r.status == "ok" and r.K == 3 and r.config["net"] == "mine"
    assert r.curve[-1]["train_loss"] < r.curve[0]["train_loss"]


def test_a_method_that_cannot_be_traced_on_meta_still_runs(tmp_path):
    plugin = tmp_path / "needs_values.py"
    plugin.write_text(
        "from locbench.methods.dgl import DGL\n"
        "class NeedsValues(DGL):\n"
        "    def local_loss(self, k, out, batch):\n"
        "        loss = super().local_loss(k, out, batch)\n"
        "        return loss * (1.0 if loss.item() < 1e9 else 0.0)\n"
    )
    r = execute(RunConfig(method=f"{plugin}:NeedsValues", K=2, dataset="synthetic", epochs=1))
    assert r.status == "ok" and r.flops is None
    assert r.message.startswith("FLOPs not counted:")
    assert r.memory["peak_bytes"] > 0


# --- the step context and what forward_module sees ------------------------------------------

STEP_RECORDER = """
from locbench.methods.dgl import DGL


class StepRecorder(DGL):
    def __init__(self, *args):
        super().__init__(*args)
        self.steps = []  # the step context of every training step, from module 0's forward

    def forward_module(self, k, module, h, batch):
        if k == 0:
            self.steps.append(batch.step)
        return super().forward_module(k, module, h, batch)

    def local_loss(self, k, out, batch):
        assert batch.step is self.steps[-1]  # every hook of a step sees the same context
        return super().local_loss(k, out, batch)
"""


def test_every_training_step_sees_its_step_context_once(tmp_path):
    from locbench.harness.run import prepare

    plugin = tmp_path / "step_recorder.py"
    plugin.write_text(STEP_RECORDER)
    # synthetic: 512 samples at batch 128 -> 4 steps an epoch, 8 in all: step 0 plain, 1-2
    # tracked, 3-4 timed, 5-7 plain; every kind of step must get its context.
    config = RunConfig(
        method=f"{plugin}:StepRecorder",
        K=2,
        dataset="synthetic",
        epochs=2,
        batch_size=128,
        warmup_epochs=1,
        warmup_steps=1,
        track_steps=2,
        measure_steps=2,
    )
    p = prepare(config)
    r = execute(config, prepared=p)
    assert r.status == "ok", r.message
    assert r.flops is not None  # counted on a fresh build: its steps are not in p.method.steps
    assert r.memory["steps"] == 2 and r.measured_steps == 2
    steps = p.method.steps
    per_epoch = len(p.data.train)
    assert per_epoch == 4
    assert [s.global_step for s in steps] == list(range(8))
    assert {(s.total_steps, s.steps_per_epoch) for s in steps} == {(2 * per_epoch, per_epoch)}
    assert [s.epoch for s in steps] == [0] * 4 + [1] * 4
    assert [s.step_in_epoch for s in steps] == [0, 1, 2, 3] * 2
    cfg = p.config
    expected_lr = [
        warmup_cosine(s.global_step / per_epoch, cfg.lr, 2, 1, cfg.warmup_start_lr) for s in steps
    ]
    assert [s.lr for s in steps] == expected_lr
    assert steps[0].lr == cfg.warmup_start_lr and steps[4].lr == cfg.lr  # warm-up, then cosine
    assert [c["lr"] for c in r.curve] == [steps[3].lr, steps[7].lr]
    assert steps[0].progress == 0 and steps[-1].progress == 7 / 8


class SeesTheBatch(DGL):
    """DGL that records the batch each hook is given."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.seen: list[tuple[str, int, object]] = []

    def forward_module(self, k, module, h, batch):
        self.seen.append(("forward", k, batch))
        return super().forward_module(k, module, h, batch)

    def local_loss(self, k, out, batch):
        self.seen.append(("local", k, batch))
        return super().local_loss(k, out, batch)

    def output_loss(self, logits, batch):
        self.seen.append(("output", self.split.K - 1, batch))
        return super().output_loss(logits, batch)


def test_forward_module_sees_the_batch_labels_and_the_step():
    from locbench.methods.base import StepContext

    trainer = make_trainer(SeesTheBatch, K=3)
    x, y = batch()
    trainer.train_step(x, y)
    seen = trainer.method.seen
    assert [(hook, k) for hook, k, _ in seen] == [
        ("forward", 0),
        ("local", 0),
        ("forward", 1),
        ("local", 1),
        ("forward", 2),
        ("output", 2),
    ]
    first = seen[0][2]
    assert all(b is first for _, _, b in seen)  # one Batch for every hook of the step
    assert first.y is y and first.x is x
    # outside a run: step 0 of 1 at the configuration's learning rate
    assert first.step == StepContext(0, 0, 1, 1, 0.1)
    context = StepContext(global_step=5, epoch=1, steps_per_epoch=4, total_steps=8, lr=0.3)
    trainer.method.seen.clear()
    trainer.train_step(x, y, step=context)
    assert {b.step for _, _, b in trainer.method.seen} == {context}
    assert context.step_in_epoch == 1


def test_the_time_spent_waiting_for_data_is_measured_per_epoch_and_in_the_record():
    import time as clock

    from locbench.harness.run import execute, prepare
    from locbench.settings.run_config import RunConfig

    prepared = prepare(RunConfig(method="bp", dataset="synthetic", epochs=2, batch_size=128))
    loader = prepared.data.train

    class SlowLoader:
        """The real batches, each 20 ms late: a loader-bound run."""

        batch_size = loader.batch_size

        def __len__(self) -> int:
            return len(loader)

        def __iter__(self):
            for batch in loader:
                clock.sleep(0.02)
                yield batch

    prepared.data.train = SlowLoader()
    record = execute(prepared.config, prepared=prepared)
    steps = len(loader)  # 512 images / 128 = 4 per epoch
    for point in record.curve:
        assert 0.02 * steps <= point["data_wait_s"] < point["epoch_time_s"]
    waited = sum(p["data_wait_s"] for p in record.curve)
    total = sum(p["epoch_time_s"] for p in record.curve)
    assert record.data_wait_share == pytest.approx(waited / total)
