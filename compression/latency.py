"""Latency statistics for the benchmark and the sweeps: paired rounds against the baseline, medians, ratios.

A machine shared with other work drifts within seconds, so a setting is always timed in alternating rounds with
the baseline (`metrics.measure_latency_interleaved`: a, b, b, a, ...) and reported as a median with a bootstrap
interval, and as a ratio whose interval resamples the rounds as pairs. `bench.py` and `sweep.py` both take their
numbers from here, so "step ratio" in BENCHMARKS and "speed-up" in a sweep are the same statistic, inverted.

The timing primitives themselves (`LatencyStats`, `measure_latency`, `measure_latency_interleaved`,
`speedup_estimate`) are defined in `metrics.py` and re-exported here.

A single comparison (the app's Compare tab, `Engine.generate_pair(..., latency_rounds=COMPARE_ROUNDS)`) times
both UNets the same way, after drawing the images: `COMPARE_WARMUP` untimed run of each, then `COMPARE_ROUNDS`
alternating rounds of a `COMPARE_STEPS`-step denoising loop, reported as the median of the per-round ratios with
a distribution-free interval (`PairedLatency.round_ratio`). The images' own drawing times are no comparison: the
baseline is often drawn cold (or comes from the cache, timed earlier) and the compressed side warm after it; a
masked 30% L1 UNet, which cannot be faster, showed "0.77x baseline" that way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .intervals import median_interval
from .metrics import (
    CI_LEVEL,
    N_BOOT,
    Estimate,
    LatencyStats,
    measure_latency,
    measure_latency_interleaved,
    speedup_estimate,
)

# One comparison's timing: 1 untimed + 8 timed runs of a 1-step loop per side, 18 UNet steps in all. Measured on the
# embedded model, one busy core: +0.55-0.75 s on a 20-step pair that takes 1.25 s (0.5 s with the baseline cached).
# 8 rounds because the order-statistic interval of the median ratio then
# reaches 99.2% coverage ([smallest, largest] ratio); with fewer rounds it would miss 1.0 for two equally fast
# UNets more often (6 rounds: 3.1% of comparisons, 8: 0.8%).
COMPARE_ROUNDS = 8
COMPARE_STEPS = 1
COMPARE_WARMUP = 1

__all__ = [
    "COMPARE_ROUNDS",
    "COMPARE_STEPS",
    "COMPARE_WARMUP",
    "LatencyStats",
    "PairedLatency",
    "measure_latency",
    "measure_latency_interleaved",
    "median_or_none",
    "paired_latency",
    "speedup_estimate",
]


@dataclass(frozen=True)
class PairedLatency:
    """A setting and the baseline timed in the same alternating rounds.

    Args:
        base (`LatencyStats`): the baseline's rounds.
        this (`LatencyStats`): the setting's rounds, paired with `base` round by round.
    """

    base: LatencyStats
    this: LatencyStats

    @property
    def ratio(self) -> float:
        """This median / baseline median (below 1: faster)."""
        return self.this.median_s / self.base.median_s

    def speedup(self, n_boot: int = N_BOOT) -> Estimate:
        """Baseline / this (above 1: faster) with a paired bootstrap 95% interval (`metrics.speedup_estimate`)."""
        return speedup_estimate(self.base, self.this, n_boot)

    def ratio_interval(self, n_boot: int = N_BOOT) -> list[float | None]:
        """95% interval of `ratio`: the speed-up's interval inverted (None where an end is 0)."""
        speed = self.speedup(n_boot)
        return [1 / speed.ci_high if speed.ci_high else None, 1 / speed.ci_low if speed.ci_low else None]

    def round_ratio(self, level: float = CI_LEVEL) -> Estimate:
        """This / baseline, round by round: the median ratio with a distribution-free interval (order statistics,
        `intervals.median_interval`: valid for any noise as long as rounds are exchangeable, at any number of
        rounds). The level reached is in the note (8 rounds: 99.2%). For two equally fast UNets the interval
        contains 1.0 with that probability; a bootstrap of the medians of 8 rounds missed 1.0 in 6 of 40 trials."""
        a, b = np.asarray(self.base.times_s), np.asarray(self.this.times_s)
        if len(a) != len(b) or len(a) == 0:
            raise ValueError("round_ratio needs the same number of paired rounds on both sides")
        ratios = np.where(a > 0, b / np.where(a > 0, a, 1.0), math.nan)
        med, lo, hi, coverage = median_interval(ratios, level)
        note = (
            f"this / baseline per round, median of {len(a)} alternating rounds; "
            f"{100 * coverage:.1f}% distribution-free interval"
        )
        return Estimate("latency ratio", med, lo, hi, len(a), "baseline", "x", False, note)

    def sweep_estimates(self, steps: int, warmup: int, n_boot: int) -> list[Estimate]:
        """A sweep cell's two latency rows: the setting's median latency (ms) and its speed-up over the baseline."""
        note = f"denoising loop, {steps} steps, batch 1; median of {self.this.n} after {warmup} warm-up"
        return [self.this.estimate("latency", "ms", note=note), self.speedup(n_boot)]

    def bench_fields(self) -> dict:
        """A benchmark row's step timings in milliseconds (every round kept, so ratios can be recomputed)."""
        return dict(
            step_ms=1000 * self.this.median_s,
            step_ms_ci=[1000 * self.this.ci_low_s, 1000 * self.this.ci_high_s],
            paired_baseline_step_ms=1000 * self.base.median_s,
            step_ratio=self.ratio,
            step_times_ms=[1000 * t for t in self.this.times_s],
            paired_baseline_times_ms=[1000 * t for t in self.base.times_s],
        )


def paired_latency(
    base: Callable[[], float | None],
    this: Callable[[], float | None],
    warmup: int,
    repeats: int,
    device: str | torch.device | None = None,
) -> PairedLatency:
    """Time `this` against `base` in `repeats` alternating rounds after `warmup` untimed runs of each.

    Args:
        base, this (`Callable[[], float | None]`): the work; each may return its own seconds (else wall time).
        warmup (`int`), repeats (`int`): as in `metrics.measure_latency_interleaved`.
        device: CUDA is synchronised around each run.

    Example:
        >>> pair = paired_latency(lambda: unet(*args), lambda: pruned(*args), warmup=1, repeats=5)
        >>> pair.ratio, pair.ratio_interval()
    """
    lat = measure_latency_interleaved({"base": base, "this": this}, warmup, repeats, device)
    return PairedLatency(lat["base"], lat["this"])


def median_or_none(times: Sequence[float]) -> float | None:
    """The median of pooled timings (e.g. every paired baseline round of a benchmark), None when there are none."""
    return statistics.median(times) if times else None
