"""Every quantization mode, each in one place: its availability check, its transform, its registry entry.

Registry order is the order below (the UI lists the modes in it). A per-layer function gets one module that
holds tensors (possibly the baseline's own: it must not write into them) and returns it or its replacement;
see registry.py for how the whole-module form follows from it.
"""

from __future__ import annotations

import torch
from torch import nn

from . import quanto_backend, torchao_backend
from .casting import cast_io_finish, cast_layer, set_tensor, to_dtype_
from .registry import register_mode

MIN_BITS, MAX_BITS = 2, 8
_WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)

# ---------------------------------------------------------------------------------------------- fp32


@register_mode("fp32", "", "No quantization: the baseline's own weights and dtype (fp32 on CPU).")
def none_layer(module: nn.Module, bits: int | None) -> nn.Module:
    return module


# ---------------------------------------------------------------------------------------------- bf16


def bf16_check(device: torch.device) -> tuple[bool, str]:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return False, "this GPU has no bfloat16 support"
    return True, ""


def bf16_whole_(module: nn.Module, bits: int | None) -> nn.Module:
    return to_dtype_(module, torch.bfloat16)  # in place, honouring `_keep_in_fp32_modules` (see to_dtype_)


def bf16_finish(module: nn.Module, io_dtype: torch.dtype) -> nn.Module:
    return cast_io_finish(module, torch.bfloat16, io_dtype)


@register_mode(
    "bf16",
    "bf16",
    "bfloat16 weights and compute: half the bytes, fp32's range (no fp16-style overflow to NaN); on CPUs "
    "with AMX/AVX512-BF16 about 2-3x faster than fp32.",
    quantize_=bf16_whole_,
    check=bf16_check,
    finish_=bf16_finish,
)
def bf16_layer(module: nn.Module, bits: int | None) -> nn.Module:
    return cast_layer(module, torch.bfloat16)


# ---------------------------------------------------------------------------------------------- fp16


def fp16_check(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, "offered on CUDA only: ~50x slower than fp32 on CPU"
    return True, ""


def fp16_whole_(module: nn.Module, bits: int | None) -> nn.Module:
    return to_dtype_(module, torch.float16)


def fp16_finish(module: nn.Module, io_dtype: torch.dtype) -> nn.Module:
    return cast_io_finish(module, torch.float16, io_dtype)


@register_mode(
    "fp16",
    "fp16",
    "float16 weights and compute: half the bytes; fast on GPUs, can overflow to NaN.",
    quantize_=fp16_whole_,
    check=fp16_check,
    finish_=fp16_finish,
)
def fp16_layer(module: nn.Module, bits: int | None) -> nn.Module:
    return cast_layer(module, torch.float16)


# ---------------------------------------------------------------------------------------------- fp8


def fp8_check(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, "needs a CUDA GPU of compute capability 8.9+ (Ada, Hopper); none here"
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < (8, 9):
        return False, f"needs CUDA compute capability 8.9+ (this GPU is sm{major}{minor})"
    return torchao_backend.available(device)


def fp8_whole_(module: nn.Module, bits: int | None) -> nn.Module:
    # Row-wise float8 scaling expects bfloat16 activations; the rest of the UNet (convs, norms) runs in bf16.
    # Not exercised by CI (no GPU there).
    to_dtype_(module, torch.bfloat16)
    return torchao_backend.quantize_whole_(module, torchao_backend.fp8_config)


@register_mode(
    "fp8",
    "fp8",
    "float8 (e4m3) dynamic activations x float8 weights on Linear layers (torchao), bf16 elsewhere: "
    "fast matmuls on Ada/Hopper GPUs.",
    quantize_=fp8_whole_,
    check=fp8_check,
    finish_=bf16_finish,
)
def fp8_layer(module: nn.Module, bits: int | None) -> nn.Module:
    cast_layer(module, torch.bfloat16)
    return torchao_backend.quantize_linear_(module, torchao_backend.fp8_config)


# ---------------------------------------------------------------------------------------------- int8-weight


@register_mode(
    "int8-weight",
    "int8 weights",
    "int8 weights with per-output-channel scales on every Linear AND Conv2d (optimum-quanto): about a "
    "quarter of the fp32 bytes; weights are dequantized on the fly, so no faster on CPU.",
    check=quanto_backend.available,
)
def int8_weight_layer(module: nn.Module, bits: int | None) -> nn.Module:
    # Same tensors as quanto's quantize() + freeze(), built faster (see quanto_backend._rowwise_int8).
    return quanto_backend.int8_weight_layer(module, None)


# ---------------------------------------------------------------------------------------------- int8-dynamic


def int8_dynamic_whole_(module: nn.Module, bits: int | None) -> nn.Module:
    # Linear only: torchao's Int8Tensor has no convolution kernel (see torchao_backend.py).
    return torchao_backend.quantize_whole_(module, torchao_backend.int8_dynamic_config)


@register_mode(
    "int8-dynamic",
    "int8 dynamic",
    "int8 activations (quantized per call) x int8 weights on Linear layers only (torchao); convolutions "
    "stay fp32, so the UNet shrinks by the Linear share only.",
    quantize_=int8_dynamic_whole_,
    check=torchao_backend.available,
)
def int8_dynamic_layer(module: nn.Module, bits: int | None) -> nn.Module:
    return torchao_backend.quantize_linear_(module, torchao_backend.int8_dynamic_config)


# ---------------------------------------------------------------------------------------------- int4-weight


@register_mode(
    "int4-weight",
    "int4 weights",
    "int4 weights in groups of 128 with scale and shift on every Linear AND Conv2d (optimum-quanto): "
    "about a seventh of the fp32 bytes, visibly lossy; its asymmetric grid has no exact zero, so pruned "
    "weights stop being exactly zero (measured sparsity drops).",
    check=quanto_backend.available,
)
def int4_weight_layer(module: nn.Module, bits: int | None) -> nn.Module:
    # Same tensors as quanto's quantize() + freeze(), built faster (see quanto_backend._grouped_int4).
    return quanto_backend.int4_weight_layer(module)


# ---------------------------------------------------------------------------------------------- bf16+int8-weight


def bf16_int8_check(device: torch.device) -> tuple[bool, str]:
    ok, why = bf16_check(device)
    return quanto_backend.available(device) if ok else (ok, why)


@register_mode(
    "bf16+int8-weight",
    "bf16 + int8 weights",
    "int8 weights (per output channel, bf16 scales) on every Linear AND Conv2d, everything else and the "
    "compute in bfloat16 (optimum-quanto): about a quarter of the fp32 bytes and most of bf16's speed.",
    check=bf16_int8_check,
    finish_=bf16_finish,
)
def bf16_int8_layer(module: nn.Module, bits: int | None) -> nn.Module:
    return quanto_backend.int8_weight_layer(module, torch.bfloat16)


# ---------------------------------------------------------------------------------------------- simulated-int
#
# Own code, on purpose: torchao's fake quantizers (QAT) wrap Linear only and keep hooks around; a study of
# "how many bits do the weights need" wants every Linear and Conv2d rounded once, then plain float kernels.


def _check_bits(bits: int | None) -> int:
    if bits is None or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"simulated-int needs bits from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def fake_quantized(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """`weight` rounded to `bits` bits per output channel (symmetric), as a new float tensor."""
    qmax = 2 ** (bits - 1) - 1  # symmetric: 8 bits -> [-127, 127], 2 bits -> [-1, 1] (ternary)
    scale = weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel stays zero
    return torch.round(weight / scale).clamp_(-qmax, qmax) * scale


@torch.no_grad()
def fake_quant_whole_(module: nn.Module, bits: int | None) -> nn.Module:
    # Rounds into the existing weights (keeping the caller's Parameter objects), and checks `bits` even for a
    # module without layers; the per-layer form makes new tensors instead, as `layer_` functions must.
    bits = _check_bits(bits)
    for m in module.modules():
        if isinstance(m, _WEIGHT_LAYERS):
            m.weight.data.copy_(fake_quantized(m.weight.data, bits))
    return module


@register_mode(
    "simulated-int",
    "sim int{bits} (fake)",
    "Weights rounded to N bits (2-8, per output channel, symmetric) and stored back as float: shows the "
    "quality loss of N-bit weights. Simulated: no speed or memory gain.",
    quantize_=fake_quant_whole_,
    real_gain=False,
    uses_bits=True,
)
@torch.no_grad()
def fake_quant_layer(module: nn.Module, bits: int | None) -> nn.Module:
    if not isinstance(module, _WEIGHT_LAYERS):
        return module
    set_tensor(module, "weight", fake_quantized(module.weight.detach(), _check_bits(bits)))
    return module
