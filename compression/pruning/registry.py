"""The pruning registry (method name -> `Pruner`), the public verb `apply_pruning_` and its `PruneReport`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .plan import MAX_AMOUNT, PrunePlan
from .scopes import _short_repr, scope_layers
from .semi_structured import _plan_two_four, _two_four_check
from .structured import _STRUCTURED_TEXT, _channel_planner, _ChannelPlan
from .unstructured import _plan_l1_global, _plan_l1_layer, _plan_random


def _everywhere(device: torch.device) -> tuple[bool, str]:
    return True, ""


@dataclass(frozen=True)
class Pruner:
    """One pruning method of the registry.

    Args:
        name (`str`): the registry key.
        short (`str`): a few characters for labels and chart legends ("L1", "random").
        description (`str`): one sentence for the UI and README: what it zeroes/removes and what it buys.
        plan (`Callable[[nn.Module, float, str, int], PrunePlan]`): `(module, amount, scope, seed)` -> the
            method's `PrunePlan`, computed from a read-only module. `apply_pruning_` runs it in place; the
            engine builds a pruned copy from it layer by layer (fast, bounded memory).
        check (`Callable[[torch.device], tuple[bool, str]]`): whether it can run on a device, and why not.
        kind (`str`, defaults to `"unstructured"`): `"unstructured"` (zeros; the amount is the fraction of
            the scope's weights zeroed), `"structured"` (channels removed, layers shrink; the amount is a
            fraction of channels, see the description) or `"semi-structured"` (a fixed N:M zero pattern).
        fixed_amount (`float`, *optional*): the only non-zero amount the method accepts (2:4 -> 0.5).
    """

    name: str
    short: str
    description: str
    plan: Callable[[nn.Module, float, str, int], PrunePlan]
    check: Callable[[torch.device], tuple[bool, str]] = _everywhere
    kind: str = "unstructured"
    fixed_amount: float | None = None

    def available(self, device: torch.device | str = "cpu") -> tuple[bool, str]:
        """`(True, "")`, or `(False, reason)` when this method cannot run on `device`."""
        return self.check(torch.device(device))

    def prune_(self, module: nn.Module, amount: float, scope: str, seed: int) -> None:
        """Prune `module` in place with this method's plan (no checks, no report: see `apply_pruning_`)."""
        self.plan(module, amount, scope, seed).apply_(module)


PRUNERS: dict[str, Pruner] = {
    p.name: p
    for p in (
        Pruner(
            "l1-unstructured",
            "L1",
            "Zero the smallest-|w| weights, one global threshold over the whole scope (the seed study's method). "
            "Masked zeros: smaller only if stored sparse, no faster with dense kernels.",
            _plan_l1_global,
        ),
        Pruner(
            "l1-unstructured-layer",
            "L1/layer",
            "Zero the smallest-|w| fraction of every layer separately (each layer loses the same share). "
            "Masked zeros: no speed or memory gain with dense kernels.",
            _plan_l1_layer,
        ),
        Pruner(
            "random-unstructured",
            "random",
            "Zero a seeded random fraction of the scope's weights: the control that tells 'L1 picks the right "
            "weights' from 'any pruning hurts'. No speed or memory gain.",
            _plan_random,
        ),
        Pruner(
            "l1-structured-channels",
            "L1-ch",
            _STRUCTURED_TEXT.format(norm="L1"),
            _channel_planner(1),
            kind="structured",
        ),
        Pruner(
            "l2-structured-channels",
            "L2-ch",
            _STRUCTURED_TEXT.format(norm="L2"),
            _channel_planner(2),
            kind="structured",
        ),
        Pruner(
            "semi-structured-2of4",
            "2:4",
            "In every Linear of the scope keep the 2 largest |w| of each 4 consecutive weights (amount 0.5 "
            "only) and store them in the GPU's compressed 2:4 format, which sparse tensor cores multiply about "
            "1.3-1.6x faster. CUDA compute capability 8.0+ only; convolutions stay dense.",
            _plan_two_four,
            _two_four_check,
            kind="semi-structured",
            fixed_amount=0.5,
        ),
    )
}


def available_pruners(device: torch.device | str = "cpu") -> list[str]:
    """Names of the methods that can run on `device`, in registry order (what the UI offers)."""
    return [name for name, p in PRUNERS.items() if p.available(device)[0]]


# ------------------------------------------------------------------------------------------- public verb


@dataclass(frozen=True)
class PruneReport:
    """What a pruning call did, measured after the fact.

    Args:
        method (`str`), amount (`float`), scope (`str`): what was asked.
        weights (`int`): Linear/Conv2d weights in the scope (after pruning: fewer for structured methods).
        zeros (`int`): how many of them are zero now (including any that were zero before).
        layers (`int`): layers in the scope.
        seconds (`float`): wall time of the pruning.
        params_before, params_after (`int`): parameters of the whole module before and after (they differ
            only for structured methods, which remove channels).
        channels_before, channels_after (`int`): structured methods: prunable channels (ResNet inner channels
            + feed-forward hidden units) in the scope before and after; 0 for the other kinds.
    """

    method: str
    amount: float
    scope: str
    weights: int
    zeros: int
    layers: int
    seconds: float
    params_before: int = 0
    params_after: int = 0
    channels_before: int = 0
    channels_after: int = 0

    @property
    def sparsity(self) -> float:
        """Measured fraction of zero weights over the scope (not the requested amount)."""
        return self.zeros / self.weights if self.weights else 0.0

    @property
    def params_removed(self) -> float:
        """Measured fraction of the module's parameters removed (0.0 for zeroing methods)."""
        return 1 - self.params_after / self.params_before if self.params_before else 0.0

    @property
    def channels_removed(self) -> float:
        """Measured fraction of the scope's prunable channels removed (structured methods; else 0.0)."""
        return 1 - self.channels_after / self.channels_before if self.channels_before else 0.0


def get_pruner(method: str) -> Pruner:
    """The registry entry for `method`; ValueError naming the known methods otherwise."""
    try:
        return PRUNERS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown pruning method {_short_repr(method)}; known: {', '.join(PRUNERS)}") from None


@torch.no_grad()
def apply_pruning_(module: nn.Module, method: str, amount: float, scope: str = "all", seed: int = 0) -> PruneReport:
    """Prune `module` IN PLACE (pass a copy to keep the original) and report the measured sparsity.

    Args:
        module (`nn.Module`): the module to prune; its weights are overwritten.
        method (`str`): a key of `PRUNERS`.
        amount (`float`): 0.0 to `MAX_AMOUNT`; what it is a fraction of depends on the method's `kind`:
            the scope's weights to zero (unstructured), the scope's prunable channels to remove (structured),
            or exactly 0.5 (2:4). 0.0 leaves every weight untouched (bit-identical).
        scope (`str`, defaults to `"all"`): a key of `SCOPES`.
        seed (`int`, defaults to 0): seed of the random control; ignored by the L1 methods.

    Returns:
        `PruneReport` with the measured zeros over the scope.

    Example:
        >>> unet = copy.deepcopy(pipe.unet)
        >>> apply_pruning_(unet, "random-unstructured", 0.5, seed=1).sparsity
        0.5
    """
    pruner = get_pruner(method)
    check_amount(pruner, amount)
    layers = scope_layers(module, scope)  # validates the scope even when amount is 0
    device = layers[0][1].weight.device
    ok, why = pruner.available(device)
    if not ok:
        raise ValueError(f"pruning method {method!r} is not available on {device}: {why}")
    params_before = sum(p.numel() for p in module.parameters())
    start = time.perf_counter()
    plan = None
    if amount > 0:
        plan = pruner.plan(module, float(amount), scope, seed)
        plan.apply_(module)
    seconds = time.perf_counter() - start
    return measure_pruning(module, method, float(amount), scope, seconds, params_before, plan)


def check_amount(pruner: Pruner, amount: object) -> None:
    """Raise ValueError naming the valid amounts unless `amount` suits `pruner`."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount <= MAX_AMOUNT:
        raise ValueError(f"pruning amount must be a number from 0.0 to {MAX_AMOUNT}, got {_short_repr(amount)}")
    if pruner.fixed_amount is not None and amount not in (0.0, pruner.fixed_amount):
        raise ValueError(
            f"{pruner.name} prunes a fixed share: amount must be 0.0 or {pruner.fixed_amount}, "
            f"got {_short_repr(amount)}"
        )


def measure_pruning(
    module: nn.Module,
    method: str,
    amount: float,
    scope: str,
    seconds: float,
    params_before: int,
    plan: PrunePlan | None = None,
) -> PruneReport:
    """The `PruneReport` of a module pruned with `method` (counts zeros unless the plan knows them)."""
    layers = scope_layers(module, scope)  # a structured method has replaced layers
    weights = sum(m.weight.numel() for _, m in layers)
    if plan is not None and plan.zeros is not None:
        zeros = plan.zeros
    else:
        # count_nonzero, not (w == 0).sum(): summing a bool tensor makes a full int64 copy (8 bytes a weight).
        zeros = sum(m.weight.numel() - int(torch.count_nonzero(_plain(m.weight))) for _, m in layers)
    channels = (plan.channels_before, plan.channels_after) if isinstance(plan, _ChannelPlan) else (0, 0)
    params_after = sum(p.numel() for p in module.parameters())
    return PruneReport(
        method, amount, scope, weights, zeros, len(layers), seconds, params_before, params_after, *channels
    )


def _plain(weight: torch.Tensor) -> torch.Tensor:
    # A quantized (tensor subclass) weight is counted on what the kernels compute with.
    return weight if type(weight) in (torch.Tensor, nn.Parameter) else weight.dequantize()
