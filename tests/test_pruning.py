"""Pruning registry: measured sparsity, permanence, scopes, exact global selection, bounded memory."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from conftest import rel_err, unet_out
from torch import nn

from compression import PRUNERS, SCOPES, apply_pruning_, available_pruners, pruning, scope_layers, state_dict_digest

AMOUNTS = [0.1, 0.3, 0.5, 0.9]
TOLERANCE = 0.005  # 0.5 percentage points
# Zeroing methods: the amount is a share of weights, measured as sparsity. Structured methods remove channels
# instead (tests/test_structured.py); 2:4 runs on CUDA only.
UNSTRUCTURED = [m for m, p in PRUNERS.items() if p.kind == "unstructured"]
CPU_METHODS = [m for m in PRUNERS if PRUNERS[m].available("cpu")[0]]


@pytest.fixture
def unet(tiny_pipe):
    return copy.deepcopy(tiny_pipe.unet)


def _zeros(module: nn.Module) -> int:
    return sum(m.weight.numel() - int(torch.count_nonzero(m.weight)) for _, m in scope_layers(module, "all"))


def _assert_permanent(module: nn.Module, reference_keys):
    # torch.nn.utils.prune would leave weight_orig/weight_mask and a forward pre-hook on every layer.
    assert list(module.state_dict().keys()) == reference_keys
    for name, m in module.named_modules():
        assert not m._forward_pre_hooks and not m._forward_hooks, name
        assert not hasattr(m, "weight_orig") and not hasattr(m, "weight_mask"), name
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            assert type(m.weight) is nn.Parameter


@pytest.mark.parametrize("amount", AMOUNTS)
@pytest.mark.parametrize("method", UNSTRUCTURED)
def test_measured_sparsity_matches_and_pruning_is_permanent(tiny_pipe, unet, method, amount):
    report = apply_pruning_(unet, method, amount, seed=0)
    assert abs(report.sparsity - amount) <= TOLERANCE
    assert report.zeros == _zeros(unet)  # the report counts what is really in the weights
    assert report.weights == sum(m.weight.numel() for _, m in scope_layers(unet, "all"))
    _assert_permanent(unet, list(tiny_pipe.unet.state_dict().keys()))


@pytest.mark.parametrize("method", CPU_METHODS)
def test_zero_amount_is_bit_identical(tiny_pipe, unet, unet_inputs, method):
    report = apply_pruning_(unet, method, 0.0)
    assert state_dict_digest(unet) == state_dict_digest(tiny_pipe.unet)
    assert torch.equal(unet_out(unet, unet_inputs), unet_out(tiny_pipe.unet, unet_inputs))
    assert report.zeros == _zeros(tiny_pipe.unet)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_output_changes_more_with_amount(tiny_pipe, unet_inputs, method):
    reference = unet_out(tiny_pipe.unet, unet_inputs)
    errors = []
    for amount in AMOUNTS:
        u = copy.deepcopy(tiny_pipe.unet)
        apply_pruning_(u, method, amount)
        errors.append(rel_err(unet_out(u, unet_inputs), reference))
    # "On average": a least-squares slope above zero, and the most pruned clearly worse than the least.
    n = len(AMOUNTS)
    mean_a, mean_e = sum(AMOUNTS) / n, sum(errors) / n
    slope = sum((a - mean_a) * (e - mean_e) for a, e in zip(AMOUNTS, errors))
    assert slope > 0, errors
    assert errors[-1] > errors[0], errors


def test_l1_beats_the_random_control(tiny_pipe, unet_inputs):
    reference = unet_out(tiny_pipe.unet, unet_inputs)
    errors = {}
    for method in ("l1-unstructured", "random-unstructured"):
        u = copy.deepcopy(tiny_pipe.unet)
        apply_pruning_(u, method, 0.3)
        errors[method] = rel_err(unet_out(u, unet_inputs), reference)
    assert errors["l1-unstructured"] < errors["random-unstructured"], errors


def test_global_l1_zeroes_the_smallest_magnitudes(tiny_pipe, unet):
    apply_pruning_(unet, "l1-unstructured", 0.4)
    before = torch.cat([m.weight.detach().abs().flatten() for _, m in scope_layers(tiny_pipe.unet)])
    after = torch.cat([m.weight.detach().flatten() for _, m in scope_layers(unet)])
    pruned = after == 0
    assert before[pruned].max() <= before[~pruned].min()


def test_per_layer_l1_prunes_each_layer_by_the_amount(unet):
    apply_pruning_(unet, "l1-unstructured-layer", 0.3)
    for name, m in scope_layers(unet):
        n = m.weight.numel()
        assert n - int(torch.count_nonzero(m.weight)) == round(0.3 * n), name


def test_random_control_is_seeded(tiny_pipe):
    masks = []
    for seed in (1, 1, 2):
        u = copy.deepcopy(tiny_pipe.unet)
        apply_pruning_(u, "random-unstructured", 0.5, seed=seed)
        masks.append(torch.cat([(m.weight == 0).flatten() for _, m in scope_layers(u)]))
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])


@pytest.mark.parametrize("scope", list(SCOPES))
@pytest.mark.parametrize("method", UNSTRUCTURED)
def test_scope_only_touches_its_layers(tiny_pipe, unet, method, scope):
    report = apply_pruning_(unet, method, 0.5, scope=scope)
    assert abs(report.sparsity - 0.5) <= TOLERANCE
    inside = {n for n, _ in scope_layers(unet, scope)}
    assert report.layers == len(inside)
    original = dict(tiny_pipe.unet.named_parameters())
    for name, p in unet.named_parameters():
        layer = name.rsplit(".", 1)[0]
        if layer not in inside or not name.endswith("weight"):
            assert torch.equal(p, original[name]), name  # biases and out-of-scope layers untouched


def test_scope_membership(unet):
    names = {s: {n for n, _ in scope_layers(unet, s)} for s in SCOPES}
    assert "conv_in" in names["all"] and "conv_in" not in names["no-io"]
    assert not any(n.startswith(("conv_out", "time_embedding")) for n in names["no-io"])
    assert all(".attentions." in n for n in names["attention"])
    assert all(".resnets." in n for n in names["resnet"])
    assert names["attention"].isdisjoint(names["resnet"])


@pytest.mark.parametrize("chunk", [7, 1000])
@pytest.mark.parametrize("method", ["l1-unstructured", "random-unstructured"])
def test_global_selection_is_exact_chunk_by_chunk_and_handles_ties(monkeypatch, method, chunk):
    # Tiny chunks force selections that straddle chunk and layer borders; a layer of equal weights makes
    # the threshold a huge tie that must be split exactly.
    monkeypatch.setattr(pruning, "CHUNK", chunk)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 100), nn.Conv2d(3, 8, 3), nn.Linear(100, 7))
    with torch.no_grad():
        model[2].weight.fill_(0.05)
    n = sum(m.weight.numel() for m in model if hasattr(m, "weight"))
    for amount in (0.01, 0.33, 0.5, 0.95):
        m = copy.deepcopy(model)
        report = apply_pruning_(m, method, amount, seed=3)
        assert report.zeros == round(amount * n)


def _vm(key: str) -> float:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to read peak memory")
def test_global_threshold_does_not_copy_all_weights():
    """A global L1 prune over 134M weights (512 MiB) stays far below one extra copy of them.

    torch.cat of |w| alone would add 512 MiB (and a sort or kthvalue more); the chunked radix select adds a few
    16 MiB chunks. Peak RSS is read from the kernel (VmHWM after resetting it through clear_refs).
    """
    apply_pruning_(nn.Sequential(nn.Linear(512, 512)), "l1-unstructured", 0.3)  # first-use allocations
    model = nn.Sequential(*[torch.nn.utils.skip_init(nn.Linear, 4096, 4096, bias=False) for _ in range(8)])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    before = _vm("VmRSS")
    report = apply_pruning_(model, "l1-unstructured", 0.3)
    growth = _vm("VmHWM") - before
    assert abs(report.sparsity - 0.3) < 1e-6
    assert growth < 0.5 * weight_bytes, f"peak grew {growth / 2**20:.0f} MiB for {weight_bytes / 2**20:.0f} MiB"


@pytest.mark.parametrize("amount", [-0.1, 0.96, 1.0, float("nan"), "0.3", True])
def test_bad_amount(unet, amount):
    with pytest.raises(ValueError, match="0.95"):
        apply_pruning_(unet, "l1-unstructured", amount)


def test_unknown_method_and_scope_list_known_ones(unet):
    with pytest.raises(ValueError) as err:
        apply_pruning_(unet, "magnitude", 0.3)
    assert all(name in str(err.value) for name in PRUNERS)
    with pytest.raises(ValueError) as err:
        apply_pruning_(unet, "l1-unstructured", 0.3, scope="everything")
    assert all(name in str(err.value) for name in SCOPES)


def test_scope_that_selects_nothing_raises():
    with pytest.raises(ValueError, match="selects no"):
        apply_pruning_(nn.Sequential(nn.Linear(4, 4)), "l1-unstructured", 0.3, scope="attention")


@pytest.mark.parametrize("method", list(PRUNERS))
def test_registry_entries_describe_themselves(method):
    p = PRUNERS[method]
    assert p.name == method and p.short and len(p.description) > 20
    assert p.kind in ("unstructured", "structured", "semi-structured")
    if method in CPU_METHODS:
        assert p.available("cpu") == (True, "")
        assert method in available_pruners("cpu")
    else:  # GPU-only methods say why, and the registry does not offer them here
        ok, why = p.available("cpu")
        assert not ok and "CUDA" in why and method not in available_pruners("cpu")
