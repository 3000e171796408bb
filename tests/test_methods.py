import pytest
import torch

from locbench.data.base import DataInfo
from locbench.errors import UserError
from locbench.methods import METHODS, Method, make_params
from locbench.nets.backbone import get_backbone
from locbench.nets.split import Split

INFO = DataInfo("cifar10", 10, (3, 32, 32), (0.5,) * 3, (0.5,) * 3)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(name: str, net: str, K: int, **params) -> Method:
    backbone = get_backbone(net)
    cls = METHODS.get(name)
    split = cls.plan_split(Split.uniform(backbone.n_hidden, K), None)
    return cls(backbone, split, INFO, make_params(cls, params))


def dgl_aux_params(c: int, side: int, classes: int = 10) -> int:
    """Hand count of the AugLocal authors' DGL head: 3 x (1x1 conv + BN), pool to m x m,
    2 x (Linear(f, f) no bias + BN1d), Linear(f, classes); m = min(ceil(side/4), 2)."""
    m = min(-(-side // 4), 2)
    f = c * m * m
    return 3 * (c * c + 2 * c) + 2 * (f * f + 2 * f) + f * classes + classes


def test_dgl_resnet32_K16_aux_parameters():
    dgl = build("dgl", "resnet32", 16)
    assert len(dgl.aux) == 15
    # cuts after units 0..14: six 16x32x32 maps, five 32x16x16, four 64x8x8
    per_cut = (
        [dgl_aux_params(16, 32)] * 6 + [dgl_aux_params(32, 16)] * 5 + [dgl_aux_params(64, 8)] * 4
    )
    assert [count(a) for a in dgl.aux] == per_cut
    assert count(dgl) == 838_294 == 6 * 9_962 + 5 * 37_834 + 4 * 147_338


def test_dgl_paper_variant_has_the_deeper_mlp():
    dgl = build("dgl", "resnet32", 2, variant="paper", hidden_dim=128, mlp_layers=3)
    # cut after unit 7: a 32x16x16 map -> f = 32 * 2 * 2 = 128
    f = 128
    expected = 3 * (32 * 32 + 64) + (f * 128 + 256) + 2 * (128 * 128 + 256) + 128 * 10 + 10
    assert [count(a) for a in dgl.aux] == [expected]


def test_dgl_aux_output_is_logits_of_every_cut():
    dgl = build("dgl", "smallnet", 4)
    backbone = get_backbone("smallnet")
    for k, aux in enumerate(dgl.aux):
        h = torch.randn(5, *backbone.shapes[k])
        assert aux(h).shape == (5, 10)


def test_bp_has_no_aux_and_one_module():
    bp = build("bp", "resnet32", 8)
    assert bp.split.K == 1 and len(bp.aux) == 0 and count(bp) == 0


def test_method_params_are_checked():
    dgl = METHODS.get("dgl")
    assert make_params(dgl, {"mlp_layers": "4"}).mlp_layers == 4
    with pytest.raises(UserError, match="has no parameter nope; known: variant, hidden_dim"):
        make_params(dgl, {"nope": "1"})
    with pytest.raises(UserError, match="must be an integer"):
        make_params(dgl, {"hidden_dim": "wide"})
    with pytest.raises(UserError, match="one of auglocal, paper"):
        make_params(dgl, {"variant": "deep"})


def test_registry_lists_the_seed_methods():
    assert {"bp", "dgl"} <= set(METHODS.names())
    known = "auglocal, bp, bp-accum, bp-ckpt, dgl, hpff, infopro, man, mlaan, predsim"
    with pytest.raises(UserError, match=f"unknown method 'infopr'; known: {known}"):
        METHODS.get("infopr")
