"""Structured (channel) pruning really shrinks the UNet, by the stated amount, and keeps it working; 2:4 masks.

What the amount means for `l1-structured-channels` / `l2-structured-channels`: the fraction removed of the
inner channels of every ResNet block (conv1 outputs = conv2 inputs, with norm2 and the time projection; the
same number kept in every GroupNorm group), of the hidden width of every transformer feed-forward and of the
heads of every attention layer. `pruning.structured_size` turns it into parameters from the layer shapes; these
tests hold the pruned UNet to that number exactly.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import PROMPT, STEPS, rel_err, unet_out
from torch import nn

from compression import CompressionSpec, Engine, apply_pruning_, state_dict_digest
from compression.cost import count_macs
from compression.pruning import PRUNERS, structured_size, two_of_four_mask

STRUCTURED = [m for m, p in PRUNERS.items() if p.kind == "structured"]


def _resnets(unet: nn.Module) -> list[nn.Module]:
    return [m for m in unet.modules() if type(m).__name__ == "ResnetBlock2D"]


def _ffs(unet: nn.Module) -> list[nn.Module]:
    return [m for m in unet.modules() if type(m).__name__ == "FeedForward"]


def _attns(unet: nn.Module) -> list[nn.Module]:
    return [m for m in unet.modules() if type(m).__name__ == "Attention"]


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("amount", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("method", STRUCTURED)
def test_params_shrink_by_the_stated_amount(tiny_pipe, method, amount):
    unet = copy.deepcopy(tiny_pipe.unet)
    before = _params(unet)
    removed, ch_before, ch_after = structured_size(tiny_pipe.unet, amount)
    report = apply_pruning_(unet, method, amount)
    assert report.params_before == before and report.params_after == _params(unet) == before - removed
    assert report.channels_before == ch_before and report.channels_after == ch_after
    # Per GroupNorm group rounding: within one channel of the asked fraction in every group (groups of 2 here).
    assert abs(report.channels_removed - amount) <= 0.25 + 1e-9
    assert report.sparsity < 0.01  # nothing is zeroed: the weights are gone, not masked
    # The layers are physically smaller and their attributes say so.
    for block in _resnets(unet):
        kept = block.conv1.weight.shape[0]
        assert block.conv1.out_channels == kept == block.conv1.bias.shape[0]
        assert block.conv2.in_channels == kept == block.conv2.weight.shape[1]
        assert block.norm2.num_channels == kept == block.norm2.weight.shape[0]
        assert kept % block.norm2.num_groups == 0
        assert block.time_emb_proj.out_features == kept == block.time_emb_proj.weight.shape[0]
    for ff in _ffs(unet):
        hidden = ff.net[2].in_features
        assert ff.net[2].weight.shape[1] == hidden and ff.net[0].proj.out_features == 2 * hidden  # GEGLU halves
    for new, old in zip(_attns(unet), _attns(tiny_pipe.unet)):
        width = old.to_q.out_features // old.heads  # the head width (and the softmax scale) is kept
        assert new.heads == max(1, round((1 - amount) * old.heads)) and new.scale == old.scale
        assert new.to_q.out_features == new.to_k.out_features == new.to_v.out_features == new.heads * width
        assert new.to_out[0].in_features == new.to_out[0].weight.shape[1] == new.heads * width
        assert new.to_k.weight.shape[0] == new.heads * width
    for m in unet.modules():  # permanent: no reparametrization left behind
        assert not m._forward_pre_hooks and not m._forward_hooks


def test_about_30_percent_of_sd15_parameters_is_about_a_third_of_the_channels():
    # The README's and the benchmark's setting, worked out from the SD 1.5 config's shapes (meta device).
    import json

    from diffusers import UNet2DConditionModel

    from compression.bench import SD15_CONFIG, structured_amount

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads(SD15_CONFIG.read_text()))
    total = _params(unet)
    assert total == 859_520_964
    amount = structured_amount(unet)
    assert 0.30 <= amount <= 0.36
    assert abs(structured_size(unet, amount)[0] / total - 0.30) < 0.01


@pytest.mark.parametrize("method", STRUCTURED)
def test_pruned_unet_draws_inside_the_pipeline(tiny_pipe, method):
    engine = Engine(tiny_pipe, "tiny-test")
    digest = state_dict_digest(tiny_pipe.unet)
    r = engine.generate_pair(PROMPT, 0, STEPS, 5.0, CompressionSpec(0.5, method))
    assert not r.compressed_nonfinite and r.compressed_image.size == r.baseline_image.size
    assert r.compressed_cost.params == r.prune_report.params_after < r.baseline_cost.params
    assert r.compressed_cost.bytes < r.baseline_cost.bytes
    assert not np.array_equal(np.asarray(r.baseline_image), np.asarray(r.compressed_image))
    assert state_dict_digest(tiny_pipe.unet) == digest  # built from the baseline, which stays as it was


def test_macs_fall_with_the_channels(tiny_pipe, unet_inputs):
    sample, timestep, hidden = unet_inputs
    base = count_macs(tiny_pipe.unet, sample, timestep, encoder_hidden_states=hidden)
    unet = copy.deepcopy(tiny_pipe.unet)
    apply_pruning_(unet, "l1-structured-channels", 0.5)
    pruned = count_macs(unet, sample, timestep, encoder_hidden_states=hidden)
    assert base and pruned and 0.4 < pruned / base < 0.9
    assert count_macs(unet, sample, timestep, encoder_hidden_states=hidden) == pruned  # counting changes nothing


@pytest.mark.parametrize("p, method", [(1, "l1-structured-channels"), (2, "l2-structured-channels")])
def test_the_smallest_norm_channels_go(tiny_pipe, p, method):
    unet = copy.deepcopy(tiny_pipe.unet)
    block = _resnets(unet)[0]
    with torch.no_grad():  # make channel 3 the least important by far: its slices in conv1, conv2, time proj
        block.conv1.weight[3] *= 1e-3
        block.conv2.weight[:, 3] *= 1e-3
        block.time_emb_proj.weight[3] *= 1e-3
    original = block.conv1.weight.detach().clone()
    apply_pruning_(unet, method, 0.5, scope="resnet")
    kept_rows = block.conv1.weight.detach()
    assert not any(torch.equal(row, original[3]) for row in kept_rows)  # channel 3 was removed
    assert sum(any(torch.equal(row, o) for o in original) for row in kept_rows) == kept_rows.shape[0]


def test_scopes_choose_the_blocks(tiny_pipe):
    res = copy.deepcopy(tiny_pipe.unet)
    apply_pruning_(res, "l1-structured-channels", 0.5, scope="resnet")
    assert all(f.net[2].in_features == g.net[2].in_features for f, g in zip(_ffs(res), _ffs(tiny_pipe.unet)))
    assert all(a.conv1.out_channels < b.conv1.out_channels for a, b in zip(_resnets(res), _resnets(tiny_pipe.unet)))
    ff = copy.deepcopy(tiny_pipe.unet)
    apply_pruning_(ff, "l1-structured-channels", 0.5, scope="feed-forward")
    assert all(a.conv1.out_channels == b.conv1.out_channels for a, b in zip(_resnets(ff), _resnets(tiny_pipe.unet)))
    assert all(f.net[2].in_features < g.net[2].in_features for f, g in zip(_ffs(ff), _ffs(tiny_pipe.unet)))
    cross = copy.deepcopy(tiny_pipe.unet)
    apply_pruning_(cross, "l1-structured-channels", 0.5, scope="cross-attention")
    pairs = list(zip(_attns(cross), _attns(tiny_pipe.unet)))
    assert all((a.heads < b.heads) == b.is_cross_attention for a, b in pairs)  # only cross-attention loses heads
    with pytest.raises(ValueError, match="no channels"):
        apply_pruning_(copy.deepcopy(tiny_pipe.unet), "l1-structured-channels", 0.5, scope="projection")


@pytest.mark.parametrize("method", STRUCTURED)
def test_output_stays_near_at_small_amounts(tiny_pipe, unet_inputs, method):
    reference = unet_out(tiny_pipe.unet, unet_inputs)
    errors = []
    for amount in (0.1, 0.5, 0.9):
        u = copy.deepcopy(tiny_pipe.unet)
        apply_pruning_(u, method, amount)
        out = unet_out(u, unet_inputs)
        assert torch.isfinite(out).all() and out.shape == reference.shape
        errors.append(rel_err(out, reference))
    assert errors[0] < errors[-1], errors


def test_two_of_four_mask_keeps_the_two_largest_of_every_four():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    mask = two_of_four_mask(w)
    groups = mask.view(8, 4, 4)
    assert (groups.sum(-1) == 2).all()  # exactly 2 of every 4
    a = w.abs().view(8, 4, 4)
    kept_min = torch.where(groups, a, torch.inf).amin(-1)
    dropped_max = torch.where(groups, -torch.inf, a).amax(-1)
    assert (kept_min >= dropped_max).all()


def test_two_of_four_is_cuda_only_and_half_only(tiny_pipe):
    ok, why = PRUNERS["semi-structured-2of4"].available("cpu")
    assert not ok and "CUDA" in why
    with pytest.raises(ValueError, match="0.5"):
        CompressionSpec(0.3, "semi-structured-2of4")
    assert CompressionSpec(0.5, "semi-structured-2of4").label.startswith("2:4")
    with pytest.raises(ValueError, match="not available"):
        apply_pruning_(copy.deepcopy(tiny_pipe.unet), "semi-structured-2of4", 0.5)
