"""One run's configuration, and the per-dataset training presets that fill its blanks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from bench.errors import UserError


@dataclass(frozen=True)
class TrainPreset:
    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: float


# AugLocal settings (REFERENCE.md): CIFAR-10/SVHN batch 1024, lr 0.8, 400 epochs with a 10-epoch
# warm-up; STL-10 batch 128, lr 0.1. digits/synthetic are CPU-sized: lr scaled linearly with the
# batch (0.8 * 64 / 1024 = 0.05) and few epochs.
PRESETS: dict[str, TrainPreset] = {
    "cifar10": TrainPreset(400, 1024, 0.8, 10),
    "svhn": TrainPreset(400, 1024, 0.8, 10),
    "stl10": TrainPreset(400, 128, 0.1, 10),
    "digits": TrainPreset(10, 64, 0.05, 1),
    "synthetic": TrainPreset(5, 64, 0.05, 1),
}
DEFAULT_PRESET = PRESETS["digits"]


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run. ``None`` fields are filled by :meth:`resolved`."""

    method: str = "bp"
    net: str = "smallnet"
    dataset: str = "digits"
    K: int | None = None  # None: every hidden unit a module (ignored if ``cuts`` is given)
    cuts: tuple[int, ...] | None = None  # hidden units after which to cut, 0-based
    method_params: dict = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup_epochs: float | None = None
    warmup_start_lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    cudnn_benchmark: bool = True
    data_root: str | None = None
    download: bool = False
    augment: bool = True
    num_workers: int = 0
    # After warmup_steps: track_steps steps under the memory tracker, then measure_steps timed
    # steps (with the CUDA allocator window). memory: auto (cuda on a GPU, else tracked),
    # tracked, cuda or both.
    warmup_steps: int = 3
    track_steps: int = 2
    measure_steps: int = 20
    memory: str = "auto"

    def resolved(self) -> RunConfig:
        """Dataset preset filled in, device picked, values checked."""
        preset = PRESETS.get(self.dataset, DEFAULT_PRESET)
        cfg = dataclasses.replace(
            self,
            epochs=preset.epochs if self.epochs is None else self.epochs,
            batch_size=preset.batch_size if self.batch_size is None else self.batch_size,
            lr=preset.lr if self.lr is None else self.lr,
            warmup_epochs=(
                preset.warmup_epochs if self.warmup_epochs is None else self.warmup_epochs
            ),
            device=pick_device(self.device),
        )
        on_cuda = cfg.device.startswith("cuda")
        cfg = dataclasses.replace(
            cfg, memory=("cuda" if on_cuda else "tracked") if cfg.memory == "auto" else cfg.memory
        )
        if cfg.memory not in ("tracked", "cuda", "both"):
            raise UserError(f"unknown --memory {cfg.memory!r}; accepted: auto, tracked, cuda, both")
        if cfg.memory != "tracked" and not on_cuda:
            raise UserError(f"--memory {cfg.memory} needs a CUDA device; use --memory tracked")
        if cfg.batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {cfg.batch_size}")
        if cfg.epochs < 1:
            raise UserError(f"epochs must be at least 1, got {cfg.epochs}")
        if cfg.lr <= 0:
            raise UserError(f"learning rate must be positive, got {cfg.lr}")
        if cfg.dtype != "float32":
            raise UserError(f"dtype {cfg.dtype!r} is not supported yet; accepted: float32")
        return cfg

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cuts"] = list(self.cuts) if self.cuts is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown config keys {unknown}; accepted: {sorted(names)}")
        d = dict(d)
        if d.get("cuts") is not None:
            d["cuts"] = tuple(d["cuts"])
        return cls(**d)

    def run_id(self) -> str:
        """Stable hash of the configuration: the same settings always give the same id."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N")
    return device
