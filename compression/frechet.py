"""The Frechet distance with its finite-N bias removed and an interval that covers the true distance.

FD computed from N samples per set is biased upward by roughly c / N: the plug-in covariances' noise adds to
the trace and their matrix square root shrinks. The bias is not small next to the spread. 128-wide features,
N = 640 (the N the lab trusts), two sets from one distribution: FD at N averaged 16.4 where the truth is 0. A
bootstrap spread placed around that estimate covered the true FD in 11.5% of simulations (d = 16, N = 200,
true FD 1.0, mean estimate 1.34), and never when the true FD was 0.

What the lab reports instead (`fd_jackknife`): the delete-a-group jackknife. The N index-matched pairs are
split into G = 20 groups; FD is computed on all pairs (F) and with each group left out (F_g, N (1 - 1/G)
pairs each). Since the bias goes as 1/N, G F - (G - 1) mean(F_g) cancels it to first order: the same
extrapolation to N = infinity as Chong & Forsyth's FD-infinity (CVPR 2020), which fits FD at several N against
1/N, here from two sample sizes with G replicates that also give the spread. The interval is the estimate
+- t(G-1) x the jackknife standard error, cut at 0 (FD is a squared distance).

Measured on Gaussians whose FD is known in closed form (nominal 95%; tests/test_intervals.py reruns a small
version). d = 16, N = 200, 400 simulations each: coverage 99.8% (true FD 0), 99.5% (0.25), 97.5% (1.0), 96.0%
(2.7); d = 128, N = 640, 60 each: 100% (FD 0, where FD at N averaged 16.5 and the corrected estimate 0.13), 100%
(0.25), 98.3% (1.0), 96.7% (1.9), 95.0% (6.5); independent sets (d = 16, 300 or 1,000 reference rows against 200,
400 each): 95.3-100%; fixed reference statistics: 95.8-99.8%. The jackknife's standard error is a little too large
(the known upward bias of jackknife variances), so the interval is conservative: "at least 95%".

Cost: 2 x (G + 1) eigendecompositions of d x d, batched: 62 ms for d = 128, N = 640 on one core, against 5.7 s
for the 1,000 bootstrap resamples it replaces (5.7 ms each through torchmetrics). Below the N where the lab
trusts FD at all (`metrics.fd_min_n`, 5 x d) nothing is spent: the distance is reported as computed at N,
without an interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .intervals import CI_LEVEL, t_quantile

JACKKNIFE_GROUPS = 20  # t with 19 degrees of freedom: 2.09 x the standard error; more groups, more eigh calls


def _sqrt_psd(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of (a batch of) positive semi-definite matrices (round-off negatives set to 0)."""
    w, v = torch.linalg.eigh(cov)
    return (v * w.clamp(min=0).sqrt().unsqueeze(-2)) @ v.transpose(-1, -2)


def fd_from_moments(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """Frechet distance between Gaussians, batched over leading dimensions:
    |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2).

    The eigenvalues of cov1^1/2 cov2 cov1^1/2 are those of cov1 cov2 (what torchmetrics takes), but symmetric, so
    `eigvalsh` applies and round-off cannot make them complex.
    """
    root = _sqrt_psd(cov1)
    cross = torch.linalg.eigvalsh(root @ cov2 @ root).clamp(min=0).sqrt().sum(-1)
    trace = cov1.diagonal(dim1=-2, dim2=-1).sum(-1) + cov2.diagonal(dim1=-2, dim2=-1).sum(-1)
    return ((mu1 - mu2) ** 2).sum(-1) + trace - 2 * cross


def _group_moments(x: torch.Tensor, groups: np.ndarray, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means (G+1, d) and unbiased covariances (G+1, d, d): all rows first, then all rows but group g.

    Computed from per-group sums of the globally centred rows, so memory stays at G d x d matrices (an
    (G, N, d) weighted copy of the features would be 600 MB for N = 5000, d = 768).
    """
    n = len(x)
    mean = x.mean(0)
    xc = x - mean
    total = xc.T @ xc
    means, covs = [mean], [total / (n - 1)]
    for g in range(n_groups):
        part = xc[torch.from_numpy(groups == g)]
        m = n - len(part)
        shift = -part.sum(0) / m  # mean of the rest, relative to the global mean (the centred rows sum to 0)
        covs.append((total - part.T @ part - m * torch.outer(shift, shift)) / (m - 1))
        means.append(mean + shift)
    return torch.stack(means), torch.stack(covs)


@dataclass(frozen=True)
class FrechetEstimate:
    """A Frechet distance with its bias and its interval.

    Args:
        value (`float`): the bias-corrected estimate of the distance between the two distributions (>= 0).
        ci_low, ci_high (`float`): its interval (nominal `level`; conservative, see the module docstring).
        at_n (`float`): FD as computed on all N pairs, what papers report at a fixed N; `at_n - value` is the
            finite-N bias the correction removed.
        std_error (`float`): jackknife standard error of `value`.
        groups (`int`): jackknife groups.
    """

    value: float
    ci_low: float
    ci_high: float
    at_n: float
    std_error: float
    groups: int

    @property
    def bias(self) -> float:
        return self.at_n - self.value


def fd_jackknife(
    reference: np.ndarray | torch.Tensor | tuple,
    generated: np.ndarray | torch.Tensor,
    groups: int = JACKKNIFE_GROUPS,
    seed: int = 0,
    level: float = CI_LEVEL,
    paired: bool = True,
) -> FrechetEstimate:
    """Bias-corrected Frechet distance between two feature sets, with its interval.

    Three kinds of reference:

    - index-matched features (`paired=True`, the sweep's baseline and rendered real images): pairs stay together
      (row i of both sets leaves with its group), so the spread reflects which prompts and seeds were drawn;
    - independent features (`paired=False`, a folder of real images; any size): each set is split into the same
      number of groups on its own, and group g leaves both sets at once, so both sets' bias terms (c1 / m +
      c2 / n) shrink alike and cancel together;
    - fixed statistics, a `(mu, sigma)` tuple (published reference statistics): only the generated set is split;
      the statistics' own sampling error is not in the interval.

    Args:
        reference: (m, d) features, or `(mu, sigma)`.
        generated: (n, d) features, float64 preferred; n >= 2 x `groups` (and m, for features).
        groups (`int`, defaults to 20): jackknife groups (>= 11: the t quantile needs 10 degrees of freedom).
        seed (`int`, defaults to 0): which rows form which group (a seeded permutation).
        level (`float`, defaults to 0.95): nominal coverage.
        paired (`bool`, defaults to True): reference features are index-matched with the generated ones.

    Example:
        >>> est = fd_jackknife(feats_real, feats_generated)
        >>> est.value, (est.ci_low, est.ci_high), est.at_n, est.bias
    """
    gen = torch.as_tensor(generated, dtype=torch.float64)
    n = len(gen)
    stats = isinstance(reference, tuple)
    ref = None if stats else torch.as_tensor(reference, dtype=torch.float64)
    m = n if stats else len(ref)
    width = (len(reference[0]) if stats else ref.shape[1], gen.shape[1])
    if width[0] != width[1] or (paired and not stats and m != n):
        raise ValueError(
            f"fd_jackknife needs sets of one width (index-matched: one size), got {m} x {width[0]} and {n} x {width[1]}"
        )
    if groups < 11 or min(n, m) < 2 * groups:
        raise ValueError(f"fd_jackknife needs >= 11 groups of >= 2 rows, got {groups} groups for {min(n, m)} rows")
    rng = np.random.default_rng(seed)
    assign = rng.permutation(n) % groups
    mu2, cov2 = _group_moments(gen, assign, groups)
    if stats:
        mu1 = torch.as_tensor(reference[0], dtype=torch.float64).expand_as(mu2)
        cov1 = torch.as_tensor(reference[1], dtype=torch.float64).expand_as(cov2)
    else:
        mu1, cov1 = _group_moments(ref, assign if paired else rng.permutation(m) % groups, groups)
    fds = fd_from_moments(mu1, cov1, mu2, cov2).numpy()
    at_n, left_out = max(0.0, float(fds[0])), fds[1:]
    corrected = groups * at_n - (groups - 1) * float(left_out.mean())
    se = math.sqrt((groups - 1) / groups * float(((left_out - left_out.mean()) ** 2).sum()))
    half = t_quantile(0.5 + level / 2, groups - 1) * se
    return FrechetEstimate(
        max(0.0, corrected), max(0.0, corrected - half), max(0.0, corrected + half), at_n, se, groups
    )
