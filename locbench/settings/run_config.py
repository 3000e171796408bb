"""One run's configuration: every run setting, declared once (:mod:`locbench.settings.schema`).

Fields only: what fills the blanks (each dataset's :class:`TrainPreset`, the device) and what
makes a run this run (its identity) are resolved once per run, in
:func:`locbench.harness.build.resolve`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

from locbench.errors import UserError
from locbench.settings.schema import SECTIONS, Spec, coerce_typed, convert, setting, specs


@dataclass(frozen=True)
class TrainPreset:
    """What a dataset's training runs use when the configuration sets none (each dataset
    registers its own: :func:`locbench.data.base.register_dataset`)."""

    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: float


PRESET = "the dataset's preset"
S = TypeVar("S")
MEMORY_MODES = ("auto", "tracked", "cuda", "both")
PRECISIONS = ("fp32", "bf16", "fp16")
#: ``cuts = "balanced"``: resolving the configuration finds the cuts (locbench.harness.balance).
BALANCED = "balanced"


@dataclass(frozen=True)
class ModelSettings:
    """Section ``model``: the backbone and its split."""

    net: str = setting("smallnet", "backbone (see `locbench list`)", section="model")
    K: int | None = setting(
        None,
        "local modules (none: one per hidden unit, the published K of every preset net)",
        section="model",
        low=1,
        flag="--K",
    )
    # A tuple of ints, or the word "balanced" until the configuration is resolved.
    cuts: tuple[int, ...] | None = setting(
        None,
        "cut after these hidden units (0-based), e.g. 3,7,11; balanced (with --K): the cuts "
        "of K modules with the least estimated peak memory",
        section="model",
        low=0,
        words=(BALANCED,),
    )
    cuts_balanced: bool = setting(
        False,
        "set by resolving --cuts balanced: the cuts are the balanced ones for K",
        section="model",
        cli=False,
    )


@dataclass(frozen=True)
class MethodSettings:
    """Section ``method``: the training method and its hyperparameters."""

    method: str = setting(
        "bp", "a method name (see `locbench list`) or path/to/file.py:ClassName", section="method"
    )
    method_params: dict = setting(
        {}, "the method's hyperparameters (--hp KEY=VALUE)", section="method", cli=False
    )


@dataclass(frozen=True)
class TrainSettings:
    """Section ``train``: the schedule, the optimizer, BatchNorm across ranks (what the
    trainer takes)."""

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


@dataclass(frozen=True)
class DataSettings:
    """Section ``data``: the dataset and its loader (what the data loader takes)."""

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


@dataclass(frozen=True)
class MeasureSettings:
    """Section ``measure``: the measured windows and the memory source (what the step loop's
    measurement takes)."""

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
    exclusive_timing: bool = setting(
        True,
        "timed windows have the machine to themselves: other locbench processes on it pause "
        "between steps meanwhile",
        section="measure",
    )


@dataclass(frozen=True)
class EnvSettings:
    """Section ``env``: where and how the step computes (device, precision, layout, seed,
    processes)."""

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


@dataclass(frozen=True)
class RunConfig(
    EnvSettings, MeasureSettings, DataSettings, TrainSettings, MethodSettings, ModelSettings
):
    """Everything that determines a run. ``None`` fields are filled when the run is resolved
    (:func:`locbench.harness.build.resolve`).

    Each field is a setting of :mod:`locbench.settings.schema`: the flags of ``run``/``sweep``/
    ``estimate``/``describe``, the TOML keys, the sweep axes and ``locbench config --list``
    are generated from these declarations. Values are checked when the config is made.

    The fields are declared by section (:class:`ModelSettings`, ..., :class:`EnvSettings`; a
    dataclass inherits its bases' fields, models first): each part of the harness takes its
    own section (:meth:`section`), and a ``RunConfig`` is one of each."""

    def __post_init__(self) -> None:
        # Typed and checked however the config was made (flags, TOML, Python): 1 and 1.0
        # must not give two run ids, and nothing out of range reaches a run.
        for spec in SPECS:
            value = coerce_typed(spec, getattr(self, spec.name), spec.flag)
            object.__setattr__(self, spec.name, value)
        if not all(isinstance(k, str) for k in self.method_params):
            raise UserError("method hyperparameter names must be strings")
        if self.cuts == BALANCED and self.K is None:
            raise UserError("--cuts balanced needs --K")
        concrete = isinstance(self.cuts, tuple)
        if self.cuts_balanced and not (
            concrete and self.K is not None and len(self.cuts) == self.K - 1
        ):
            raise UserError(
                "cuts_balanced marks the cuts that --cuts balanced found: it needs K and K-1 cuts"
            )
        if self.K is not None and concrete and not self.cuts_balanced:
            raise UserError("give either --K or --cuts (or --K with --cuts balanced), not both")
        if self.stages > 1 and self.nproc > 1:
            raise UserError("give either --stages (pipeline) or --nproc (data-parallel), not both")

    def section(self, cls: type[S]) -> S:
        """This configuration's section ``cls`` (e.g. :class:`TrainSettings`) on its own."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cuts"] = list(self.cuts) if isinstance(self.cuts, tuple) else self.cuts
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
