"""`PrunePlan`: what a pruning method does to a module, decided once from a read-only source module."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

MAX_AMOUNT = 0.95  # past this a UNet draws noise; 1.0 would zero every weight of the scope.

# (shape, dtype) -> an uninitialised tensor to write a pruned parameter into.
Alloc = Callable[[tuple, torch.dtype], torch.Tensor]


def _fresh(shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


class PrunePlan:
    """What a pruning method will do to a module, decided once from a read-only source module.

    Two drivers use the same plan, so the math lives in one place:

    - `apply_(module)` prunes `module` in place (what `apply_pruning_` does);
    - the engine builds a pruned copy layer by layer from the baseline (`tensor` for each parameter of a layer,
      then `fix_` on the layer), never deep-copying the whole float UNet first: peak memory stays near the
      size of the result, not the source plus the result.

    Subclasses override `tensor` (and `fix_` when shapes change, `finish_` for a last whole-module step).
    """

    #: Zero weights over the scope once pruned, when the plan knows it without counting (else None).
    zeros: int | None = None

    def tensor(self, layer: str, name: str, src: torch.Tensor, alloc: Alloc | None = None) -> torch.Tensor | None:
        """The pruned version of parameter `name` of layer `layer`, as a NEW tensor, or None to keep `src`.

        Args:
            layer (`str`): the layer's qualified name in the module (`"down_blocks.0.resnets.0.conv1"`).
            name (`str`): the parameter's name in that layer (`"weight"`, `"bias"`).
            src (`torch.Tensor`): the source parameter (never written to).
            alloc (`Callable[[tuple[int, ...], torch.dtype], torch.Tensor]`, *optional*): where the result
                goes (the engine hands a reusable work buffer when the result is quantized right away and then
                dropped); fresh memory by default.
        """
        return None

    def fix_(self, layer: str, module: nn.Module) -> None:
        """Update a layer's attributes after its tensors were replaced (channel counts of structured plans)."""

    def finish_(self, module: nn.Module) -> None:
        """A last step over the whole pruned module (e.g. converting weights to a sparse GPU format)."""

    @torch.no_grad()
    def apply_(self, module: nn.Module) -> None:
        """Prune `module` in place with this plan."""
        for lname, layer in list(module.named_modules()):
            changed = False
            for pname, p in list(layer.named_parameters(recurse=False)):
                new = self.tensor(lname, pname, p.detach())
                if new is not None:
                    p.data = new  # same Parameter object; a structured plan changes its shape
                    changed = True
            if changed:
                self.fix_(lname, layer)
        self.finish_(module)
