"""Pruning registry: method name -> a function that zeroes (or, later, removes) UNet weights in place.

Every method here is *permanent*: zeros are written straight into `weight` (no `torch.nn.utils.prune`
reparametrization, so no `weight_orig`, `weight_mask` or forward pre-hooks stay behind to double memory and
slow every forward). Unstructured zeros make no dense kernel faster: the lab reports them as sparsity, never as
a speed-up.

The global L1 threshold is found without concatenating the weights: scores (|w|, or seeded random numbers for
the control) are read chunk by chunk, and an exact two-pass radix select over the bits of the float32 scores
finds the k-th smallest one (a non-negative float32 compares like its int32 bit pattern). Ties at the threshold
are broken in layer order, so exactly `round(amount * n)` weights of the scope are zeroed. Extra memory is a few
chunks (`CHUNK` elements), whatever the model size.

Example:
    >>> report = apply_pruning_(unet_copy, "l1-unstructured", 0.3, scope="no-io")
    >>> round(report.sparsity, 3)
    0.3
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

MAX_AMOUNT = 0.95  # past this a UNet draws noise; 1.0 would zero every weight of the scope.
CHUNK = 1 << 22  # elements scored at a time: 4M float32 = 16 MiB per temporary

_HI_BINS = 1 << 15  # non-negative float32 bit patterns are < 2**31: top 15 bits after >> 16
_LO_BINS = 1 << 16


# ----------------------------------------------------------------------------------------------- scopes


def _is_prunable(module: nn.Module) -> bool:
    # quanto's QLinear/QConv2d subclass these, so quantized copies still count as the same layers.
    return isinstance(module, (nn.Linear, nn.Conv2d))


def _io_names(module: nn.Module) -> tuple[str, ...]:
    # The UNet's entry/exit convs and its timestep / class / added-condition embeddings: tiny, but the most
    # sensitive layers (every output pixel or every timestep goes through them).
    return ("conv_in", "conv_out", "time_embedding", "class_embedding", "add_embedding")


def _inside(module: nn.Module, classes: tuple[str, ...]) -> set[str]:
    """Names of the prunable layers that sit inside a submodule whose class name is in `classes`."""
    names: set[str] = set()
    for prefix, sub in module.named_modules():
        if type(sub).__name__ in classes:
            for name, leaf in sub.named_modules(prefix=prefix):
                if _is_prunable(leaf):
                    names.add(name)
    return names


def _attention_layers(module: nn.Module, cross: bool) -> set[str]:
    """Prunable layers of the diffusers `Attention` modules that are (or are not) cross-attention."""
    names: set[str] = set()
    for prefix, sub in module.named_modules():
        if type(sub).__name__ == "Attention" and bool(getattr(sub, "is_cross_attention", False)) == cross:
            names.update(n for n, leaf in sub.named_modules(prefix=prefix) if _is_prunable(leaf))
    return names


def _transformer_projections(module: nn.Module) -> set[str]:
    """The proj_in / proj_out layers of every Transformer2DModel (1x1 convs or Linears)."""
    names: set[str] = set()
    for prefix, sub in module.named_modules():
        if type(sub).__name__ == "Transformer2DModel":
            for child in ("proj_in", "proj_out"):
                if _is_prunable(getattr(sub, child, None)):
                    names.add(f"{prefix}.{child}" if prefix else child)
    return names


# Class names, not imports: the scope test must also work on a quantized copy and on models other than
# diffusers' UNet (a scope that matches nothing raises, it never silently prunes nothing).
_ATTENTION_CLASSES = ("Transformer2DModel", "BasicTransformerBlock", "Attention")
_RESNET_CLASSES = ("ResnetBlock2D",)

SCOPES: dict[str, str] = {
    "all": "every nn.Linear and nn.Conv2d (the seed study's choice)",
    "no-io": "all but conv_in, conv_out and the time/class embeddings",
    "attention": "only the transformer blocks (q/k/v/out projections, feed-forward, proj_in/out)",
    "resnet": "only the ResNet blocks (conv1, conv2, time_emb_proj, shortcut)",
    # Finer parts, for the layer-sensitivity study (one part pruned at a time): where in the UNet ...
    "down": "only the encoder half (every layer under down_blocks)",
    "mid": "only the bottleneck (every layer under mid_block)",
    "up": "only the decoder half (every layer under up_blocks)",
    # ... and which kind of layer inside the transformer blocks ("attention" is the union of these four).
    "self-attention": "only the q/k/v/out projections of self-attention (image tokens to image tokens)",
    "cross-attention": "only the q/k/v/out projections of cross-attention (where the text enters the image)",
    "feed-forward": "only the transformer feed-forward layers (GEGLU projection and output Linear)",
    "projection": "only proj_in/proj_out, which map feature maps into and out of the transformer blocks",
}
_LOCATIONS = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}


def scope_layers(module: nn.Module, scope: str = "all") -> list[tuple[str, nn.Module]]:
    """The (name, layer) pairs of `module` that a scope covers, in module order.

    Args:
        module (`nn.Module`): usually a UNet2DConditionModel, but any module works for "all".
        scope (`str`, defaults to `"all"`): a key of `SCOPES`.

    Raises:
        ValueError: unknown scope, or a scope that selects no Linear/Conv2d layer of this module.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown pruning scope {_short_repr(scope)}; known: {', '.join(SCOPES)}")
    layers = [(n, m) for n, m in module.named_modules() if _is_prunable(m)]
    if scope == "no-io":
        io = _io_names(module)
        layers = [(n, m) for n, m in layers if n.split(".")[0] not in io]
    elif scope == "attention":
        keep = _inside(module, _ATTENTION_CLASSES)
        layers = [(n, m) for n, m in layers if n in keep]
    elif scope == "resnet":
        keep = _inside(module, _RESNET_CLASSES)
        layers = [(n, m) for n, m in layers if n in keep]
    elif scope in _LOCATIONS:
        layers = [(n, m) for n, m in layers if n.split(".")[0] == _LOCATIONS[scope]]
    elif scope in ("self-attention", "cross-attention"):
        keep = _attention_layers(module, cross=scope == "cross-attention")
        layers = [(n, m) for n, m in layers if n in keep]
    elif scope == "feed-forward":
        keep = _inside(module, ("FeedForward",))
        layers = [(n, m) for n, m in layers if n in keep]
    elif scope == "projection":
        keep = _transformer_projections(module)
        layers = [(n, m) for n, m in layers if n in keep]
    if not layers:
        raise ValueError(f"pruning scope {scope!r} selects no nn.Linear/nn.Conv2d layer in {type(module).__name__}")
    return layers


# --------------------------------------------------------------------------------- exact chunked select

# A scorer yields, for one layer, float32 scores >= 0 chunk by chunk (CHUNK elements each, in flat order);
# the same layer must give the same scores every time it is asked (selection reads them three times).
Scorer = Callable[[int, torch.Tensor], Iterator[torch.Tensor]]


def _l1_scores(index: int, weight: torch.Tensor) -> Iterator[torch.Tensor]:
    flat = weight.detach().reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        yield flat[start : start + CHUNK].float().abs()


def _random_scorer(seed: int) -> Scorer:
    def scores(index: int, weight: torch.Tensor) -> Iterator[torch.Tensor]:
        # One generator per layer, re-seeded on every pass: the same chunks come back each time.
        gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + index)
        n = weight.numel()
        for start in range(0, n, CHUNK):
            yield torch.rand(min(CHUNK, n - start), generator=gen).to(weight.device)

    return scores


def _keys(scores: torch.Tensor) -> torch.Tensor:
    # +0.0 <= a < b  <=>  bits(a) < bits(b) for non-negative float32 (NaN sorts last: never pruned first).
    return scores.view(torch.int32)


def _select(weights: list[torch.Tensor], scorer: Scorer, k: int) -> tuple[int, int]:
    """Find the k-th smallest score over all `weights` (1 <= k <= total) without concatenating them.

    Returns:
        (threshold_key, ties): zero every score whose key is < threshold_key, then the first `ties` scores
        equal to it (in layer/flat order): exactly k in total.
    """
    device = weights[0].device
    hist_hi = torch.zeros(_HI_BINS, dtype=torch.int64, device=device)
    for i, w in enumerate(weights):
        for s in scorer(i, w):
            hist_hi += torch.bincount(_keys(s) >> 16, minlength=_HI_BINS)
    cum_hi = hist_hi.cumsum(0)
    hi = int(torch.searchsorted(cum_hi, torch.tensor(k, device=device)))
    below = int(cum_hi[hi - 1]) if hi > 0 else 0

    hist_lo = torch.zeros(_LO_BINS, dtype=torch.int64, device=device)
    for i, w in enumerate(weights):
        for s in scorer(i, w):
            key = _keys(s)
            hist_lo += torch.bincount(key[(key >> 16) == hi] & 0xFFFF, minlength=_LO_BINS)
    cum_lo = hist_lo.cumsum(0)
    lo = int(torch.searchsorted(cum_lo, torch.tensor(k - below, device=device)))
    below += int(cum_lo[lo - 1]) if lo > 0 else 0
    return (hi << 16) | lo, k - below


@torch.no_grad()
def _zero_smallest_(weights: list[torch.Tensor], scorer: Scorer, k: int) -> None:
    """Zero exactly the k lowest-scored entries of `weights`, in place."""
    if k <= 0:
        return
    threshold, ties = _select(weights, scorer, k)
    for i, w in enumerate(weights):
        target = w if w.is_contiguous() else w.contiguous()
        flat = target.view(-1)
        start = 0
        for s in scorer(i, w):
            key = _keys(s)
            mask = key < threshold
            if ties > 0:
                tie_idx = (key == threshold).nonzero().flatten()[:ties]
                mask[tie_idx] = True
                ties -= tie_idx.numel()
            flat[start : start + s.numel()][mask] = 0
            start += s.numel()
        if target is not w:
            w.copy_(target)


# ------------------------------------------------------------------------------------------ the methods


def _weights(module: nn.Module, scope: str) -> list[torch.Tensor]:
    return [m.weight.data for _, m in scope_layers(module, scope)]


def _prune_l1_global_(module: nn.Module, amount: float, scope: str, seed: int) -> None:
    weights = _weights(module, scope)
    _zero_smallest_(weights, _l1_scores, round(amount * sum(w.numel() for w in weights)))


def _prune_l1_layer_(module: nn.Module, amount: float, scope: str, seed: int) -> None:
    for w in _weights(module, scope):
        _zero_smallest_([w], _l1_scores, round(amount * w.numel()))


def _prune_random_(module: nn.Module, amount: float, scope: str, seed: int) -> None:
    weights = _weights(module, scope)
    _zero_smallest_(weights, _random_scorer(seed), round(amount * sum(w.numel() for w in weights)))


def _everywhere(device: torch.device) -> tuple[bool, str]:
    return True, ""


@dataclass(frozen=True)
class Pruner:
    """One pruning method of the registry.

    Args:
        name (`str`): the registry key.
        short (`str`): a few characters for labels and chart legends ("L1", "random").
        description (`str`): one sentence for the UI and README: what it zeroes/removes and what it buys.
        prune_ (`Callable[[nn.Module, float, str, int], None]`): `(module, amount, scope, seed)`, changes the
            module in place. Gets the whole module (not a list of layers) so that structured methods can
            rebuild layers.
        check (`Callable[[torch.device], tuple[bool, str]]`): whether it can run on a device, and why not.
    """

    name: str
    short: str
    description: str
    prune_: Callable[[nn.Module, float, str, int], None]
    check: Callable[[torch.device], tuple[bool, str]] = _everywhere

    def available(self, device: torch.device | str = "cpu") -> tuple[bool, str]:
        """`(True, "")`, or `(False, reason)` when this method cannot run on `device`."""
        return self.check(torch.device(device))


PRUNERS: dict[str, Pruner] = {
    p.name: p
    for p in (
        Pruner(
            "l1-unstructured",
            "L1",
            "Zero the smallest-|w| weights, one global threshold over the whole scope (the seed study's method). "
            "Masked zeros: smaller only if stored sparse, no faster with dense kernels.",
            _prune_l1_global_,
        ),
        Pruner(
            "l1-unstructured-layer",
            "L1/layer",
            "Zero the smallest-|w| fraction of every layer separately (each layer loses the same share). "
            "Masked zeros: no speed or memory gain with dense kernels.",
            _prune_l1_layer_,
        ),
        Pruner(
            "random-unstructured",
            "random",
            "Zero a seeded random fraction of the scope's weights: the control that tells 'L1 picks the right "
            "weights' from 'any pruning hurts'. No speed or memory gain.",
            _prune_random_,
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
        weights (`int`): Linear/Conv2d weights in the scope.
        zeros (`int`): how many of them are zero now (including any that were zero before).
        layers (`int`): layers in the scope.
        seconds (`float`): wall time of the pruning.
    """

    method: str
    amount: float
    scope: str
    weights: int
    zeros: int
    layers: int
    seconds: float

    @property
    def sparsity(self) -> float:
        """Measured fraction of zero weights over the scope (not the requested amount)."""
        return self.zeros / self.weights if self.weights else 0.0


def _short_repr(value: object, limit: int = 40) -> str:
    # Messages end up in HTML in the app: never echo a huge or hostile input in full.
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def get_pruner(method: str) -> Pruner:
    """The registry entry for `method`; ValueError naming the known methods otherwise."""
    try:
        return PRUNERS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown pruning method {_short_repr(method)}; known: {', '.join(PRUNERS)}") from None


@torch.no_grad()
def apply_pruning_(
    module: nn.Module, method: str, amount: float, scope: str = "all", seed: int = 0
) -> PruneReport:
    """Prune `module` IN PLACE (pass a copy to keep the original) and report the measured sparsity.

    Args:
        module (`nn.Module`): the module to prune; its weights are overwritten.
        method (`str`): a key of `PRUNERS`.
        amount (`float`): fraction of the scope's weights to zero, 0.0 to `MAX_AMOUNT`. 0.0 leaves every
            weight untouched (bit-identical).
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
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount <= MAX_AMOUNT:
        raise ValueError(f"pruning amount must be a number from 0.0 to {MAX_AMOUNT}, got {_short_repr(amount)}")
    layers = scope_layers(module, scope)  # validates the scope even when amount is 0
    device = layers[0][1].weight.device
    ok, why = pruner.available(device)
    if not ok:
        raise ValueError(f"pruning method {method!r} is not available on {device}: {why}")
    start = time.perf_counter()
    if amount > 0:
        pruner.prune_(module, float(amount), scope, seed)
    seconds = time.perf_counter() - start
    layers = scope_layers(module, scope)  # a structured method may have replaced layers
    weights = sum(m.weight.numel() for _, m in layers)
    # count_nonzero, not (w == 0).sum(): summing a bool tensor makes a full int64 copy (8 bytes a weight).
    zeros = sum(m.weight.numel() - int(torch.count_nonzero(m.weight)) for _, m in layers)
    return PruneReport(method, float(amount), scope, weights, zeros, len(layers), seconds)
