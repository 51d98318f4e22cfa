"""Quantization registry: every CPU mode runs, shrinks the UNet as stated, and 8-bit modes stay close."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import rel_err, unet_out
from torch import nn

from compression import QUANT_MODES, apply_pruning_, apply_quantization_, available_quant_modes, module_cost
from compression.cost import tensor_bytes

CPU_MODES = [m for m in QUANT_MODES if QUANT_MODES[m].available("cpu")[0]]
CPU_ONLY_MISSING = [m for m in QUANT_MODES if m not in CPU_MODES]

# Whole-UNet bytes over fp32 bytes, at most (the tiny UNet's Linear share is ~41%, SD 1.5's 31%).
MAX_BYTES_RATIO = {
    "fp32": 1.0,
    "bf16": 0.51,
    "int8-weight": 0.30,  # the bar: Linear AND Conv2d in int8
    "int8-dynamic": 0.95,  # Linear only: shrinks by the Linear share, not more
    "int4-weight": 0.20,
    "bf16+int8-weight": 0.30,  # int8 weights, bf16 scales, biases and norms
    "simulated-int": 1.0,  # fake quantization stores floats: no gain, by design
}
# Relative L2 error of the UNet output vs fp32 on a fixed batch. 8-bit modes measured ~0.003-0.013 here.
MAX_REL_ERR = {
    "fp32": 0.0,
    "bf16": 0.05,
    "int8-weight": 0.05,
    "int8-dynamic": 0.05,
    "int4-weight": 0.5,  # 4-bit weights of a random-init UNet: lossy (measured ~0.22), only sanity-checked
    "bf16+int8-weight": 0.05,
    "simulated-int": 0.05,  # at 8 bits
}


def _bits(mode: str) -> int | None:
    return 8 if QUANT_MODES[mode].uses_bits else None


@pytest.fixture(scope="module")
def reference(tiny_pipe, unet_inputs):
    return unet_out(tiny_pipe.unet, unet_inputs), module_cost(tiny_pipe.unet)


def test_every_registered_mode_has_a_bound():
    assert set(CPU_MODES) <= set(MAX_BYTES_RATIO), "a new CPU mode needs its bytes/error bound here"


@pytest.mark.parametrize("mode", CPU_MODES)
def test_cpu_mode_runs_shrinks_and_stays_close(tiny_pipe, unet_inputs, reference, mode):
    ref_out, ref_cost = reference
    unet = apply_quantization_(copy.deepcopy(tiny_pipe.unet), mode, _bits(mode))
    out = unet_out(unet, unet_inputs)
    cost = module_cost(unet)
    assert out.dtype == torch.float32 and out.shape == ref_out.shape  # the pipeline keeps its dtype
    assert torch.isfinite(out).all()
    assert cost.bytes <= MAX_BYTES_RATIO[mode] * ref_cost.bytes, cost.bytes / ref_cost.bytes
    if mode not in ("fp32", "simulated-int"):
        assert cost.bytes < ref_cost.bytes
    assert cost.params == ref_cost.params  # quantization keeps the logical shapes
    assert rel_err(out, ref_out) <= MAX_REL_ERR[mode]


def test_int8_weight_covers_conv2d(tiny_pipe):
    # A Linear-only backend would leave 59% of this UNet (68.5% of SD 1.5's) in fp32.
    unet = apply_quantization_(copy.deepcopy(tiny_pipe.unet), "int8-weight")
    layers = [m for m in unet.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert layers and all(type(m.weight) is not nn.Parameter for m in layers)
    conv = unet.conv_in.weight
    assert tensor_bytes(conv) == conv.numel() * 1 + conv.shape[0] * 4  # int8 data + one fp32 scale per channel


def test_int8_keeps_pruned_zeros(tiny_pipe):
    unet = copy.deepcopy(tiny_pipe.unet)
    apply_pruning_(unet, "l1-unstructured", 0.5)
    apply_quantization_(unet, "int8-weight")
    assert abs(module_cost(unet).sparsity - 0.5) < 0.01  # symmetric int8: a zero stays exactly zero


def test_int4_grid_loses_exact_zeros_as_its_description_says(tiny_pipe):
    unet = copy.deepcopy(tiny_pipe.unet)
    apply_pruning_(unet, "l1-unstructured", 0.5)
    apply_quantization_(unet, "int4-weight")
    assert module_cost(unet).sparsity < 0.25  # measured on the dequantized int4 weights
    assert "stop being exactly zero" in QUANT_MODES["int4-weight"].description


@pytest.mark.parametrize("bits", range(2, 9))
def test_simulated_int_rounds_to_n_bit_grid(tiny_pipe, unet_inputs, reference, bits):
    unet = apply_quantization_(copy.deepcopy(tiny_pipe.unet), "simulated-int", bits)
    for m in unet.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = m.weight.detach().flatten(1)
            levels = max(len(torch.unique(row)) for row in w)
            assert levels <= 2**bits - 1  # symmetric grid: -qmax..qmax
    assert module_cost(unet).bytes == reference[1].bytes  # simulated: stored as float, no gain


def test_simulated_error_shrinks_with_bits(tiny_pipe, unet_inputs, reference):
    errors = [
        rel_err(
            unet_out(apply_quantization_(copy.deepcopy(tiny_pipe.unet), "simulated-int", b), unet_inputs), reference[0]
        )
        for b in (2, 4, 8)
    ]
    assert errors[0] > errors[1] > errors[2], errors


@pytest.mark.parametrize("bits", [None, 1, 9])
def test_simulated_int_bad_bits(tiny_pipe, bits):
    with pytest.raises(ValueError, match="2 to 8"):
        apply_quantization_(copy.deepcopy(tiny_pipe.unet), "simulated-int", bits)


@pytest.mark.parametrize("mode", CPU_ONLY_MISSING)
def test_gpu_only_modes_say_why_and_refuse_on_cpu(tiny_pipe, mode):
    ok, why = QUANT_MODES[mode].available("cpu")
    assert not ok and "CUDA" in why
    assert mode not in available_quant_modes("cpu")
    with pytest.raises(ValueError, match="CUDA"):
        apply_quantization_(copy.deepcopy(tiny_pipe.unet), mode)


def test_fp16_reason_is_the_measured_one():
    assert QUANT_MODES["fp16"].available("cpu") == (False, "offered on CUDA only: ~50x slower than fp32 on CPU")
    assert "8.9" in QUANT_MODES["fp8"].available("cpu")[1]


def test_unknown_mode_lists_known_ones(tiny_pipe):
    with pytest.raises(ValueError) as err:
        apply_quantization_(copy.deepcopy(tiny_pipe.unet), "int3")
    assert all(name in str(err.value) for name in QUANT_MODES)


def test_bf16_casts_io_but_not_the_timestep(tiny_pipe):
    unet = apply_quantization_(copy.deepcopy(tiny_pipe.unet), "bf16")
    assert unet.dtype == torch.bfloat16
    seen = {}
    unet.time_proj.register_forward_pre_hook(lambda m, args: seen.update(t=args[0].dtype))  # returns None
    sample = torch.randn(1, 4, 16, 16)
    out = unet(sample, torch.tensor([999.0]), encoder_hidden_states=torch.randn(1, 8, 32)).sample
    assert out.dtype == torch.float32
    assert seen["t"] == torch.float32  # 999.0 is not representable in bf16; the UNet embeds it in fp32


@pytest.mark.parametrize("mode", list(QUANT_MODES))
def test_registry_entries_describe_themselves(mode):
    q = QUANT_MODES[mode]
    assert q.name == mode and len(q.description) > 20
    if not q.real_gain:
        assert "no speed or memory gain" in q.description


def test_int4_never_builds_quantos_cpp_extension(tiny_pipe, unet_inputs):
    # quanto compiles a C++ unpacker on first CPU use; a build killed midway left a lock that hung CI forever.
    import optimum.quanto.library.extensions.cpp as quanto_cpp

    unet = apply_quantization_(copy.deepcopy(tiny_pipe.unet), "int4-weight")
    assert torch.isfinite(unet_out(unet, unet_inputs)).all()
    packed = torch.tensor([[0x21, 0x43]], dtype=torch.uint8)  # two 4-bit values per byte, low nibble first
    assert torch.ops.quanto.unpack(packed, 4).tolist() == [[1, 3], [2, 4]]
    assert quanto_cpp.ext._lib is None  # the extension was never loaded, so never compiled
