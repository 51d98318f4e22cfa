"""Unstructured pruning: zero single weights, chosen by |w| (globally or per layer) or at random.

No dense kernel gets faster or smaller from these zeros: the lab reports them as sparsity, never as a speed-up.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from ..scratch import scratch
from . import select  # CHUNK and SAMPLE read at call time: tests shrink them to reach every path
from .plan import Alloc, PrunePlan, _fresh
from .scopes import scope_layers
from .select import Sampler, Scorer, _threshold

# --------------------------------------------------------------------------- importance scores


def _l1_scores(index: int, weight: torch.Tensor) -> Iterator[torch.Tensor]:
    # Each chunk is written into the same work buffer: a consumer is done with it before asking for the next.
    flat = weight.detach().reshape(-1)
    for start in range(0, flat.numel(), select.CHUNK):
        chunk = flat[start : start + select.CHUNK]
        yield torch.abs(chunk, out=scratch(chunk.numel(), torch.float32, chunk.device, slot=10))


def _l1_sample(index: int, weight: torch.Tensor, step: int) -> torch.Tensor:
    # A strided sample: every layer contributes in proportion to its size, from all over the layer.
    return weight.detach().reshape(-1)[::step].float().abs()


def _random_scorer(seed: int) -> Scorer:
    def scores(index: int, weight: torch.Tensor) -> Iterator[torch.Tensor]:
        # One generator per layer, re-seeded on every pass: the same chunks come back each time.
        gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + index)
        n = weight.numel()
        for start in range(0, n, select.CHUNK):
            m = min(select.CHUNK, n - start)
            yield torch.rand(m, generator=gen, out=scratch(m, torch.float32, "cpu", slot=10)).to(weight.device)

    return scores


def _random_sampler(seed: int) -> Sampler:
    def sample(index: int, weight: torch.Tensor, step: int) -> torch.Tensor:
        # The scores are i.i.d. uniform: any independent uniform draw is a fair sample of them.
        gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + index + 0x5EED_5EED)
        return torch.rand(max(1, weight.numel() // step), generator=gen)

    return sample


# ------------------------------------------------------------------------------ masks


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


def _mask_plan(
    module: nn.Module, scope: str, scorer: Scorer, sampler: Sampler, amount: float, per_layer: bool, l1: bool
) -> _MaskPlan:
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

        sample = select.SAMPLE if not per_layer else select.SAMPLE >> 4
        threshold, quota = _threshold(ws, scorer_g, sampler_g, k, sample)
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
