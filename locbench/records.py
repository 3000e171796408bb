"""Run records: one JSON file per run, written atomically, loaded into pandas.

Bytes in records; MiB (2**20 bytes) only in tables and charts.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from locbench.errors import UserError
from locbench.outputs import check_folder, write_atomic

#: BP's variants that cut its memory: the baselines of the equal-memory view and of
#: ``--baselines equal-memory``.
MEMORY_BASELINES = ("bp-ckpt", "bp-accum")
#: End-to-end methods (one module): never given baselines, never balanced.
END_TO_END = ("bp", *MEMORY_BASELINES)
#: The tracked peak's categories: the keys of a record's ``memory.breakdown``, in the order
#: the charts stack them (the tracker, locbench.measure.memory, counts into them).
CATEGORIES = (
    "parameters",
    "frozen",  # parameters never optimised (requires_grad=False): e.g. a moving-average copy
    "gradients",
    "optimizer_state",
    "backbone_activations",
    "aux_activations",
    "other",
)
#: The phase codes of a record's ``memory.timeline``, one letter per tracker phase: forward (a
#: backbone module), local loss (its auxiliary net), backward, optimizer step, and other (the
#: batch arriving, the last module's output loss, the gaps between phases).
PHASE_CODES = {"backbone": "F", "aux": "L", "backward": "B", "optimizer_state": "O", "other": "-"}

SCHEMA = "locbench.run/2"  # /2: full identity (every hyperparameter, method source hash)
STATUSES = ("ok", "oom", "diverged", "error")


@dataclass
class RunRecord:
    run_id: str
    config: dict  # the fully resolved configuration (every method hyperparameter, typed)
    env: dict
    method_sha256: str = ""  # content hash of the file defining the method class
    package_version: str = ""
    status: str = "ok"
    message: str = ""
    K: int | None = None
    module_starts: list[int] | None = None
    params_backbone: int | None = None
    params_aux: int | None = None
    final_test_acc: float | None = None
    best_test_acc: float | None = None
    final_train_loss: float | None = None
    measured_steps: int = 0
    step_time_median_s: float | None = None
    step_time_p10_s: float | None = None
    step_time_p90_s: float | None = None
    images_per_s: float | None = None
    # What the timed window ran under (locbench.measure.isolation.WindowTiming): intra-op
    # threads, whether it had the machine to itself (``exclusive``), its wall-clock start and
    # end, this process's CPU use, every other process's CPU share (the contention figure)
    # and the load average.
    timing: dict | None = None
    # Share of the training epochs' wall time spent waiting for data
    # (locbench.measure.meters.DataWait).
    data_wait_share: float | None = None
    cuda: dict | None = None
    memory: dict | None = (
        None  # tracked peak, breakdown, module peaks, floor (locbench.measure.memory)
    )
    flops: dict | None = (
        None  # per training step: backbone, aux, total (locbench.analysis.describe)
    )
    # Medians over the timed steps of each module's forward, local loss and backward, the optimizer
    # step and the rest (locbench.measure.meters.PhaseClock.summary), and the pipeline bound from
    # them (locbench.measure.pipeline_bound): sum / max of the module times, and the best grouping
    # into P = 2, 4, 8 stages ({"P", "groups", "bound"}).
    module_times: dict | None = None
    pipeline_bound_speedup: float | None = None
    pipeline_stages: list[dict] | None = None
    # Data-parallel runs (config nproc > 1): world size, every rank's tracked and CUDA peaks.
    # ``memory`` and ``cuda`` above are rank 0's, for its share of each batch.
    distributed: dict | None = None
    # Pipeline runs (config stages > 1, locbench.harness.stages): groups, every stage's busy and
    # idle seconds, the sequential and pipelined step times, the speed-up and its bound.
    stages: dict | None = None
    # --cuts balanced (config cuts_balanced): the K asked for, the cuts found, the modules
    # trained, the batch and image size searched at, the cost model's peak of the chosen split
    # and one fake-tensor estimate of it (locbench.harness.balance.BalancedCuts); None when the
    # search ran in another process (the config still says cuts_balanced).
    balanced_cuts: dict | None = None
    started_at: str = ""
    # True for an ``error`` row written because the worker process died (killed, segfault):
    # a resumed sweep runs that configuration again.
    worker_died: bool = False
    wall_time_s: float | None = None
    curve: list[dict] = field(default_factory=list)
    schema: str = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, source: str = "record") -> RunRecord:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise UserError(
                f"{source} is not a locbench run record (schema {got!r}; expected {SCHEMA!r})"
            )
        names = {f.name for f in fields(cls)}
        required = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        unknown, missing = sorted(set(d) - names), sorted(required - set(d))
        if unknown or missing:
            raise UserError(
                f"{source} is not a valid {SCHEMA} record (unknown fields {unknown}, "
                f"missing fields {missing})"
            )
        return cls(**d)

    def row(self) -> dict:
        """One flat row: top-level fields and ``config.*``, ``env.*``, ``cuda.*``,
        ``memory.*`` (``memory.breakdown.*``), ``flops.*`` and ``timing.*`` columns; no
        curve."""
        d = asdict(self)
        d.pop("curve")
        nested = ("config", "env", "cuda", "memory", "flops", "distributed", "timing")
        for group in (*nested, "module_times", "stages"):
            d.update(flatten(d.pop(group) or {}, group))
        return d


def flatten(d: dict, prefix: str) -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict) and prefix != "config":  # method_params stays one cell
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


#: Room a run's record asks for on the disk (a record with a long curve is some 100 KiB).
RECORD_BYTES = 256 * 1024


def check_out_dir(path: str | Path, records: int = 1) -> Path:
    """``path`` as a results folder for ``records`` records, created if missing; one line
    (before any training) when it is a file, cannot be created, is not writable, has no room or
    a name the file system refuses (:func:`locbench.outputs.check_folder`)."""
    return check_folder(path, "--out", records * RECORD_BYTES)


def record_path(out_dir: Path, record: RunRecord) -> Path:
    c = record.config
    # A method given as path/to/file.py:Class keeps only a file-name-safe tail here; the record
    # itself holds the full spec and the run id hashes it.
    # ... and at most 100 characters of it: the file system's names end at 255 bytes.
    method = re.sub(r"[^A-Za-z0-9_.+-]+", "_", Path(c["method"]).name)[-100:]
    name = f"{method}-{c['net']}-K{record.K}-{c['dataset']}-s{c['seed']}-{record.run_id}"
    return Path(out_dir) / f"{name}.json"


def save_record(record: RunRecord, out_dir: Path) -> Path:
    path = record_path(out_dir, record)
    write_atomic(path, record.to_json())
    return path


def read_record(path: Path) -> RunRecord:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    return RunRecord.from_dict(data, source=str(path))


def read_records(folder: str | Path) -> list[RunRecord]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder {folder} does not exist")
    return [read_record(path) for path in sorted(folder.glob("*.json"))]


def results_frame(records: list[RunRecord]):
    """Records as a pandas DataFrame, one row per run (no curves)."""
    import pandas as pd

    return pd.DataFrame([r.row() for r in records])


def curves_frame(records: list[RunRecord]):
    """Per-epoch curves of the records, one row per (run, epoch)."""
    import pandas as pd

    return pd.DataFrame(
        [
            {"run_id": r.run_id, "method": r.config["method"], "K": r.K, **point}
            for r in records
            for point in r.curve
        ]
    )


def load_results(folder: str | Path):
    """All records in ``folder`` as a pandas DataFrame, one row per run (no curves)."""
    return results_frame(read_records(folder))


def load_curves(folder: str | Path):
    """Per-epoch curves of all runs in ``folder``, one row per (run, epoch)."""
    return curves_frame(read_records(folder))


# Field annotation -> the JSON types a record may hold there; other annotations go unchecked.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "dict": (dict,),
    "list": (list,),
    "None": (type(None),),
}


def scan_records(folder: str | Path) -> tuple[list[RunRecord], list[tuple[Path, str]]]:
    """The valid run records among ``folder``'s ``*.json`` files, and ``(path, reason)`` for
    every file skipped: not readable, not valid JSON (a truncated write), not a run record, an
    unknown schema version, missing or unknown fields, or fields of the wrong type. Other files
    are ignored. Raises :class:`~locbench.errors.UserError` when ``folder`` does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder {folder} does not exist")
    records: list[RunRecord] = []
    skipped: list[tuple[Path, str]] = []
    for path in sorted(folder.glob("*.json")):
        record, reason = _scan_one(path)
        if record is not None:
            records.append(record)
        else:
            skipped.append((path, " ".join(reason.split())))  # one line, whatever it quotes
    return records, skipped


def _scan_one(path: Path) -> tuple[RunRecord | None, str]:
    if not path.is_file():
        return None, "not a file"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        return None, f"cannot be read ({e.strerror or type(e).__name__})"
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as e:
        return None, f"truncated or not valid JSON ({e.msg} at line {e.lineno})"
    if not isinstance(data, dict):
        kind = "an array" if isinstance(data, list) else f"a {type(data).__name__}"
        return None, f"not a run record (JSON {kind})"
    if "schema" not in data:
        if "benchmarks" in data:
            return None, "not a run record (a pytest-benchmark file)"
        return None, 'not a run record (no "schema" field)'
    if data["schema"] != SCHEMA:
        return None, f"unknown schema version {data['schema']!r} (this locbench reads {SCHEMA!r})"
    names = [f.name for f in fields(RunRecord)]
    required = [
        f.name for f in fields(RunRecord) if f.default is MISSING and f.default_factory is MISSING
    ]
    unknown = [k for k in data if k not in names]
    missing = [k for k in required if k not in data]
    if missing or unknown:
        problems = [f"missing fields: {', '.join(missing)}"] if missing else []
        problems += [f"unknown fields: {', '.join(map(str, unknown))}"] if unknown else []
        return None, f"not a valid {SCHEMA} record ({'; '.join(problems)})"
    problem = _type_problem(data)
    if problem:
        return None, f"not a valid {SCHEMA} record ({problem})"
    return RunRecord.from_dict(data, source=str(path)), ""


def _type_problem(data: dict) -> str | None:
    """What makes a record with the right fields unusable for tables and charts, or None."""
    for f in fields(RunRecord):
        if f.name not in data:
            continue
        allowed: list[type] = []
        for part in str(f.type).split("|"):
            types = _JSON_TYPES.get(part.strip().split("[")[0])
            if types is None:
                allowed = []  # an annotation this check does not know: trust the value
                break
            allowed.extend(types)
        value = data[f.name]
        # JSON true is an int to Python, but never a count or a measurement
        wrong = allowed and (
            not isinstance(value, tuple(allowed))
            or (isinstance(value, bool) and bool not in allowed)
        )
        if wrong:
            return f"{f.name} is {type(value).__name__}, expected {f.type}"
    if not isinstance(data["config"].get("method"), str):
        return "config.method is missing or not a string"
    if not all(isinstance(p, dict) and "epoch" in p for p in data.get("curve", [])):
        return "curve points must be objects with an epoch"
    return None
