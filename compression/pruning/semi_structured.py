"""Semi-structured 2:4 pruning: 2 of every 4 weights of each Linear, which sparse tensor cores multiply faster."""

from __future__ import annotations

import torch
from torch import nn

from .plan import Alloc, PrunePlan, _fresh
from .scopes import scope_layers


def two_of_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Bool mask keeping the 2 largest |w| of every 4 consecutive weights along the input dim (2:4 pattern).

    Args:
        weight (`torch.Tensor`): a 2-D Linear weight whose input dim is a multiple of 4.
    """
    rows, cols = weight.shape
    groups = weight.detach().abs().reshape(rows, cols // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.topk(2, dim=2).indices, True)
    return keep.reshape(rows, cols)


class _TwoFourPlan(PrunePlan):
    """2:4: in every Linear of the scope (input dim a multiple of 4), keep the 2 largest |w| of each 4."""

    def __init__(self, layers: set[str]):
        self.layers = layers
        self.sparse_layers = 0  # converted to the GPU's compressed 2:4 format by finish_
        self.dense_layers = 0  # masked but left dense (shape or dtype the sparse kernels do not take)

    def tensor(self, layer: str, name: str, src: torch.Tensor, alloc: Alloc | None = None) -> torch.Tensor | None:
        if name != "weight" or layer not in self.layers:
            return None
        out = alloc(src.shape, src.dtype) if alloc is not None else _fresh(src.shape, src.dtype, src.device)
        return torch.mul(src, two_of_four_mask(src), out=out)

    def finish_(self, module: nn.Module) -> None:
        from torch.sparse import to_sparse_semi_structured

        for name, layer in module.named_modules():
            if name not in self.layers or type(layer.weight) is not nn.Parameter:
                continue
            w = layer.weight
            if w.device.type != "cuda" or w.dtype not in (torch.float16, torch.bfloat16):
                self.dense_layers += 1
                continue
            try:  # cuSPARSELt/CUTLASS take only some shapes (multiples of 64 or so): the rest stay dense
                layer.weight = nn.Parameter(to_sparse_semi_structured(w.detach()), requires_grad=False)
                self.sparse_layers += 1
            except (RuntimeError, ValueError):
                self.dense_layers += 1


def _plan_two_four(module: nn.Module, amount: float, scope: str, seed: int) -> PrunePlan:
    if amount != 0.5:
        raise ValueError(
            f"2:4 semi-structured pruning removes exactly half the weights: amount must be 0.5, got {amount}"
        )
    layers = {n for n, m in scope_layers(module, scope) if isinstance(m, nn.Linear) and m.in_features % 4 == 0}
    if not layers:
        raise ValueError(
            f"pruning scope {scope!r} has no nn.Linear whose input width is a multiple of 4 (2:4 needs one)"
        )
    return _TwoFourPlan(layers)


def _two_four_check(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, "needs a CUDA GPU with sparse tensor cores (compute capability 8.0+); none here"
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    if major < 8:
        return False, f"needs CUDA compute capability 8.0+ for 2:4 sparse kernels (this GPU is sm{major}{minor})"
    return True, ""
