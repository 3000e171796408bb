"""Named sweep grids: the published configurations (docs/reference.md) and a CPU preset.

Training settings (batch, lr, epochs, warm-up) come from the dataset presets in
:mod:`locbench.settings.run_config` (the AugLocal settings) unless a preset says otherwise.
AugLocal's auxiliary depth: d = 2 for ResNet-32 (the README of the authors' code), d = 3 for
ResNet-110. InfoPro's lambdas default to the published ones for ResNet-32 and ResNet-110. ImageNet:
ResNet-34 (K = 17) and ResNet-101 (K = 34), one seed each (a run takes GPU-days), AugLocal depth 4
for both (no published depth specific to ResNet-101 is recorded here, so the ResNet-34 one is kept);
VGG-13/19 are not presets yet.
"""

from __future__ import annotations

from locbench.registry import Registry
from locbench.study.grid import Grid

SEEDS = (0, 1, 2)
ALL = ("bp", "bp-ckpt", "dgl", "infopro", "predsim", "auglocal")
#: The field's newest, published at the same CIFAR-family settings (ResNet-32 K=16, ResNet-110
#: K=55): in those presets, not in the CPU one, whose sweeps the tests run.
NEWEST = ("man", "hpff", "mlaan")

PRESETS: Registry[Grid] = Registry("preset")

# Minutes on 2 CPU cores: every method on the bundled digits, one seed.
PRESETS.add(
    "cpu-digits",
    Grid(
        methods=ALL,
        nets=("smallnet",),
        K=(4,),
        aux_depth=(1,),
        seeds=(0,),
        run={"dataset": "digits", "epochs": 3},
    ),
)
for dataset in ("cifar10", "svhn", "stl10"):
    PRESETS.add(
        f"{dataset}-resnet32",
        Grid(
            methods=ALL + NEWEST,
            nets=("resnet32",),
            K=(16,),
            aux_depth=(2,),
            seeds=SEEDS,
            run={"dataset": dataset},
        ),
    )
    PRESETS.add(
        f"{dataset}-resnet110",
        Grid(
            methods=ALL + NEWEST,
            nets=("resnet110",),
            K=(55,),
            aux_depth=(3,),
            seeds=SEEDS,
            run={"dataset": dataset},
        ),
    )

# The published ImageNet split: one module per residual block.
for net, K in (("resnet34", 17), ("resnet101", 34)):
    PRESETS.add(
        f"imagenet-{net}",
        Grid(
            methods=ALL,
            nets=(net,),
            K=(K,),
            aux_depth=(4,),
            seeds=(0,),
            run={"dataset": "imagenet"},
        ),
    )
