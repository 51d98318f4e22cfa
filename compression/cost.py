"""What a module costs to store: real bytes, parameter count and measured weight sparsity.

A small file of its own because the engine needs these numbers for every compressed UNet, pruning and
quantization tests check them, and the quality metrics (metrics.py, another issue) should not be a dependency
of the engine; metrics.py can re-export them.

Bytes are counted from what is really held in memory: a quantized weight is a tensor subclass (quanto's
`WeightQBytesTensor` / `WeightQBitsTensor`, torchao's `Int8Tensor`, ...) whose `element_size()` describes the
logical float tensor, not its storage. `tensor_bytes` unwraps subclasses through `__tensor_flatten__` (the
protocol both libraries implement for torch.compile) down to the plain int8/uint8 data, scales and zero points.

Example:
    >>> cost = module_cost(unet)
    >>> cost.bytes / 2**20, cost.params, cost.sparsity
"""

from __future__ import annotations

from dataclasses import dataclass

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
    # an asymmetric int4 grid may not, and that loss of sparsity is real).
    return weight.dequantize() if type(weight) not in (torch.Tensor, nn.Parameter) else weight


@torch.no_grad()
def weight_sparsity(module: nn.Module) -> tuple[int, int]:
    """(zeros, total) over the weights of every nn.Linear and nn.Conv2d of `module`, one layer at a time."""
    zeros = total = 0
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = _dense(m.weight)
            zeros += w.numel() - int(torch.count_nonzero(w))  # (w == 0).sum() would copy to int64
            total += w.numel()
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
