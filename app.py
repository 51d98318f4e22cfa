"""Diffusion Compression Lab: the Gradio app (a Hugging Face Space).

Compare tab: prune and quantize a copy of the UNet, draw the baseline and the compressed model from the same
prompt and seed, and see the pair, the difference and the measured cost and quality; every comparison of the
session goes into a table and two charts. Sweep tab: grids of settings over a prompt set, with intervals and N.

Layout, event wiring and formatting only: the work lives in `compression/`, the loaded models and the request
checks in `app_service.py`.

Run: `python app.py [--model NAME]` (env: MODEL_ID, GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, APP_OUTPUT_DIR,
APP_CACHE_SIZE, APP_MAX_MODELS, APP_QUEUE_SIZE, APP_MODEL_CONCURRENCY). API endpoints: /compare, /sweep
(see README "API").
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls out

import argparse  # noqa: E402
import contextlib  # noqa: E402
import html  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

import app_service as svc  # noqa: E402
from compression import PRUNERS, QUANT_MODES, SCOPES, charts, world  # noqa: E402
from compression.metrics import pair_row  # noqa: E402

log = logging.getLogger("dcl.app")

try:  # ZeroGPU Spaces: a GPU is attached only while a @spaces.GPU function runs. Elsewhere: nothing changes.
    import spaces  # type: ignore

    def gpu(duration: int):
        return spaces.GPU(duration=duration)
except ImportError:  # pragma: no cover - the usual case off Spaces

    def gpu(duration: int):
        return lambda fn: fn


def _cli_model() -> str | None:
    """`--model NAME` when run as a script (the dropdown's default must be known while the page is built)."""
    if __name__ != "__main__":
        return None
    parser = argparse.ArgumentParser(description="Diffusion Compression Lab")
    parser.add_argument("--model", default=None, help="catalog name of the startup model (default: env MODEL_ID, "
                                                      "else tiny-shapes)")
    return parser.parse_args().model


LAB = svc.Lab(default_model=_cli_model())
DEFAULTS = svc.model_defaults(LAB.default_model)
MODEL_CONCURRENCY = int(os.environ.get("APP_MODEL_CONCURRENCY", 1))  # 1: latencies are measured without a
# second request competing for the same cores; raise it on a multi-GPU machine.
QUEUE_SIZE = int(os.environ.get("APP_QUEUE_SIZE", 32))  # waiting requests beyond this get "queue is full"
STATE_SESSIONS = 500  # browser sessions whose history is kept (the oldest go first)
MODEL_WORK = "model"  # the one concurrency_id of every listener that touches a model

TINY_EXAMPLES = [
    "a red circle on the left on a blue background",
    "a yellow triangle at the top on a black background",
    "a green square in the center on a white background",
    "a purple circle at the bottom on a orange background",
    "a white triangle on the right on a green background",
]
GENERAL_EXAMPLES = [
    "a photograph of an astronaut riding a horse on the moon",
    "a watercolor painting of a lighthouse at dusk",
    "a red apple next to a blue cup on a wooden table",
    "a corgi wearing sunglasses, studio photo",
]
EXAMPLES = TINY_EXAMPLES if DEFAULTS.tiny else GENERAL_EXAMPLES

PIXEL_IMAGE = dict(format="png", height=260, interactive=False, elem_classes="pixel",  # png: lossless pixels
                   buttons=["download", "fullscreen"])

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


# ------------------------------------------------------------------------------------------- formatting


def _num(v, digits: int = 3, unit: str = "") -> str:
    """A number for a table cell: significant digits, NaN shown as a dash."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    text = f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:,.0f}"
    return f"{text}{unit}"


def _finite_or_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def numbers_table(row: dict, result, judge_name: str) -> pd.DataFrame:
    """The pair's numbers: one row per measure, baseline / compressed / compressed relative to baseline."""
    nf = result.compressed_nonfinite
    not_scored = "NaN/inf: not scored"
    ratio = (lambda a, b: f"{a / b:.2f}x" if b else "-")
    clip_note = f"CLIP score ({judge_name}, 0-100)" if judge_name else "CLIP score (no judge loaded)"
    rows = [
        [clip_note, _num(row["clip_baseline"]), not_scored if nf else _num(row["clip_compressed"]),
         "-" if nf or not math.isfinite(row["clip_compressed"]) or not math.isfinite(row["clip_baseline"])
         else f"{row['clip_compressed'] - row['clip_baseline']:+.2f}"],
        ["PSNR vs baseline (dB)", "-", not_scored if nf else _num(row["psnr_db"]), ""],
        ["SSIM vs baseline (0-1)", "-", not_scored if nf else _num(row["ssim"]), ""],
        ["UNet size (MB)", _num(row["unet_mb_baseline"]), _num(row["unet_mb"]),
         ratio(row["unet_mb"], row["unet_mb_baseline"])],
        ["parameters (M)", _num(row["params_baseline"] / 1e6), _num(row["params"] / 1e6),
         ratio(row["params"], row["params_baseline"])],
        ["measured sparsity, whole UNet (%)", _num(100 * result.baseline_cost.sparsity, 3),
         _num(row["sparsity_pct"], 3), ""],
    ]
    if result.prune_report is not None and result.prune_report.scope != "all":
        rows.append([f"measured sparsity, scope '{result.prune_report.scope}' (%)", "-",
                     _num(100 * result.prune_report.sparsity, 3), ""])
    rows += [
        ["compression time (s)", "-",
         "cached" if result.compression_cached and not result.spec.is_identity else _num(row["compression_s"], 2),
         ""],
        ["denoising latency (ms, N=1)",
         _num(row["latency_baseline_ms"], 4) + (" (cached)" if result.baseline_cached else ""),
         _num(row["latency_ms"], 4), ratio(row["latency_ms"], row["latency_baseline_ms"])],
    ]
    return pd.DataFrame(rows, columns=["measure", "baseline", "compressed", "ratio"])


def status_markdown(req: svc.CompareRequest, result, stats: dict, warnings: list[str]) -> str:
    spec = result.spec
    cache = []
    cache.append("baseline from cache (same prompt, seed and sampler settings: not redrawn)" if result.baseline_cached
                 else "baseline drawn now")
    if spec.is_identity:
        cache.append("nothing to compress (0% pruning, fp32): the compressed side is the baseline UNet")
    elif result.compression_cached:
        cache.append("compressed UNet from cache (not recompressed)")
    else:
        cache.append(f"compressed UNet built now in {result.compression_seconds:.2f} s")
    lines = [
        f"**{html.escape(spec.label)}** vs **baseline** on `{html.escape(req.model)}` · seed {req.seed} · "
        f"{req.steps} steps · guidance {req.guidance:g} · {req.width}×{req.height} px",
        " · ".join(cache),
    ]
    if not QUANT_MODES[spec.quant_mode].real_gain:
        lines.append("Simulated quantization: weights are rounded to fewer bits but stored as float, so the size "
                     "and speed are the baseline's.")
    if spec.prunes and "unstructured" in spec.prune_method:
        lines.append("Unstructured pruning writes zeros into dense weights: no dense kernel gets faster and the "
                     "stored size does not shrink; the numbers below show it.")
    lines += [f"⚠ {html.escape(w)}" for w in warnings]
    return "\n\n".join(lines)


HISTORY_COLUMNS = {
    "setting": "setting", "prompt": "prompt", "seed": "seed", "steps": "steps", "clip_baseline": "CLIP base",
    "clip_compressed": "CLIP comp", "psnr_db": "PSNR dB", "ssim": "SSIM", "unet_mb": "UNet MB",
    "sparsity_pct": "sparsity %", "latency_baseline_ms": "base ms", "latency_ms": "comp ms", "speedup": "ms ratio",
}


def history_table(rows: list[dict]) -> pd.DataFrame:
    """The history shown on the page (the CSV has every column)."""
    if not rows:
        return pd.DataFrame(columns=["#", *HISTORY_COLUMNS.values()])
    df = pd.DataFrame(rows)
    show = df[list(HISTORY_COLUMNS)].rename(columns=HISTORY_COLUMNS)
    for col in ("CLIP base", "CLIP comp", "PSNR dB", "UNet MB", "sparsity %"):
        show[col] = show[col].map(lambda v: _num(v, 3))
    show["SSIM"] = show["SSIM"].map(lambda v: _num(v, 3))
    for col in ("base ms", "comp ms"):
        show[col] = show[col].map(lambda v: _num(v, 4))
    # compressed / baseline latency, as in the numbers table and the captions (below 1: faster)
    show["ms ratio"] = show["ms ratio"].map(lambda v: "-" if not (math.isfinite(v) and v > 0) else f"{1 / v:.2f}x")
    show.loc[df["nonfinite"].astype(bool), "CLIP comp"] = "NaN/inf"
    show.insert(0, "#", range(1, len(show) + 1))
    return show.iloc[::-1].reset_index(drop=True)  # newest first


# Columns of the sweep summary table, in reading order: (metric prefix, reference, column name).
SUMMARY_METRICS = [
    ("accuracy: all", "prompt", "accuracy %"), ("CLIP score", "prompt", "CLIP score"),
    ("KID-", "baseline", "KID vs baseline"), ("KID-", "real", "KID vs real"), ("PSNR", "baseline", "PSNR dB"),
    ("SSIM", "baseline", "SSIM"), ("latency", "", "latency ms"), ("UNet size", "", "UNet MB"),
    ("sparsity", "", "sparsity %"), ("non-finite images", "", "NaN/inf images"),
]


def sweep_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: value [95% CI] of the headline metrics (N is in the status line)."""
    settings = [s for s in dict.fromkeys(table["setting"]) if s != charts.REAL_SETTING]
    out = pd.DataFrame({"setting": settings})
    for prefix, ref, name in SUMMARY_METRICS:
        rows = table[table["metric"].astype(str).str.startswith(prefix)]
        if ref:
            rows = rows[rows["reference"].fillna("") == ref]
        if rows.empty:
            continue
        rows = rows[rows["metric"] == rows["metric"].iloc[0]]
        col = {}
        for r in rows.itertuples():
            if not math.isfinite(r.value):
                col[r.setting] = "-"
            elif r.n and r.n > 1 and math.isfinite(r.ci_low) and r.ci_low != r.ci_high:
                col[r.setting] = f"{r.value:.3g} [{r.ci_low:.2g}, {r.ci_high:.2g}]"
            else:
                col[r.setting] = f"{r.value:.4g}"
        out[name] = [col.get(s, "") for s in settings]
    return out


def phone_friendly(fig):
    """Take the notes under a chart out of the figure (returned as text) and put the legend below the axes.

    charts.py writes each note as one line of text at a fixed place under the axes; on a phone the line is
    cut off and a legend that wraps to several rows runs into it. As page text the notes wrap on any screen.
    """
    notes = [html.unescape(a.text) for a in fig.layout.annotations
             if a.yref == "paper" and a.y is not None and a.y < 0 and a.text]
    fig.layout.annotations = [a for a in fig.layout.annotations
                              if not (a.yref == "paper" and a.y is not None and a.y < 0)]
    title = fig.layout.title.text or ""
    if " (" in title:  # the N part on a line of its own: long titles are clipped on narrow screens
        head, tail = title.split(" (", 1)
        fig.update_layout(title_text=f"{head}<br><sup>({tail}</sup>")
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.18, yanchor="top"),
                      margin=dict(t=80, b=130))
    return fig, notes


def history_figures(history: pd.DataFrame | None) -> tuple:
    """The two history charts and their notes (Markdown)."""
    if history is not None and "prompt" in history:
        # Plotly renders a subset of HTML (<a href>, <b>, ...) in hover labels: a visitor's prompt is shown as the
        # text typed (Plotly decodes the entities back), never as markup. The CSV keeps the raw prompt.
        history = history.assign(prompt=history["prompt"].astype(str).map(lambda p: html.escape(p, quote=False)))
    cost, quality = charts.history_cost(history), charts.history_quality(history)
    if history is None or not len(history):
        return cost, quality, ""
    cost, cost_notes = phone_friendly(cost)
    quality, quality_notes = phone_friendly(quality)
    cost.update_layout(height=460)
    quality.update_yaxes(title_font=dict(size=11))
    notes = list(dict.fromkeys(cost_notes + quality_notes))
    return cost, quality, "\n".join(f"- {html.escape(n, quote=False)}" for n in notes)


def _pick(table: pd.DataFrame, prefix: str, reference: str | None) -> str | None:
    names = table["metric"].astype(str)
    rows = table[names.str.startswith(prefix)]
    if reference is not None:
        rows = rows[rows["reference"].fillna("") == reference]
    return None if rows.empty else str(rows["metric"].iloc[0])


def sweep_figures(table: pd.DataFrame, layer_study: bool) -> list:
    """The sweep tab's charts, in the order of SWEEP_PLOTS."""
    grid = table[(table["prune_scope"].isin(["all", ""])) | (table["prune_amount"].fillna(0) == 0)
                 | (table["setting"] == charts.REAL_SETTING)]
    figs = []
    for label, prefix, ref in SWEEP_QUALITY:
        metric = _pick(table, prefix, ref)
        if metric is None:
            figs.append(charts.empty_figure(f"This model's sweep has no {label}."))
        elif layer_study:
            figs.append(charts.empty_figure("Layer-sensitivity study: see the last tab."))
        else:
            figs.append(charts.quality_vs_pruning(grid, metric, ref))
    figs.append(charts.cost_bars(table, "latency"))
    figs.append(charts.cost_bars(table, "UNet size"))
    quality = _pick(table, "accuracy: all", "prompt") or _pick(table, "CLIP score", "prompt")
    ref = "prompt"
    if quality is None:
        quality, ref = _pick(table, "KID-", "baseline"), "baseline"
    figs.append(charts.quality_cost_pareto(table, quality, "UNet size", ref) if quality
                else charts.empty_figure("No quality metric for a Pareto chart."))
    if layer_study and quality:
        figs.append(charts.layer_sensitivity(table, quality, ref))
    else:
        figs.append(charts.empty_figure("Choose the layer-sensitivity study to fill this chart."))
    for fig in figs:
        if fig.layout.height is None:
            fig.update_layout(height=520)  # room below the axes for the legend and the notes
    return figs


# (tab label, metric prefix, reference) of the quality-vs-pruning charts.
SWEEP_QUALITY = [
    ("prompt accuracy (pixel judge)", "accuracy: all", "prompt"),
    ("CLIP score", "CLIP score", "prompt"),
    ("KID vs baseline", "KID-", "baseline"),
    ("KID vs real data", "KID-", "real"),
    ("FD vs real data", "FD-", "real"),
]
SWEEP_PLOTS = [label for label, _, _ in SWEEP_QUALITY] + ["latency", "UNet size", "Pareto", "layer sensitivity"]
# Tabs of the sweep charts (few enough to fit a phone's width without an overflow menu): plot indices.
SWEEP_TABS = [("Quality vs pruning", (0, 1)), ("Distances", (2, 3, 4)), ("Cost", (5, 6)), ("Pareto", (7,)),
              ("Layer sensitivity", (8,))]


# --------------------------------------------------------------------------------------------- handlers


@contextlib.contextmanager
def plain_errors():
    """Turn every failure into a gr.Error a visitor can read: our RequestError (and the library's ValueError)
    as its message, escaped; anything else as a generic message with a reference that is in the server log.
    No stack trace reaches the client (launch(show_error=False) hides other exceptions' text too)."""
    try:
        yield
    except gr.Error:
        raise
    except ValueError as err:  # RequestError, or a library check that our checks did not anticipate
        raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from None
    except MemoryError:
        log.exception("out of memory")
        raise gr.Error("The server ran out of memory for this request: choose a smaller image size, fewer steps or "
                       "fewer prompts.", print_exception=False) from None
    except Exception:  # noqa: BLE001
        ref = uuid.uuid4().hex[:8]
        log.exception("request failed (ref %s)", ref)
        raise gr.Error(f"The server hit an unexpected error (reference {ref}, logged). Try again or change a "
                       "setting.", print_exception=False) from None


@gpu(duration=60)
def compare(prompt, negative_prompt, seed, steps, guidance, model, prune_percent, prune_method, prune_scope,
            quant_mode, bits, height, width, history, progress=gr.Progress(track_tqdm=True)):
    """Draw the baseline and the compressed model with the same prompt and seed; measure both."""
    with plain_errors():
        return _compare(prompt, negative_prompt, seed, steps, guidance, model, prune_percent, prune_method,
                        prune_scope, quant_mode, bits, height, width, history, progress)


def _compare(prompt, negative_prompt, seed, steps, guidance, model, prune_percent, prune_method, prune_scope,
             quant_mode, bits, height, width, history, progress):
    req = svc.parse_compare(LAB, prompt, negative_prompt, seed, steps, guidance, model, prune_percent,
                            prune_method, prune_scope, quant_mode, bits, height, width)
    loaded = LAB.get(req.model)
    progress(0.0, desc="starting")
    result = loaded.engine.generate_pair(req.prompt, req.seed, req.steps, req.guidance, req.spec,
                                         req.negative_prompt, req.height, req.width,
                                         progress=svc.progress_adapter(progress))
    progress(1.0, desc="scoring")
    row = pair_row(result, req.prompt, loaded.judge)
    warnings = []
    if result.prompt_truncated:
        warnings.append("The prompt is longer than the text encoder's 77 tokens: the model ignored the rest.")
    if result.negative_prompt_truncated:
        warnings.append("The negative prompt is longer than 77 tokens: the model ignored the rest.")
    if result.compressed_nonfinite:
        warnings.append("The compressed model produced NaN/inf values: its image is not a picture and is not "
                        "scored (too much pruning or too few bits).")
    if result.baseline_nonfinite:
        warnings.append("The baseline produced NaN/inf values: this setting is not comparable.")
    for w in warnings:
        gr.Warning(w)

    size = (result.height, result.width)
    base_img = result.baseline_image if not result.baseline_nonfinite else svc.nonfinite_placeholder(size)
    comp_img = result.compressed_image if not result.compressed_nonfinite else svc.nonfinite_placeholder(size)
    if result.baseline_nonfinite or result.compressed_nonfinite:
        heat, stats = svc.nonfinite_placeholder(size, "no difference: NaN/inf"), {}
        heat_caption = "**Difference**: not computed (an output held NaN/inf)"
    else:
        heat, stats = svc.difference_heatmap(result.baseline_image, result.compressed_image)
        heat_caption = (f"**|compressed − baseline|** ×{stats['gain']:g} · mean {stats['mean_abs_diff']:.1f}, "
                        f"max {stats['max_abs_diff']:.0f} of 255")
    base_caption = f"**Baseline** · fp32 · {1000 * result.baseline_seconds:,.0f} ms" + (
        " (cached)" if result.baseline_cached else "")
    ratio = result.compressed_seconds / result.baseline_seconds if result.baseline_seconds else math.nan
    comp_caption = (f"**{html.escape(result.spec.label)}** · {1000 * result.compressed_seconds:,.0f} ms "
                    f"({ratio:.2f}× baseline)")
    if result.compressed_nonfinite:
        comp_caption += " · NaN/inf"

    row = {"model": req.model, **row}
    history = [*(history or []), row][-svc.HISTORY_LIMIT:]
    hist_df = pd.DataFrame(history)
    csv = svc.write_download(hist_df, "history")
    details = {
        "model": req.model,
        "spec": result.spec.to_dict(),
        "setting": result.spec.label,
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "seed": result.seed, "steps": result.steps, "guidance": result.guidance,
        "height": result.height, "width": result.width,
        "baseline_cached": result.baseline_cached,
        "compression_cached": result.compression_cached,
        "prompt_truncated": result.prompt_truncated,
        "compressed_nonfinite": result.compressed_nonfinite,
        "baseline_nonfinite": result.baseline_nonfinite,
        "warnings": warnings,
        "baseline_sha256": svc.image_sha256(result.baseline_image),
        "compressed_sha256": svc.image_sha256(result.compressed_image),
        "difference": stats,
        "numbers": {k: _finite_or_none(v) for k, v in row.items() if k not in ("prompt", "model")},
    }
    judge = loaded.judge.name if loaded.judge is not None else ""
    return (
        base_img, comp_img, base_caption, comp_caption, (base_img, comp_img), heat, heat_caption,
        numbers_table(row, result, judge), status_markdown(req, result, stats, warnings), details,
        history_table(history), str(csv), *history_figures(hist_df), history,
    )


@gpu(duration=120)  # ZeroGPU caps a call's duration (the lower, the sooner a visitor gets a GPU): small sweeps
def sweep(model, prune_percents, prune_methods, quant_modes, study, n_prompts, steps, guidance, latency_repeats,
          progress=gr.Progress(track_tqdm=True)):
    """Run a grid of settings over a prompt set (compression.sweep.run_sweep) and chart it."""
    with plain_errors():
        return _sweep(model, prune_percents, prune_methods, quant_modes, study, n_prompts, steps, guidance,
                      latency_repeats, progress)


def _sweep(model, prune_percents, prune_methods, quant_modes, study, n_prompts, steps, guidance, latency_repeats,
           progress):
    from compression.sweep import run_sweep

    req = svc.parse_sweep(LAB, model, prune_percents, prune_methods, quant_modes, study, n_prompts, steps,
                          guidance, latency_repeats)
    loaded = LAB.get(req.model)
    out_dir = svc.sweep_dir(loaded.name, loaded.fingerprint)
    lock = svc.sweep_lock(out_dir)
    if not lock.acquire(blocking=False):
        progress(0.0, desc="waiting for another sweep of this model to finish")
        lock.acquire()
    try:  # one sweep per work folder at a time (svc.sweep_lock): the report copied below is this sweep's
        progress(0.0, desc=f"{len(req.specs)} settings x {len(req.prompts)} prompts")
        res = run_sweep(loaded.sweep_engine, req.specs, req.prompts, (0,), steps=req.steps, guidance=req.guidance,
                        metric_set=loaded.metric_set, out_dir=out_dir, latency_repeats=req.latency_repeats,
                        progress=svc.progress_adapter(progress), show_bar=False, max_cells=svc.MAX_SWEEP_SETTINGS,
                        n_boot=svc.SWEEP_BOOTSTRAP)
        report = svc.download_path("sweep-report", ".html")
        shutil.copyfile(res.out_dir / "report.html", report)
    finally:
        lock.release()
    table = res.table
    csv = svc.write_download(table, "sweep")
    figures = sweep_figures(table, req.layer_study)
    nonfinite = table[(table["metric"] == "non-finite images") & (table["value"] > 0)]
    for r in nonfinite.itertuples():
        gr.Warning(f"{r.setting}: {int(r.value)} of {int(r.n)} images held NaN/inf; they are left out of its scores.")
    status = (f"**{len(req.specs)} settings × {len(req.prompts)} prompts** (N={len(req.prompts)} images per "
              f"setting, `{req.prompt_set}` prompt set) on `{html.escape(req.model)}` · {req.steps} steps · "
              f"guidance {req.guidance:g} · computed {len(res.computed)}, reused from earlier sweeps {len(res.skipped)} · "
              f"intervals: bootstrap 95% ({svc.SWEEP_BOOTSTRAP} resamples).")
    return (status, sweep_summary(table), str(csv), str(report), *figures)


COMPARE_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "model", "prune_percent", "prune_method",
                  "prune_scope", "quant_mode", "bits", "height", "width")
SWEEP_FIELDS = ("model", "prune_percents", "prune_methods", "quant_modes", "study", "n_prompts", "steps", "guidance",
                "latency_repeats")


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


def sweep_plan(prune_percents, prune_methods, quant_modes, study, n_prompts):
    """How big the sweep will be, before it runs."""
    try:
        req = svc.parse_sweep(LAB, LAB.default_model, prune_percents, prune_methods, quant_modes, study, n_prompts,
                              DEFAULTS.steps, DEFAULTS.guidance, 0)
    except ValueError as err:
        return f"⚠ {html.escape(str(err))}"
    n = len(req.specs) * len(req.prompts)
    return (f"{len(req.specs)} settings (baseline included) × {len(req.prompts)} prompts = **{n} images**, plus "
            "latency timing per setting.")


def clear_history():
    return [], history_table([]), None, *history_figures(None)


# ------------------------------------------------------------------------------------------------ layout


def _model_line() -> str:
    loaded = LAB.loaded(LAB.default_model)
    if LAB.startup_error:
        return f"⚠ {html.escape(LAB.startup_error)}"
    if loaded is None:
        return f"Model `{LAB.default_model}` loads on the first request (device: {LAB.device})."
    cost = loaded.engine.baseline_cost
    side = f"{loaded.native[1]}×{loaded.native[0]} px"
    return (f"Model **{loaded.name}** on **{loaded.device}** · draws {side} · UNet {cost.bytes / 2**20:.1f} MB, "
            f"{cost.params / 1e6:.2f} M parameters")


def _grammar_note() -> str:
    if not DEFAULTS.tiny:
        return ""
    return (f"The tiny model knows one sentence: *a [colour] [shape] [position] on a [colour] background* · "
            f"colours: {', '.join(world.COLOURS)} · shapes: {', '.join(world.SHAPES)} · positions: "
            f"{', '.join(world.POSITIONS)}.")


# ------------------------------------------------------------------------------- export and shared links


def export_unet(prompt, negative_prompt, seed, steps, guidance, model, prune_percent, prune_method, prune_scope,
                quant_mode, bits, height, width):
    """Build the current setting's compressed UNet bundle (safetensors, manifest, card, recipe) as a zip."""
    with plain_errors():
        req = svc.parse_compare(LAB, prompt, negative_prompt, seed, steps, guidance, model, prune_percent,
                                prune_method, prune_scope, quant_mode, bits, height, width)
        path, size = svc.export_bundle(LAB, req)
        recipe = html.escape(json.dumps(svc.recipe_of(req)), quote=False)
        return (str(path),  # a plain path: API clients download it
                (f"Bundle of **{html.escape(req.spec.label)}** ready ({size:,} bytes, zip). "
                 f"Recipe (for `python -m compression.export --recipe`): `{recipe}`"))


COPY_LINK_JS = """(prompt, seed, steps, guidance, model, prune_percent, prune_method, prune_scope, quant_mode, bits) => {
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


def apply_link(prompt, seed, steps, guidance, model, prune_percent, prune_method, prune_scope, quant_mode, bits,
               request: gr.Request):
    """On page load: fill the controls from a shared link's query parameters; a bad one is ignored, with a note."""
    current = dict(zip(svc.SHARE_FIELDS, (prompt, seed, steps, guidance, model, prune_percent, prune_method,
                                          prune_scope, quant_mode, bits)))
    params = dict(request.query_params) if request is not None else {}
    values, notes = svc.parse_share_query(LAB, params, current)
    updates = [values[k] if k in values else gr.skip() for k in svc.SHARE_FIELDS]
    note = ("Link: " + "; ".join(html.escape(n, quote=False) for n in notes)) if notes else gr.skip()
    return [*updates, note]


def _about() -> str:
    lines = ["### What the controls do", "", "| kind | name | available here | what it does |", "|---|---|---|---|"]
    for kind, registry in (("pruning", PRUNERS), ("quantization", QUANT_MODES)):
        for name, item in registry.items():
            ok, why = item.available(LAB.device)
            lines.append(f"| {kind} | `{name}` | {'yes' if ok else 'no: ' + html.escape(why)} | "
                         f"{html.escape(item.description)} |")
    lines += ["", "| scope | layers pruned |", "|---|---|"]
    lines += [f"| `{name}` | {html.escape(text)} |" for name, text in SCOPES.items()]
    lines += [
        "", "### How to read the numbers", "",
        "- **Same-seed pairs**: both images start from the same noise, so PSNR/SSIM against the baseline measure "
        "only what compression changed (N=1 per comparison: read trends, not decimals; sweeps give N and 95% "
        "intervals).",
        "- **CLIP score**: 100 × cosine(image, prompt) with the tiny metric CLIP trained on the shapes world "
        "(openai CLIP for hub models when cached). Higher is better.",
        "- **Latency**: the denoising loop only, batch 1, one run (N=1) on a shared machine. Sweeps report the "
        "median of several runs.",
        "- **Honest costs**: unstructured pruning writes zeros into dense weights: no speed-up and no smaller file "
        "unless stored sparse. Simulated N-bit weights are stored as float: no gain at all. int8/int4 weights shrink "
        "the UNet but are dequantized on the fly, so they are rarely faster on a CPU.",
        "- **Caches**: the baseline image is reused while prompt, seed and sampler settings stay the same; the last "
        f"{LAB.cache_size} compressed UNets are kept, so returning to a setting does not recompress.",
    ]
    return "\n".join(lines)


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
                    prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=2, max_lines=4,
                                        max_length=svc.MAX_PROMPT_CHARS, elem_id="prompt")
                    gr.Examples([[p] for p in EXAMPLES], inputs=[prompt], label="Example prompts")
                    if DEFAULTS.tiny:
                        gr.Markdown(_grammar_note(), elem_classes="note")
                    with gr.Row(equal_height=True):
                        seed = gr.Number(value=42, precision=0, label="Seed", minimum=0, maximum=svc.MAX_SEED,
                                         min_width=120, scale=3, elem_id="seed")
                        dice = gr.Button("Random seed", size="md", min_width=80, scale=1, elem_id="dice")
                    with gr.Group():
                        with gr.Row():
                            steps = gr.Slider(1, svc.MAX_STEPS, value=DEFAULTS.steps, step=1, label="Steps",
                                              min_width=120)
                            guidance = gr.Slider(0, svc.MAX_GUIDANCE, value=DEFAULTS.guidance, step=0.5,
                                                 label="Guidance scale", min_width=120)
                    with gr.Group():
                        prune = gr.Slider(0, svc.MAX_PRUNE_PERCENT, value=30, step=1, label="Pruning amount (%)",
                                          info="weights zeroed (unstructured) or channels removed (structured); "
                                               "the SD 1.5 study saw quality go past 30-35%",
                                          elem_id="prune")
                        with gr.Row():
                            method = gr.Dropdown(_pruner_choices(), value="l1-unstructured", label="Pruning method",
                                                 min_width=160, scale=3, elem_id="method")
                            scope = gr.Dropdown(list(SCOPES), value="all", label="Pruning scope", min_width=110,
                                                scale=2, elem_id="scope")
                        quant = gr.Dropdown(_quant_choices(), value="fp32", label="Quantization",
                                            info="only the modes this device can run", elem_id="quant")
                        bits = gr.Slider(2, 8, value=4, step=1, label="Simulated bit width", visible=False,
                                         elem_id="bits")
                    generate = gr.Button("Generate", variant="primary", size="lg", elem_id="generate")
                    # Take the comparison away (handlers in "export and shared links" below).
                    with gr.Row():
                        export_btn = gr.Button("Build compressed UNet", size="sm", elem_id="export")
                        export_file = gr.DownloadButton("Download compressed UNet", size="sm", visible=False,
                                                        elem_id="export-file")
                        copy_link = gr.Button("Copy link", size="sm", elem_id="copy-link")
                    share_url = gr.Textbox(label="Link to this comparison", visible=False, elem_id="share-url")
                    take_note = gr.Markdown(elem_classes="note", elem_id="take-note")
                    with gr.Accordion("Negative prompt, model, image size", open=False):
                        negative = gr.Textbox(label="Negative prompt", value="", max_length=svc.MAX_PROMPT_CHARS,
                                              placeholder="(optional) what to steer away from")
                        model = gr.Dropdown(LAB.model_names, value=LAB.default_model, label="Model",
                                            info="the embedded tiny-shapes model runs offline; hub models need "
                                                 "network and ideally a GPU")
                        with gr.Row():
                            height = gr.Number(value=0, precision=0, label="Height (0: native)", min_width=100)
                            width = gr.Number(value=0, precision=0, label="Width (0: native)", min_width=100)

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
                            slider = gr.ImageSlider(label="Slide: baseline | compressed", format="png", height=300,
                                                    interactive=False, elem_classes="pixel", elem_id="slider")
                        with gr.Column(scale=3, min_width=300):
                            numbers = gr.Dataframe(headers=["measure", "baseline", "compressed", "ratio"],
                                                   label="Numbers for this pair (ratio: compressed / baseline)",
                                                   interactive=False, wrap=True, elem_id="numbers",
                                                   elem_classes="dcl-table", max_height=640,
                                                   column_widths=["46%", "18%", "18%", "18%"])
                    with gr.Accordion("Details (JSON, as the API returns it)", open=False):
                        details = gr.JSON(label="details")

            gr.Markdown("### Session history\nEvery comparison of this session, newest first. Charts: N = "
                        "comparisons, one image each.")
            history_df = gr.Dataframe(value=history_table([]), label="History", interactive=False, wrap=True,
                                      max_height=320, elem_id="history", elem_classes="dcl-table")
            with gr.Row():
                history_csv = gr.DownloadButton("Download history (CSV)", size="sm", elem_id="history-csv")
                clear = gr.Button("Clear history", size="sm", variant="secondary")
            # One chart per row: their notes are single lines that a half-width chart clips, and phones stack.
            cost_plot = gr.Plot(value=charts.history_cost(None), label="Latency and UNet size", elem_id="cost-plot")
            quality_plot = gr.Plot(value=charts.history_quality(None), label="Quality against pruning",
                                   elem_id="quality-plot")
            chart_notes = gr.Markdown(elem_classes="note", elem_id="chart-notes")

        # ----------------------------------------------------------------------------------- Sweep
        with gr.Tab("Sweep", id="sweep"):
            gr.Markdown("Run a grid of settings over a prompt set and measure each against the baseline (and, for "
                        "the embedded model, against real images of its world). Finished settings are reused by "
                        "later sweeps with the same prompts and sampler settings. Bigger grids: "
                        "`python -m compression.sweep`.")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=300):
                    sw_model = gr.Dropdown(LAB.model_names, value=LAB.default_model, label="Model")
                    sw_study = gr.Radio([("pruning x quantization grid", "grid"),
                                         ("layer sensitivity (one part of the UNet at a time)", "layer-sensitivity")],
                                        value="grid", label="Study")
                    sw_percents = gr.CheckboxGroup(list(svc.SWEEP_PERCENTS), value=[0, 30, 60], label="Pruning (%)",
                                                   info="layer study: each non-zero value x 9 parts")
                    sw_methods = gr.CheckboxGroup(_pruner_choices(), value=["l1-unstructured"],
                                                  label="Pruning methods", info="layer study: the first one")
                    sw_quant = gr.CheckboxGroup(svc.sweep_quant_choices(LAB), value=["fp32"], label="Quantization",
                                                info="simulated-int:N = N-bit simulated weights; layer study: fp32")
                    sw_prompts = gr.Slider(1, svc.MAX_SWEEP_PROMPTS, value=16, step=1,
                                           label="Prompts (N per setting)",
                                           info="from assets/prompts; KID is unbiased at small N, FD needs hundreds")
                    with gr.Row():
                        sw_steps = gr.Slider(1, svc.MAX_STEPS, value=DEFAULTS.steps, step=1, label="Steps")
                        sw_guidance = gr.Slider(0, svc.MAX_GUIDANCE, value=DEFAULTS.guidance, step=0.5,
                                                label="Guidance")
                    sw_latency = gr.Slider(0, svc.MAX_LATENCY_REPEATS, value=3, step=1, label="Latency repeats",
                                           info="median of this many timed runs per setting (0: skip)")
                    sw_plan = gr.Markdown(elem_classes="caption")
                    # No Stop button: cancelling a running Gradio event does not stop its worker thread, so the
                    # sweep would go on computing while the queue let the next model request in beside it.
                    run_sweep_btn = gr.Button("Run sweep", variant="primary", elem_id="run-sweep")
                with gr.Column(scale=2, min_width=320):
                    sw_status = gr.Markdown("Choose a grid and press **Run sweep**.")
                    sw_table = gr.Dataframe(label="Results per setting: value [95% CI]", interactive=False, wrap=True,
                                            max_height=360, elem_id="sweep-table", elem_classes="dcl-table")
                    with gr.Row():
                        sw_csv = gr.DownloadButton("Download results (CSV, tidy)", size="sm")
                        sw_report = gr.DownloadButton("Download report (HTML)", size="sm")
                    sw_plots = [None] * len(SWEEP_PLOTS)
                    with gr.Tabs():
                        for tab, indices in SWEEP_TABS:
                            with gr.Tab(tab):
                                for i in indices:
                                    sw_plots[i] = gr.Plot(value=charts.empty_figure("Run a sweep first."),
                                                          label=SWEEP_PLOTS[i], elem_id=f"sweep-plot-{i}")

        with gr.Tab("About", id="about"):
            gr.Markdown(_about())

    # ------------------------------------------------------------------------------------------ wiring
    compare_inputs = [prompt, negative, seed, steps, guidance, model, prune, method, scope, quant, bits, height,
                      width, history_state]
    compare_outputs = [base_img, comp_img, base_caption, comp_caption, slider, heat_img, heat_caption, numbers,
                       status, details, history_df, history_csv, cost_plot, quality_plot, chart_notes,
                       history_state]
    # preprocess=False: the raw values reach app_service's checks, which refuse NaN, non-integers and unknown
    # names with plain messages (Gradio's own preprocessing rounds 3.5 to 4 and echoes bad choices).
    model_work = dict(concurrency_id=MODEL_WORK, concurrency_limit=MODEL_CONCURRENCY, preprocess=False)
    generate.click(compare, compare_inputs, compare_outputs, api_name="compare", validator=validate_compare,
                   **model_work)
    prompt.submit(compare, compare_inputs, compare_outputs, api_visibility="private", validator=validate_compare,
                  **model_work)
    quant.change(on_quant_change, quant, bits, queue=False, api_visibility="private")
    model.change(on_model_change, model, [steps, guidance, height, width], queue=False, api_visibility="private")
    sw_model.change(lambda name: on_model_change(name)[:2], sw_model, [sw_steps, sw_guidance], queue=False,
                    api_visibility="private")
    dice.click(None, None, seed, js="() => Math.floor(Math.random() * 4294967296)", api_visibility="private")
    clear.click(clear_history, None, [history_state, history_df, history_csv, cost_plot, quality_plot, chart_notes],
                queue=False, api_visibility="private")

    sweep_inputs = [sw_model, sw_percents, sw_methods, sw_quant, sw_study, sw_prompts, sw_steps, sw_guidance,
                    sw_latency]
    run_sweep_btn.click(sweep, sweep_inputs, [sw_status, sw_table, sw_csv, sw_report, *sw_plots], api_name="sweep",
                        validator=validate_sweep, **model_work)
    plan_inputs = [sw_percents, sw_methods, sw_quant, sw_study, sw_prompts]
    for comp in plan_inputs:
        comp.change(sweep_plan, plan_inputs, sw_plan, queue=False, api_visibility="private")
    demo.load(sweep_plan, plan_inputs, sw_plan, queue=False, api_visibility="private")
    demo.load(_model_line, None, model_line, queue=False, api_visibility="private")

    # export and shared links
    share_inputs = [prompt, seed, steps, guidance, model, prune, method, scope, quant, bits]
    export_btn.click(export_unet, compare_inputs[:-1], [export_file, take_note], api_name="export",
                     validator=validate_compare, **model_work).then(
        show_export, export_file, export_file, queue=False, api_visibility="private")
    copy_link.click(None, share_inputs, share_url, js=COPY_LINK_JS, api_visibility="private")
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
    return demo.launch(**options)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    LAB.startup()
    if LAB.warm_seconds is not None:
        log.info("warmed %s in %.1f s", LAB.default_model, LAB.warm_seconds)
    launch()
