"""One run's configuration: every run setting, declared once (:mod:`locbench.settings.schema`), the
per-dataset training presets that fill its blanks, and the run's identity."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

from locbench.errors import UserError
from locbench.settings.schema import SECTIONS, Spec, coerce_typed, convert, setting, specs


@dataclass(frozen=True)
class TrainPreset:
    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: float


# AugLocal settings (the paper and its authors' run.sh): CIFAR-10/SVHN batch 1024, lr 0.8,
# 400 epochs with a 10-epoch warm-up; STL-10 batch 128, lr 0.1. digits/synthetic are CPU-sized:
# lr scaled linearly with the batch (0.8 * 64 / 1024 = 0.05) and few epochs.
PRESETS: dict[str, TrainPreset] = {
    "cifar10": TrainPreset(400, 1024, 0.8, 10),
    "svhn": TrainPreset(400, 1024, 0.8, 10),
    "stl10": TrainPreset(400, 128, 0.1, 10),
    "digits": TrainPreset(10, 64, 0.05, 1),
    "synthetic": TrainPreset(5, 64, 0.05, 1),
    # The AugLocal authors' ImageNet run.sh: 200 epochs, global batch 1024, lr 0.4, cosine
    # without warm-up (SGD, Nesterov 0.9, weight decay 1e-4 are our defaults). They step the
    # cosine once per epoch; we step it every iteration, a slightly smoother schedule.
    "imagenet": TrainPreset(epochs=200, batch_size=1024, lr=0.4, warmup_epochs=0),
}
DEFAULT_PRESET = PRESETS["digits"]
PRESET = "the dataset's preset"
MEMORY_MODES = ("auto", "tracked", "cuda", "both")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run. ``None`` fields are filled by :meth:`resolved`.

    Each field is a setting of :mod:`locbench.settings.schema`: the flags of ``run``/``sweep``/
    ``estimate``/``describe``, the TOML keys, the sweep axes and ``locbench config --list``
    are generated from these declarations. Values are checked when the config is made."""

    # model
    net: str = setting("smallnet", "backbone (see `locbench list`)", section="model")
    K: int | None = setting(
        None,
        "local modules (none: one per hidden unit, the published K of every preset net)",
        section="model",
        low=1,
        flag="--K",
    )
    cuts: tuple[int, ...] | None = setting(
        None, "cut after these hidden units (0-based), e.g. 3,7,11", section="model", low=0
    )
    # method
    method: str = setting(
        "bp", "a method name (see `locbench list`) or path/to/file.py:ClassName", section="method"
    )
    method_params: dict = setting(
        {}, "the method's hyperparameters (--hp KEY=VALUE)", section="method", cli=False
    )
    # train
    epochs: int | None = setting(None, PRESET, section="train", low=1, high=100_000)
    batch_size: int | None = setting(None, PRESET, section="train", low=1, high=2**20)
    lr: float | None = setting(None, f"peak learning rate ({PRESET})", section="train", above=0)
    warmup_epochs: float | None = setting(
        None, f"linear warm-up epochs ({PRESET})", section="train", low=0
    )
    warmup_start_lr: float = setting(
        0.01, "learning rate the warm-up starts from", section="train", low=0
    )
    momentum: float = setting(0.9, "SGD momentum", section="train", low=0, high=1)
    nesterov: bool = setting(True, "Nesterov momentum", section="train")
    weight_decay: float = setting(1e-4, "L2 weight decay", section="train", low=0)
    sync_bn: bool = setting(
        False,
        "with nproc > 1: BatchNorm statistics of the global batch, not of each rank's share",
        section="train",
    )
    # data
    dataset: str = setting("digits", "dataset (see `locbench list`)", section="data")
    data_root: str | None = setting(
        None,
        "folder holding cifar10/svhn/stl10 files or the imagenet train/ and val/",
        section="data",
    )
    download: bool = setting(False, "download the dataset if missing", section="data")
    augment: bool = setting(True, "train with the dataset's augmentation", section="data")
    num_workers: int = setting(0, "data-loading worker processes", section="data", low=0, high=256)
    loader: str = setting(
        "tensor",
        "tensor: cached uint8 splits augmented in batches on the device; torchvision: "
        "per-image PIL transforms in a DataLoader",
        section="data",
        choices=("tensor", "torchvision"),
    )
    # measure
    warmup_steps: int = setting(3, "steps before the measured windows", section="measure", low=0)
    track_steps: int = setting(
        2, "steps under the memory tracker", section="measure", low=0, high=1000
    )
    measure_steps: int = setting(20, "timed steps", section="measure", low=0, high=1_000_000)
    memory: str = setting(
        "auto",
        "auto: the CUDA allocator on a GPU, the storage tracker otherwise",
        section="measure",
        choices=MEMORY_MODES,
    )
    # env
    device: str = setting("auto", "auto (CUDA if available), cpu, cuda, cuda:N", section="env")
    dtype: str = setting(
        "float32", "parameter and activation dtype", section="env", choices=("float32",)
    )
    precision: str = setting(
        "fp32",
        "fp32, or autocast to bf16 / fp16 (fp16 with a loss scaler); parameters stay in --dtype",
        section="env",
        choices=PRECISIONS,
    )
    channels_last: bool = setting(
        False, "4-D weights and inputs in channels-last memory format", section="env"
    )
    seed: int = setting(0, "random seed", section="env", low=0, high=2**32 - 1)
    cudnn_benchmark: bool = setting(True, "torch.backends.cudnn.benchmark on CUDA", section="env")
    nproc: int = setting(
        1,
        "data-parallel processes (ranks, one per GPU on CUDA); --batch-size stays the global "
        "batch, split among them",
        section="env",
        low=1,
        high=4096,
    )
    stages: int = setting(
        1,
        "pipeline stages: the K modules as this many contiguous groups, one process (one GPU "
        "on CUDA) each, every stage stepping its own modules (docs/stages.md)",
        section="env",
        low=1,
        high=4096,
    )

    def __post_init__(self) -> None:
        # Typed and checked however the config was made (flags, TOML, Python): 1 and 1.0
        # must not give two run ids, and nothing out of range reaches a run.
        for spec in SPECS:
            value = coerce_typed(spec, getattr(self, spec.name), spec.flag)
            object.__setattr__(self, spec.name, value)
        if not all(isinstance(k, str) for k in self.method_params):
            raise UserError("method hyperparameter names must be strings")
        if self.K is not None and self.cuts is not None:
            raise UserError("give either --K or --cuts, not both")
        if self.stages > 1 and self.nproc > 1:
            raise UserError("give either --stages (pipeline) or --nproc (data-parallel), not both")

    def resolved(self) -> RunConfig:
        """Dataset preset filled in, device and memory mode picked, every method
        hyperparameter filled in with its typed default, values checked."""
        from locbench.methods.loading import resolve_method
        from locbench.methods.params import resolve_params

        preset = PRESETS.get(self.dataset, DEFAULT_PRESET)
        device = pick_device(self.device)
        on_cuda = device.startswith("cuda")
        memory = ("cuda" if on_cuda else "tracked") if self.memory == "auto" else self.memory
        if memory != "tracked" and not on_cuda:
            raise UserError(f"--memory {memory} needs a CUDA device; use --memory tracked")
        check_data_root(self.data_root)
        batch_size = preset.batch_size if self.batch_size is None else self.batch_size
        if batch_size < self.nproc:
            raise UserError(
                f"batch size {batch_size} cannot be shared among {self.nproc} ranks; "
                f"use a batch size of at least {self.nproc} (it is the global batch)"
            )
        return dataclasses.replace(
            self,
            epochs=preset.epochs if self.epochs is None else self.epochs,
            batch_size=batch_size,
            sync_bn=self.sync_bn and self.nproc > 1,  # one process: nothing to synchronise
            lr=preset.lr if self.lr is None else self.lr,
            warmup_epochs=(
                preset.warmup_epochs if self.warmup_epochs is None else self.warmup_epochs
            ),
            device=device,
            memory=memory,
            method_params=resolve_params(resolve_method(self.method), self.method_params),
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cuts"] = list(self.cuts) if self.cuts is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> RunConfig:
        """A config from JSON/TOML values; text is converted as flags are. Keys are setting
        names (``lr``), dotted paths (``train.lr``) or section tables (``train = {lr = 0.1}``)."""
        d = flatten_sections(d, where)
        unknown = sorted(set(d) - set(BY_NAME))
        if unknown:
            raise UserError(f"{where}: unknown settings {unknown}; see `locbench config --list`")
        typed = {k: convert(BY_NAME[k], v, f"{where} {k}") for k, v in d.items()}
        return cls(**typed)

    def identity(self) -> dict:
        """What makes a run this run: the resolved configuration, the content hash of the
        method's source file, the package version and the record schema. Call on a resolved
        config."""
        from locbench.methods.loading import resolve_method
        from locbench.records import SCHEMA

        return {
            "config": self.to_dict(),
            "method_sha256": source_sha256(resolve_method(self.method)),
            "package_version": package_version(),
            "schema": SCHEMA,
        }

    def run_id(self) -> str:
        """Hash of :meth:`identity`: one identity, one record, one id."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


SPECS: list[Spec] = specs(RunConfig)
BY_NAME: dict[str, Spec] = {s.name: s for s in SPECS}


def flatten_sections(d: dict, where: str) -> dict:
    """``{"train": {"lr": 0.1}}`` and ``{"train.lr": 0.1}`` as ``{"lr": 0.1}``; a setting
    named under the wrong section is an error."""
    out = {}
    for key, value in d.items():
        if key in SECTIONS and isinstance(value, dict):
            items = [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            items = [(key, value)]
        for path, v in items:
            section, _, name = path.rpartition(".")
            spec = BY_NAME.get(name)
            if section and spec is not None and spec.section != section:
                raise UserError(
                    f"{where}: {path} is not a setting; {name} is {spec.section}.{name}"
                )
            if section and spec is None:
                raise UserError(f"{where}: unknown setting {path}; see `locbench config --list`")
            out[name] = v
    return out


def source_sha256(cls: type) -> str:
    """SHA-256 of the file that defines ``cls`` (a method file, or the module of a built-in or
    entry-point method): editing it changes every run id of that method."""
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        path = None
    if path is None:
        return ""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def package_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("locbench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def check_data_root(root: str | None) -> None:
    if root is None:
        return
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"--data-root {root} does not exist")
    if not path.is_dir():
        raise UserError(f"--data-root {root} is not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UserError(f"--data-root {root} is not readable")


def pick_device(device: str) -> str:
    """``auto`` as this machine's device (CUDA if available); any other device as given, its
    name checked. Whether this machine has it is :func:`check_device`'s question: a
    configuration resolved here may run elsewhere (a SLURM job, a Ray task on a GPU node)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (device == "cpu" or device == "cuda" or _cuda_index(device)):
        raise UserError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N")
    return device


def check_device(device: str) -> None:
    """A run about to start on this machine: CUDA must be there when asked for."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available; use --device cpu")


def _cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()
