"""The ZeroGPU boundary: which function of each user action holds the GPU, for how long, and what crosses over.

On a ZeroGPU Space a GPU is attached only while a `@spaces.GPU` function runs, and that function runs in a forked
worker process: its arguments and results are pickled across, a `gr.Error` raised inside has reached visitors as
a bare "Error" (gradio issue 12792), any other exception as "ZeroGPU worker error" and its class name, and state
it changes (a cache filled in the worker) may not outlive the worker. So here:

- `spaces` is imported before anything imports torch (ZeroGPU refuses a process where CUDA started first), and
  where it is importable app.py loads the startup model at import time (ZeroGPU moves models to CUDA then, and
  every worker inherits them);
- each user action (compare, distilled compare, sweep, export) checks its request and loads its model in the
  main process, then calls exactly ONE function wrapped by `gpu(duration)`; the duration is computed from the
  request (`compare_seconds`, `sweep_seconds`, `export_seconds`: steps x images x the catalog's seconds per
  image-step, plus building the UNets), and a request over `GPU_MAX_S` is refused with the figures;
- only JSON (dicts, lists, strings, numbers, None) goes in, and only PIL images and JSON come out: the GPU side
  returns a failure as data (`{"error": text}`, `guarded`) and the main process raises the `gr.Error` (`unwrap`),
  so its message reaches the visitor whatever the decorator does to exceptions; a stop comes back the same way;
- a job's cancel token cannot cross into a forked worker: the GPU side looks it up by the job's reference in its
  own process, which finds it wherever the GPU function runs in-process (everywhere but ZeroGPU). On ZeroGPU a
  Stop takes effect when the GPU call returns.

Where `spaces` is not importable (CI, a CPU or plain GPU Space) `gpu()` changes nothing and the same code runs
in one process. tests/test_space.py runs the real app with a stand-in `spaces` module that records every call.
"""

from __future__ import annotations

try:  # first: before torch is imported by anything (ZeroGPU checks CUDA was not initialised before it)
    import spaces  # type: ignore
except ImportError:  # the usual case off Spaces
    spaces = None

import dataclasses  # noqa: E402
import html  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import uuid  # noqa: E402

log = logging.getLogger("dcl.app")

ZEROGPU = spaces is not None  # spaces importable: models go to CUDA at import time, GPU calls are wrapped
GPU_OVERHEAD_S = 10  # a worker's start and the tensors' transfer to the GPU
GPU_MIN_S = 15
GPU_MAX_S = int(os.environ.get("APP_GPU_MAX_S", "120"))  # the longest GPU call the app asks for


def gpu(duration):
    """`spaces.GPU(duration=duration)` where `spaces` is importable, else a decorator that changes nothing.

    Args:
        duration (`int` or `Callable[..., int]`): seconds, or a function of the call's arguments returning them.
    """
    if spaces is None:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


# ------------------------------------------------------------------------------------------------ durations


def _entry(model: str):
    from compression.models import CatalogEntry, resolve_model

    try:
        return resolve_model(model)
    except ValueError:
        return CatalogEntry(str(model), str(model), "", local=False)


def _clamp(seconds: float) -> int:
    return int(max(math.ceil(seconds), GPU_MIN_S))


def _image_step_s(entry, height: int | None, width: int | None) -> float:
    native = entry.side * entry.side
    return entry.gpu_image_step_s * max(1.0, ((height or entry.side) * (width or entry.side)) / native)


def compare_seconds(fields: dict, *rest) -> int:
    """GPU seconds a comparison asks for: building (or loading) one UNet, recovering it when asked, then 2 images x
    steps and the warm latency rounds. (`rest`: the GPU function's other arguments, which ZeroGPU passes here
    too.)"""
    from app_service import compare_cost
    from compression import CompressionSpec

    entry = _entry(fields["model"])
    spec = CompressionSpec.from_dict(fields["spec"])
    identity = spec.is_identity and not fields.get("against")
    build = 0 if identity else entry.gpu_build_s
    # the two images, the warm latency rounds and any recovery training, in image-steps (the job's own price)
    image_steps = compare_cost(fields["steps"], spec.recover_steps)
    steps = image_steps * _image_step_s(entry, fields.get("height"), fields.get("width"))
    return _clamp(GPU_OVERHEAD_S + build + steps)


def sweep_seconds(fields: dict, *rest) -> int:
    """GPU seconds a sweep asks for: each setting built (and recovered when asked), then (prompts + latency repeats)
    x steps images."""
    from app_service import SweepRequest, sweep_price

    entry = _entry(fields["model"])
    req = SweepRequest.from_fields(fields)
    image_steps = sweep_price(req.specs, len(req.prompts), req.steps, req.latency_repeats)  # the job's own price
    return _clamp(GPU_OVERHEAD_S + len(req.specs) * entry.gpu_build_s + image_steps * entry.gpu_image_step_s)


def export_seconds(fields: dict, *rest) -> int:
    """GPU seconds an export asks for: the comparison it draws, then writing the bundle."""
    return _clamp(compare_seconds(fields) + GPU_OVERHEAD_S)


def check_seconds(seconds: int, what: str) -> None:
    """Refuse, on ZeroGPU, a request whose GPU time is over `GPU_MAX_S` (the call would be cut off midway).

    Raises:
        RequestError: with the estimate, the limit and what to lower.
    """
    if ZEROGPU and seconds > GPU_MAX_S:
        from app_service import RequestError

        raise RequestError(
            f"this {what} needs about {seconds} s of GPU time; a GPU call here is limited to {GPU_MAX_S} s "
            "(APP_GPU_MAX_S). Lower the steps, prompts, latency repeats or settings."
        )


# ------------------------------------------------------------------------------------------ failures as data


def error_text(err: BaseException) -> str:
    """What a visitor is told about a failure: a ValueError's own message (ours are plain and name the valid
    range), escaped; a generic line with a logged reference for anything else."""
    if isinstance(err, ValueError):
        return html.escape(str(err), quote=False)
    if isinstance(err, MemoryError):
        log.exception("out of memory")
        return (
            "The server ran out of memory for this request: choose a smaller image size, fewer steps or fewer prompts."
        )
    ref = uuid.uuid4().hex[:8]
    log.error("request failed (ref %s)", ref, exc_info=err)
    return f"The server hit an unexpected error (reference {ref}, logged). Try again or change a setting."


def guarded(fn):
    """Wrap a GPU-side function so that a failure comes back as `{"error": text}` instead of an exception, and a
    stop (`compression.Cancelled`, a sweep's `SweepStopped` with what it kept) as `{"cancelled": {...}}`."""
    from compression.cancel import Cancelled

    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Cancelled as stop:
            kept = {k: getattr(stop, k) for k in ("finished", "unfinished") if hasattr(stop, k)}
            return {"cancelled": {"reason": stop.reason, **kept}}
        except Exception as err:  # noqa: BLE001 - every failure crosses the boundary as data
            return {"error": error_text(err)}

    run.__name__, run.__qualname__, run.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    return run


def unwrap(result):
    """The GPU side's result, or the `gr.Error` (or the stop) it reported, raised here in the main process."""
    import gradio as gr

    from compression.cancel import Cancelled
    from compression.sweep import SweepStopped

    if isinstance(result, dict) and set(result) == {"error"}:
        raise gr.Error(result["error"], print_exception=False)
    if isinstance(result, dict) and set(result) == {"cancelled"}:
        stop = result["cancelled"]
        if "finished" in stop:
            raise SweepStopped(stop["reason"], stop["finished"], stop["unfinished"])
        raise Cancelled(stop["reason"])
    return result


# ---------------------------------------------------------------------------------------------- a drawn pair


def pair_record(result) -> dict:
    """An `engine.PairResult` without its images, as JSON (specs, costs and reports as dicts)."""
    out = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if f.name in ("baseline_image", "compressed_image"):
            continue
        if f.name == "spec":
            value = value.to_dict()
        elif dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        out[f.name] = value
    return out


def pair_from_record(baseline_image, compressed_image, record: dict):
    """The `engine.PairResult` that `pair_record` described, with its two images."""
    from compression import CompressionSpec, ModuleCost, PairResult, PruneReport

    values = dict(record)
    values["spec"] = CompressionSpec.from_dict(values["spec"])
    values["baseline_cost"] = ModuleCost(**values["baseline_cost"])
    values["compressed_cost"] = ModuleCost(**values["compressed_cost"])
    if values["prune_report"] is not None:
        values["prune_report"] = PruneReport(**values["prune_report"])
    if values.get("latency") is not None:  # the warm alternating rounds, as JSON: two LatencyStats
        from compression.latency import PairedLatency
        from compression.metrics import LatencyStats

        stats = {k: LatencyStats(**{**v, "times_s": tuple(v["times_s"])}) for k, v in values["latency"].items()}
        values["latency"] = PairedLatency(**stats)
    return PairResult(baseline_image=baseline_image, compressed_image=compressed_image, **values)
