"""Resolving a configuration once per run, and assembling what it asks for.

:func:`resolve` fills every blank of a :class:`RunConfig` (the dataset's training preset, the
device, the memory mode, every method hyperparameter typed with its default), loads the method
class once and computes the run's identity; :func:`build` makes the backbone, the split and the
method of a resolved run, seeded."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from locbench.data.base import DataInfo
from locbench.data.catalog import DATASETS
from locbench.errors import UserError
from locbench.harness.environment import environment, pick_device
from locbench.methods import Method, make_params
from locbench.methods.loading import is_file_spec, resolve_method
from locbench.nets.backbone import Backbone, Shape, get_backbone
from locbench.nets.split import Split, check_K
from locbench.records import SCHEMA, RunRecord
from locbench.settings.run_config import BALANCED, RunConfig

if TYPE_CHECKING:
    from locbench.harness.balance import BalancedCuts


@dataclass(frozen=True)
class Resolved:
    """A configuration resolved once: ``config`` has every blank filled and every value
    checked; ``method_cls`` and ``params`` are its method and typed hyperparameters; ``run_id``
    is the hash of :attr:`identity` (one identity, one record, one id)."""

    config: RunConfig
    method_cls: type[Method]
    params: object
    method_sha256: str
    package_version: str
    # What --cuts balanced found (the search and its check), when it ran in this process.
    balance: BalancedCuts | None = None

    @property
    def identity(self) -> dict:
        """What makes a run this run: the resolved configuration, the content hash of the
        method's source file, the package version and the record schema. A method loaded from
        a file is its class name and that hash, however its path is spelt and wherever a copy
        of the file lies: a resumed sweep recognises its runs."""
        config = self.config.to_dict()
        if is_file_spec(self.config.method):
            config["method"] = f"file:{self.method_cls.__name__}"
        return {
            "config": config,
            "method_sha256": self.method_sha256,
            "package_version": self.package_version,
            "schema": SCHEMA,
        }

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.identity, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def record(self, **fields) -> RunRecord:
        """The run's record: its id, configuration, identity and this machine's environment.
        Every record, of a finished run or of a worker that died, starts here."""
        if self.balance is not None:
            fields.setdefault("balanced_cuts", self.balance.as_dict())
        return RunRecord(
            run_id=self.run_id,
            config=self.config.to_dict(),
            env=environment(self.config.device),
            method_sha256=self.method_sha256,
            package_version=self.package_version,
            **fields,
        )


def resolve(config: RunConfig) -> Resolved:
    """``config`` with the dataset's training preset filled in, the device and memory mode
    picked, every method hyperparameter typed with its default and every value checked: bad
    input fails here, before any work. Resolving a resolved configuration changes nothing.

    ``cuts = "balanced"`` becomes the cut points of K modules with the least estimated peak
    memory at the run's batch size (:mod:`locbench.harness.balance`; searched once per
    process), marked ``cuts_balanced``: the run id and the record carry them."""
    preset = DATASETS.get(config.dataset).preset
    device = pick_device(config.device)
    on_cuda = device.startswith("cuda")
    memory = ("cuda" if on_cuda else "tracked") if config.memory == "auto" else config.memory
    if memory != "tracked" and not on_cuda:
        raise UserError(f"--memory {memory} needs a CUDA device; use --memory tracked")
    check_data_root(config.data_root)
    batch_size = preset.batch_size if config.batch_size is None else config.batch_size
    if batch_size < config.nproc:
        raise UserError(
            f"batch size {batch_size} cannot be shared among {config.nproc} ranks; "
            f"use a batch size of at least {config.nproc} (it is the global batch)"
        )
    method_cls = resolve_method(config.method)
    params = make_params(method_cls, config.method_params)
    warmup = preset.warmup_epochs if config.warmup_epochs is None else config.warmup_epochs
    filled = dataclasses.replace(
        config,
        epochs=preset.epochs if config.epochs is None else config.epochs,
        batch_size=batch_size,
        sync_bn=config.sync_bn and config.nproc > 1,  # one process: nothing to synchronise
        lr=preset.lr if config.lr is None else config.lr,
        warmup_epochs=warmup,
        device=device,
        memory=memory,
        method_params=dataclasses.asdict(params),
    )
    balance = None
    if filled.cuts == BALANCED or filled.cuts_balanced:
        from locbench.harness.balance import balanced_cuts, found  # it resolves in turn

        if filled.cuts == BALANCED:
            balance = balanced_cuts(filled)
            filled = dataclasses.replace(filled, cuts=balance.cuts, cuts_balanced=True)
        else:
            balance = found(filled)  # the search's record, if it ran in this process
    sha = source_sha256(method_cls)
    return Resolved(filled, method_cls, params, sha, package_version(), balance)


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


def requested_split(config: RunConfig, n_hidden: int) -> Split:
    if config.cuts == BALANCED:
        raise UserError("--cuts balanced is found when the configuration is resolved (resolve)")
    if config.cuts is not None:
        return Split.from_cuts(n_hidden, config.cuts)
    if config.K is None:
        return Split.every_unit(n_hidden)
    check_K(config.K, n_hidden)
    return Split.uniform(n_hidden, config.K)


def check_split(config: RunConfig) -> None:
    """Raise the one-line error a run of ``config`` would hit when splitting its net (K or
    cuts out of range), building the backbone on the meta device: nothing is allocated."""
    if config.cuts == BALANCED:
        check_K(config.K, hidden_units(config.net))
        return
    requested_split(config, hidden_units(config.net))


@functools.cache
def hidden_units(net: str) -> int:
    """Hidden units of the registered backbone ``net`` (built once per process, on meta)."""
    with torch.device("meta"):
        return get_backbone(net, 10).n_hidden


def input_shape(net: Callable[[int], Backbone]) -> Shape:
    """The input shape of the backbone ``net(classes)`` makes, read from a build on the meta
    device: no memory, no draw from the random state."""
    with torch.device("meta"):
        return net(10).input_shape


def build(
    run: Resolved,
    data: DataInfo | None = None,
    num_classes: int = 10,
    image_size: int | None = None,
    net: Callable[[int], Backbone] | None = None,
) -> tuple[Backbone, Method]:
    """Backbone and method of the resolved ``run`` after seeding, on the CPU (or meta or fake,
    when called under ``torch.device("meta")`` or ``FakeTensorMode``).

    ``data``: the dataset's statistics; without it, ``num_classes`` classes and placeholder
    statistics at the net's input shape (enough for shapes, memory and FLOPs).
    ``image_size``: re-probe the backbone at that input side. ``net``: a factory
    ``num_classes -> Backbone`` used instead of the registered ``config.net``."""
    config, method_cls, params = run.config, run.method_cls, run.params
    torch.manual_seed(config.seed)
    classes = data.num_classes if data is not None else num_classes
    backbone = (net or (lambda n: get_backbone(config.net, n)))(classes)
    if image_size is not None and image_size != backbone.input_shape[1]:
        shape = (backbone.input_shape[0], image_size, image_size)
        backbone = Backbone(backbone.name, list(backbone.units), shape, backbone.specs)
    if data is None:
        c = backbone.input_shape[0]
        data = DataInfo("placeholder", classes, backbone.input_shape, (0.5,) * c, (0.25,) * c)
    split = method_cls.plan_split(requested_split(config, backbone.n_hidden), params)
    try:
        method = method_cls(backbone, split, data, params)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a method's own bug is one line, not a traceback
        text = str(e).strip().splitlines()
        detail = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
        raise UserError(f"method {config.method!r} failed to build: {detail}") from None
    return backbone, method
