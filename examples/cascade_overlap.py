"""Overlapping modules: module k's loss also trains the last units of module k-1.

Greedy local learning cuts every gradient at a module's boundary. HPFF's cascade (ECCV 2024)
and LoCo (NeurIPS 2020) let modules overlap instead: module k reruns the last units of module
k-1 from their input and trains them with its own loss as well, so that the units next to a
cut learn from both sides of it. This file declares that overlap and nothing else (the
auxiliary nets are the contract's default: pooling and a linear classifier), written only
against the documented contract (``locbench/methods/base.py``, "Overlap")::

    locbench run --method examples/cascade_overlap.py:CascadeOverlap --net smallnet --K 4 \\
        --dataset digits --hp units=1

The harness runs the overlap: it keeps those units' input from module k-1's forward, reruns
them in module k's, accumulates both losses' gradients in order, and (``--nproc``) averages
them once per step; ``--stages`` refuses it before training.
"""

from __future__ import annotations

from dataclasses import dataclass

from locbench import Method, param


@dataclass(frozen=True)
class Params:
    units: int = param(1, "last units of module k-1 that module k reruns and trains", low=1)


class CascadeOverlap(Method):
    Params = Params

    def overlap(self, k: int) -> int:
        # never more units than module k-1 has
        return min(self.params.units, len(self.split.unit_range(k - 1)))
