"""What the app shows, as text, tables and figures: everything app.py formats, callable without a server.

app.py holds the layout and the event wiring; these functions turn results (an `engine.PairResult`, a history of
rows, a sweep's tidy table) into what its components display. Nothing here creates a Gradio component.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from compression import PRUNERS, QUANT_MODES, SCOPES, charts
from compression.intervals import order_statistic_interval
from compression.latency import COMPARE_ROUNDS
from compression.metrics import pair_row_latency
from compression.report import headline_columns, headline_table, plain_number


def num(v, digits: int = 3, unit: str = "") -> str:
    """A number for a table cell: significant digits, never in exponent notation (99.96 at 2 digits is "100",
    not "1e+02"), thousands separated, NaN shown as a dash."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    text = plain_number(v, digits)
    if abs(float(text)) >= 10**digits:
        text = f"{v:,.0f}"
    return f"{text}{unit}"


def finite_or_none(v):
    """JSON-safe: NaN/inf as None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def numbers_table(row: dict, result, judge_name: str) -> pd.DataFrame:
    """The pair's numbers: one row per measure, baseline / compressed / compressed relative to baseline."""
    nf = result.compressed_nonfinite
    not_scored = "NaN/inf: not scored"

    def ratio(a, b):
        return f"{a / b:.2f}x" if b else "-"

    clip_note = f"CLIP score ({judge_name}, 100 x max(cos, 0))" if judge_name else "CLIP score (no judge loaded)"
    rows = [
        [
            clip_note,
            num(row["clip_baseline"]),
            not_scored if nf else num(row["clip_compressed"]),
            "-"
            if nf or not math.isfinite(row["clip_compressed"]) or not math.isfinite(row["clip_baseline"])
            else f"{row['clip_compressed'] - row['clip_baseline']:+.2f}",
        ],
        ["PSNR vs baseline (dB)", "-", not_scored if nf else num(row["psnr_db"]), ""],
        ["SSIM vs baseline (0-1)", "-", not_scored if nf else num(row["ssim"]), ""],
        [
            "UNet size (MB)",
            num(row["unet_mb_baseline"]),
            num(row["unet_mb"]),
            ratio(row["unet_mb"], row["unet_mb_baseline"]),
        ],
        [
            "parameters (M)",
            num(row["params_baseline"] / 1e6),
            num(row["params"] / 1e6),
            ratio(row["params"], row["params_baseline"]),
        ],
        [
            "measured sparsity, whole UNet (%)",
            num(100 * result.baseline_cost.sparsity, 3),
            num(row["sparsity_pct"], 3),
            "",
        ],
    ]
    if result.prune_report is not None and result.prune_report.scope != "all":
        rows.append(
            [
                f"measured sparsity, scope '{result.prune_report.scope}' (%)",
                "-",
                num(100 * result.prune_report.sparsity, 3),
                "",
            ]
        )
    rows += [
        [
            "compression time (s)",
            "-",
            "cached" if result.compression_cached and not result.spec.is_identity else num(row["compression_s"], 2),
            "",
        ],
        *latency_rows(row, result),
    ]
    return pd.DataFrame(rows, columns=["measure", "baseline", "compressed", "ratio"])


def ratio_text(value: float, low: float, high: float) -> str:
    """ "1.01x [0.97, 1.06]": a latency ratio with its interval (the ratio alone where there is none)."""
    if not math.isfinite(value):
        return "-"
    if math.isfinite(low) and math.isfinite(high):
        return f"{value:.2f}x [{low:.2f}, {high:.2f}]"
    return f"{value:.2f}x"


def latency_rows(row: dict, result) -> list[list[str]]:
    """The numbers table's latency rows: the warm, paired step timing (with the ratio's interval), then the time
    each image took to draw (no ratio: a cold or cached baseline against a warm compressed run)."""
    rounds, nan = row.get("latency_rounds", 0), math.nan
    if rounds:
        label = (
            f"denoising step, warm (ms; median of {rounds} alternating rounds, ratio with its "
            f"{100 * row['latency_level']:.0f}% interval)"
        )
        if row.get("latency_cached"):
            label += ", timed at an earlier comparison of this setting and size"
    else:
        label = "denoising step (ms; from the drawing, N=1: not timed warm)"
    cached = " (cached)" if result.baseline_cached else ""
    return [
        [
            label,
            num(row["latency_baseline_ms"], 4),
            num(row["latency_ms"], 4),
            ratio_text(row["latency_ratio"], row.get("latency_ratio_low", nan), row.get("latency_ratio_high", nan)),
        ],
        ["drawing this image (ms, whole loop)", num(row["draw_baseline_ms"], 4) + cached, num(row["draw_ms"], 4), ""],
    ]


def status_markdown(req, result, stats: dict, warnings: list[str]) -> str:
    """The line above the pair: what was drawn, what came from a cache, what the setting cannot gain."""
    spec = result.spec
    cache = []
    cache.append(
        "baseline from cache (same prompt, seed and sampler settings: not redrawn)"
        if result.baseline_cached
        else "baseline drawn now"
    )
    if spec.is_identity:
        cache.append("nothing to compress (0% pruning, fp32): the compressed side is the baseline UNet")
    elif result.compression_cached:
        cache.append("compressed UNet from cache (not recompressed)")
    else:
        cache.append(f"compressed UNet built now in {result.compression_seconds:.2f} s")
    if getattr(result, "latency_cached", False):
        cache.append("latency timed at an earlier comparison of this setting and size (not timed again)")
    lines = [
        f"**{html.escape(spec.label)}** vs **baseline** on `{html.escape(req.model)}` · seed {req.seed} · "
        f"{req.steps} steps · guidance {req.guidance:g} · {req.width}×{req.height} px",
        " · ".join(cache),
        *reading_lines(getattr(req, "reading", None)),
    ]
    if not QUANT_MODES[spec.quant_mode].real_gain:
        lines.append(
            "Simulated quantization: weights are rounded to fewer bits but stored as float, so the size "
            "and speed are the baseline's."
        )
    if spec.prunes and "unstructured" in spec.prune_method:
        lines.append(
            "Unstructured pruning writes zeros into dense weights: no dense kernel gets faster and the "
            "stored size does not shrink; the numbers below show it."
        )
    lines += [f"⚠ {html.escape(w)}" for w in warnings]
    return "\n\n".join(lines)


def distilled_status(req, result, row: dict) -> str:
    """The line above a distilled pair: both models, their measured UNet sizes and latencies, what was cached."""
    from compression.models import CATALOG

    entry = CATALOG[req.against]
    base, comp = result.baseline_cost, result.compressed_cost
    ratio = result.compressed_seconds / result.baseline_seconds if result.baseline_seconds else math.nan
    return "\n\n".join(
        [
            f"**{html.escape(req.against)}** (distilled) vs **{html.escape(req.model)}** · seed {req.seed} · "
            f"{req.steps} steps · guidance {req.guidance:g} · {req.width}×{req.height} px · same VAE and text encoder",
            f"UNet parameters {comp.params / 1e6:,.1f} M vs {base.params / 1e6:,.1f} M "
            f"({comp.params / base.params:.2f}×) "
            f"· {comp.bytes / 2**20:,.0f} MB vs {base.bytes / 2**20:,.0f} MB · denoising {ratio:.2f}× the baseline's "
            f"time (N=1) · "
            + (
                "distilled UNet from cache"
                if row.get("compression_s") == 0
                else f"loaded in {row['compression_s']:.1f} s"
            )
            + (" · baseline from cache" if result.baseline_cached else ""),
            f"{html.escape(entry.description)} Licence: {html.escape(entry.licence)}.",
        ]
    )


def distilled_note() -> str:
    """Under the distilled-model picker: what the models are and where their weights come from."""
    from compression.models import CATALOG, DISTILLED

    names = ", ".join(f"`{n}` ({CATALOG[n].source})" for n in DISTILLED)
    return (
        f"{names}. Only the distilled UNet is loaded (safetensors from the hub: needs network); SD 1.5 is loaded "
        "as the baseline. Steps, guidance, seed and size are the ones above (0: 512 px)."
    )


HISTORY_COLUMNS = {
    "setting": "setting",
    "prompt": "prompt",
    "seed": "seed",
    "steps": "steps",
    "clip_baseline": "CLIP base",
    "clip_compressed": "CLIP comp",
    "psnr_db": "PSNR dB",
    "ssim": "SSIM",
    "unet_mb": "UNet MB",
    "sparsity_pct": "sparsity %",
    "latency_baseline_ms": "base ms/step",
    "latency_ms": "comp ms/step",
    "latency_ratio": "ms ratio",
}


def history_table(rows: list[dict]) -> pd.DataFrame:
    """The history shown on the page (the CSV has every column)."""
    if not rows:
        return pd.DataFrame(columns=["#", *HISTORY_COLUMNS.values()])
    df = pd.DataFrame(rows)
    show = df[list(HISTORY_COLUMNS)].rename(columns=HISTORY_COLUMNS)
    for col in ("CLIP base", "CLIP comp", "PSNR dB", "UNet MB", "sparsity %"):
        show[col] = show[col].map(lambda v: num(v, 3))
    show["SSIM"] = show["SSIM"].map(lambda v: num(v, 3))
    for col in ("base ms/step", "comp ms/step"):
        show[col] = show[col].map(lambda v: num(v, 4))
    # compressed / baseline latency, as in the numbers table and the captions (below 1: faster), with its interval
    lows = df["latency_ratio_low"] if "latency_ratio_low" in df else pd.Series(math.nan, index=df.index)
    highs = df["latency_ratio_high"] if "latency_ratio_high" in df else pd.Series(math.nan, index=df.index)
    show["ms ratio"] = [ratio_text(v, lo, hi) for v, lo, hi in zip(df["latency_ratio"], lows, highs)]
    show.loc[df["nonfinite"].astype(bool), "CLIP comp"] = "NaN/inf"
    show.insert(0, "#", range(1, len(show) + 1))
    return show.iloc[::-1].reset_index(drop=True)  # newest first


# Columns of the sweep summary table, in reading order: (metric prefix, reference, column name).
SUMMARY_METRICS = [
    ("accuracy: all", "prompt", "accuracy %"),
    ("CLIP score", "prompt", "CLIP score"),
    ("KID-", "baseline", "KID vs baseline"),
    ("KID-", "real", "KID vs real"),
    ("PSNR", "baseline", "PSNR dB"),
    ("SSIM", "baseline", "SSIM"),
    ("latency", "", "latency ms"),
    ("UNet size", "", "UNet MB"),
    ("sparsity", "", "sparsity %"),
    ("non-finite images", "", "NaN/inf images"),
]


def sweep_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: value [95% CI] of the headline metrics (N is in the status line)."""
    wanted = [(prefix, ref or None, name) for prefix, ref, name in SUMMARY_METRICS]
    return headline_table(table, headline_columns(table, wanted))


def phone_friendly(fig):
    """Take the notes under a chart out of the figure (returned as text) and put the legend below the axes.

    charts.py writes each note as one line of text at a fixed place under the axes; on a phone the line is
    cut off and a legend that wraps to several rows runs into it. As page text the notes wrap on any screen.
    """
    notes = [
        html.unescape(a.text)
        for a in fig.layout.annotations
        if a.yref == "paper" and a.y is not None and a.y < 0 and a.text
    ]
    fig.layout.annotations = [
        a for a in fig.layout.annotations if not (a.yref == "paper" and a.y is not None and a.y < 0)
    ]
    title = fig.layout.title.text or ""
    if " (" in title:  # the N part on a line of its own: long titles are clipped on narrow screens
        head, tail = title.split(" (", 1)
        fig.update_layout(title_text=f"{head}<br><sup>({tail}</sup>")
    fig.update_layout(
        legend=dict(orientation="h", x=0, xanchor="left", y=-0.18, yanchor="top"), margin=dict(t=80, b=130)
    )
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


def pick_metric(table: pd.DataFrame, prefix: str, reference: str | None) -> str | None:
    names = table["metric"].astype(str)
    rows = table[names.str.startswith(prefix)]
    if reference is not None:
        rows = rows[rows["reference"].fillna("") == reference]
    return None if rows.empty else str(rows["metric"].iloc[0])


def sweep_figures(table: pd.DataFrame, layer_study: bool) -> list:
    """The sweep tab's charts, in the order of SWEEP_PLOTS."""
    grid = table[
        (table["prune_scope"].isin([*charts.curve_scopes(table), ""]))
        | (table["prune_amount"].fillna(0) == 0)
        | (table["setting"] == charts.REAL_SETTING)
    ]
    figs = []
    for label, prefix, ref in SWEEP_QUALITY:
        metric = pick_metric(table, prefix, ref)
        if metric is None:
            figs.append(charts.empty_figure(f"This model's sweep has no {label}."))
        elif layer_study:
            figs.append(charts.empty_figure("Layer-sensitivity study: see the last tab."))
        else:
            figs.append(charts.quality_vs_pruning(grid, metric, ref, scope=None))
    figs.append(charts.cost_bars(table, "latency"))
    figs.append(charts.cost_bars(table, "UNet size"))
    quality = pick_metric(table, "accuracy: all", "prompt") or pick_metric(table, "CLIP score", "prompt")
    ref = "prompt"
    if quality is None:
        quality, ref = pick_metric(table, "KID-", "baseline"), "baseline"
    figs.append(
        charts.quality_cost_pareto(table, quality, "UNet size", ref)
        if quality
        else charts.empty_figure("No quality metric for a Pareto chart.")
    )
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
SWEEP_TABS = [
    ("Quality vs pruning", (0, 1)),
    ("Distances", (2, 3, 4)),
    ("Cost", (5, 6)),
    ("Pareto", (7,)),
    ("Layer sensitivity", (8,)),
]


# ------------------------------------------------------------------------------------- compare results


def pair_warnings(result) -> list[str]:
    """What a visitor must know about a pair: truncated prompts, NaN/inf outputs."""
    warnings = []
    if result.prompt_truncated:
        warnings.append("The prompt is longer than the text encoder's 77 tokens: the model ignored the rest.")
    if result.negative_prompt_truncated:
        warnings.append("The negative prompt is longer than 77 tokens: the model ignored the rest.")
    if result.compressed_nonfinite:
        warnings.append(
            "The compressed model produced NaN/inf values: its image is not a picture and is not "
            "scored (too much pruning or too few bits)."
        )
    if result.baseline_nonfinite:
        warnings.append("The baseline produced NaN/inf values: this setting is not comparable.")
    return warnings


def reading_lines(reading) -> list[str]:
    """What the model read from the typed prompt, when it is not the text as typed, and the words it does not
    know (a `PromptReading`; None or an unchanged prompt: nothing to say)."""
    if reading is None:
        return []
    lines = []
    if reading.in_world and reading.rewritten:
        lines.append(f"The model read: *{html.escape(reading.text)}*")
    if reading.unknown:
        words = ", ".join(f"“{html.escape(w)}”" for w in reading.unknown[:12])
        more = f" and {len(reading.unknown) - 12} more" if len(reading.unknown) > 12 else ""
        lines.append(f"Words it does not know{' (left out)' if reading.in_world else ''}: {words}{more}")
    return lines


def reading_warnings(reading) -> list[str]:
    """A prompt outside the model's world: its note (shown as a warning, never a silent smear)."""
    return [reading.note] if reading is not None and reading.note else []


def difference_caption(stats: dict | None) -> str:
    """Under the difference image; None: an output held NaN/inf and nothing was computed."""
    if stats is None:
        return "**Difference**: not computed (an output held NaN/inf)"
    return (
        f"**|compressed − baseline|** ×{stats['gain']:g} · mean {stats['mean_abs_diff']:.1f}, "
        f"max {stats['max_abs_diff']:.0f} of 255"
    )


def pair_captions(result, label: str | None = None) -> tuple[str, str]:
    """Under the baseline and the compressed image: setting (or `label`) and latency per denoising step
    (compressed: as a multiple of the baseline's, with its interval when both were timed warm in alternating
    rounds)."""
    lat = pair_row_latency(result)
    low, high = lat["latency_ratio_low"], lat["latency_ratio_high"]
    ratio = f"{lat['latency_ratio']:.2f}× baseline" if math.isfinite(lat["latency_ratio"]) else "-"
    base = f"**Baseline** · fp32 · {lat['latency_baseline_ms']:,.1f} ms/step"
    label = result.spec.label if label is None else label
    comp = f"**{html.escape(label)}** · {lat['latency_ms']:,.1f} ms/step ({ratio}"
    if lat["latency_rounds"]:
        comp += f" [{low:.2f}, {high:.2f}])" if math.isfinite(low) and math.isfinite(high) else ")"
    else:  # from the drawings themselves: a cached baseline was timed earlier, and no run was warm-paired
        base += " (cached)" if result.baseline_cached else ""
        comp += ", not timed warm)"
    if result.compressed_nonfinite:
        comp += " · NaN/inf"
    return base, comp


def pair_details(req, result, row: dict, stats: dict, warnings: list[str], hashes: tuple[str, str]) -> dict:
    """The pair as the API returns it (the Details accordion): request, what the model read, caches, warnings,
    digests, numbers."""
    reading = getattr(req, "reading", None)
    return {
        "model": req.model,
        "spec": result.spec.to_dict(),
        "setting": result.spec.label,
        "prompt": reading.typed if reading is not None else req.prompt,
        "read_prompt": req.prompt,  # what the model read: the text its tokenizer got
        "prompt_in_world": reading.in_world if reading is not None else None,
        "unknown_words": list(reading.unknown) if reading is not None else [],
        "negative_prompt": req.negative_prompt,
        "seed": result.seed,
        "steps": result.steps,
        "guidance": result.guidance,
        "height": result.height,
        "width": result.width,
        "baseline_cached": result.baseline_cached,
        "compression_cached": result.compression_cached,
        "prompt_truncated": result.prompt_truncated,
        "compressed_nonfinite": result.compressed_nonfinite,
        "baseline_nonfinite": result.baseline_nonfinite,
        "warnings": warnings,
        "baseline_sha256": hashes[0],
        "compressed_sha256": hashes[1],
        "difference": stats,
        "numbers": {k: finite_or_none(v) for k, v in row.items() if k not in ("prompt", "model")},
    }


# ---------------------------------------------------------------------------------------- sweep texts


def sweep_status(req, res, bootstrap: int) -> str:
    """The line above the sweep table: grid, N, sampler, what was reused, how intervals were made."""
    return (
        f"**{len(req.specs)} settings × {len(req.prompts)} prompts** (N={len(req.prompts)} images per "
        f"setting, `{req.prompt_set}` prompt set) on `{html.escape(req.model)}` · {req.steps} steps · "
        f"guidance {req.guidance:g} · computed {len(res.computed)}, reused from earlier sweeps {len(res.skipped)} · "
        f"95% intervals: Wilson for accuracies, jackknife for FD (from N = 5 x its feature width), bootstrap "
        f"({bootstrap} resamples) for the rest."
    )


def nonfinite_warnings(table: pd.DataFrame) -> list[str]:
    """One line per setting of a sweep whose images held NaN/inf."""
    rows = table[(table["metric"] == "non-finite images") & (table["value"] > 0)]
    return [
        f"{r.setting}: {int(r.value)} of {int(r.n)} images held NaN/inf; they are left out of its scores."
        for r in rows.itertuples()
    ]


def sweep_plan_text(req) -> str:
    """How big the sweep will be, before it runs."""
    n = len(req.specs) * len(req.prompts)
    return (
        f"{len(req.specs)} settings (baseline included) × {len(req.prompts)} prompts = **{n} images**, plus "
        "latency timing per setting."
    )


def job_start_text(what: str, cost: int, estimate: str) -> str:
    """The progress line when a model job starts: its price in image-steps and, once the server has measured
    its pace, how long that should take (the queue's own ETA is a per-endpoint mean, blind to the price)."""
    return f"{what}: {cost:,} image-steps" + (f", {estimate} at this server's recent pace" if estimate else "")


def sweep_stopped(stop) -> str:
    """The status line of a stopped sweep (`compression.sweep.SweepStopped`): what was kept, what was not."""
    kept = ", ".join(html.escape(x) for x in stop.finished) or "none"
    lost = ", ".join(html.escape(x) for x in stop.unfinished) or "none"
    return (
        f"**Sweep stopped** ({html.escape(stop.reason)}): {len(stop.finished)} of "
        f"{len(stop.finished) + len(stop.unfinished)} settings finished and kept ({kept}); the next sweep with "
        f"the same prompts and sampler settings reuses them. Not finished: {lost}."
    )


def job_stopped(job) -> str:
    """The status line of a stopped model job (`app_jobs.Job`): the work's own note, else a generic one."""
    if job.note:
        return job.note
    reason = html.escape(job.token.reason or "stopped")
    return f"**Stopped** ({reason}) after {job.seconds:.1f} s; nothing of the unfinished {job.kind} was kept."


# ------------------------------------------------------------------------------------------- page texts


def model_line(lab) -> str:
    """The line under the title: which model runs where, its size (or why it could not load)."""
    loaded = lab.loaded(lab.default_model)
    if lab.startup_error:
        return f"⚠ {html.escape(lab.startup_error)}"
    if loaded is None:
        return f"Model `{lab.default_model}` loads on the first request (device: {lab.device})."
    cost = loaded.engine.baseline_cost
    side = f"{loaded.native[1]}×{loaded.native[0]} px"
    kept = f" · compressed UNets kept up to {html.escape(loaded.budget_note)}" if loaded.budget_note else ""
    return (
        f"Model **{html.escape(loaded.name)}** on **{loaded.device}** · draws {side} · UNet "
        f"{cost.bytes / 2**20:.1f} MB, {cost.params / 1e6:.2f} M parameters{kept}"
    )


def about(device, cache_size: int, budget_note: str = "") -> str:
    """The About tab: every method, mode and scope this device offers, and how to read the numbers."""
    lines = ["### What the controls do", "", "| kind | name | available here | what it does |", "|---|---|---|---|"]
    for kind, registry in (("pruning", PRUNERS), ("quantization", QUANT_MODES)):
        for name, item in registry.items():
            ok, why = item.available(device)
            lines.append(
                f"| {kind} | `{name}` | {'yes' if ok else 'no: ' + html.escape(why)} | "
                f"{html.escape(item.description)} |"
            )
    lines += ["", "| scope | layers pruned |", "|---|---|"]
    lines += [f"| `{name}` | {html.escape(text)} |" for name, text in SCOPES.items()]
    lines += [
        "",
        "### How to read the numbers",
        "",
        "- **Same-seed pairs**: both images start from the same noise, so PSNR/SSIM against the baseline measure "
        "only what compression changed (N=1 per comparison: read trends, not decimals; sweeps give N and 95% "
        "intervals).",
        "- **CLIP score**: 100 × max(cosine(image, prompt), 0) per image (Hessel et al.'s CLIP-S with weight 100) "
        "with the tiny metric CLIP trained on the shapes world (openai CLIP for hub models when cached); a sweep "
        "averages it over images. torchmetrics' CLIPScore clamps the mean instead: the same unless a cosine is "
        "negative. Higher is better.",
        "- **Latency**: one denoising step (batch 1, the comparison's size and guidance), both UNets timed warm "
        f"after drawing, in {COMPARE_ROUNDS} rounds that alternate baseline and compressed (as the benchmark "
        "does): the median per-round ratio with a distribution-free interval "
        f"({100 * order_statistic_interval(COMPARE_ROUNDS)[1]:.0f}%: it contains 1.0 when both are equally fast, "
        "as masked pruning and simulated quantization are). Each image's own drawing time is listed too, but a "
        "cached or cold baseline against a warm compressed run is no speed comparison.",
        "- **Honest costs**: unstructured pruning writes zeros into dense weights: no speed-up and no smaller file "
        "unless stored sparse. Simulated N-bit weights are stored as float: no gain at all. int8/int4 weights shrink "
        "the UNet but are dequantized on the fly, so they are rarely faster on a CPU.",
        "- **Caches**: the baseline image is reused while prompt, seed and sampler settings stay the same; the last "
        f"{cache_size} compressed UNets are kept, so returning to a setting does not recompress, within a byte budget "
        f"shared with the sweeps ({budget_note or 'APP_CACHE_MB'}), least recently used first out; a setting "
        "whose UNet alone is larger is refused, with its size.",
    ]
    return "\n".join(lines)
