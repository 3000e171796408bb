"""``locbench describe``: what a configuration builds, without training it.

The split, each module's units and auxiliary layers with parameter counts, and FLOPs per
training step (forward + backward) for the backbone and the auxiliary nets, counted as every
run counts them (:mod:`locbench.harness.flops`).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from locbench.analysis.estimate import estimate
from locbench.errors import UserError
from locbench.harness.build import build, resolve
from locbench.harness.flops import TRACE_ERRORS, config_flops
from locbench.measure.pipeline_bound import pipeline_bounds
from locbench.settings.run_config import RunConfig


def count(modules: list[nn.Module], frozen: bool | None = None) -> int:
    """Parameters of ``modules``: all, or only the frozen (``requires_grad=False``) or only the
    trainable ones."""
    params = {id(p): p for m in modules for p in m.parameters()}.values()
    return sum(p.numel() for p in params if frozen is None or frozen != p.requires_grad)


def layer_name(m: nn.Module) -> str:
    """A short description of one auxiliary layer, e.g. ``BasicBlock(16->32, s2)``."""
    if isinstance(m, nn.Conv2d):
        k = "x".join(map(str, m.kernel_size))
        return f"Conv2d({m.in_channels}->{m.out_channels}, {k}, s{m.stride[0]})"
    if isinstance(m, nn.Linear):
        return f"Linear({m.in_features}->{m.out_features})"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return f"{type(m).__name__}({m.num_features})"
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    if convs:
        stride = max(c.stride[0] for c in convs)
        return f"{type(m).__name__}({convs[0].in_channels}->{convs[-1].out_channels}, s{stride})"
    return type(m).__name__


def aux_layers(module: nn.Module) -> list[str]:
    """Each layer's short description; ``(frozen)`` after one whose parameters are all frozen
    (a copy moved by a moving average, never by the optimizer)."""
    children = list(module.children()) if isinstance(module, nn.Sequential) else [module]
    return [layer_name(c) + (" (frozen)" if _frozen(c) else "") for c in children]


def _frozen(m: nn.Module) -> bool:
    params = list(m.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def describe(config: RunConfig, batch_size: int = 64, num_classes: int = 10) -> dict:
    """Everything ``locbench describe --json`` prints."""
    run = resolve(config)
    backbone, method = build(run, num_classes=num_classes)
    split = method.split
    backbone_params = backbone.num_params()
    aux_params = count([method])  # every parameter the method owns
    module_flops: list[int] = []
    try:
        total, aux_flops = config_flops(run, None, batch_size, num_classes, None, module_flops)
    except UserError:
        raise
    except TRACE_ERRORS as e:  # e.g. BatchNorm1d given a batch of one
        text = str(e).strip()
        message = text.splitlines()[0] if text else type(e).__name__
        raise UserError(f"one training step at batch {batch_size} fails: {message}") from None
    # The estimated peak while each module's phases run (forward, local loss, backward), at the
    # same batch: where the step's memory peaks, and what --cuts balanced evens out.
    peaks = estimate(run, batch_size, None, num_classes)
    modules = []
    for k in range(split.K):
        units = list(split.unit_range(k))
        aux = method.aux_modules(k) if k < split.K - 1 else []  # the last module has the head
        last = k == split.K - 1
        own_units = [backbone.units[u] for u in units] + ([backbone.units[-1]] if last else [])
        modules.append(
            {
                "index": k,
                "units": units,
                "with_head": last,
                "output_shape": list(backbone.shapes[units[-1]]),
                "params_backbone": count(own_units),
                "params_aux": count(aux),
                "params_aux_frozen": count(aux, frozen=True),
                "layers": [name for m in aux for name in aux_layers(m)],
                "flops_aux": 0 if last else aux_flops[k],
                "flops": module_flops[k],  # forward + local loss + backward of the module
                "peak_bytes": peaks.module_peaks[k],  # estimated, while module k runs
            }
        )
    return {
        "method": config.method,
        "net": config.net,
        "K_requested": config.K,
        "K": split.K,
        "module_starts": list(split.starts),
        "cuts": [split.last_unit(k) for k in range(split.K - 1)],
        # the search's record when the cuts are --cuts balanced (None otherwise)
        "balanced_cuts": run.balance.as_dict() if run.balance is not None else None,
        "params_backbone": backbone_params,
        "params_aux": aux_params,  # trainable and frozen
        "params_aux_frozen": count([method], frozen=True),
        "params_total": backbone_params + aux_params,
        # what the method declares beyond the seeds' shape (the contract's Capabilities), and
        # each module's overlap (0: none)
        "capabilities": dataclasses.asdict(method.capabilities),
        "overlaps": [method.overlap(k) if k else 0 for k in range(split.K)],
        "modules": modules,
        "batch_size": batch_size,
        "peak_bytes": peaks.peak_bytes,  # the estimated peak of the whole step
        "peak_bytes_rounded": peaks.peak_bytes_rounded,
        "flops_per_step": {
            "backbone": total - sum(aux_flops),
            "aux": sum(aux_flops),
            "total": total,
        },
        # the pipeline bound from the modules' FLOPs (locbench.measure.pipeline_bound)
        "pipeline_bound": pipeline_bounds(module_flops),
    }


def format_description(d: dict) -> str:
    asked = d["K_requested"]
    header = (
        f"{'module':>6}  {'units':<9} {'output':<12} {'aux params':>10} {'aux GFLOP':>10} "
        f"{'peak MiB':>9}"
    )
    lines = [
        f"{d['method']} on {d['net']}: {d['K']} modules"
        + (f" (K={asked} requested)" if asked not in (None, d["K"]) else ""),
        header + "  aux layers",
    ]
    for m in d["modules"]:
        units = m["units"]
        span = f"{units[0]}" if len(units) == 1 else f"{units[0]}-{units[-1]}"
        if m["with_head"]:
            span += "+head"
        shape = "x".join(map(str, m["output_shape"]))
        lines.append(
            f"{m['index']:>6}  {span:<9} {shape:<12} {m['params_aux']:>10,} "
            f"{m['flops_aux'] / 1e9:>10.3f} {m['peak_bytes'] / 2**20:>9.1f}  "
            f"{', '.join(m['layers'])}"
        )
    f = d["flops_per_step"]
    lines += [
        f"params: backbone {d['params_backbone']:,}, auxiliary {d['params_aux']:,}"
        + (f" ({d['params_aux_frozen']:,} frozen)" if d["params_aux_frozen"] else "")
        + f", total {d['params_total']:,}",
        f"FLOPs per training step at batch {d['batch_size']} (forward + backward): backbone "
        f"{f['backbone'] / 1e9:.3f} G, auxiliary {f['aux'] / 1e9:.3f} G, "
        f"total {f['total'] / 1e9:.3f} G",
        f"estimated peak memory per module (while it runs) at batch {d['batch_size']}; the "
        f"step's peak {d['peak_bytes_rounded'] / 2**20:.1f} MiB (CUDA-rounded)",
    ]
    declared = [k for k, v in d["capabilities"].items() if v is True]
    if d["capabilities"]["steady_after"] != 1:
        declared.append(f"steady_after={d['capabilities']['steady_after']}")
    if any(d["overlaps"]):
        declared.append(f"overlaps {d['overlaps']}")
    if declared:
        lines.append("declares: " + ", ".join(declared))
    if d.get("balanced_cuts"):
        lines.append(f"cuts {d['cuts']}: balanced (--cuts balanced) at batch "
                     f"{d['balanced_cuts']['batch_size']}")  # fmt: skip
    bound = d["pipeline_bound"]
    if bound["speedup"] is not None:
        per_module = ", ".join(f"{m['flops'] / 1e9:.3f}" for m in d["modules"])
        stages = "; ".join(
            f"P={s['P']} {s['bound']:.2f}x {'|'.join(_span(g) for g in s['groups'])}"
            for s in bound["stages"]
        )
        lines.append(
            f"pipeline bound from FLOPs (module GFLOP {per_module}): {bound['speedup']:.2f}x "
            f"with one stage per module" + (f"; best stages {stages}" if stages else "")
        )
    return "\n".join(lines)


def _span(group: list[int]) -> str:
    return str(group[0]) if len(group) == 1 else f"{group[0]}-{group[-1]}"
