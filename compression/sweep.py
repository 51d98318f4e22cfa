"""Sweeps: a grid of compression settings x a prompt set -> a tidy table, a JSON summary and an HTML report.

    python -m compression.sweep --preset seed-study --prompts 200 --threads 1 --out runs/seed-study
    python -m compression.sweep --model tiny-shapes --prune 0,10,...,90 --method l1-unstructured,random-unstructured \\
        --quant fp32,int8-weight --prompts 200 --seeds 0 --out runs/my-sweep
    python -m compression.sweep --report-only --out runs/my-sweep      # rebuild the report from the CSV

What a sweep does, in order:

1. draws the baseline (uncompressed) images once, batched, into a memory-mapped file under `DIR/cache/`, with
   their metric features; a rerun with the same prompts, seeds and sampler settings reuses them;
2. for the embedded shapes world, renders real images of the same prompts (and a second real set: the
   real-vs-real floor a perfect model would reach);
3. for every setting ("cell"), draws the same prompts and seeds in batches and scores each batch as it comes
   (nothing but one batch of images is held in memory): CLIP score against the prompt, pixel-judge prompt
   following per attribute (shapes world), PSNR/SSIM against the same-seed baseline image, features for FD and
   KID against the baseline and the real images; then latency (warm-up + median of repeats, batch 1), UNet
   bytes, parameters and measured sparsity; every aggregate with N and a bootstrap 95% interval;
4. writes each finished cell to `DIR/cells/<key>.json` at once, so an interrupted sweep resumes where it
   stopped: a cell whose key (model, prompts, seeds, sampler, spec, metric set) is on disk is not recomputed;
5. writes `results.csv` (one row per setting x metric), `summary.json` and `report.html` (Plotly).

Image i of seed s uses `torch.Generator("cpu").manual_seed(s * 100_003 + i)`: every image its own noise,
identical between the baseline and every setting (same-seed pairs).

The app's Sweep tab calls `run_sweep` with a progress callback; nothing here imports gradio.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import math
import os
import re
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import charts, metrics, world
from .spec import CompressionSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT_DIR = REPO_ROOT / "assets" / "prompts"
TINY_CLIP = REPO_ROOT / "assets" / "tiny-shapes-clip"

# Limits that keep a mistyped grid from occupying a CPU for days (the app may pass tighter ones).
MAX_CELLS = 64
MAX_IMAGES_PER_CELL = 5000
MAX_TOTAL_IMAGES = 100_000
SEED_STRIDE = 100_003  # > MAX_IMAGES_PER_CELL: image seeds of different seed values never collide
METRICS_VERSION = 2  # bump when a metric's definition changes: finished cells are then recomputed
REAL_SETTING = charts.REAL_SETTING  # rows measuring real images (the ceiling / floor a perfect model would reach)

Progress = Callable[[float, str], None]

PRESETS: dict[str, dict] = {
    # The study this lab grew from: global L1 on every Linear/Conv2d against a random control, 5-point steps
    # where SD 1.5's knee was (30-35%).
    "seed-study": dict(prune="0,10,20,25,30,35,40,45,50,60,70,80,90", method="l1-unstructured,random-unstructured",
                       quant="fp32", scope="all"),
    # One part of the UNet at a time, at an amount past the global knee so that differences show.
    "layer-sensitivity": dict(prune="50", method="l1-unstructured", quant="fp32",
                              scope="down,mid,up,resnet,attention,self-attention,cross-attention,feed-forward,projection"),
    # The seed study's layer-type experiment: the same L1 curve over every layer, only the Linears, only the
    # Conv2ds (the amount is a share of the scope's weights; the "sparsity" row is the share of the whole UNet).
    "layer-types": dict(prune="0,10,...,90", method="l1-unstructured", quant="fp32", scope="all,linear,conv"),
    # Every CPU quantization mode alone and on top of 30% L1 pruning.
    "quantization": dict(prune="0,30", method="l1-unstructured", scope="all",
                         quant="fp32,bf16,int8-weight,bf16+int8-weight,int8-dynamic,int4-weight,"
                               "simulated-int:8,simulated-int:4"),
}


# ----------------------------------------------------------------------------------------- the grid


def parse_amounts(text: str) -> list[float]:
    """Pruning percentages from text: "0,10,20" or "0,10,...,90" (the step of the first two, up to the last).

    Returns:
        fractions (0.0-0.95), sorted and unique.

    Raises:
        ValueError: unparseable text or an ellipsis without a step.
    """
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    out: list[float] = []
    try:
        for i, p in enumerate(parts):
            if p == "...":
                if len(out) < 2 or i + 1 >= len(parts):
                    raise ValueError("'...' needs two values before it and one after it, e.g. 0,10,...,90")
                step, last = out[-1] - out[-2], float(parts[i + 1])
                if step <= 0:
                    raise ValueError("'...' needs increasing values before it")
                x = out[-1] + step
                while x < last - 1e-9:
                    out.append(round(x, 6))
                    x += step
            else:
                out.append(float(p))
    except ValueError as err:
        raise ValueError(f"bad pruning percentages {text[:60]!r}: {err}") from None
    if not out:
        raise ValueError("no pruning percentages given (e.g. --prune 0,10,...,90)")
    return sorted({round(x / 100, 6) for x in out})


def parse_quant(text: str) -> list[tuple[str, int | None]]:
    """Quantization modes from text: "fp32,int8-weight,simulated-int:4" -> [(mode, bits), ...]."""
    out = []
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        mode, _, bits = part.partition(":")
        out.append((mode, int(bits) if bits else None))
    if not out:
        raise ValueError("no quantization modes given (e.g. --quant fp32)")
    return out


def canonical(spec: CompressionSpec) -> CompressionSpec:
    """The same drawing with one name: at 0% pruning the method, scope and seed change nothing."""
    if spec.prunes:
        return spec
    return CompressionSpec(quant_mode=spec.quant_mode, bits=spec.bits)


def grid(amounts: Sequence[float], methods: Sequence[str], quant: Sequence[tuple[str, int | None]],
         scopes: Sequence[str] = ("all",), seed: int = 0) -> list[CompressionSpec]:
    """Every combination as validated specs, 0% cells deduplicated, the baseline first.

    Raises:
        ValueError: from `CompressionSpec` (unknown method/mode/scope, amount out of range), naming valid values.
    """
    specs = [canonical(CompressionSpec(a, m, s, q, b, seed))
             for q, b in quant for m in methods for s in scopes for a in amounts]
    specs = [CompressionSpec(), *specs]
    return list(dict.fromkeys(specs))


def load_prompts(name: str | Path, n: int | None = None) -> list[str]:
    """A prompt set: a name under assets/prompts/ ("tiny-shapes", "general") or a path to a text file with one
    prompt a line (# starts a comment). `n` takes the first n.

    Raises:
        ValueError: unknown set, or fewer than n prompts in it.
    """
    path = Path(name)
    if not path.is_file():
        path = PROMPT_DIR / f"{name}.txt"
    if not path.is_file():
        known = ", ".join(available_prompt_sets())
        raise ValueError(f"unknown prompt set {str(name)[:60]!r}; known: {known} (or a path to a .txt file)")
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    if n is not None:
        if n > len(prompts):
            raise ValueError(f"prompt set {path.stem!r} has {len(prompts)} prompts, {n} asked")
        prompts = prompts[:n]
    return prompts


# ------------------------------------------------------------------------------------- metric models


@dataclass
class MetricSet:
    """What a sweep measures with.

    Args:
        judge (`metrics.MetricClip`, *optional*): CLIP model for CLIP scores (None: no CLIP score).
        features (`list[nn.Module]`): torchmetrics-style extractors with `.name`/`.num_features` for FD/KID.
        real_reference (`bool`): measure against real images of the shapes world (needs world prompts).
    """

    judge: metrics.MetricClip | None = None
    features: list = field(default_factory=list)
    real_reference: bool = False

    def signature(self) -> dict:
        """Names and weight digests: a retrained judge with the same name must not reuse old scores."""
        judge = None
        if self.judge is not None:
            judge = [self.judge.name, _weights_digest(self.judge.model)]
        feats = [[f.name, _weights_digest(_extractor_model(f))] for f in self.features]
        return {"judge": judge, "features": feats, "real": self.real_reference}


def _extractor_model(extractor: torch.nn.Module) -> torch.nn.Module:
    # The network whose weights decide the features: the judge's CLIP, a transformers model, or the module itself.
    if isinstance(extractor, metrics.ClipImageFeatures):
        return extractor.clip.model
    model = getattr(extractor, "model", None)
    return model if isinstance(model, torch.nn.Module) else extractor


def default_metric_set(model_name: str, allow_download: bool = False, log: Callable[[str], None] = print) -> MetricSet:
    """The metric models that fit a catalog model.

    The embedded model: its tiny metric CLIP (CLIP score and "tinyCLIP" features) and real images of its world.
    A hub model: openai CLIP ViT-B/16 (CLIP score, "CLIP-B/16" features) and DINOv2-base features where their
    weights are in the local cache (or `allow_download`), Inception when torch-fidelity is installed; what is
    missing is left out with a logged reason, never faked with the tiny model.
    """
    from .models import resolve_model

    entry = resolve_model(model_name)
    if entry.tiny:
        judge = metrics.MetricClip(TINY_CLIP, name="tinyCLIP")
        return MetricSet(judge, [judge.feature_extractor()], real_reference=True)
    found = MetricSet()
    local_only = not allow_download
    try:
        found.judge = metrics.MetricClip("openai/clip-vit-base-patch16", name="CLIP-B/16", local_files_only=local_only)
        found.features.append(found.judge.feature_extractor())
    except OSError as err:
        log(f"no CLIP score / CLIP features: openai/clip-vit-base-patch16 not available ({type(err).__name__})")
    try:
        found.features.append(metrics.HFImageFeatures.from_pretrained("facebook/dinov2-base", "DINOv2-B", local_only))
    except OSError as err:
        log(f"no DINOv2 features: facebook/dinov2-base not available ({type(err).__name__})")
    if metrics.inception_available()[0]:
        found.features.append(metrics.InceptionFeatures())
    return found


# -------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SweepResult:
    """What `run_sweep` returns.

    Args:
        table (`pd.DataFrame`): tidy results, one row per setting x metric (see `charts`).
        summary (`dict`): configuration, per-setting headline numbers, floors, knee estimates.
        out_dir (`Path`, *optional*): where results.csv, summary.json and report.html were written.
        computed (`list[str]`): labels of the settings computed in this call.
        skipped (`list[str]`): labels of the settings found finished on disk and reused.
    """

    table: pd.DataFrame
    summary: dict
    out_dir: Path | None
    computed: list[str]
    skipped: list[str]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


_WEIGHT_DIGESTS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def _weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state_dict, computed once per module object (models here are never mutated)."""
    if module not in _WEIGHT_DIGESTS:
        from .engine import state_dict_digest

        _WEIGHT_DIGESTS[module] = state_dict_digest(module)[:16]
    return _WEIGHT_DIGESTS[module]


def model_fingerprint(pipeline) -> str:
    """Digest of every weight of a pipeline (UNet, VAE, text encoder): a retrained model under the same name
    gets new sweep cells instead of the old model's results."""
    parts = sorted((name, _weights_digest(c)) for name, c in pipeline.components.items()
                   if isinstance(c, torch.nn.Module))
    return _digest(parts)


def _clean(obj):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a killed sweep never leaves half a cell behind


def _spec_columns(spec: CompressionSpec | None) -> dict:
    if spec is None:
        return dict(setting=REAL_SETTING, prune_amount=math.nan, prune_method="", prune_scope="", quant_mode="",
                    bits=None)
    return dict(setting=spec.label, prune_amount=spec.prune_amount, prune_method=spec.prune_method,
                prune_scope=spec.prune_scope, quant_mode=spec.quant_mode, bits=spec.bits)


def _rows(spec: CompressionSpec | None, estimates: list[metrics.Estimate], model: str, cell: str) -> list[dict]:
    return [{"model": model, **_spec_columns(spec), **e.to_dict(), "cell": cell} for e in estimates]


COLUMNS = ["model", "setting", "prune_amount", "prune_method", "prune_scope", "quant_mode", "bits", "metric",
           "reference", "value", "ci_low", "ci_high", "n", "unit", "higher_is_better", "note", "cell"]


# ------------------------------------------------------------------------------------------ the sweep


class _Work:
    """Progress over batches, to a tqdm bar and an optional callback."""

    def __init__(self, total: int, progress: Progress | None, show_bar: bool):
        self.total, self.done, self.progress = max(total, 1), 0, progress
        self.bar = tqdm(total=total, desc="sweep", unit="batch", disable=not show_bar)

    def step(self, what: str, k: int = 1) -> None:
        self.done += k
        self.bar.set_postfix_str(what[:40], refresh=False)
        self.bar.update(k)
        if self.progress:
            self.progress(min(self.done / self.total, 1.0), what)

    def close(self) -> None:
        self.bar.close()


def _check_limits(specs, prompts, seeds, max_cells: int) -> int:
    if not prompts:
        raise ValueError("a sweep needs at least 1 prompt")
    if not seeds:
        raise ValueError("a sweep needs at least 1 seed")
    if not specs:
        raise ValueError("a sweep needs at least 1 setting")
    if len(specs) > max_cells:
        raise ValueError(f"{len(specs)} settings exceed the limit of {max_cells} per sweep; split the grid")
    n = len(prompts) * len(seeds)
    if n > MAX_IMAGES_PER_CELL:
        raise ValueError(f"{len(prompts)} prompts x {len(seeds)} seeds = {n} images per setting exceed the limit "
                         f"of {MAX_IMAGES_PER_CELL}")
    if n * len(specs) > MAX_TOTAL_IMAGES:
        raise ValueError(f"{len(specs)} settings x {n} images = {n * len(specs)} images exceed the limit of "
                         f"{MAX_TOTAL_IMAGES} per sweep")
    bad = [s for s in seeds if not isinstance(s, (int, np.integer)) or s < 0 or s * SEED_STRIDE + n >= 2**32]
    if bad:
        raise ValueError(f"seeds must be integers from 0 to {(2**32 - n) // SEED_STRIDE}, got {bad[:3]}")
    return n


def _features_of(extractor, judge, embeds: np.ndarray | None, images: np.ndarray) -> np.ndarray:
    # The judge's own CLIP features are its embeddings, already computed for the CLIP score: no second pass.
    if isinstance(extractor, metrics.ClipImageFeatures) and extractor.clip is judge and embeds is not None:
        return embeds.astype(np.float64) * math.sqrt(extractor.num_features)
    return metrics.extract_features(extractor, images)


def _score_batch(images, nonfinite, ms: MetricSet, prompts, attrs, baseline_images, baseline_nonfinite) -> dict:
    """Per-image numbers of one batch; images with NaN/inf get NaN (they are never scored)."""
    n = len(images)
    ok = ~nonfinite
    good = images[ok]
    out: dict[str, np.ndarray] = {}
    embeds = None
    if ms.judge is not None:
        embeds_ok = ms.judge.image_embeds(good).numpy() if ok.any() else np.zeros((0, ms.judge.num_features))
        embeds = np.full((n, ms.judge.num_features), np.nan)
        embeds[ok] = embeds_ok
        clip = np.full(n, np.nan)
        if ok.any():
            clip[ok] = ms.judge.clip_score_from_embeds(embeds_ok, [p for p, g in zip(prompts, ok) if g])
        out["clip"] = clip
    for ext in ms.features:
        feats = np.full((n, ext.num_features), np.nan)
        if ok.any():
            feats[ok] = _features_of(ext, ms.judge, embeds[ok] if embeds is not None else None, good)
        out[f"feat:{ext.name}"] = feats
    if attrs is not None:
        judged = metrics.prompt_following(images, attrs)
        for k, v in judged.items():
            col = v.astype(np.float64) * 100
            col[~ok] = np.nan
            out[f"acc:{k}"] = col
    if baseline_images is not None:
        pair_ok = ok & ~baseline_nonfinite
        p, s = np.full(n, np.nan), np.full(n, np.nan)
        if pair_ok.any():
            p[pair_ok] = metrics.psnr(baseline_images[pair_ok], images[pair_ok])
            s[pair_ok] = metrics.ssim(baseline_images[pair_ok], images[pair_ok])
        out["psnr"], out["ssim"] = p, s
    if embeds is not None:
        out["embeds"] = embeds
    return out


def _concat(parts: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def _quality_estimates(per: dict[str, np.ndarray], ms: MetricSet, refs: dict[str, dict[str, np.ndarray]],
                       n_boot: int, nonfinite: np.ndarray,
                       ref_nonfinite: dict[str, np.ndarray]) -> list[metrics.Estimate]:
    est: list[metrics.Estimate] = []
    if "clip" in per:
        est.append(metrics.mean_estimate(f"CLIP score ({ms.judge.name})", per["clip"], "prompt", "", True,
                                         n_boot=n_boot))
    for k in (*world.ATTRIBUTES, "all"):
        if f"acc:{k}" in per:
            est.append(metrics.mean_estimate(f"accuracy: {k}", per[f"acc:{k}"], "prompt", "%", True,
                                             note="pixel judge reads the attribute back" if k == "all" else "",
                                             n_boot=n_boot))
    if "psnr" in per:
        est.append(metrics.mean_estimate("PSNR", per["psnr"], "baseline", "dB", True, n_boot=n_boot))
        est.append(metrics.mean_estimate("SSIM", per["ssim"], "baseline", "", True, n_boot=n_boot))
    for ref_name, ref in refs.items():
        for ext in ms.features:
            key = f"feat:{ext.name}"
            keep = ~nonfinite & ~ref_nonfinite[ref_name]
            if keep.sum() >= 2:
                est += metrics.distance_estimates(ref[key][keep], per[key][keep], ext.name, ref_name, n_boot=n_boot)
    est.append(metrics.Estimate("non-finite images", float(nonfinite.sum()), float(nonfinite.sum()),
                                float(nonfinite.sum()), len(nonfinite), "", "images", False,
                                "images with NaN/inf are left out of every other metric"))
    return est


def run_sweep(
    engine,
    specs: Sequence[CompressionSpec],
    prompts: Sequence[str],
    seeds: Sequence[int] = (0,),
    *,
    steps: int = 20,
    guidance: float = 4.0,
    negative_prompt: str = "",
    height: int | None = None,
    width: int | None = None,
    metric_set: MetricSet | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 25,
    latency_repeats: int = 5,
    latency_warmup: int = 1,
    n_boot: int = metrics.N_BOOT,
    progress: Progress | None = None,
    show_bar: bool = True,
    max_cells: int = MAX_CELLS,
    plotlyjs: str = "inline",
    samples_per_cell: int = 8,
) -> SweepResult:
    """Run a grid of settings over a prompt set and measure each against the baseline (and real data).

    Args:
        engine (`Engine`): holds the baseline pipeline; each setting is compressed through its cache.
        specs (`Sequence[CompressionSpec]`): the settings; 0% cells are deduplicated and the baseline is
            always measured first (it is the reference).
        prompts (`Sequence[str]`): the prompt set (see `load_prompts`).
        seeds (`Sequence[int]`, defaults to (0,)): each prompt is drawn once per seed value (N = prompts x
            seeds); image i of seed s uses generator seed s * 100_003 + i.
        steps (`int`, defaults to 20), guidance (`float`, defaults to 4.0), negative_prompt, height, width:
            sampler settings, the same for every setting.
        metric_set (`MetricSet`, *optional*): judge and feature extractors; defaults to
            `default_metric_set(engine.model_name)`.
        out_dir (`str` or `Path`, *optional*): where cells, caches, results.csv, summary.json, report.html go.
            Without it nothing is written and nothing can be resumed.
        batch_size (`int`, defaults to 25): images per denoising batch (memory ~ batch x image size).
        latency_repeats (`int`, defaults to 5), latency_warmup (`int`, defaults to 1): timing of one image
            (batch 1) per setting. 0 repeats skips latency.
        n_boot (`int`, defaults to 1000): bootstrap resamples per interval.
        progress (`Callable[[float, str], None]`, *optional*): called after every batch with (fraction, text).
        show_bar (`bool`, defaults to True): a tqdm progress bar (gr.Progress(track_tqdm=True) follows it).
        max_cells (`int`, defaults to 64): refuse larger grids.
        plotlyjs (`str`, defaults to "inline"): the report embeds plotly.js ("inline", works offline) or
            links it ("cdn", small file).
        samples_per_cell (`int`, defaults to 8): first images of each setting shown in the report.

    Returns:
        `SweepResult`.

    Raises:
        ValueError: no prompts, no seeds, too many settings or images (the message names the limit), bad
            sampler settings.

    Example:
        >>> pipe, info = load_pipeline("tiny-shapes")
        >>> engine = Engine(pipe, info.name, cache_size=1)
        >>> specs = grid(parse_amounts("0,30,60"), ["l1-unstructured"], [("fp32", None)])
        >>> res = run_sweep(engine, specs, load_prompts("tiny-shapes", 50), out_dir="runs/quick")
        >>> res.table.query("metric == 'accuracy: all'")[["setting", "value", "ci_low", "ci_high", "n"]]
    """
    specs = list(dict.fromkeys([CompressionSpec(), *(canonical(s) for s in specs)]))
    prompts, seeds = list(prompts), [int(s) for s in seeds]
    n = _check_limits(specs, prompts, seeds, max_cells)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    height, width = engine.validate(prompts[0], 0, steps, guidance, negative_prompt, height, width)
    ms = metric_set if metric_set is not None else default_metric_set(engine.model_name)
    model = engine.model_name

    all_prompts = [p for _ in seeds for p in prompts]
    all_seeds = [s * SEED_STRIDE + i for s in seeds for i in range(len(prompts))]
    parsed = [world.parse_caption(p) for p in prompts]
    attrs = [a for _ in seeds for a in parsed] if all(a is not None for a in parsed) else None
    use_real = ms.real_reference and attrs is not None

    sampler = dict(model=model, weights=model_fingerprint(engine.pipeline), prompts=_digest(prompts),
                   n_prompts=len(prompts), seeds=seeds, steps=steps, guidance=guidance, negative=negative_prompt,
                   height=height, width=width, batch=batch_size)
    base_key = _digest(sampler)
    measure = dict(ms.signature(), real=use_real, n_boot=n_boot, latency=[latency_warmup, latency_repeats],
                   version=METRICS_VERSION)
    keys = {spec: _digest(dict(base=base_key, spec=spec.to_dict(), measure=measure)) for spec in specs}

    out = Path(out_dir) if out_dir is not None else None
    cache = out / "cache" / base_key if out else None
    if out:
        for sub in ("cells", "samples"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)

    def finished(spec) -> dict | None:
        path = out / "cells" / f"{keys[spec]}.json" if out else None
        if path and path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        return None

    done = {spec: finished(spec) for spec in specs}
    todo = [s for s in specs if done[s] is None]
    batches = math.ceil(n / batch_size)
    # Baseline images depend on the sampler only; their scores also on the metric set (own file each).
    images_ready = bool(cache and (cache / "baseline.done").is_file())
    scores_path = cache / f"baseline-scores-{_digest(measure)}.npz" if cache else None
    scores_ready = bool(scores_path and scores_path.is_file())
    base_work = 0 if not todo or (images_ready and scores_ready) else batches
    work = _Work(batches * len(todo) + base_work, progress, show_bar)
    computed, skipped = [], [s.label for s in specs if done[s] is not None]

    # ---- the baseline: images (memory-mapped on disk when there is an out_dir), scores, features
    refs: dict[str, dict[str, np.ndarray]] = {}
    ref_nonfinite: dict[str, np.ndarray] = {}
    base_images = base_nonfinite = None
    base_per: dict[str, np.ndarray] = {}
    if todo:
        if images_ready:
            base_images = np.load(cache / "baseline.npy", mmap_mode="r")
            base_nonfinite = np.load(cache / "baseline-nonfinite.npy")
        else:
            shape = (n, height, width, 3)
            base_images = (np.lib.format.open_memmap(cache / "baseline.npy", mode="w+", dtype=np.uint8, shape=shape)
                           if cache else np.zeros(shape, np.uint8))
            base_nonfinite = np.zeros(n, dtype=bool)
        if scores_ready:
            loaded = np.load(scores_path)
            base_per = {k: loaded[k] for k in loaded.files}
        else:
            parts = []
            for b in range(batches):
                sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
                if not images_ready:
                    r = engine.generate_batch(all_prompts[sl], all_seeds[sl], steps, guidance, CompressionSpec(),
                                              negative_prompt, height, width)
                    base_images[sl], base_nonfinite[sl] = r.images, r.nonfinite
                parts.append(_score_batch(np.asarray(base_images[sl]), base_nonfinite[sl], ms, all_prompts[sl],
                                          attrs[sl] if attrs else None, None, None))
                work.step(f"baseline {sl.stop}/{n}")
            base_per = _concat(parts)
            if cache:
                if not images_ready:
                    base_images.flush()
                    np.save(cache / "baseline-nonfinite.npy", base_nonfinite)
                    (cache / "baseline.done").write_text("ok\n")
                np.savez(scores_path, **base_per)
        refs["baseline"] = {k: v for k, v in base_per.items() if k.startswith("feat:")}
        ref_nonfinite["baseline"] = base_nonfinite

    # ---- real images of the same prompts (shapes world): the reference distribution, and its floor
    real_rows: list[dict] = []
    real_path = out / "cells" / f"real-{_digest(dict(base=base_key, measure=measure))}.json" if out else None
    if use_real and (todo or not (real_path and real_path.is_file())):
        real_a = np.stack([np.asarray(world.render(a, s)) for a, s in zip(attrs, all_seeds)])
        real_b = np.stack([np.asarray(world.render(a, s + 2**32)) for a, s in zip(attrs, all_seeds)])
        per_a = _score_batch(real_a, np.zeros(n, bool), ms, all_prompts, attrs, None, None)
        per_b = _score_batch(real_b, np.zeros(n, bool), ms, all_prompts, attrs, None, None)
        refs["real"] = {k: v for k, v in per_a.items() if k.startswith("feat:")}
        ref_nonfinite["real"] = np.zeros(n, dtype=bool)
        floor = _quality_estimates(per_b, ms, {"real": refs["real"]}, n_boot, np.zeros(n, bool), ref_nonfinite)
        floor = [e for e in floor if e.metric != "non-finite images"]
        floor = [metrics.Estimate(**{**e.to_dict(), "note": (e.note + "; " if e.note else "") +
                                     ("two independent real sets: the floor a perfect model would reach"
                                      if e.reference == "real" else "real images: the ceiling")}) for e in floor]
        real_rows = _rows(None, floor, model, "real")
        del real_a, real_b

    # ---- every setting
    for spec in specs:
        if done[spec] is not None:
            continue
        key = keys[spec]
        parts, nonfinite = [], np.zeros(n, dtype=bool)
        cost = report = None
        comp_seconds = 0.0
        samples = []
        for b in range(batches):
            sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
            if spec.is_identity:  # the baseline itself: reuse its images, draw nothing
                images, nf = np.asarray(base_images[sl]), base_nonfinite[sl]
                cost, report = engine.baseline_cost, None
            else:
                r = engine.generate_batch(all_prompts[sl], all_seeds[sl], steps, guidance, spec, negative_prompt,
                                          height, width)
                images, nf = r.images, r.nonfinite
                cost, report = r.cost, r.prune_report
                comp_seconds += r.compression_seconds
            nonfinite[sl] = nf
            parts.append(_score_batch(images, nf, ms, all_prompts[sl], attrs[sl] if attrs else None,
                                      np.asarray(base_images[sl]), base_nonfinite[sl]))
            if len(samples) < samples_per_cell:
                samples.extend(images[: samples_per_cell - len(samples)])
            work.step(f"{spec.label} {sl.stop}/{n}")
        per = _concat(parts)
        est = _quality_estimates(per, ms, refs, n_boot, nonfinite, ref_nonfinite)

        if latency_repeats > 0:
            def timer(s: CompressionSpec) -> Callable[[], float]:
                return lambda: engine.generate_batch(all_prompts[:1], all_seeds[:1], steps, guidance, s,
                                                     negative_prompt, height, width).seconds

            # Timed in alternating rounds with the baseline, so machine load drifts hit both alike.
            lat = metrics.measure_latency_interleaved({"base": timer(CompressionSpec()), "this": timer(spec)},
                                                      latency_warmup, latency_repeats, engine.device)
            est.append(lat["this"].estimate("latency", "ms", note=f"denoising loop, {steps} steps, batch 1; median "
                                                                  f"of {latency_repeats} after {latency_warmup} warm-up"))
            est.append(metrics.speedup_estimate(lat["base"], lat["this"], n_boot))
        base_cost = engine.baseline_cost
        macs = _unet_macs(engine, spec, height, width)
        if macs is not None:
            est.append(metrics.exact_estimate("UNet MACs", macs / 1e9, "GMAC", False,
                                              note="one UNet forward at batch 1, counted on the meta device"))
        est += [
            metrics.exact_estimate("UNet size", cost.bytes / 2**20, "MB", False,
                                   note=f"baseline {base_cost.bytes / 2**20:.2f} MB"),
            metrics.exact_estimate("parameters", cost.params / 1e6, "M", None),
            metrics.exact_estimate("non-zero parameters", (cost.params - cost.zeros) / 1e6, "M", False,
                                   note="what a sparse format would have to store"),
            metrics.exact_estimate("sparsity", 100 * cost.sparsity, "%", None,
                                   note="measured zeros over all Linear/Conv2d weights of the UNet"),
            metrics.exact_estimate("compression time", comp_seconds, "s", False),
        ]
        if report is not None:
            est.append(metrics.exact_estimate("scope sparsity", 100 * report.sparsity, "%", None,
                                              note=f"measured over the {report.scope!r} scope ({report.layers} layers)"))
        cell = {"key": key, "label": spec.label, "spec": spec.to_dict(), "n": n,
                "rows": _rows(spec, est, model, key)}
        if out:
            if samples:
                _save_strip(samples, out / "samples" / f"{key}.png")
            per_image = pd.DataFrame({"prompt": all_prompts, "seed": all_seeds, "nonfinite": nonfinite,
                                      **{k: v for k, v in per.items() if v.ndim == 1}})
            per_image.to_csv(out / "cells" / f"{key}.images.csv", index=False)
            _write_json(out / "cells" / f"{key}.json", cell)
        done[spec] = cell
        computed.append(spec.label)
    work.close()

    if real_path and use_real and not real_rows and real_path.is_file():
        real_rows = json.loads(real_path.read_text(encoding="utf-8"))["rows"]
    elif real_path and real_rows:
        _write_json(real_path, {"rows": real_rows})

    rows = [r for spec in specs for r in done[spec]["rows"]] + real_rows
    table = pd.DataFrame(rows, columns=COLUMNS)
    config = {**sampler, "prompts_digest": sampler.pop("prompts"), "n_images": n, **measure}
    summary = summarize(table, config, fd_min={f.name: metrics.fd_min_n(f.num_features) for f in ms.features})
    summary["cells"] = [{"label": s.label, "key": keys[s], "spec": s.to_dict(),
                         "status": "computed" if s.label in computed else "reused"} for s in specs]
    if out:
        table.to_csv(out / "results.csv", index=False)
        _write_json(out / "summary.json", summary)
        write_report(table, summary, out, plotlyjs)
    return SweepResult(table, summary, out, computed, skipped)


def _unet_macs(engine, spec: CompressionSpec, height: int, width: int) -> int | None:
    """Multiply-accumulates of one UNet forward (batch 1) of this setting: structured pruning lowers them,
    masked zeros do not. None where the UNet cannot be counted on the meta device."""
    from .cost import count_macs

    unet = engine.compress(spec)[0].unet
    cfg = unet.config
    scale = int(engine.pipeline.vae_scale_factor)
    sample = torch.zeros(1, cfg.in_channels, height // scale, width // scale)
    text = engine.pipeline.text_encoder.config
    hidden = torch.zeros(1, int(getattr(engine.pipeline.tokenizer, "model_max_length", 77)), int(text.hidden_size))
    return count_macs(unet, sample, torch.tensor(500), encoder_hidden_states=hidden)


def _save_strip(images: Sequence[np.ndarray], path: Path) -> None:
    h, w = images[0].shape[:2]
    strip = Image.new("RGB", (w * len(images), h), "white")
    for i, im in enumerate(images):
        strip.paste(Image.fromarray(np.asarray(im)), (i * w, 0))
    strip.save(path)


# --------------------------------------------------------------------------------------------- summary


def quality_holds_until(table: pd.DataFrame, metric: str, reference: str, method: str, max_drop: float,
                        quant_mode: str = "fp32", scope: str = "all") -> float | None:
    """The largest pruning amount up to which `metric` stays within `max_drop` of the unpruned value at every
    measured amount (a "knee" with an explicit tolerance), or None when the metric or the 0% cell is missing.

    Args:
        max_drop (`float`): tolerance in the metric's unit, in its bad direction (e.g. 5 percentage points of
            accuracy, or a KID increase of 0.01).
    """
    rows = table[(table["metric"] == metric) & (table["reference"].fillna("") == reference)
                 & (table["quant_mode"] == quant_mode)]
    rows = rows[(rows["prune_amount"] == 0) | ((rows["prune_method"] == method) & (rows["prune_scope"] == scope))]
    rows = rows.drop_duplicates("prune_amount").sort_values("prune_amount")
    base = rows[rows["prune_amount"] == 0]
    if base.empty or len(rows) < 2:
        return None
    higher = bool(rows["higher_is_better"].dropna().iloc[0]) if rows["higher_is_better"].notna().any() else True
    b = float(base["value"].iloc[0])
    holds = 0.0
    for amount, value in zip(rows["prune_amount"], rows["value"].astype(float)):
        drop = (b - value) if higher else (value - b)
        if not math.isfinite(value) or drop > max_drop:
            break
        holds = float(amount)
    return holds


def first_clear_drop(table: pd.DataFrame, metric: str, reference: str, method: str, quant_mode: str = "fp32",
                     scope: str = "all") -> float | None:
    """The smallest pruning amount whose 95% interval lies entirely on the bad side of the unpruned value's
    interval (a knee without a chosen tolerance; conservative: non-overlap of two intervals)."""
    rows = table[(table["metric"] == metric) & (table["reference"].fillna("") == reference)
                 & (table["quant_mode"] == quant_mode)]
    rows = rows[(rows["prune_amount"] == 0) | ((rows["prune_method"] == method) & (rows["prune_scope"] == scope))]
    rows = rows.drop_duplicates("prune_amount").sort_values("prune_amount")
    base = rows[rows["prune_amount"] == 0]
    if base.empty:
        return None
    higher = bool(rows["higher_is_better"].dropna().iloc[0]) if rows["higher_is_better"].notna().any() else True
    lo, hi = float(base["ci_low"].iloc[0]), float(base["ci_high"].iloc[0])
    for amount, clo, chi in zip(rows["prune_amount"], rows["ci_low"].astype(float), rows["ci_high"].astype(float)):
        if amount > 0 and ((chi < lo) if higher else (clo > hi)):
            return float(amount)
    return None


def available_prompt_sets() -> list[str]:
    """Names of the prompt sets shipped in assets/prompts/ (for the app's Sweep tab)."""
    return sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))


def summarize(table: pd.DataFrame, config: dict, fd_min: dict[str, int]) -> dict:
    """The JSON summary: configuration, per-setting headline numbers (value, CI, N), floors and knees."""
    headline = {}
    for setting, part in table.groupby("setting", sort=False):
        headline[setting] = {
            r.metric + (f" vs {r.reference}" if isinstance(r.reference, str) and r.reference not in ("", "prompt")
                        else ""):
            {"value": r.value, "ci": [r.ci_low, r.ci_high], "n": r.n, "unit": r.unit}
            for r in part.itertuples()
        }
    # Knees of every fp32, whole-UNet pruning curve: where the 95% intervals part from the unpruned model's,
    # and, for accuracies, how far it stays within 5 percentage points.
    knees = {}
    pruned = table[(table["prune_amount"] > 0) & (table["prune_scope"] == "all") & (table["quant_mode"] == "fp32")]
    for method in sorted(pruned["prune_method"].dropna().unique()):
        if pruned[pruned["prune_method"] == method]["prune_amount"].nunique() < 2:
            continue
        k = {}
        for metric, ref in _quality_metrics(table):
            entry = {"first_clear_drop": first_clear_drop(table, metric, ref, method)}
            if metric.startswith("accuracy"):
                entry["holds_within_5pp"] = quality_holds_until(table, metric, ref, method, 5.0)
            k[f"{metric} vs {ref}" if ref not in ("", "prompt") else metric] = entry
        knees[method] = k
    return {"config": config, "fd_min_n": fd_min, "headline": headline, "knees": knees,
            "generated": time.strftime("%Y-%m-%d %H:%M:%S")}


def paired_difference(out_dir: str | Path, label_a: str, label_b: str, column: str = "acc:all",
                      n_boot: int = metrics.N_BOOT, seed: int = 0) -> metrics.Estimate:
    """Mean of (a - b) over the images two settings of one sweep share (same prompt and seed), with a bootstrap
    95% interval over image pairs: e.g. "does L1 beat random at 40%?" without the noise of two separate means.

    Args:
        out_dir (`str` or `Path`): a sweep folder (its summary.json and cells/*.images.csv).
        label_a, label_b (`str`): setting labels, e.g. "L1 40%" and "random 40%".
        column (`str`, defaults to "acc:all"): a per-image column: "acc:<attribute>" (0/100), "clip", "psnr",
            "ssim".

    Raises:
        ValueError: an unknown label or column.
    """
    out = Path(out_dir)
    cells = {c["label"]: c["key"] for c in json.loads((out / "summary.json").read_text())["cells"]}
    for label in (label_a, label_b):
        if label not in cells:
            raise ValueError(f"no setting {label!r} in {out}; known: {', '.join(cells)}")
    a = pd.read_csv(out / "cells" / f"{cells[label_a]}.images.csv")
    b = pd.read_csv(out / "cells" / f"{cells[label_b]}.images.csv")
    if column not in a or column not in b:
        known = ", ".join(c for c in a.columns if c not in ("prompt", "seed"))
        raise ValueError(f"no per-image column {column!r}; known: {known}")
    diff = (a[column] - b[column]).to_numpy(dtype=float)  # NaN where either image was non-finite: left out
    return metrics.mean_estimate(f"{column}: {label_a} - {label_b}", diff, label_b, "", None, n_boot=n_boot, seed=seed)


# ---------------------------------------------------------------------------------------------- report


def _quality_metrics(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric, reference) pairs to chart, KID before FD when N is below the FD-meaningful N."""
    q = table[~table["metric"].isin(["latency", "speed-up", "UNet size", "UNet MACs", "parameters",
                                     "non-zero parameters", "sparsity", "scope sparsity",
                                     "compression time", "non-finite images"]) & (table["setting"] != REAL_SETTING)]
    pairs = list(dict.fromkeys(zip(q["metric"], q["reference"].fillna(""))))
    fd_unreliable = q[q["metric"].str.startswith("FD-")]["note"].fillna("").str.len().gt(0).any()

    def rank(p):
        m = p[0]
        order = ["accuracy: all", "CLIP score", "KID-", "FD-", "PSNR", "SSIM", "accuracy: "]
        if fd_unreliable:
            order = ["accuracy: all", "CLIP score", "KID-", "PSNR", "SSIM", "FD-", "accuracy: "]
        return next((i for i, o in enumerate(order) if m.startswith(o)), len(order))

    return sorted(pairs, key=rank)


def report_figures(table: pd.DataFrame) -> list[tuple[str, object]]:
    """The report's figures, in reading order."""
    figs = []
    pruned = table[table["prune_amount"] > 0]
    scopes = set(pruned["prune_scope"].dropna()) - {"all"}
    qm = _quality_metrics(table)
    modes = table[table["setting"] != REAL_SETTING].apply(lambda r: (r["quant_mode"], r["bits"]), axis=1).nunique()
    by_mode = modes > 2 and table["prune_amount"].nunique() <= 3  # a quantization study: bars read better
    if (pruned["prune_scope"] == "all").any() or pruned.empty:
        for metric, ref in qm:
            name = f"{metric}" + (f" vs {ref}" if ref not in ("", "prompt") else "")
            figs.append((name, charts.quality_by_mode(table, metric, ref) if by_mode
                         else charts.quality_vs_pruning(table, metric, ref)))
    if scopes:
        for metric, ref in qm[:4]:
            figs.append((f"Layer sensitivity: {metric}" + (f" vs {ref}" if ref not in ("", "prompt") else ""),
                         charts.layer_sensitivity(table, metric, ref)))
    figs.append(("Latency", charts.cost_bars(table, "latency")))
    figs.append(("Speed-up over the baseline", charts.cost_bars(table, "speed-up")))
    figs.append(("UNet size", charts.cost_bars(table, "UNet size")))
    if qm:
        metric, ref = qm[0]
        for cost in ("UNet size", "non-zero parameters", "UNet MACs", "latency"):
            values = table[(table["metric"] == cost) & (table["setting"] != REAL_SETTING)]["value"].astype(float)
            # A cost that no setting changes (masked pruning leaves the size as it is) has no front to show.
            if len(values) > 1 and values.max() > 1.02 * values.min():
                figs.append((f"Pareto: {metric} vs {cost}", charts.quality_cost_pareto(table, metric, cost, ref)))
    return figs


def write_report(table: pd.DataFrame, summary: dict, out: Path, plotlyjs: str = "inline") -> Path:
    """report.html in `out`: configuration, headline table, figures and a strip of sample images per setting."""
    import base64

    cfg = summary.get("config", {})
    fd_min = summary.get("fd_min_n", {})
    bits = [f"<b>model</b> {html.escape(str(cfg.get('model')))}", f"<b>images per setting</b> N={cfg.get('n_images')}",
            f"<b>steps</b> {cfg.get('steps')}", f"<b>guidance</b> {cfg.get('guidance')}",
            f"<b>size</b> {cfg.get('height')}x{cfg.get('width')}",
            f"<b>judge</b> {html.escape(str(cfg.get('judge')))}"]
    intro = "<p>" + " &middot; ".join(bits) + "</p>"
    for name, need in fd_min.items():
        n = cfg.get("n_images") or 0
        verdict = "above it: FD is usable" if n >= need else "below it: read KID; FD is shown for completeness"
        intro += (f"<p>Frechet distance on {html.escape(name)} features ({need // 5} wide) is taken seriously from "
                  f"N={need} images per set (5 x width); this sweep has N={n}, {verdict}.</p>")
    intro += ("<p>Every number is a mean (latency: median) over N with a bootstrap 95% interval. "
              "References: <i>baseline</i> = the uncompressed model, same prompts and seeds; <i>real</i> = images "
              "of the data generator for the same prompts; <i>prompt</i> = the text.</p>")
    head = table[table["metric"].isin(["accuracy: all", "PSNR", "speed-up", "UNet size", "sparsity"])
                 | table["metric"].str.startswith("KID-") | table["metric"].str.startswith("CLIP score")]
    if not head.empty:
        head = head.assign(col=head["metric"] + head["reference"].fillna("").map(lambda r: f" vs {r}" if r not in ("", "prompt") else "")
                           + head["unit"].fillna("").map(lambda u: f" ({u})" if u else ""),
                           txt=[f"{v:.4g} [{lo:.3g}, {hi:.3g}]" if n > 1 else f"{v:.4g}"
                                for v, lo, hi, n in zip(head["value"], head["ci_low"], head["ci_high"], head["n"])])
        wide = head.pivot_table(index="setting", columns="col", values="txt", aggfunc="first", sort=False)
        wide.index.name, wide.columns.name = None, None
        intro += "<h2>Headline numbers (value [95% CI])</h2>" + wide.to_html(escape=True, na_rep="")
    strips = ""
    for cell in summary.get("cells", []):
        path = out / "samples" / f"{cell['key']}.png"
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode()
            strips += (f"<div><code>{html.escape(cell['label'])}</code><br><img alt='samples' style='image-rendering:pixelated;"
                       f"height:64px' src='data:image/png;base64,{data}'></div>")
    if strips:
        strips = "<h2>First images of each setting (same prompts and seeds)</h2>" + strips
    path = charts.write_report_html(report_figures(table), out / "report.html",
                                    f"Compression sweep: {cfg.get('model')}", intro, plotlyjs)
    if strips:
        text = path.read_text(encoding="utf-8").replace("</body>", strips + "</body>")
        path.write_text(text, encoding="utf-8")
    return path


def write_pngs(table: pd.DataFrame, folder: Path) -> list[Path]:
    """Every report figure as a PNG (numbered in reading order), rendered by headless Chromium."""
    folder.mkdir(parents=True, exist_ok=True)
    return [charts.save_png(fig, folder / f"{i:02d}-{charts.slug(title)}.png")
            for i, (title, fig) in enumerate(report_figures(table))]


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> SweepResult | None:
    p = argparse.ArgumentParser(prog="python -m compression.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="a named grid; --prune/--method/--quant/--scope override it")
    p.add_argument("--model", default=None, help="catalog name (default: env MODEL_ID, else tiny-shapes)")
    p.add_argument("--prune", help="pruning percentages, e.g. 0,10,...,90 (default 0,30)")
    p.add_argument("--method", help="pruning methods, comma-separated (default l1-unstructured)")
    p.add_argument("--quant", help="quantization modes, comma-separated; simulated-int:4 gives bits (default fp32)")
    p.add_argument("--scope", help="pruning scopes, comma-separated (default all)")
    p.add_argument("--prompt-set", default=None, help="name under assets/prompts/ or a .txt path "
                                                      "(default: tiny-shapes for the embedded model, else general)")
    p.add_argument("--prompts", type=int, default=200, help="how many prompts of the set (the first N)")
    p.add_argument("--seeds", default="0", help="seed values, comma-separated; each prompt is drawn once per seed")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--batch", type=int, default=25, help="images per denoising batch")
    p.add_argument("--latency-repeats", type=int, default=5)
    p.add_argument("--boot", type=int, default=metrics.N_BOOT, help="bootstrap resamples per interval")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--plotlyjs", choices=["inline", "cdn"], default="inline",
                   help="inline: self-contained report (~5 MB); cdn: small file that loads plotly.js from the web")
    p.add_argument("--allow-download", action="store_true", help="let hub metric models (CLIP, DINOv2) download")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild report.html from DIR/results.csv and summary.json")
    p.add_argument("--png", action="store_true", help="also save every report figure as DIR/png/*.png (needs Chromium)")
    p.add_argument("--out", required=True, type=Path, help="output folder (resumes what is finished there)")
    args = p.parse_args(argv)

    if args.report_only:
        table = pd.read_csv(args.out / "results.csv")
        summary = json.loads((args.out / "summary.json").read_text())
        print(write_report(table, summary, args.out, args.plotlyjs))
        if args.png:
            write_pngs(table, args.out / "png")
        return None
    if args.threads:
        torch.set_num_threads(args.threads)

    preset = PRESETS.get(args.preset, {}) if args.preset else {}
    prune = args.prune or preset.get("prune", "0,30")
    method = args.method or preset.get("method", "l1-unstructured")
    quant = args.quant or preset.get("quant", "fp32")
    scope = args.scope or preset.get("scope", "all")
    try:
        specs = grid(parse_amounts(prune), [m.strip() for m in method.split(",") if m.strip()], parse_quant(quant),
                     [s.strip() for s in scope.split(",") if s.strip()])
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as err:
        p.error(str(err))

    from .engine import Engine
    from .models import load_pipeline, resolve_model

    entry = resolve_model(args.model)
    prompt_set = args.prompt_set or ("tiny-shapes" if entry.tiny else "general")
    try:
        prompts = load_prompts(prompt_set, args.prompts)
    except ValueError as err:
        p.error(str(err))
    pipe, info = load_pipeline(args.model)
    engine = Engine(pipe, info.name, cache_size=1)
    ms = default_metric_set(info.name, args.allow_download, log=lambda m: print(m, file=sys.stderr))
    print(f"{len(specs)} settings x {len(prompts) * len(seeds)} images on {info.name} ({info.device}); "
          f"{torch.get_num_threads()} threads -> {args.out}", file=sys.stderr)
    res = run_sweep(engine, specs, prompts, seeds, steps=args.steps, guidance=args.guidance, metric_set=ms,
                    out_dir=args.out, batch_size=args.batch, latency_repeats=args.latency_repeats, n_boot=args.boot,
                    plotlyjs=args.plotlyjs)
    print(f"computed {len(res.computed)}, reused {len(res.skipped)}: {args.out / 'results.csv'}, "
          f"{args.out / 'summary.json'}, {args.out / 'report.html'}", file=sys.stderr)
    if args.png:
        write_pngs(res.table, args.out / "png")
    return res


if __name__ == "__main__":
    main()
