"""Scopes by kind of layer: `linear` is every nn.Linear, `conv` every nn.Conv2d, and together they are `all`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from compression import SCOPES, apply_pruning_, scope_layers
from compression.pruning import SCOPE_REGISTRY, Scope

SD15_CONFIG = Path(__file__).resolve().parent.parent / "assets" / "configs" / "sd15_unet_config.json"
KINDS = {"linear": nn.Linear, "conv": nn.Conv2d}


@pytest.fixture(scope="module")
def sd15_meta():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # shapes only: no 3.4 GB of weights
        return UNet2DConditionModel.from_config(json.loads(SD15_CONFIG.read_text()))


def _weights(module: nn.Module, scope: str) -> int:
    return sum(m.weight.numel() for _, m in scope_layers(module, scope))


def test_every_scope_is_a_described_scope_object():
    assert list(SCOPES) == list(SCOPE_REGISTRY)
    for name, scope in SCOPE_REGISTRY.items():
        assert isinstance(scope, Scope) and scope.name == name
        assert SCOPES[name] == scope.description and len(scope.description) > 20


@pytest.mark.parametrize("which", ["tiny", "sd15"])
def test_linear_and_conv_select_exactly_their_layer_type_and_add_up_to_all(tiny_pipe, sd15_meta, which):
    unet = tiny_pipe.unet if which == "tiny" else sd15_meta
    for scope, cls in KINDS.items():
        expected = [n for n, m in unet.named_modules() if isinstance(m, cls)]
        assert [n for n, _ in scope_layers(unet, scope)] == expected
    every = {n for n, _ in scope_layers(unet, "all")}
    linear, conv = ({n for n, _ in scope_layers(unet, s)} for s in KINDS)
    assert not linear & conv and linear | conv == every
    assert _weights(unet, "linear") + _weights(unet, "conv") == _weights(unet, "all")
    if which == "sd15":
        # The issue's figure: Conv2d holds about 68.5% of SD 1.5's Linear+Conv2d weights, Linear the rest.
        assert 0.66 < _weights(unet, "conv") / _weights(unet, "all") < 0.71


@pytest.mark.parametrize("scope", list(KINDS))
def test_pruning_a_layer_type_leaves_every_other_layer_bit_identical(tiny_pipe, scope):
    unet = copy.deepcopy(tiny_pipe.unet)
    report = apply_pruning_(unet, "l1-unstructured", 0.5, scope=scope)
    assert abs(report.sparsity - 0.5) < 0.005
    inside = {n for n, _ in scope_layers(unet, scope)}
    before = dict(tiny_pipe.unet.named_modules())
    changed = 0
    for name, layer in unet.named_modules():
        for pname, p in layer.named_parameters(recurse=False):
            same = torch.equal(p, getattr(before[name], pname))
            if name in inside and pname == "weight":
                changed += not same
            else:
                assert same, f"{name}.{pname} changed though outside the {scope!r} scope"
    assert changed == len(inside)  # and every layer inside lost weights
