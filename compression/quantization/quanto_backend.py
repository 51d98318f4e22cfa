"""Every optimum-quanto detail the lab relies on, in one file: changing backend means replacing this file.

The modes int8-weight, int4-weight and bf16+int8-weight ask only for `int8_weight_layer`, `int4_weight_layer`
and `available`. Here live the quanto classes the lab builds (QLinear/QConv2d via `quantize_module`,
`WeightQBytesTensor`, `WeightQBitsTensor`, `PackedTensor`, the lab's `DequantQLinear`), the CPU unpack override
and the fast weight builders. Helpers that save a quantized UNet (`quantization_map()`) and reload it
(`requantize`) belong here too; `quanto()` gives the classes they need (including `DequantQLinear`, which a
reload must restore in place of the `QLinear` that `requantize` builds).

Why quanto (checked on torch 2.13 CPU, quanto 0.2.7): it converts Conv2d as well as Linear (torchao's int8
tensors have no convolution kernel), which is what lets int8 weights shrink a whole UNet to about a quarter,
and it packs int4 two values a byte.
"""

from __future__ import annotations

import functools
import importlib.util
import types

import torch
from torch import nn

from ..scratch import scratch as _scratch
from ._quiet import quiet_backend_import
from .casting import cast_layer

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


def available(device: torch.device) -> tuple[bool, str]:
    if importlib.util.find_spec("optimum.quanto") is None:
        return False, "needs optimum-quanto: pip install -r requirements.txt"
    return True, ""


def _unpack_in_torch(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """quanto's unpacking of 2/4-bit values from uint8 (low bits first, stacked along dim 0), in torch ops."""
    parts = [(packed & (2 ** (bits * (i + 1)) - 1)) >> (bits * i) for i in range(8 // bits)]
    return torch.cat(parts).to(torch.uint8)


def _torch_unpack_on_cpu() -> torch.library.Library:
    """Route `quanto::unpack` on CPU to `_unpack_in_torch` instead of quanto's C++ extension.

    quanto compiles that extension on first use (torch.utils.cpp_extension, into its package folder): ~35-50 s
    on 2 cores, a C++ compiler required, and a build killed midway (a restarted Space, a test's server
    subprocess) leaves a lock file behind on which every later int4 request waits forever -- CI hung on exactly
    that. The same six tensor ops run in microseconds per layer, so the lab never builds it. The registration
    lives as long as the returned Library: `quanto()` (cached, so called once) keeps it.
    """
    lib = torch.library.Library("quanto", "IMPL")
    lib.impl("unpack", _unpack_in_torch, "CPU", allow_override=True)
    return lib


@functools.cache
def quanto() -> types.SimpleNamespace:
    """The quanto names the lab uses, imported once (plus `DequantQLinear` and the CPU unpack override)."""
    # Imported once: the per-layer paths would otherwise pay the logging-level dance for every layer
    # (setLevel clears every logger's cache: 0.4 s over an SD 1.5 UNet's 282 layers).
    with quiet_backend_import():
        from optimum.quanto import qint4, qint8
        from optimum.quanto.nn import QLinear, quantize_module
        from optimum.quanto.tensor.packed import PackedTensor
        from optimum.quanto.tensor.weights import WeightQBitsTensor, WeightQBytesTensor

    class DequantQLinear(QLinear):
        """quanto's QLinear computing with its dequantized weight.

        On CPU, quanto sends bf16 activations x int8 weights to `torch._weight_int8pack_mm`, a kernel made for
        decode-sized batches: at a UNet's 8192 tokens it ran 7-15x slower than a bf16 matmul here (320x2560:
        192 ms vs 27 ms), while dequantizing the weight first costs ~10% of the matmul.
        """

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(input, self.weight.dequantize(), self.bias)

    return types.SimpleNamespace(
        unpack_lib=_torch_unpack_on_cpu(),
        qint4=qint4,
        qint8=qint8,
        quantize_module=quantize_module,
        WeightQBytesTensor=WeightQBytesTensor,
        WeightQBitsTensor=WeightQBitsTensor,
        PackedTensor=PackedTensor,
        QLinear=QLinear,
        DequantQLinear=DequantQLinear,
    )


def _rowwise_int8(weight: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 data, scale) per output channel, symmetric: quanto's qint8 weights, computed in one pass.

    Own code, on purpose: quanto's `freeze()` computes the same thing (scale = max|w| / 127 per output
    channel, data = round(w / scale)) with ~6 full-size float temporaries per layer; on an SD-1.5-sized UNet
    that took 7-16 s on this CPU. Here rows are taken a few MiB at a time, so max|w|, the division and the
    rounding of a block of rows all run while it is in cache, and memory is read once. Results are
    bit-identical to quanto's for an fp32 scale (tests/test_fast_compression.py checks it). With a bf16
    scale the data is rounded against the bf16 scale that dequantization will really use.
    """
    w2 = weight.detach().reshape(weight.shape[0], -1)
    out_rows, width = w2.shape
    data = torch.empty(w2.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(out_rows, dtype=scale_dtype, device=weight.device)
    rows = max(1, (1 << 20) // max(1, width))  # ~4 MiB of float temporaries at a time
    for r in range(0, out_rows, rows):
        block = w2[r : r + rows]
        work = _scratch(block.numel(), torch.float32, block.device).view(block.shape)
        torch.abs(block, out=work)
        s = work.amax(dim=1).div_(127).to(scale_dtype)
        scale[r : r + rows] = s
        d = s.float()
        d = torch.where(d > 0, d, torch.ones_like(d))[:, None]  # all-zero rows stay 0 (quanto: 0/0)
        torch.div(block, d, out=work)
        data[r : r + rows] = work.round_().clamp_(-127, 127)
    shape = (out_rows,) + (1,) * (weight.dim() - 1)
    return data.view(weight.shape), scale.view(shape)


def _grouped_int4(weight: torch.Tensor, group_size: int):
    """quanto's qint4 weight (groups along the input dim, scale and float shift per group, two values a byte,
    first half of the groups in the low nibbles), computed a few MiB of groups at a time in one pass.

    Own code for the same reason as `_rowwise_int8`: quanto's `freeze()` makes ~8 full-size temporaries per
    layer (6 s on SD 1.5 here). Bit-identical to quanto's result (tests/test_fast_compression.py).
    """
    q = quanto()
    w = weight.detach()
    grouped = w.reshape(-1, group_size)
    groups = grouped.shape[0]
    half = (groups + 1) // 2  # quanto's pack_weights: row i and row half + i share a byte
    packed = torch.zeros(half, group_size, dtype=torch.uint8, device=w.device)
    scale = torch.empty(groups, 1, dtype=w.dtype, device=w.device)
    shift = torch.empty(groups, 1, dtype=w.dtype, device=w.device)
    rows = max(1, (1 << 20) // group_size)
    for r in range(0, groups, rows):
        block = grouped[r : r + rows]
        low, high = block.amin(dim=1, keepdim=True), block.amax(dim=1, keepdim=True)
        sc = (high - low) / 15  # quanto's MaxOptimizer: (max - min) / (qmax - qmin)
        sh = -low
        scale[r : r + rows], shift[r : r + rows] = sc, sh
        sc = torch.where(sc > 0, sc, torch.ones_like(sc))  # a constant group: its values all map to 0
        work = _scratch(block.numel(), w.dtype, w.device).view(block.shape)
        torch.add(block, sh, out=work).div_(sc).round_().clamp_(0, 15)  # quanto: round((w + shift) / scale)
        ints = _scratch(block.numel(), torch.uint8, w.device, slot=1).view(block.shape)
        ints.copy_(work)
        for lo_row, hi_row, nibble in ((r, min(r + rows, half), 0), (max(r, half), min(r + rows, groups), 4)):
            if hi_row > lo_row:
                part = ints[lo_row - r : hi_row - r]
                if nibble:
                    part.bitwise_left_shift_(nibble)
                packed[lo_row - (half if nibble else 0) : hi_row - (half if nibble else 0)].bitwise_or_(part)
    data = q.PackedTensor(packed, 4, torch.Size((groups, group_size)), (group_size, 1))
    return q.WeightQBitsTensor(q.qint4, 0, group_size, w.size(), w.stride(), data, scale, shift)


def _is_float_weight_layer(module: nn.Module) -> bool:
    # A layer already holding a quantized tensor subclass is left alone.
    return isinstance(module, WEIGHT_LAYERS) and type(module.weight) is nn.Parameter


def int4_weight_layer(module: nn.Module) -> nn.Module:
    """Linear/Conv2d -> quanto QLinear/QConv2d holding packed int4 weights; other modules as they are."""
    if not _is_float_weight_layer(module):
        return module
    q = quanto()
    qmodule = q.quantize_module(module, weights=q.qint4)  # meta-built; picks quanto's group size (128, 96, 64)
    group = qmodule.weight_group_size
    if group is None or module.weight.dtype != torch.float32:
        qmodule.freeze()  # per-channel int4 for narrow layers, or a dtype quanto may pack differently
    else:
        qmodule.weight = nn.Parameter(_grouped_int4(module.weight, group), requires_grad=False)
    return qmodule


def int8_weight_layer(module: nn.Module, scale_dtype: torch.dtype | None) -> nn.Module:
    """Linear/Conv2d -> quanto QLinear/QConv2d holding int8 weights (scales in `scale_dtype`, or the
    weight's own dtype); other modules are cast to `scale_dtype` when one is given."""
    if not _is_float_weight_layer(module):
        return cast_layer(module, scale_dtype) if scale_dtype is not None else module
    q = quanto()
    w = module.weight.detach()
    dtype = scale_dtype or w.dtype
    data, scale = _rowwise_int8(w, dtype)
    qmodule = q.quantize_module(module, weights=q.qint8)  # built on the meta device, shares the float weight
    qweight = q.WeightQBytesTensor(q.qint8, 0, w.size(), data.stride(), data, scale, None)
    qmodule.weight = nn.Parameter(qweight, requires_grad=False)
    if qmodule.bias is not None and qmodule.bias.dtype != dtype:
        qmodule.bias = nn.Parameter(qmodule.bias.detach().to(dtype), requires_grad=False)
    for name in ("input_scale", "output_scale"):
        setattr(qmodule, name, getattr(qmodule, name).to(dtype))
    if type(qmodule) is q.QLinear and dtype in (torch.bfloat16, torch.float16):
        qmodule.__class__ = q.DequantQLinear  # see its docstring: a bf16 matmul beats int8pack_mm here
    return qmodule
