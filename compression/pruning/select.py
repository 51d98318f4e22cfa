"""The exact global k-th smallest score over many layers, without concatenating them.

A strided sample of the scores brackets the k-th smallest one, one chunked pass counts the scores below the
bracket and gathers the few inside it, and the k-th is picked from those (an exact radix select over the float
bits is the fallback if the bracket missed). Ties at the threshold are broken in layer order, so exactly k
scores are selected. Extra memory: the sample and the bracket (under 1% of the scores) plus a few `CHUNK`s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from ..scratch import scratch

CHUNK = 1 << 20  # elements scored at a time: 1M float32 = 4 MiB per temporary (stays in cache and in the
# malloc heap; 16 MiB chunks fragmented the heap to +160 MiB peak on a 512 MiB model)

_HI_BINS = 1 << 15  # non-negative float32 bit patterns are < 2**31: top 15 bits after >> 16
_LO_BINS = 1 << 16

# A scorer yields, for one layer, float32 scores >= 0 chunk by chunk (CHUNK elements each, in flat order);
# the same layer must give the same scores every time it is asked (selection reads them more than once).
Scorer = Callable[[int, torch.Tensor], Iterator[torch.Tensor]]
# A sampler gives a sample of a layer's scores, about numel / step of them, drawn like the scores are.
Sampler = Callable[[int, torch.Tensor, int], torch.Tensor]

SAMPLE = 1 << 20  # scores sampled to bracket the k-th smallest one before the single exact counting pass


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
        mask = torch.le(
            torch.sub(s, mid, out=work).abs_(),
            half * (1 + 1e-5) + 1e-30,
            out=scratch(s.numel(), torch.bool, s.device, slot=12),
        )
        wide = s[mask]
    return below, wide[(wide >= lo) & (wide < hi)]


@torch.no_grad()
def _threshold(
    weights: list[torch.Tensor], scorer: Scorer, sampler: Sampler, k: int, sample: int | None = None
) -> tuple[float, list[int]]:
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
    for _ in range(3):
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
