"""Latency statistics for the benchmark and the sweeps: paired rounds against the baseline, medians, ratios.

A machine shared with other work drifts within seconds, so a setting is always timed in alternating rounds with
the baseline (`metrics.measure_latency_interleaved`: a, b, b, a, ...) and reported as a median with a bootstrap
interval, and as a ratio whose interval resamples the rounds as pairs. `bench.py` and `sweep.py` both take their
numbers from here, so "step ratio" in BENCHMARKS and "speed-up" in a sweep are the same statistic, inverted.

The timing primitives themselves (`LatencyStats`, `measure_latency`, `measure_latency_interleaved`,
`speedup_estimate`) are defined in `metrics.py` and re-exported here.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .metrics import (
    N_BOOT,
    Estimate,
    LatencyStats,
    measure_latency,
    measure_latency_interleaved,
    speedup_estimate,
)

__all__ = [
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
