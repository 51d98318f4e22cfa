"""Diffusion Compression Lab: the Gradio app (a Hugging Face Space).

Compare tab: prune and quantize a copy of the UNet, draw the baseline and the compressed model from the same
prompt and seed, and see the pair, the difference and the measured cost and quality; every comparison of the
session goes into a table and two charts. Sweep tab: grids of settings over a prompt set, with intervals and N.

Layout and event wiring only: the work lives in `compression/`, the loaded models and the request checks in
`app_service.py`, the formatting of results (tables, captions, texts) in `app_format.py`, and running a model
request so that it can be stopped (Stop buttons, the API's cancel, clients that leave) in `app_jobs.py`.

Run: `python app.py [--model NAME]` (env: MODEL_ID, GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, APP_OUTPUT_DIR,
APP_CACHE_MB, APP_CACHE_SIZE, APP_MIN_SIDE, APP_MAX_MODELS, APP_QUEUE_SIZE, APP_MODEL_CONCURRENCY, APP_GPU_MAX_S).
API endpoints: /compare, /compare_distilled, /sweep, /export (see docs/app-and-api.md). On ZeroGPU (`spaces`
importable) each user action calls exactly one GPU function (app_gpu.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls out

import app_gpu as zgpu  # noqa: E402, I001 - first: imports `spaces` (ZeroGPU) before anything imports torch
import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import html  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

import app_format as fmt  # noqa: E402
import app_hub  # noqa: E402
import app_jobs  # noqa: E402
import app_service as svc  # noqa: E402
from app_format import (  # noqa: E402, F401 - the formatting helpers' names stay importable from app
    HISTORY_COLUMNS,
    SUMMARY_METRICS,
    SWEEP_PLOTS,
    SWEEP_QUALITY,
    SWEEP_TABS,
    history_figures,
    history_table,
    numbers_table,
    phone_friendly,
    status_markdown,
    sweep_figures,
    sweep_summary,
)
from compression import QUANT_MODES, SCOPES, Cancelled, charts  # noqa: E402
from compression.cancel import check  # noqa: E402
from compression.metrics import pair_row  # noqa: E402

log = logging.getLogger("dcl.app")

gpu = zgpu.gpu  # ZeroGPU Spaces: a GPU is attached only while a @spaces.GPU function runs (see app_gpu.py)


def _cli_model() -> str | None:
    """`--model NAME` when run as a script (the dropdown's default must be known while the page is built)."""
    if __name__ != "__main__":
        return None
    parser = argparse.ArgumentParser(description="Diffusion Compression Lab")
    parser.add_argument(
        "--model", default=None, help="catalog name of the startup model (default: env MODEL_ID, else tiny-shapes)"
    )
    return parser.parse_args().model


if __name__ == "__main__":  # before the model may load at import (ZeroGPU), so that its log lines show
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
LAB = svc.Lab(default_model=_cli_model())
if zgpu.ZEROGPU:  # ZeroGPU: models are loaded and moved to CUDA at import time; every GPU worker inherits them.
    LAB.startup(warm=False)  # no GPU is attached at import: the first request warms it
DEFAULTS = svc.model_defaults(LAB.default_model)
MODEL_CONCURRENCY = int(os.environ.get("APP_MODEL_CONCURRENCY", 1))  # 1: latencies are measured without a
# second request competing for the same cores; raise it on a multi-GPU machine.
QUEUE_SIZE = int(os.environ.get("APP_QUEUE_SIZE", 32))  # waiting requests beyond this get "queue is full"
STATE_SESSIONS = 500  # browser sessions whose history is kept (the oldest go first)
MODEL_WORK = "model"  # the one concurrency_id of every listener that touches a model
JOBS = app_jobs.Jobs(MODEL_CONCURRENCY)  # running model jobs: each stops when cancelled or left by its client

EXAMPLES = list(DEFAULTS.examples)  # the catalog entry's own examples
# Push to the Hub with the visitor's login: only with APP_HUB_PUSH=1 and Gradio's oauth extras (app_hub.py).
HUB_PUSH = svc.HUB_PUSH and not svc.hub_push_missing()
if svc.HUB_PUSH and not HUB_PUSH:
    log.warning("APP_HUB_PUSH=1 ignored: %s", svc.hub_push_missing())

PIXEL_IMAGE = dict(
    format="png",
    height=260,
    interactive=False,
    elem_classes="pixel",  # png: lossless pixels
    buttons=["download", "fullscreen"],
)

CSS = """
/* 64x64 images fill their box, drawn as blocks (nearest neighbour), not blurred */
.pixel img, .pixel canvas { image-rendering: pixelated; }
.pixel .image-frame img { width: 100%; height: 100%; object-fit: contain; }
#title h1 { margin-bottom: 0.1em; }
#title p { margin-top: 0; color: var(--body-text-color-subdued); }
.caption p { font-size: 0.9em; margin: 0.2em 0 0 0; text-align: center; }
.note p { font-size: 0.85em; color: var(--body-text-color-subdued); margin: 0; }
#status p { margin: 0.2em 0; }
.dcl-table table, .dcl-table .cell-wrap, .dcl-table .cell-wrap * {
    font-family: var(--font) !important; font-variant-numeric: tabular-nums;
}
"""


# --------------------------------------------------------------------------------------------- handlers


@contextlib.contextmanager
def plain_errors():
    """Turn every failure into a gr.Error a visitor can read: our RequestError (and the library's ValueError)
    as its message, escaped; anything else as a generic message with a reference that is in the server log.
    No stack trace reaches the client (launch(show_error=False) hides other exceptions' text too)."""
    try:
        yield
    except (gr.Error, Cancelled):
        raise
    except Exception as err:  # noqa: BLE001 - RequestError, a library check, or the unexpected (app_gpu.error_text)
        raise gr.Error(zgpu.error_text(err), print_exception=False) from None


# ----------------------------------------------------------------------------------- running model jobs


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


def _client_gone() -> Callable[[], bool]:
    """Whether the client of the event being handled has left. When a client's event stream closes (a killed
    process, a closed tab) Gradio marks its running event not `alive` and stops sending it messages, but lets the
    handler run on; it offers no public way to ask. Read where Gradio keeps it (guarded: a Gradio without these
    attributes gives "never gone", and tests/test_cancel.py fails)."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    events = getattr(getattr(blocks, "_queue", None), "event_ids_to_events", {})
    event = events.get(event_id) if event_id else None
    if event is None:
        return lambda: False
    return lambda: not getattr(event, "alive", True)


def _price(job: app_jobs.Job | None, cost: int, what: str, progress) -> None:
    """Record the job's price and show it, with the time it should take at the measured pace, as it starts."""
    if job is not None:
        job.cost = cost
    estimate = app_jobs.pace_text(JOBS.estimate_seconds(cost))
    progress(0.0, desc=fmt.job_start_text(what, cost, estimate))


@contextlib.contextmanager
def _counted(job: app_jobs.Job | None, engine):
    """Add to `job.steps_run` the image-steps the engine runs inside the block (the pace is measured from them)."""
    before = engine.image_steps
    try:
        yield
    finally:
        if job is not None:
            job.steps_run += engine.image_steps - before


def _stopped_outputs(count: int, status_at: int, status: str) -> tuple:
    """A stopped job's outputs: the status line says what happened; everything else stays as it was."""
    return tuple(status if i == status_at else gr.skip() for i in range(count))


COMPARE_STATUS, COMPARE_OUTPUTS = 8, 16  # the status line's place in _compare's outputs, and their count
SWEEP_STATUS, SWEEP_OUTPUTS = 0, 4 + len(SWEEP_PLOTS)


# --------------------------------------------------------------------------------- the GPU side (app_gpu.py)
# One function per user action holds the GPU: JSON in, PIL images and JSON out, failures and stops returned as
# data. The job's cancel token is found by its reference (a string crosses, a token does not).


def _token(job_ref: str | None):
    """The cancel token of this process's running job `job_ref` (None in a ZeroGPU worker forked before it)."""
    return next((j.token for j in JOBS.running() if j.ref == job_ref), None) if job_ref else None


@gpu(duration=zgpu.compare_seconds)
@zgpu.guarded
def draw_pair(fields: dict, job_ref: str | None = None):
    """The GPU part of /compare and /compare_distilled: draw the pair and score it."""
    req = svc.CompareRequest.from_fields(fields)
    loaded = LAB.get(req.model)
    entry, cached = svc.distilled_unet(loaded, req.against) if req.against else (None, True)
    result = loaded.engine.generate_pair(
        req.prompt,
        req.seed,
        req.steps,
        req.guidance,
        req.spec,
        req.negative_prompt,
        req.height,
        req.width,
        progress=svc.progress_adapter(gr.Progress()),
        entry=entry,
        cancel=_token(job_ref),
        latency_rounds=svc.COMPARE_LATENCY_ROUNDS,
    )
    row = pair_row(result, req.prompt, loaded.judge)
    if req.against:
        row.update(setting=f"{req.against} (distilled)", compression_s=0.0 if cached else entry.seconds)
    return result.baseline_image, result.compressed_image, {"pair": zgpu.pair_record(result), "row": row}


@gpu(duration=zgpu.sweep_seconds)
@zgpu.guarded
def run_sweep_on_gpu(fields: dict, job_ref: str | None = None, track: bool = False) -> dict:
    """The GPU part of /sweep: run the grid, write its files (and log to trackio when asked); the tidy table comes
    back as JSON."""
    from compression.sweep import run_sweep
    from compression.tracking import SweepTracker

    req = svc.SweepRequest.from_fields(fields)
    loaded = LAB.get(req.model)
    res = run_sweep(
        loaded.sweep_engine,
        req.specs,
        req.prompts,
        (0,),
        steps=req.steps,
        guidance=req.guidance,
        metric_set=loaded.metric_set,
        out_dir=svc.sweep_dir(loaded.name, loaded.fingerprint),
        latency_repeats=req.latency_repeats,
        progress=svc.progress_adapter(gr.Progress()),
        show_bar=False,
        max_cells=svc.MAX_SWEEP_SETTINGS,
        n_boot=svc.SWEEP_BOOTSTRAP,
        cancel=_token(job_ref),
        tracker=SweepTracker("trackio", run_name=f"app-{loaded.name}") if track else None,
    )
    table = json.loads(res.table.to_json(orient="split", index=False))  # NaN -> null: plain JSON
    return {"table": table, "out_dir": str(res.out_dir), "computed": res.computed, "skipped": res.skipped}


@gpu(duration=zgpu.export_seconds)
@zgpu.guarded
def export_on_gpu(fields: dict) -> dict:
    """The GPU part of /export: build the compressed UNet (and its sample pair) and zip the bundle."""
    path, size = svc.export_bundle(LAB, svc.CompareRequest.from_fields(fields))
    return {"path": str(path), "bytes": size}


@gpu(duration=zgpu.export_seconds)
@zgpu.guarded
def bundle_on_gpu(fields: dict) -> dict:
    """The GPU part of /push_to_hub: build the bundle folder (the upload runs in the main process, GPU-free)."""
    return {"folder": str(svc.build_bundle(LAB, svc.CompareRequest.from_fields(fields)))}


def _bundle_via_gpu(req: svc.CompareRequest) -> Path:
    fields = req.to_fields()
    zgpu.check_seconds(zgpu.export_seconds(fields), "push")
    return Path(zgpu.unwrap(bundle_on_gpu(fields))["folder"])


async def compare_handler(
    prompt,
    negative_prompt,
    seed,
    steps,
    guidance,
    model,
    prune_percent,
    prune_method,
    prune_scope,
    quant_mode,
    bits,
    height,
    width,
    recover_steps,
    history,
    request: gr.Request,
    progress=gr.Progress(track_tqdm=True),
):
    """What /compare runs: `compare` on a model worker that stops within a denoising step when the job is
    cancelled or its client leaves (app_jobs.py); a stopped comparison changes only the status line."""
    args = (
        prompt,
        negative_prompt,
        seed,
        steps,
        guidance,
        model,
        prune_percent,
        prune_method,
        prune_scope,
        quant_mode,
        bits,
        height,
        width,
        recover_steps,
        history,
    )
    job = JOBS.start("compare", _session(request))
    try:
        return await JOBS.run(job, lambda token: compare(*args, progress=progress, job=job), _client_gone())
    except Cancelled:
        return _stopped_outputs(COMPARE_OUTPUTS, COMPARE_STATUS, fmt.job_stopped(job))


def compare(
    prompt,
    negative_prompt,
    seed,
    steps,
    guidance,
    model,
    prune_percent,
    prune_method,
    prune_scope,
    quant_mode,
    bits,
    height,
    width,
    recover_steps=0,
    history=None,
    progress=gr.Progress(track_tqdm=True),
    job: app_jobs.Job | None = None,
):
    """Draw the baseline and the compressed model with the same prompt and seed; measure both (stops when
    `job`'s token is cancelled)."""
    with plain_errors():
        return _compare(
            prompt,
            negative_prompt,
            seed,
            steps,
            guidance,
            model,
            prune_percent,
            prune_method,
            prune_scope,
            quant_mode,
            bits,
            height,
            width,
            recover_steps,
            history,
            progress,
            job,
        )


def _compare(
    prompt,
    negative_prompt,
    seed,
    steps,
    guidance,
    model,
    prune_percent,
    prune_method,
    prune_scope,
    quant_mode,
    bits,
    height,
    width,
    recover_steps,
    history,
    progress,
    job,
):
    req = svc.parse_compare(
        LAB,
        prompt,
        negative_prompt,
        seed,
        steps,
        guidance,
        model,
        prune_percent,
        prune_method,
        prune_scope,
        quant_mode,
        bits,
        height,
        width,
        recover_steps,
    )
    return _show_pair(req, history, progress, job)


def _show_pair(req: svc.CompareRequest, history, progress, job: app_jobs.Job | None):
    """Draw `req` on the GPU side (one call) and lay the pair out: images, captions, numbers, history."""
    loaded = LAB.get(req.model)  # in the main process: ZeroGPU workers inherit what it loaded
    fields = req.to_fields()
    zgpu.check_seconds(zgpu.compare_seconds(fields), "comparison")
    _price(job, svc.compare_cost(req.steps, req.spec.recover_steps), "comparing", progress)
    with _counted(job, loaded.engine):  # (in-process runs: a ZeroGPU worker counts its own)
        base_img, comp_img, drawn = zgpu.unwrap(draw_pair(fields, job.ref if job is not None else None))
    result = zgpu.pair_from_record(base_img, comp_img, drawn["pair"])
    row = drawn["row"]
    label = row["setting"] if req.against else None
    warnings = fmt.reading_warnings(req.reading) + fmt.pair_warnings(result)
    for w in warnings:
        gr.Warning(w)

    size = (result.height, result.width)
    base_img = result.baseline_image if not result.baseline_nonfinite else svc.nonfinite_placeholder(size)
    comp_img = result.compressed_image if not result.compressed_nonfinite else svc.nonfinite_placeholder(size)
    if result.baseline_nonfinite or result.compressed_nonfinite:
        heat, stats = svc.nonfinite_placeholder(size, "no difference: NaN/inf"), {}
        heat_caption = fmt.difference_caption(None)
    else:
        heat, stats = svc.difference_heatmap(result.baseline_image, result.compressed_image)
        heat_caption = fmt.difference_caption(stats)
    base_caption, comp_caption = fmt.pair_captions(result, label)

    row = {"model": req.model, **row}
    history = [*(history or []), row][-svc.HISTORY_LIMIT :]
    hist_df = pd.DataFrame(history)
    csv = svc.write_download(hist_df, "history")
    hashes = (svc.image_sha256(result.baseline_image), svc.image_sha256(result.compressed_image))
    details = fmt.pair_details(req, result, row, stats, warnings, hashes)
    if req.against:
        details.update(setting=label, against=req.against)
    judge = loaded.judge.name if loaded.judge is not None else ""
    return (
        base_img,
        comp_img,
        base_caption,
        comp_caption,
        (base_img, comp_img),
        heat,
        heat_caption,
        numbers_table(row, result, judge),
        status_markdown(req, result, stats, warnings) if not req.against else fmt.distilled_status(req, result, row),
        details,
        history_table(history),
        str(csv),
        *history_figures(hist_df),
        history,
    )


async def compare_distilled_handler(
    prompt,
    negative_prompt,
    seed,
    steps,
    guidance,
    distilled,
    height,
    width,
    history,
    request: gr.Request,
    progress=gr.Progress(track_tqdm=True),
):
    """What /compare_distilled runs: `compare_distilled` on a model worker that stops like /compare's."""
    args = (prompt, negative_prompt, seed, steps, guidance, distilled, height, width, history)
    job = JOBS.start("compare", _session(request))
    try:
        return await JOBS.run(job, lambda token: compare_distilled(*args, progress=progress, job=job), _client_gone())
    except Cancelled:
        return _stopped_outputs(COMPARE_OUTPUTS, COMPARE_STATUS, fmt.job_stopped(job))


def compare_distilled(
    prompt,
    negative_prompt,
    seed,
    steps,
    guidance,
    distilled,
    height,
    width,
    history,
    progress=gr.Progress(track_tqdm=True),
    job: app_jobs.Job | None = None,
):
    """Draw a distilled SD 1.x UNet beside the model it was distilled against: same prompt, seed and sampler, over
    that model's VAE and text encoder; its parameters and latency are measured like a compressed UNet's."""
    with plain_errors():
        req = svc.parse_distilled(LAB, prompt, negative_prompt, seed, steps, guidance, distilled, height, width)
        return _show_pair(req, history, progress, job)


async def sweep_handler(
    model,
    prune_percents,
    prune_methods,
    quant_modes,
    study,
    n_prompts,
    steps,
    guidance,
    latency_repeats,
    recover_steps,
    track,
    request: gr.Request,
    progress=gr.Progress(track_tqdm=True),
):
    """What /sweep runs: `sweep` on a model worker that stops within a denoising step or a batch when the job is
    cancelled, stopped or left by its client; finished settings stay on disk, the status line says which."""
    args = (
        model,
        prune_percents,
        prune_methods,
        quant_modes,
        study,
        n_prompts,
        steps,
        guidance,
        latency_repeats,
        recover_steps,
        track,
    )
    job = JOBS.start("sweep", _session(request))
    try:
        return await JOBS.run(job, lambda token: sweep(*args, progress=progress, job=job), _client_gone())
    except Cancelled:
        return _stopped_outputs(SWEEP_OUTPUTS, SWEEP_STATUS, fmt.job_stopped(job))


def sweep(
    model,
    prune_percents,
    prune_methods,
    quant_modes,
    study,
    n_prompts,
    steps,
    guidance,
    latency_repeats,
    recover_steps=(0,),
    track=False,
    progress=gr.Progress(track_tqdm=True),
    job: app_jobs.Job | None = None,
):
    """Run a grid of settings over a prompt set (compression.sweep.run_sweep) and chart it (stops when `job`'s
    token is cancelled)."""
    with plain_errors():
        return _sweep(
            model,
            prune_percents,
            prune_methods,
            quant_modes,
            study,
            n_prompts,
            steps,
            guidance,
            latency_repeats,
            recover_steps,
            progress,
            job,
            track is True,
        )


def _sweep(
    model,
    prune_percents,
    prune_methods,
    quant_modes,
    study,
    n_prompts,
    steps,
    guidance,
    latency_repeats,
    recover_steps,
    progress,
    job,
    track=False,
):
    from compression.sweep import SweepStopped

    token = job.token if job is not None else None

    req = svc.parse_sweep(
        LAB,
        model,
        prune_percents,
        prune_methods,
        quant_modes,
        study,
        n_prompts,
        steps,
        guidance,
        latency_repeats,
        recover_steps,
    )
    loaded = LAB.get(req.model)
    svc.check_sweep_fits(loaded, req)
    fields = req.to_fields()
    zgpu.check_seconds(zgpu.sweep_seconds(fields), "sweep")
    out_dir = svc.sweep_dir(loaded.name, loaded.fingerprint)
    lock = svc.sweep_lock(out_dir)
    if not lock.acquire(blocking=False):
        progress(0.0, desc="waiting for another sweep of this model to finish")
        while not lock.acquire(timeout=app_jobs.POLL_S):
            check(token)
    try:  # one sweep per work folder at a time (svc.sweep_lock): the report copied below is this sweep's
        cost = svc.sweep_price(req.specs, len(req.prompts), req.steps, req.latency_repeats)
        _price(job, cost, f"{len(req.specs)} settings x {len(req.prompts)} prompts", progress)
        with _counted(job, loaded.sweep_engine):  # (in-process runs: a ZeroGPU worker counts its own)
            res = zgpu.unwrap(run_sweep_on_gpu(fields, job.ref if job is not None else None, track))
        report = svc.download_path("sweep-report", ".html")
        shutil.copyfile(Path(res["out_dir"]) / "report.html", report)
    except SweepStopped as stop:
        if job is not None:
            job.note = fmt.sweep_stopped(stop)  # the status line, and what the Stop button reports
        raise
    finally:
        lock.release()
    table = pd.DataFrame(res["table"]["data"], columns=res["table"]["columns"])
    csv = svc.write_download(table, "sweep")
    figures = sweep_figures(table, req.layer_study)
    for w in fmt.nonfinite_warnings(table):
        gr.Warning(w)
    status = fmt.sweep_status(req, SimpleNamespace(**res), svc.SWEEP_BOOTSTRAP)
    return (status, sweep_summary(table), str(csv), str(report), *figures)


async def _stop(kind: str, request: gr.Request) -> str:
    """A Stop button: cancel this page's running job of `kind`, wait until its worker has stopped (the next
    denoising step or batch), and say what was kept. The button also `cancels=` the event, which takes a
    waiting job off the queue and may end a running one first; then its outcome is reported."""
    job = JOBS.stop_for(_session(request), kind, app_jobs.STOP_BUTTON)
    if job is None:
        return f"No {kind} was running on this page (a waiting one is taken off the queue)."
    deadline = time.monotonic() + app_jobs.STOP_WAIT_S
    while not job.done.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if job.outcome == "running":
        return f"Stop asked; the {kind} ends at its next denoising step or batch."
    return fmt.job_stopped(job) if job.outcome == "stopped" else f"The {kind} had already {job.outcome}."


async def stop_compare(request: gr.Request):
    return await _stop("compare", request)


async def stop_sweep(request: gr.Request):
    return await _stop("sweep", request)


def on_session_closed(request: gr.Request):
    """A session's heartbeat stopped (a closed page, a gradio_client that exited or was killed): stop its model
    jobs, nobody will see them."""
    JOBS.stop_session(_session(request), app_jobs.SESSION_CLOSED)


COMPARE_FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "model",
    "prune_percent",
    "prune_method",
    "prune_scope",
    "quant_mode",
    "bits",
    "height",
    "width",
    "recover_steps",
)
DISTILLED_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "distilled", "height", "width")
SWEEP_FIELDS = (
    "model",
    "prune_percents",
    "prune_methods",
    "quant_modes",
    "study",
    "n_prompts",
    "steps",
    "guidance",
    "latency_repeats",
    "recover_steps",
)


def _verdicts(fields, problems_of, args) -> list:
    """One gr.validate per input (extra inputs such as the history state: no verdict)."""
    try:
        problems = problems_of(LAB, *args[: len(fields)])
    except Exception:  # noqa: BLE001 - never let a checker bug block a request: the handler checks again
        log.exception("validator failed")
        problems = {}
    verdicts = [gr.validate(f not in problems, html.escape(problems.get(f, ""), quote=False)) for f in fields]
    return verdicts + [None] * (len(args) - len(fields))


def validate_compare(*args):
    """Runs before a /compare request joins the queue (Gradio's validator): bad input is refused at once, with
    the message on the input at fault, however long the queue is. The handler checks everything again."""
    return _verdicts(COMPARE_FIELDS, svc.compare_problems, args)


def validate_distilled(*args):
    """The same for /compare_distilled."""
    return _verdicts(DISTILLED_FIELDS, svc.distilled_problems, args)


def validate_sweep(*args):
    """The same for /sweep, grid limits included."""
    return _verdicts(SWEEP_FIELDS, svc.sweep_problems, args)


def on_quant_change(mode):
    """The bit-width slider belongs to the simulated mode only."""
    uses_bits = mode in QUANT_MODES and QUANT_MODES[mode].uses_bits
    return gr.update(visible=uses_bits)


def on_model_change(name):
    """Sampler defaults of the chosen model (guidance, steps; sizes back to native)."""
    d = svc.model_defaults(name) if isinstance(name, str) else DEFAULTS
    return gr.update(value=d.steps), gr.update(value=d.guidance), gr.update(value=0), gr.update(value=0)


def sweep_plan(prune_percents, prune_methods, quant_modes, study, n_prompts, recover_steps=(0,)):
    """How big the sweep will be, before it runs."""
    try:
        req = svc.parse_sweep(
            LAB,
            LAB.default_model,
            prune_percents,
            prune_methods,
            quant_modes,
            study,
            n_prompts,
            DEFAULTS.steps,
            DEFAULTS.guidance,
            0,
            recover_steps,
        )
    except ValueError as err:
        return f"⚠ {html.escape(str(err))}"
    return fmt.sweep_plan_text(req)


def clear_history():
    return [], history_table([]), None, *history_figures(None)


# ------------------------------------------------------------------------------------------------ layout


def _model_line() -> str:
    return fmt.model_line(LAB)


# ------------------------------------------------------------------------------- export and shared links


def export_unet(
    prompt,
    negative_prompt,
    seed,
    steps,
    guidance,
    model,
    prune_percent,
    prune_method,
    prune_scope,
    quant_mode,
    bits,
    height,
    width,
    recover_steps=0,
):
    """Build the current setting's compressed UNet bundle (safetensors, manifest, card, recipe) as a zip."""
    with plain_errors():
        req = svc.parse_compare(
            LAB,
            prompt,
            negative_prompt,
            seed,
            steps,
            guidance,
            model,
            prune_percent,
            prune_method,
            prune_scope,
            quant_mode,
            bits,
            height,
            width,
            recover_steps,
        )
        fields = req.to_fields()
        zgpu.check_seconds(zgpu.export_seconds(fields), "export")
        made = zgpu.unwrap(export_on_gpu(fields))
        path, size = made["path"], made["bytes"]
        recipe = html.escape(json.dumps(svc.recipe_of(req)), quote=False)
        return (
            str(path),  # a plain path: API clients download it
            (
                f"Bundle of **{html.escape(req.spec.label)}** ready ({size:,} bytes, zip). "
                f"Recipe (for `python -m compression.export --recipe`): `{recipe}`"
            ),
        )


async def export_handler(
    prompt,
    negative_prompt,
    seed,
    steps,
    guidance,
    model,
    prune_percent,
    prune_method,
    prune_scope,
    quant_mode,
    bits,
    height,
    width,
    recover_steps,
    request: gr.Request,
):
    """What /export runs: `export_unet` on a model worker. Building a bundle does not check the token (one UNet
    copy, then one file write), but like every model job it holds the queue slot until its worker is done."""
    args = (
        prompt,
        negative_prompt,
        seed,
        steps,
        guidance,
        model,
        prune_percent,
        prune_method,
        prune_scope,
        quant_mode,
        bits,
        height,
        width,
        recover_steps,
    )
    job = JOBS.start("export", _session(request))
    try:
        return await JOBS.run(job, lambda token: export_unet(*args), _client_gone())
    except Cancelled:
        return gr.skip(), fmt.job_stopped(job)


COPY_LINK_JS = """(prompt, seed, steps, guidance, model, prune_percent, prune_method, prune_scope, quant_mode,
                   bits) => {
    const values = {prompt, seed, steps, guidance, model, prune_percent, prune_method, prune_scope, quant_mode};
    if (quant_mode === "simulated-int") values.bits = bits;
    const url = window.location.origin + window.location.pathname + "?" + new URLSearchParams(values).toString();
    try { navigator.clipboard.writeText(url); } catch (e) {}
    return {value: url, visible: true, __type__: "update"};
}"""


def show_export(path):
    """After /export: show the download button with the bundle's size (a separate step, so that the API's
    /export returns the file itself)."""
    if not path:
        return gr.skip()
    size = os.path.getsize(path)
    return gr.DownloadButton(f"Download compressed UNet ({size / 2**20:.2f} MiB)", visible=True)


def apply_link(
    prompt,
    seed,
    steps,
    guidance,
    model,
    prune_percent,
    prune_method,
    prune_scope,
    quant_mode,
    bits,
    request: gr.Request,
):
    """On page load: fill the controls from a shared link's query parameters; a bad one is ignored, with a note."""
    current = dict(
        zip(
            svc.SHARE_FIELDS,
            (prompt, seed, steps, guidance, model, prune_percent, prune_method, prune_scope, quant_mode, bits),
        )
    )
    params = dict(request.query_params) if request is not None else {}
    values, notes = svc.parse_share_query(LAB, params, current)
    updates = [values[k] if k in values else gr.skip() for k in svc.SHARE_FIELDS]
    note = ("Link: " + "; ".join(html.escape(n, quote=False) for n in notes)) if notes else gr.skip()
    return [*updates, note]


def _pruner_choices():
    return LAB.pruners()


def _quant_choices():
    return [("fp32 (none)" if name == "fp32" else name, name) for name in LAB.quant_modes()]


with gr.Blocks(title="Diffusion Compression Lab", delete_cache=(1800, 3600)) as demo:
    # A session's history lives in server memory: bounded rows (svc.HISTORY_LIMIT), dropped after 3 idle hours,
    # and at most STATE_SESSIONS sessions kept (launch below): ~300 KB x 500 sessions in the worst case.
    history_state = gr.State([], time_to_live=3 * 3600)
    with gr.Column(elem_id="title"):
        gr.Markdown(
            "# ✂️ Diffusion Compression Lab\n"
            "Prune and quantize a copy of a diffusion model's UNet, then compare it with the untouched baseline: "
            "same prompt, same seed, side by side, with measured quality and cost."
        )
        model_line = gr.Markdown(_model_line())

    with gr.Tabs():
        # --------------------------------------------------------------------------------- Compare
        with gr.Tab("Compare", id="compare"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=300):
                    prompt = gr.Textbox(
                        label="Prompt",
                        value=EXAMPLES[0],
                        lines=2,
                        max_lines=4,
                        max_length=svc.MAX_PROMPT_CHARS,
                        elem_id="prompt",
                    )
                    gr.Examples([[p] for p in EXAMPLES], inputs=[prompt], label="Example prompts")
                    if DEFAULTS.grammar:
                        gr.Markdown(DEFAULTS.grammar, elem_classes="note")
                    with gr.Row(equal_height=True):
                        seed = gr.Number(
                            value=42,
                            precision=0,
                            label="Seed",
                            minimum=0,
                            maximum=svc.MAX_SEED,
                            min_width=120,
                            scale=3,
                            elem_id="seed",
                        )
                        dice = gr.Button("Random seed", size="md", min_width=80, scale=1, elem_id="dice")
                    with gr.Group():
                        with gr.Row():
                            steps = gr.Slider(
                                1,
                                svc.MAX_STEPS,
                                value=DEFAULTS.steps,
                                step=1,
                                label="Steps",
                                min_width=120,
                                elem_id="steps",
                            )
                            guidance = gr.Slider(
                                0,
                                svc.MAX_GUIDANCE,
                                value=DEFAULTS.guidance,
                                step=0.5,
                                label="Guidance scale",
                                min_width=120,
                            )
                    with gr.Group():
                        prune = gr.Slider(
                            0,
                            svc.MAX_PRUNE_PERCENT,
                            value=30,
                            step=1,
                            label="Pruning amount (%)",
                            info="weights zeroed (unstructured) or channels removed (structured); "
                            "the SD 1.5 study saw quality go past 30-35%",
                            elem_id="prune",
                        )
                        with gr.Row():
                            method = gr.Dropdown(
                                _pruner_choices(),
                                value="l1-unstructured",
                                label="Pruning method",
                                min_width=160,
                                scale=3,
                                elem_id="method",
                            )
                            scope = gr.Dropdown(
                                list(SCOPES),
                                value="all",
                                label="Pruning scope",
                                min_width=110,
                                scale=2,
                                elem_id="scope",
                            )
                        quant = gr.Dropdown(
                            _quant_choices(),
                            value="fp32",
                            label="Quantization",
                            info="only the modes this device can run",
                            elem_id="quant",
                        )
                        bits = gr.Slider(
                            2, 8, value=4, step=1, label="Simulated bit width", visible=False, elem_id="bits"
                        )
                        recover = gr.Slider(
                            0,
                            svc.max_recover_steps(),
                            value=0,
                            step=50,
                            label="Recovery steps (0 = off)",
                            info="fine-tune the pruned UNet against the baseline before quantizing "
                            "(distillation; ~300 steps a minute here); the compressed side shows the result",
                            elem_id="recover",
                        )
                    with gr.Row():
                        generate = gr.Button("Generate", variant="primary", size="lg", elem_id="generate", scale=3)
                        stop_compare_btn = gr.Button("Stop", variant="stop", size="lg", elem_id="stop-compare", scale=1)
                    # Take the comparison away (handlers in "export and shared links" below).
                    with gr.Row():
                        export_btn = gr.Button("Build compressed UNet", size="sm", elem_id="export")
                        export_file = gr.DownloadButton(
                            "Download compressed UNet", size="sm", visible=False, elem_id="export-file"
                        )
                        copy_link = gr.Button("Copy link", size="sm", elem_id="copy-link")
                    share_url = gr.Textbox(label="Link to this comparison", visible=False, elem_id="share-url")
                    take_note = gr.Markdown(elem_classes="note", elem_id="take-note")
                    hub_push = app_hub.push_controls() if HUB_PUSH else None
                    with gr.Accordion("Negative prompt, model, image size", open=False):
                        negative = gr.Textbox(
                            label="Negative prompt",
                            value="",
                            max_length=svc.MAX_PROMPT_CHARS,
                            placeholder="(optional) what to steer away from",
                        )
                        model = gr.Dropdown(
                            LAB.model_names,
                            value=LAB.default_model,
                            label="Model",
                            info="the embedded tiny-shapes model runs offline; hub models need "
                            "network and ideally a GPU",
                        )
                        with gr.Row():
                            height = gr.Number(value=0, precision=0, label="Height (0: native)", min_width=100)
                            width = gr.Number(value=0, precision=0, label="Width (0: native)", min_width=100)
                    with gr.Accordion("Compare with a distilled model", open=False, elem_id="distilled-box"):
                        distilled = gr.Dropdown(
                            svc.DISTILLED,
                            value=svc.DISTILLED[0],
                            label="Distilled model",
                            info="drawn beside the model it was distilled against (SD 1.5), same prompt and seed, "
                            "over that model's VAE and text encoder",
                            elem_id="distilled",
                        )
                        distilled_btn = gr.Button("Draw SD 1.5 vs distilled", size="sm", elem_id="distilled-go")
                        gr.Markdown(fmt.distilled_note(), elem_classes="note")

                with gr.Column(scale=5, min_width=320):
                    status = gr.Markdown("Press **Generate** to draw the pair.", elem_id="status")
                    with gr.Row(equal_height=True):
                        with gr.Column(min_width=150):
                            base_img = gr.Image(label="Baseline", elem_id="baseline", **PIXEL_IMAGE)
                            base_caption = gr.Markdown(elem_classes="caption")
                        with gr.Column(min_width=150):
                            comp_img = gr.Image(label="Compressed", elem_id="compressed", **PIXEL_IMAGE)
                            comp_caption = gr.Markdown(elem_classes="caption")
                        with gr.Column(min_width=150):
                            heat_img = gr.Image(label="Difference (amplified)", elem_id="difference", **PIXEL_IMAGE)
                            heat_caption = gr.Markdown(elem_classes="caption")
                    with gr.Row():
                        with gr.Column(scale=2, min_width=260):
                            slider = gr.ImageSlider(
                                label="Slide: baseline | compressed",
                                format="png",
                                height=300,
                                interactive=False,
                                elem_classes="pixel",
                                elem_id="slider",
                            )
                        with gr.Column(scale=3, min_width=300):
                            numbers = gr.Dataframe(
                                headers=["measure", "baseline", "compressed", "ratio"],
                                label="Numbers for this pair (ratio: compressed / baseline)",
                                interactive=False,
                                wrap=True,
                                elem_id="numbers",
                                elem_classes="dcl-table",
                                max_height=640,
                                column_widths=["46%", "18%", "18%", "18%"],
                            )
                    with gr.Accordion("Details (JSON, as the API returns it)", open=False):
                        details = gr.JSON(label="details")

            gr.Markdown(
                "### Session history\nEvery comparison of this session, newest first. Charts: N = "
                "comparisons, one image each."
            )
            history_df = gr.Dataframe(
                value=history_table([]),
                label="History",
                interactive=False,
                wrap=True,
                max_height=320,
                elem_id="history",
                elem_classes="dcl-table",
            )
            with gr.Row():
                history_csv = gr.DownloadButton("Download history (CSV)", size="sm", elem_id="history-csv")
                clear = gr.Button("Clear history", size="sm", variant="secondary")
            # One chart per row: their notes are single lines that a half-width chart clips, and phones stack.
            cost_plot = gr.Plot(value=charts.history_cost(None), label="Latency and UNet size", elem_id="cost-plot")
            quality_plot = gr.Plot(
                value=charts.history_quality(None), label="Quality against pruning", elem_id="quality-plot"
            )
            chart_notes = gr.Markdown(elem_classes="note", elem_id="chart-notes")

        # ----------------------------------------------------------------------------------- Sweep
        with gr.Tab("Sweep", id="sweep"):
            gr.Markdown(
                "Run a grid of settings over a prompt set and measure each against the baseline (and, for "
                "the embedded model, against real images of its world). Finished settings are reused by "
                "later sweeps with the same prompts and sampler settings. Bigger grids: "
                "`python -m compression.sweep`."
            )
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=300):
                    sw_model = gr.Dropdown(LAB.model_names, value=LAB.default_model, label="Model")
                    sw_study = gr.Radio(
                        [(text, name) for name, text in svc.SWEEP_STUDIES.items()], value="grid", label="Study"
                    )
                    sw_percents = gr.CheckboxGroup(
                        list(svc.SWEEP_PERCENTS),
                        value=[0, 30, 60],
                        label="Pruning (%)",
                        info="layer study: each non-zero value x 9 parts",
                    )
                    sw_methods = gr.CheckboxGroup(
                        _pruner_choices(),
                        value=["l1-unstructured"],
                        label="Pruning methods",
                        info="layer study: the first one",
                    )
                    sw_quant = gr.CheckboxGroup(
                        svc.sweep_quant_choices(LAB),
                        value=["fp32"],
                        label="Quantization",
                        info="simulated-int:N = N-bit simulated weights; layer study: fp32",
                    )
                    sw_prompts = gr.Slider(
                        1,
                        svc.MAX_SWEEP_PROMPTS,
                        value=16,
                        step=1,
                        label="Prompts (N per setting)",
                        info="from assets/prompts; KID is unbiased at small N, FD needs hundreds",
                        elem_id="sweep-prompts",
                    )
                    with gr.Row():
                        sw_steps = gr.Slider(
                            1, svc.MAX_STEPS, value=DEFAULTS.steps, step=1, label="Steps", elem_id="sweep-steps"
                        )
                        sw_guidance = gr.Slider(
                            0, svc.MAX_GUIDANCE, value=DEFAULTS.guidance, step=0.5, label="Guidance"
                        )
                    sw_latency = gr.Slider(
                        0,
                        svc.MAX_LATENCY_REPEATS,
                        value=3,
                        step=1,
                        label="Latency repeats",
                        info="median of this many timed runs per setting (0: skip)",
                        elem_id="sweep-latency",
                    )
                    sw_track = gr.Checkbox(
                        False,
                        label="Also log to trackio",
                        info="local and offline (TRACKIO_DIR); the CSV stays the record",
                        visible=importlib.util.find_spec("trackio") is not None,
                    )
                    sw_recover = gr.CheckboxGroup(
                        list(svc.SWEEP_RECOVER_STEPS),
                        value=[0],
                        label="Recovery steps",
                        info="grid study: each pruned setting fine-tuned this long against the baseline (0: as pruned)",
                    )
                    sw_plan = gr.Markdown(elem_classes="caption")
                    with gr.Row():
                        run_sweep_btn = gr.Button("Run sweep", variant="primary", elem_id="run-sweep", scale=3)
                        # Ends the sweep at its next denoising step or batch; finished settings stay on disk.
                        stop_sweep_btn = gr.Button("Stop", variant="stop", elem_id="stop-sweep", scale=1)
                with gr.Column(scale=2, min_width=320):
                    sw_status = gr.Markdown("Choose a grid and press **Run sweep**.", elem_id="sweep-status")
                    sw_table = gr.Dataframe(
                        label="Results per setting: value [95% CI]",
                        interactive=False,
                        wrap=True,
                        max_height=360,
                        elem_id="sweep-table",
                        elem_classes="dcl-table",
                    )
                    with gr.Row():
                        sw_csv = gr.DownloadButton("Download results (CSV, tidy)", size="sm")
                        sw_report = gr.DownloadButton("Download report (HTML)", size="sm")
                    sw_plots = [None] * len(SWEEP_PLOTS)
                    with gr.Tabs():
                        for tab, indices in SWEEP_TABS:
                            with gr.Tab(tab):
                                for i in indices:
                                    sw_plots[i] = gr.Plot(
                                        value=charts.empty_figure("Run a sweep first."),
                                        label=SWEEP_PLOTS[i],
                                        elem_id=f"sweep-plot-{i}",
                                    )

        with gr.Tab("About", id="about"):
            gr.Markdown(fmt.about(LAB.device, LAB.cache_size))

    # ------------------------------------------------------------------------------------------ wiring
    compare_inputs = [
        prompt,
        negative,
        seed,
        steps,
        guidance,
        model,
        prune,
        method,
        scope,
        quant,
        bits,
        height,
        width,
        recover,
        history_state,
    ]
    compare_outputs = [
        base_img,
        comp_img,
        base_caption,
        comp_caption,
        slider,
        heat_img,
        heat_caption,
        numbers,
        status,
        details,
        history_df,
        history_csv,
        cost_plot,
        quality_plot,
        chart_notes,
        history_state,
    ]
    # preprocess=False: the raw values reach app_service's checks, which refuse NaN, non-integers and unknown
    # names with plain messages (Gradio's own preprocessing rounds 3.5 to 4 and echoes bad choices).
    model_work = dict(concurrency_id=MODEL_WORK, concurrency_limit=MODEL_CONCURRENCY, preprocess=False)
    compare_event = gr.on(
        [generate.click, prompt.submit],
        compare_handler,
        compare_inputs,
        compare_outputs,
        api_name="compare",
        validator=validate_compare,
        **model_work,
    )
    # Stop: `cancels` takes a waiting job off the queue and cancels a running one (its worker stops at the next
    # step before the queue slot is freed: app_jobs.py); the handler says what was kept.
    distilled_event = distilled_btn.click(
        compare_distilled_handler,
        [prompt, negative, seed, steps, guidance, distilled, height, width, history_state],
        compare_outputs,
        api_name="compare_distilled",
        validator=validate_distilled,
        **model_work,
    )
    stop_compare_btn.click(
        stop_compare, None, status, cancels=[compare_event, distilled_event], queue=False, api_visibility="private"
    )
    quant.change(on_quant_change, quant, bits, queue=False, api_visibility="private")
    model.change(on_model_change, model, [steps, guidance, height, width], queue=False, api_visibility="private")
    sw_model.change(
        lambda name: on_model_change(name)[:2], sw_model, [sw_steps, sw_guidance], queue=False, api_visibility="private"
    )
    dice.click(None, None, seed, js="() => Math.floor(Math.random() * 4294967296)", api_visibility="private")
    clear.click(
        clear_history,
        None,
        [history_state, history_df, history_csv, cost_plot, quality_plot, chart_notes],
        queue=False,
        api_visibility="private",
    )

    sweep_inputs = [
        sw_model,
        sw_percents,
        sw_methods,
        sw_quant,
        sw_study,
        sw_prompts,
        sw_steps,
        sw_guidance,
        sw_latency,
        sw_recover,
        sw_track,
    ]
    sweep_event = run_sweep_btn.click(
        sweep_handler,
        sweep_inputs,
        [sw_status, sw_table, sw_csv, sw_report, *sw_plots],
        api_name="sweep",
        validator=validate_sweep,
        **model_work,
    )
    stop_sweep_btn.click(stop_sweep, None, sw_status, cancels=[sweep_event], queue=False, api_visibility="private")
    demo.unload(on_session_closed)
    plan_inputs = [sw_percents, sw_methods, sw_quant, sw_study, sw_prompts, sw_recover]
    gr.on(
        [demo.load, *(comp.change for comp in plan_inputs)],
        sweep_plan,
        plan_inputs,
        sw_plan,
        queue=False,
        api_visibility="private",
    )
    demo.load(_model_line, None, model_line, queue=False, api_visibility="private")

    # export and shared links
    share_inputs = [prompt, seed, steps, guidance, model, prune, method, scope, quant, bits]
    export_btn.click(
        export_handler,
        compare_inputs[:-1],
        [export_file, take_note],
        api_name="export",
        validator=validate_compare,
        **model_work,
    ).then(show_export, export_file, export_file, queue=False, api_visibility="private")
    copy_link.click(None, share_inputs, share_url, js=COPY_LINK_JS, api_visibility="private")
    if hub_push is not None:
        app_hub.wire(hub_push, compare_inputs[:-1], model_work, LAB, build=_bundle_via_gpu)
    demo.load(apply_link, share_inputs, [*share_inputs, take_note], queue=False, api_visibility="private")

demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=MODEL_CONCURRENCY)

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="pink")


def launch(**kwargs):
    """Launch with the app's settings (tests pass prevent_thread_lock=True and a port)."""
    svc.DOWNLOAD_DIR.mkdir(parents=True, exist_ok=True)
    options = dict(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        allowed_paths=[str(svc.DOWNLOAD_DIR)],  # CSV downloads; nothing else outside Gradio's own cache
        max_file_size="5mb",  # the app takes no uploads; anything big sent to /upload is refused
        show_error=False,  # unexpected exceptions reach the client as a bare "Error", never a trace
        ssr_mode=False,  # no Node server: one process, as on this CI
        state_session_capacity=STATE_SESSIONS,
        theme=THEME,
        css=CSS,
    )
    options.update(kwargs)
    block = not options.pop("prevent_thread_lock", False)
    launched = demo.launch(prevent_thread_lock=True, **options)
    svc.cap_request_bodies(demo.server_app)  # 413 for bodies over svc.MAX_BODY_BYTES, before Gradio parses them
    if block:
        demo.block_thread()
    return launched


if __name__ == "__main__":
    if not zgpu.ZEROGPU:  # (on ZeroGPU the model was loaded at import)
        LAB.startup()
    if LAB.warm_seconds is not None:
        log.info("warmed %s in %.1f s", LAB.default_model, LAB.warm_seconds)
    launch()
