"""What a module costs to store: real bytes, parameter count and measured weight sparsity.

A small file of its own because the engine needs these numbers for every compressed UNet, pruning and
quantization tests check them, and the quality metrics (metrics.py, another issue) should not be a dependency
of the engine; metrics.py can re-export them.

Bytes are counted from what is really held in memory: a quantized weight is a tensor subclass (quanto's
`WeightQBytesTensor` / `WeightQBitsTensor`, torchao's `Int8Tensor`, ...) whose `element_size()` describes the
logical float tensor, not its storage. `tensor_bytes` unwraps subclasses through `__tensor_flatten__` (the
protocol both libraries implement for torch.compile) down to the plain int8/uint8 data, scales and zero points.

MACs are counted, not estimated: `count_macs` runs the module once on the meta device (shapes only, no memory,
no arithmetic) under torch's `FlopCounterMode`, so convolutions, Linears and attention matmuls are all in.

Example:
    >>> cost = module_cost(unet)
    >>> cost.bytes / 2**20, cost.params, cost.sparsity
    >>> count_macs(unet, torch.randn(2, 4, 64, 64), torch.tensor(500), encoder_hidden_states=torch.randn(2, 77, 768))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def tensor_bytes(t: torch.Tensor | None) -> int:
    """Bytes really stored for `t`, unwrapping quantized tensor subclasses into their inner tensors."""
    if t is None:
        return 0
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        inner_names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name, None)) for name in inner_names)
    return t.numel() * t.element_size()


def module_bytes(module: nn.Module) -> int:
    """Bytes of all parameters and buffers of `module` (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += tensor_bytes(t)
    return total


def param_count(module: nn.Module) -> int:
    """Logical parameter count (a quantized weight counts its float shape's elements)."""
    return sum(p.numel() for p in module.parameters())


def _dense(weight: torch.Tensor) -> torch.Tensor:
    # Quantized weights: count zeros of what the kernels compute with (int8 symmetric keeps zeros exactly;
    # an asymmetric int4 grid may not, and that loss of sparsity is real). Sparse GPU formats (2:4) densify.
    if type(weight) in (torch.Tensor, nn.Parameter):
        return weight
    return weight.dequantize() if hasattr(weight, "dequantize") else weight.to_dense()


def _zeros(weight: torch.Tensor) -> int:
    data, scale = getattr(weight, "_data", None), getattr(weight, "_scale", None)
    if (
        type(weight).__name__ == "WeightQBytesTensor"
        and isinstance(data, torch.Tensor)
        and data.dtype == torch.int8
        and isinstance(scale, torch.Tensor)
        and bool((scale != 0).all())
    ):
        # Symmetric int8 with non-zero scales: a weight is zero exactly where its int8 value is, so count
        # those bytes instead of dequantizing a float copy of the layer.
        return data.numel() - int(torch.count_nonzero(data))
    packed = getattr(data, "_data", None)
    shift = getattr(weight, "_shift", None)
    if (
        type(weight).__name__ == "WeightQBitsTensor"
        and type(data).__name__ == "PackedTensor"
        and getattr(data, "_bits", None) == 4
        and isinstance(packed, torch.Tensor)
        and packed.dim() == 2
        and isinstance(shift, torch.Tensor)
        and shift.is_floating_point()
        and scale.shape == shift.shape == (data.shape[0], 1)
    ):
        return _int4_zeros(packed, data.shape[0], scale, shift)
    w = _dense(weight)
    return w.numel() - int(torch.count_nonzero(w))  # (w == 0).sum() would copy to int64


def _int4_zeros(packed: torch.Tensor, groups: int, scale: torch.Tensor, shift: torch.Tensor) -> int:
    # quanto's packed int4 (group i in the low nibbles of row i, group half + i in the high ones), dequantized
    # a block of groups at a time with quanto's own arithmetic (scale * q - shift), never the whole layer.
    half = packed.shape[0]
    nonzero = 0
    rows = max(1, (1 << 20) // packed.shape[1])
    for r in range(0, half, rows):
        block = packed[r : r + rows]
        for values, first in ((block & 0xF, r), (block >> 4, half + r)):
            n = min(values.shape[0], groups - first)
            if n > 0:
                dq = scale[first : first + n] * values[:n]
                dq -= shift[first : first + n]
                nonzero += int(torch.count_nonzero(dq))
    return groups * packed.shape[1] - nonzero


@torch.no_grad()
def weight_sparsity(module: nn.Module) -> tuple[int, int]:
    """(zeros, total) over the weights of every nn.Linear and nn.Conv2d of `module`, one layer at a time."""
    zeros = total = 0
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            zeros += _zeros(m.weight)
            total += m.weight.numel()
    return zeros, total


@dataclass(frozen=True)
class ModuleCost:
    """Storage cost of a module.

    Args:
        bytes (`int`): real bytes of parameters and buffers.
        params (`int`): logical parameter count.
        zeros (`int`), weights (`int`): zero and total weights over all Linear and Conv2d layers.
    """

    bytes: int
    params: int
    zeros: int
    weights: int

    @property
    def sparsity(self) -> float:
        """Measured fraction of zero Linear/Conv2d weights."""
        return self.zeros / self.weights if self.weights else 0.0


def module_cost(module: nn.Module) -> ModuleCost:
    """Bytes, parameter count and measured sparsity of `module` in one call."""
    zeros, weights = weight_sparsity(module)
    return ModuleCost(module_bytes(module), param_count(module), zeros, weights)


def meta_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` whose parameters and buffers are meta tensors: the structure, no memory."""
    memo: dict[int, Any] = {}
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in memo:
            meta = t.detach().to("meta")
            memo[id(t)] = nn.Parameter(meta, requires_grad=False) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(module, memo)


def _float_layers(module: nn.Module) -> nn.Module:
    """Swap quantized Linear/Conv2d layers (tensor-subclass weights) of a meta module for plain float ones of
    the same shapes: they stand for the same multiply-accumulates, and custom kernels are not all countable."""
    for name, m in list(module.named_modules()):
        if not isinstance(m, (nn.Linear, nn.Conv2d)) or type(m.weight) in (torch.Tensor, nn.Parameter):
            continue
        kw = dict(bias=m.bias is not None, device="meta", dtype=m.weight.dtype)
        if isinstance(m, nn.Linear):
            plain = nn.Linear(m.in_features, m.out_features, **kw)
        else:
            plain = nn.Conv2d(
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                m.groups,
                padding_mode=m.padding_mode,
                **kw,
            )
        if not name:
            return plain
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, plain)
    return module


def _to_meta(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to("meta")
    if isinstance(obj, dict):
        return {k: _to_meta(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_meta(v) for v in obj)
    return obj


def count_macs(module: nn.Module, *args: Any, **kwargs: Any) -> int | None:
    """Multiply-accumulates of one forward of `module` on these inputs, counted on the meta device.

    Counts matmuls, convolutions and attention (torch's `FlopCounterMode`, MACs = FLOPs / 2) without running
    any arithmetic or allocating real memory. Quantized layers count as the float work they stand for (weights
    are dequantized on the fly). Returns None when the module cannot run on meta tensors (some tensor
    subclasses cannot).
    """
    from torch.utils.flop_counter import FlopCounterMode

    try:
        meta = _float_layers(meta_copy(module))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            meta(*_to_meta(args), **_to_meta(kwargs))
        return counter.get_total_flops() // 2
    except Exception:  # noqa: BLE001 - an uncountable module is reported as unknown, never as zero
        return None
