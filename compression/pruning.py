"""Pruning registry: method name -> a function that zeroes or removes UNet weights in place.

Every method here is *permanent*: zeros are written straight into `weight`, or channels are cut out of the
layers (no `torch.nn.utils.prune` reparametrization, so no `weight_orig`, `weight_mask` or forward pre-hooks
stay behind to double memory and slow every forward). Three kinds:

- unstructured (`l1-unstructured`, `l1-unstructured-layer`, `random-unstructured`): zeros. No dense kernel gets
  faster or smaller from them: the lab reports them as sparsity, never as a speed-up.
- structured (`l1-structured-channels`, `l2-structured-channels`): whole channels are removed, layers shrink,
  and every kernel does less work. The amount is a fraction of *channels* (see `_STRUCTURED_TEXT`).
- semi-structured (`semi-structured-2of4`): 2 of every 4 weights of each Linear, which sparse tensor cores of
  CUDA GPUs (sm80+) multiply faster; CUDA only.

Each method is also a `PrunePlan`, computed from a read-only module, so the engine can build a pruned copy
layer by layer (bounded memory, no deep copy of the float UNet); `apply_pruning_` runs the same plan in place.

The global L1 threshold is exact and reads every weight once: a strided sample of |w| brackets the k-th
smallest score, one chunked pass counts the scores below the bracket and gathers the few inside it, and the
k-th is picked from those (an exact radix select over the float bits is the fallback if the bracket missed).
Ties at the threshold are broken in layer order, so exactly `round(amount * n)` weights of the scope are
zeroed. Extra memory: the sample and the bracket (under 1% of the weights) plus a few `CHUNK`s.

Example:
    >>> report = apply_pruning_(unet_copy, "l1-unstructured", 0.3, scope="no-io")
    >>> round(report.sparsity, 3)
    0.3
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .scratch import scratch

MAX_AMOUNT = 0.95  # past this a UNet draws noise; 1.0 would zero every weight of the scope.
CHUNK = 1 << 20  # elements scored at a time: 1M float32 = 4 MiB per temporary (stays in cache and in the
# malloc heap; 16 MiB chunks fragmented the heap to +160 MiB peak on a 512 MiB model)

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
    # By kind of layer, wherever it sits (the seed study's second experiment): "all" is exactly these two.
    "linear": "every nn.Linear (attention and feed-forward projections, time embedding, time_emb_proj)",
    "conv": "every nn.Conv2d (ResNet convolutions, samplers, conv_in/conv_out, 1x1 proj_in/out where used)",
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
    elif scope == "linear":
        layers = [(n, m) for n, m in layers if isinstance(m, nn.Linear)]
    elif scope == "conv":
        layers = [(n, m) for n, m in layers if isinstance(m, nn.Conv2d)]
    if not layers:
        raise ValueError(f"pruning scope {scope!r} selects no nn.Linear/nn.Conv2d layer in {type(module).__name__}")
    return layers


# --------------------------------------------------------------------------------------------- plans

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


# --------------------------------------------------------------------------------- exact global select

# A scorer yields, for one layer, float32 scores >= 0 chunk by chunk (CHUNK elements each, in flat order);
# the same layer must give the same scores every time it is asked (selection reads them more than once).
Scorer = Callable[[int, torch.Tensor], Iterator[torch.Tensor]]
# A sampler gives a sample of a layer's scores, about numel / step of them, drawn like the scores are.
Sampler = Callable[[int, torch.Tensor, int], torch.Tensor]

SAMPLE = 1 << 20  # scores sampled to bracket the k-th smallest one before the single exact counting pass


def _l1_scores(index: int, weight: torch.Tensor) -> Iterator[torch.Tensor]:
    # Each chunk is written into the same work buffer: a consumer is done with it before asking for the next.
    flat = weight.detach().reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        chunk = flat[start : start + CHUNK]
        yield torch.abs(chunk, out=scratch(chunk.numel(), torch.float32, chunk.device, slot=10))


def _l1_sample(index: int, weight: torch.Tensor, step: int) -> torch.Tensor:
    # A strided sample: every layer contributes in proportion to its size, from all over the layer.
    return weight.detach().reshape(-1)[::step].float().abs()


def _random_scorer(seed: int) -> Scorer:
    def scores(index: int, weight: torch.Tensor) -> Iterator[torch.Tensor]:
        # One generator per layer, re-seeded on every pass: the same chunks come back each time.
        gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + index)
        n = weight.numel()
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            yield torch.rand(m, generator=gen, out=scratch(m, torch.float32, "cpu", slot=10)).to(weight.device)

    return scores


def _random_sampler(seed: int) -> Sampler:
    def sample(index: int, weight: torch.Tensor, step: int) -> torch.Tensor:
        # The scores are i.i.d. uniform: any independent uniform draw is a fair sample of them.
        gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + index + 0x5EED_5EED)
        return torch.rand(max(1, weight.numel() // step), generator=gen)

    return sample


def _keys(scores: torch.Tensor) -> torch.Tensor:
    # +0.0 <= a < b  <=>  bits(a) < bits(b) for non-negative float32 (NaN sorts last: never pruned first).
    return scores.view(torch.int32)


def _from_key(key: int) -> float:
    return float(torch.tensor([key], dtype=torch.int32).view(torch.float32)[0])


def _select(weights: list[torch.Tensor], scorer: Scorer, k: int) -> tuple[int, int]:
    """Find the k-th smallest score over all `weights` (1 <= k <= total) without concatenating them.

    An exact two-pass radix select over the bits of the float32 scores: the fallback of `_threshold` when its
    sampled bracket misses (it never should for real weights), and always exact.

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


def _count_below_and_gather(s: torch.Tensor, lo: float, hi: float) -> tuple[int, torch.Tensor]:
    """(how many scores are < lo, the scores in [lo, hi)) for one chunk, with few passes.

    Comparisons that make bool tensors run at ~0.4 G elements/s on this CPU, float ops at ~2: the count uses
    hardshrink (zeroes scores <= its lambda) and sums signs; the gather keeps a slightly wider open interval
    with one comparison, then filters the few survivors exactly.
    """
    work = scratch(s.numel(), torch.float32, s.device, slot=11)
    if lo > 0:
        # scores >= lo (hardshrink zeroes those <= its lambda); NaN poisons the sum: count those exactly then
        above = torch.ops.aten.hardshrink.out(s, math.nextafter(lo, 0.0), out=work).sign_().sum()
        above = int(above) if bool(torch.isfinite(above)) else int((s >= lo).sum()) + int(s.isnan().sum())
        below = s.numel() - above
    else:
        below = 0  # scores are >= 0
    if lo == -math.inf:
        wide = s if hi == math.inf else s[s < hi]
    elif hi == math.inf:
        wide = s[s >= lo]
    else:
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        mask = torch.le(torch.sub(s, mid, out=work).abs_(), half * (1 + 1e-5) + 1e-30,
                        out=scratch(s.numel(), torch.bool, s.device, slot=12))
        wide = s[mask]
    return below, wide[(wide >= lo) & (wide < hi)]


@torch.no_grad()
def _threshold(weights: list[torch.Tensor], scorer: Scorer, sampler: Sampler, k: int,
               sample: int | None = None) -> tuple[float, list[int]]:
    """The k-th smallest score over `weights` (1 <= k <= total), exactly, reading every weight once.

    A sorted sample brackets the k-th score; one pass counts the scores below the bracket and gathers the
    few inside it; the k-th is picked from those. If the bracket missed (never seen on real weights) it
    widens, and after that the radix select decides. Extra memory: the sample and the bracket (well under 1%
    of the scores), plus a CHUNK of temporaries.

    Returns:
        (threshold, ties): zero every score < threshold, then in each layer i the first `ties[i]` scores equal
        to it (flat order): exactly k zeros in total.
    """
    sample = SAMPLE if sample is None else sample
    n = sum(w.numel() for w in weights)
    step = max(1, n // sample)
    spread = 0.0
    a = b = m = 0
    if step == 1:  # small enough to look at every score
        lo, hi = -math.inf, math.inf
    else:
        s = torch.cat([sampler(i, w, step).reshape(-1).cpu() for i, w in enumerate(weights)]).sort().values
        m = s.numel()
        p = k / n
        rank = p * m
        spread = 6 * math.sqrt(max(m * p * (1 - p), 1.0)) + 64  # sample ranks; 6 sigma of the sample quantile
    for attempt in range(3):
        if step > 1:
            a, b = math.floor(rank - spread), math.ceil(rank + spread)
            lo = float(s[a]) if a > 0 else -math.inf
            hi = float(s[b]) if b < m else math.inf
        # The bracket's values go into one growing buffer (with their layer index), not into a list of small
        # tensors: those, allocated between the chunk temporaries, fragmented the heap (+50 MiB kept).
        expect = n if step == 1 else int((b - a + 1) / m * n * 1.25) + 1024
        store = torch.empty(expect, dtype=torch.float32)
        owner = torch.empty(expect, dtype=torch.int16 if len(weights) < 2**15 else torch.int32)
        below = inside = 0
        for i, w in enumerate(weights):
            for chunk in scorer(i, w):
                b_i, v = _count_below_and_gather(chunk, lo, hi)
                below += b_i
                if v.numel():
                    if inside + v.numel() > store.numel():
                        grow = max(store.numel(), v.numel())
                        store = torch.cat([store, torch.empty(grow, dtype=torch.float32)])
                        owner = torch.cat([owner, torch.empty(grow, dtype=owner.dtype)])
                    store[inside : inside + v.numel()] = v.cpu()
                    owner[inside : inside + v.numel()] = i
                    inside += v.numel()
                del v
        if below < k <= below + inside:
            values, owners = store[:inside], owner[:inside]
            threshold = float(torch.kthvalue(values, k - below).values)
            ties = k - below - int((values < threshold).sum())
            per_layer = torch.bincount(owners[values == threshold].long(), minlength=len(weights)).tolist()
            quota = [0] * len(weights)
            for i, count in enumerate(per_layer):  # layer order, then flat order inside a layer
                quota[i] = min(ties, count)
                ties -= quota[i]
            return threshold, quota
        del store, owner
        spread *= 16 if step > 1 else 1
    key, ties = _select(weights, scorer, k)
    threshold = _from_key(key)
    quota = [0] * len(weights)
    for i, w in enumerate(weights):  # the radix path does not know which layers hold the ties: count them
        if ties <= 0:
            break
        eq = sum(int((c == threshold).sum()) for c in scorer(i, w))
        quota[i] = min(ties, eq)
        ties -= quota[i]
    return threshold, quota


class _MaskPlan(PrunePlan):
    """Unstructured: zero every weight of the listed layers whose score is below a threshold (+ ties)."""

    def __init__(self, layers: dict[str, tuple[int, float, int]], scorer: Scorer, l1: bool, zeros: int | None):
        self.layers = layers  # layer name -> (index for the scorer, threshold, ties to zero in this layer)
        self.scorer = scorer
        self.l1 = l1  # scores are |w|: one fused hardshrink does the zeroing
        self.zeros = zeros

    def tensor(self, layer: str, name: str, src: torch.Tensor, alloc: Alloc | None = None) -> torch.Tensor | None:
        if name != "weight" or layer not in self.layers:
            return None
        index, threshold, ties = self.layers[layer]
        out = alloc(src.shape, src.dtype) if alloc is not None else _fresh(src.shape, src.dtype, src.device)
        if self.l1 and src.dtype == torch.float32 and threshold > 0:
            # hardshrink zeroes |w| <= lambda, so lambda = the float just below the threshold zeroes |w| < it,
            # in one pass that writes the copy (NaN stays, as in the scores).
            torch.ops.aten.hardshrink.out(src, math.nextafter(threshold, 0.0), out=out)
        else:
            out.copy_(src)
            flat = out.view(-1)
            start = 0
            for s in self.scorer(index, src):
                flat[start : start + s.numel()].masked_fill_(s < threshold, 0)
                start += s.numel()
        if ties > 0:
            flat = out.view(-1)
            start = 0
            for s in self.scorer(index, src):
                idx = (s == threshold).nonzero().flatten()[:ties] + start
                flat[idx] = 0
                ties -= idx.numel()
                start += s.numel()
                if ties <= 0:
                    break
        return out


def _mask_plan(module: nn.Module, scope: str, scorer: Scorer, sampler: Sampler, amount: float,
               per_layer: bool, l1: bool) -> _MaskPlan:
    layers = scope_layers(module, scope)
    weights = [m.weight.detach() for _, m in layers]
    plan: dict[str, tuple[int, float, int]] = {}
    zeros: int | None = 0 if l1 else None
    groups = [[i] for i in range(len(layers))] if per_layer else [list(range(len(layers)))]
    for group in groups:
        ws = [weights[i] for i in group]
        k = round(amount * sum(w.numel() for w in ws))
        if k <= 0:
            continue

        def scorer_g(j: int, w: torch.Tensor, group=group) -> Iterator[torch.Tensor]:
            return scorer(group[j], w)

        def sampler_g(j: int, w: torch.Tensor, step: int, group=group) -> torch.Tensor:
            return sampler(group[j], w, step)

        threshold, quota = _threshold(ws, scorer_g, sampler_g, k, SAMPLE if not per_layer else SAMPLE >> 4)
        for j, i in enumerate(group):
            plan[layers[i][0]] = (i, threshold, quota[j])
        if zeros is not None:
            # |w| scores: everything below a positive threshold goes, the rest stays non-zero, so exactly k;
            # a threshold of 0 means at least k weights were zero already: count them.
            zeros += k if threshold > 0 else sum(w.numel() - int(torch.count_nonzero(w)) for w in ws)
    return _MaskPlan(plan, scorer, l1, zeros)


def _plan_l1_global(module: nn.Module, amount: float, scope: str, seed: int) -> PrunePlan:
    return _mask_plan(module, scope, _l1_scores, _l1_sample, amount, per_layer=False, l1=True)


def _plan_l1_layer(module: nn.Module, amount: float, scope: str, seed: int) -> PrunePlan:
    return _mask_plan(module, scope, _l1_scores, _l1_sample, amount, per_layer=True, l1=True)


def _plan_random(module: nn.Module, amount: float, scope: str, seed: int) -> PrunePlan:
    return _mask_plan(module, scope, _random_scorer(seed), _random_sampler(seed), amount, per_layer=False, l1=False)


# ------------------------------------------------------------------------------- structured: channels


def _group_scores(parts: list[tuple[torch.Tensor, int]], channels: int, p: int) -> torch.Tensor:
    """One importance per channel from its coupled weight slices, each layer's norms scaled to mean 1.

    Args:
        parts: (weight, channel dim) pairs; a weight whose channel dim is twice `channels` (GEGLU's hidden
            and gate halves, scale_shift time projections) contributes both halves to a channel.
        p: 1 for L1 norms, 2 for L2.
    """
    total = torch.zeros(channels, dtype=torch.float32)
    for w, dim in parts:
        w = w.detach().float()
        other = [d for d in range(w.dim()) if d != dim]
        norms = torch.linalg.vector_norm(w, ord=p, dim=other).cpu()
        if norms.numel() != channels:
            norms = torch.linalg.vector_norm(norms.view(-1, channels), ord=p, dim=0)
        total += norms / norms.mean().clamp_min(1e-12)  # each coupled layer weighs the same
    return total


def _keep(scores: torch.Tensor, amount: float, groups: int) -> torch.Tensor:
    """Indices (sorted) of the channels to keep: the same number in each of `groups` contiguous groups."""
    channels = scores.numel()
    per = channels // groups
    keep = max(1, round((1 - amount) * per))
    top = scores.view(groups, per).topk(keep, dim=1).indices + torch.arange(groups)[:, None] * per
    return top.flatten().sort().values


class _ChannelPlan(PrunePlan):
    """Structured: keep only the chosen channels of coupled tensors; layers shrink physically."""

    def __init__(self, amount: float, p: int):
        self.amount = amount
        self.p = p
        self.slices: dict[tuple[str, str], tuple[int, torch.Tensor]] = {}  # (layer, param) -> (dim, kept)
        self.attrs: dict[str, dict[str, int]] = {}  # layer -> attribute -> new value
        self.module_attrs: dict[str, dict[str, int]] = {}  # the same for modules without tensors (Attention)
        self.units = 0
        self.channels_before = 0
        self.channels_after = 0
        self.zeros = None

    def _cut(self, layer: str, param: str, dim: int, keep: torch.Tensor) -> None:
        self.slices[(layer, param)] = (dim, keep)

    def add_resnet(self, prefix: str, block: nn.Module) -> None:
        c = block.conv1.out_channels
        norm = block.norm2
        groups = norm.num_groups if isinstance(norm, nn.GroupNorm) else 1
        parts = [(block.conv1.weight, 0), (block.conv2.weight, 1)]
        tproj = block.time_emb_proj
        if tproj is not None:
            parts.append((tproj.weight, 0))
        keep = _keep(_group_scores(parts, c, self.p), self.amount, groups)
        self._cut(f"{prefix}.conv1", "weight", 0, keep)
        self._cut(f"{prefix}.conv1", "bias", 0, keep)
        self.attrs[f"{prefix}.conv1"] = {"out_channels": keep.numel()}
        self._cut(f"{prefix}.conv2", "weight", 1, keep)
        self.attrs[f"{prefix}.conv2"] = {"in_channels": keep.numel()}
        if isinstance(norm, nn.GroupNorm) or hasattr(norm, "num_channels"):
            self._cut(f"{prefix}.norm2", "weight", 0, keep)
            self._cut(f"{prefix}.norm2", "bias", 0, keep)
            self.attrs[f"{prefix}.norm2"] = {"num_channels": keep.numel()}
        if tproj is not None:
            # "scale_shift" projects to 2c (scale and shift halves, chunked): keep channel i in both halves.
            rows = keep if tproj.out_features == c else torch.cat([keep, keep + c])
            self._cut(f"{prefix}.time_emb_proj", "weight", 0, rows)
            self._cut(f"{prefix}.time_emb_proj", "bias", 0, rows)
            self.attrs[f"{prefix}.time_emb_proj"] = {"out_features": rows.numel()}
        self.units += 1
        self.channels_before += c
        self.channels_after += keep.numel()

    def add_feed_forward(self, prefix: str, ff: nn.Module) -> None:
        act, out = ff.net[0], ff.net[2]
        hidden = out.in_features
        gated = act.proj.out_features == 2 * hidden  # GEGLU / SwiGLU: hidden and gate halves, chunked
        parts = [(act.proj.weight, 0), (out.weight, 1)]
        keep = _keep(_group_scores(parts, hidden, self.p), self.amount, 1)
        rows = torch.cat([keep, keep + hidden]) if gated else keep
        self._cut(f"{prefix}.net.0.proj", "weight", 0, rows)
        self._cut(f"{prefix}.net.0.proj", "bias", 0, rows)
        self.attrs[f"{prefix}.net.0.proj"] = {"out_features": rows.numel()}
        self._cut(f"{prefix}.net.2", "weight", 1, keep)
        self.attrs[f"{prefix}.net.2"] = {"in_features": keep.numel()}
        self.units += 1
        self.channels_before += hidden
        self.channels_after += keep.numel()

    def add_attention(self, prefix: str, attn: nn.Module) -> None:
        heads, inner = attn.heads, attn.to_q.out_features
        width = inner // heads
        parts = [(attn.to_q.weight, 0), (attn.to_k.weight, 0), (attn.to_v.weight, 0), (attn.to_out[0].weight, 1)]
        per_head = _group_scores(parts, inner, self.p).view(heads, width).sum(dim=1)
        kept_heads = per_head.topk(max(1, round((1 - self.amount) * heads))).indices.sort().values
        keep = (kept_heads[:, None] * width + torch.arange(width)).flatten()
        for proj in ("to_q", "to_k", "to_v"):
            self._cut(f"{prefix}.{proj}", "weight", 0, keep)
            self._cut(f"{prefix}.{proj}", "bias", 0, keep)
            self.attrs[f"{prefix}.{proj}"] = {"out_features": keep.numel()}
        self._cut(f"{prefix}.to_out.0", "weight", 1, keep)
        self.attrs[f"{prefix}.to_out.0"] = {"in_features": keep.numel()}
        # The processor splits q/k/v by `heads`; the head width (and so the softmax scale) stays as it was.
        self.module_attrs[prefix] = {"heads": kept_heads.numel(), "inner_dim": keep.numel(),
                                     "inner_kv_dim": keep.numel()}
        self.units += 1
        self.channels_before += inner
        self.channels_after += keep.numel()

    def finish_(self, module: nn.Module) -> None:
        for name, attrs in self.module_attrs.items():  # modules that hold no tensor of their own
            target = module.get_submodule(name)
            for attr, value in attrs.items():
                setattr(target, attr, value)

    def tensor(self, layer: str, name: str, src: torch.Tensor, alloc: Alloc | None = None) -> torch.Tensor | None:
        cut = self.slices.get((layer, name))
        if cut is None:
            return None
        dim, keep = cut
        shape = list(src.shape)
        shape[dim] = keep.numel()
        out = alloc(tuple(shape), src.dtype) if alloc is not None else _fresh(tuple(shape), src.dtype, src.device)
        return torch.index_select(src, dim, keep.to(src.device), out=out)

    def fix_(self, layer: str, module: nn.Module) -> None:
        for attr, value in self.attrs.get(layer, {}).items():
            setattr(module, attr, value)


_FF_ACTIVATIONS = ("GEGLU", "SwiGLU", "GELU", "ApproximateGELU", "LinearActivation")
_HEAD_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor")  # they split q/k/v by `attn.heads`, nothing else


def _head_prunable(attn: nn.Module) -> bool:
    # diffusers' Attention with plain q/k/v/out Linears and a processor that only reads `heads`: no added
    # k/v projections, no per-head norms, as many k/v heads as query heads.
    return (type(getattr(attn, "processor", None)).__name__ in _HEAD_PROCESSORS
            and all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("to_q", "to_k", "to_v"))
            and isinstance(getattr(attn, "to_out", [None])[0], nn.Linear)
            and getattr(attn, "add_k_proj", None) is None and getattr(attn, "norm_q", None) is None
            and getattr(attn, "norm_k", None) is None and attn.to_q.out_features == attn.to_k.out_features
            and attn.heads > 1 and attn.to_q.out_features % attn.heads == 0)


def _channel_units(module: nn.Module, scope: str) -> tuple[list, list, list]:
    """The ResNet blocks, feed-forwards and attention layers whose channels the scope covers (by first layer)."""
    names = {n for n, _ in scope_layers(module, scope)}
    resnets, ffs, attns = [], [], []
    for prefix, sub in module.named_modules():
        kind = type(sub).__name__
        if kind == "ResnetBlock2D" and f"{prefix}.conv1" in names and isinstance(sub.conv1, nn.Conv2d):
            resnets.append((prefix, sub))
        elif (kind == "FeedForward" and len(sub.net) >= 3 and type(sub.net[0]).__name__ in _FF_ACTIVATIONS
              and f"{prefix}.net.0.proj" in names and isinstance(sub.net[2], nn.Linear)):
            ffs.append((prefix, sub))
        elif kind == "Attention" and f"{prefix}.to_q" in names and _head_prunable(sub):
            attns.append((prefix, sub))
    return resnets, ffs, attns


def _channel_planner(p: int) -> Callable[[nn.Module, float, str, int], PrunePlan]:
    def plan(module: nn.Module, amount: float, scope: str, seed: int) -> PrunePlan:
        resnets, ffs, attns = _channel_units(module, scope)
        if not resnets and not ffs and not attns:
            raise ValueError(
                f"pruning scope {scope!r} holds no channels that structured pruning removes (it takes the inner "
                "channels of ResNet blocks, the hidden width of transformer feed-forwards and attention heads); "
                "use all, no-io, resnet, attention, self-attention, cross-attention, feed-forward, down, mid or up"
            )
        result = _ChannelPlan(amount, p)
        with torch.no_grad():
            for prefix, block in resnets:
                result.add_resnet(prefix, block)
            for prefix, ff in ffs:
                result.add_feed_forward(prefix, ff)
            for prefix, attn in attns:
                result.add_attention(prefix, attn)
        return result

    return plan


def structured_size(module: nn.Module, amount: float, scope: str = "all") -> tuple[int, int, int]:
    """What a structured amount means before pruning: (parameters removed, channels before, channels after).

    Worked out from the layer shapes alone (no weight is read, a meta-device module works), with the same
    rounding as the structured methods (the same number of channels kept in every GroupNorm group), so
    `PruneReport.params_after == params_before - structured_size(...)[0]`.

    Args:
        module (`nn.Module`): the UNet.
        amount (`float`): fraction of channels to remove, 0.0 to `MAX_AMOUNT`.
        scope (`str`, defaults to `"all"`): a key of `SCOPES`.
    """
    resnets, ffs, attns = _channel_units(module, scope)
    removed = before = after = 0
    for _, b in resnets:
        c = b.conv1.out_channels
        groups = b.norm2.num_groups if isinstance(b.norm2, nn.GroupNorm) else 1
        keep = max(1, round((1 - amount) * (c // groups))) * groups
        per_channel = math.prod(b.conv1.weight.shape[1:]) + (b.conv1.bias is not None)
        per_channel += b.conv2.weight.shape[0] * math.prod(b.conv2.weight.shape[2:])
        per_channel += sum(t is not None for t in (getattr(b.norm2, "weight", None), getattr(b.norm2, "bias", None)))
        if b.time_emb_proj is not None:
            rows = b.time_emb_proj.out_features // c
            per_channel += rows * (b.time_emb_proj.in_features + (b.time_emb_proj.bias is not None))
        removed += per_channel * (c - keep)
        before, after = before + c, after + keep
    for _, ff in ffs:
        proj, out = ff.net[0].proj, ff.net[2]
        hidden = out.in_features
        keep = max(1, round((1 - amount) * hidden))
        per_channel = (proj.out_features // hidden) * (proj.in_features + (proj.bias is not None)) + out.out_features
        removed += per_channel * (hidden - keep)
        before, after = before + hidden, after + keep
    for _, attn in attns:
        inner, heads = attn.to_q.out_features, attn.heads
        keep = max(1, round((1 - amount) * heads)) * (inner // heads)
        per_channel = sum(p.in_features + (p.bias is not None) for p in (attn.to_q, attn.to_k, attn.to_v))
        per_channel += attn.to_out[0].out_features
        removed += per_channel * (inner - keep)
        before, after = before + inner, after + keep
    return removed, before, after


# ------------------------------------------------------------------------------ 2:4 semi-structured


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
        raise ValueError(f"2:4 semi-structured pruning removes exactly half the weights: amount must be 0.5, got {amount}")
    layers = {n for n, m in scope_layers(module, scope)
              if isinstance(m, nn.Linear) and m.in_features % 4 == 0}
    if not layers:
        raise ValueError(f"pruning scope {scope!r} has no nn.Linear whose input width is a multiple of 4 (2:4 needs one)")
    return _TwoFourPlan(layers)


def _two_four_check(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, "needs a CUDA GPU with sparse tensor cores (compute capability 8.0+); none here"
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    if major < 8:
        return False, f"needs CUDA compute capability 8.0+ for 2:4 sparse kernels (this GPU is sm{major}{minor})"
    return True, ""


# ------------------------------------------------------------------------------------------ the methods


def _by_plan(planner: Callable[[nn.Module, float, str, int], PrunePlan]) -> Callable[[nn.Module, float, str, int], None]:
    def prune_(module: nn.Module, amount: float, scope: str, seed: int) -> None:
        planner(module, amount, scope, seed).apply_(module)

    return prune_


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
        plan (`Callable[[nn.Module, float, str, int], PrunePlan]`, *optional*): the same method as a
            `PrunePlan` computed from a read-only module, so the engine can build a pruned copy layer by layer
            (fast, bounded memory). None: the engine deep-copies and calls `prune_`.
        kind (`str`, defaults to `"unstructured"`): `"unstructured"` (zeros; the amount is the fraction of
            the scope's weights zeroed), `"structured"` (channels removed, layers shrink; the amount is a
            fraction of channels, see the description) or `"semi-structured"` (a fixed N:M zero pattern).
        fixed_amount (`float`, *optional*): the only non-zero amount the method accepts (2:4 -> 0.5).
    """

    name: str
    short: str
    description: str
    prune_: Callable[[nn.Module, float, str, int], None]
    check: Callable[[torch.device], tuple[bool, str]] = _everywhere
    plan: Callable[[nn.Module, float, str, int], PrunePlan] | None = None
    kind: str = "unstructured"
    fixed_amount: float | None = None

    def available(self, device: torch.device | str = "cpu") -> tuple[bool, str]:
        """`(True, "")`, or `(False, reason)` when this method cannot run on `device`."""
        return self.check(torch.device(device))


_STRUCTURED_TEXT = (
    "Remove whole channels, so layers really shrink (fewer parameters and MACs, faster on any hardware): the "
    "amount is the fraction removed of the inner channels of every ResNet block (conv1 outputs = conv2 inputs, "
    "with norm2 and the time projection; the same number in each GroupNorm group), of the hidden width of "
    "every transformer feed-forward and of the heads of every attention layer, ranked by the {norm} norm of "
    "their weights. Parameters shrink by about 0.88x the amount on SD 1.5 (shortcuts, up/down-samplers, "
    "proj_in/out and I/O layers keep their width); measured parameters are reported."
)

PRUNERS: dict[str, Pruner] = {
    p.name: p
    for p in (
        Pruner(
            "l1-unstructured",
            "L1",
            "Zero the smallest-|w| weights, one global threshold over the whole scope (the seed study's method). "
            "Masked zeros: smaller only if stored sparse, no faster with dense kernels.",
            _by_plan(_plan_l1_global),
            plan=_plan_l1_global,
        ),
        Pruner(
            "l1-unstructured-layer",
            "L1/layer",
            "Zero the smallest-|w| fraction of every layer separately (each layer loses the same share). "
            "Masked zeros: no speed or memory gain with dense kernels.",
            _by_plan(_plan_l1_layer),
            plan=_plan_l1_layer,
        ),
        Pruner(
            "random-unstructured",
            "random",
            "Zero a seeded random fraction of the scope's weights: the control that tells 'L1 picks the right "
            "weights' from 'any pruning hurts'. No speed or memory gain.",
            _by_plan(_plan_random),
            plan=_plan_random,
        ),
        Pruner(
            "l1-structured-channels",
            "L1-ch",
            _STRUCTURED_TEXT.format(norm="L1"),
            _by_plan(_channel_planner(1)),
            plan=_channel_planner(1),
            kind="structured",
        ),
        Pruner(
            "l2-structured-channels",
            "L2-ch",
            _STRUCTURED_TEXT.format(norm="L2"),
            _by_plan(_channel_planner(2)),
            plan=_channel_planner(2),
            kind="structured",
        ),
        Pruner(
            "semi-structured-2of4",
            "2:4",
            "In every Linear of the scope keep the 2 largest |w| of each 4 consecutive weights (amount 0.5 "
            "only) and store them in the GPU's compressed 2:4 format, which sparse tensor cores multiply about "
            "1.3-1.6x faster. CUDA compute capability 8.0+ only; convolutions stay dense.",
            _by_plan(_plan_two_four),
            _two_four_check,
            plan=_plan_two_four,
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
        if pruner.plan is not None:
            plan = pruner.plan(module, float(amount), scope, seed)
            plan.apply_(module)
        else:
            pruner.prune_(module, float(amount), scope, seed)
    seconds = time.perf_counter() - start
    return measure_pruning(module, method, float(amount), scope, seconds, params_before, plan)


def check_amount(pruner: Pruner, amount: object) -> None:
    """Raise ValueError naming the valid amounts unless `amount` suits `pruner`."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount <= MAX_AMOUNT:
        raise ValueError(f"pruning amount must be a number from 0.0 to {MAX_AMOUNT}, got {_short_repr(amount)}")
    if pruner.fixed_amount is not None and amount not in (0.0, pruner.fixed_amount):
        raise ValueError(
            f"{pruner.name} prunes a fixed share: amount must be 0.0 or {pruner.fixed_amount}, got {_short_repr(amount)}"
        )


def measure_pruning(module: nn.Module, method: str, amount: float, scope: str, seconds: float,
                    params_before: int, plan: PrunePlan | None = None) -> PruneReport:
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
    return PruneReport(method, amount, scope, weights, zeros, len(layers), seconds, params_before, params_after,
                       *channels)


def _plain(weight: torch.Tensor) -> torch.Tensor:
    # A quantized (tensor subclass) weight is counted on what the kernels compute with.
    return weight if type(weight) in (torch.Tensor, nn.Parameter) else weight.dequantize()
