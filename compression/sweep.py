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
   bytes, parameters and measured sparsity; every aggregate with N and a 95% interval (metrics.py says which);
4. writes each finished cell to `DIR/cells/<key>.json` at once, so an interrupted sweep resumes where it
   stopped: a cell whose key (model, prompts, seeds, sampler, spec, metric set) is on disk is not recomputed;
5. writes `results.csv` (one row per setting x metric), `summary.json` and `report.html` (Plotly).

A `CancelToken` (`cancel=`) stops a sweep within one denoising step, or after the batch being scored: it raises
`SweepStopped` naming the settings that are finished (on disk, reused by a rerun) and those that are not. The
setting that was running is dropped (unless all its images were drawn and only its write-up remained), and so is
the baseline if it was not finished.

Image i of seed s uses `torch.Generator("cpu").manual_seed(s * 100_003 + i)`: every image its own noise,
identical between the baseline and every setting (same-seed pairs).

The app's Sweep tab calls `run_sweep` with a progress callback; nothing here imports gradio.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import charts, latency, metrics, overhead, paper, scaling, world
from .cancel import Cancelled, CancelToken, check
from .distributed import ShardStore, World, check_shared_folder, concat, current_world, run_shards, total_over
from .report import (  # noqa: F401 - re-exported: the report moved out of this module, its names stay here
    _quality_metrics,  # noqa: F401
    first_clear_drop,
    headline_table,
    paired_difference,
    quality_holds_until,
    report_figures,
    summarize,
    write_pngs,
    write_report,
)
from .spec import CompressionSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT_DIR = REPO_ROOT / "assets" / "prompts"

# Limits that keep a mistyped grid from occupying a CPU for days (the app may pass tighter ones).
MAX_CELLS = 64
MAX_IMAGES_PER_CELL = 30_000  # BK-SDM's MS-COCO protocol: 30k images per setting (launch several processes)
MAX_TOTAL_IMAGES = 500_000
# KID against the baseline builds four n x n float64 kernels (4 x 0.8 GB at 10k, 4 x 7.2 GB at 30k): above this
# its rows say they were skipped instead of exhausting memory. A real reference's statistics need no kernel.
PAIRED_DISTANCE_MAX_N = 10_000
SEED_STRIDE = 100_003  # > MAX_IMAGES_PER_CELL: image seeds of different seed values never collide
METRICS_VERSION = 3  # bump when a metric's definition changes: finished cells are then recomputed
REAL_SETTING = charts.REAL_SETTING  # rows measuring real images (the ceiling / floor a perfect model would reach)

Progress = Callable[[float, str], None]

PRESETS: dict[str, dict] = {
    # The study this lab grew from: global L1 on every Linear/Conv2d against a random control, 5-point steps
    # where SD 1.5's knee was (30-35%).
    "seed-study": dict(
        prune="0,10,20,25,30,35,40,45,50,60,70,80,90",
        method="l1-unstructured,random-unstructured",
        quant="fp32",
        scope="all",
    ),
    # One part of the UNet at a time, at an amount past the global knee so that differences show.
    "layer-sensitivity": dict(
        prune="50",
        method="l1-unstructured",
        quant="fp32",
        scope="down,mid,up,resnet,attention,self-attention,cross-attention,feed-forward,projection",
    ),
    # The seed study's layer-type experiment: the same L1 curve over every layer, only the Linears, only the
    # Conv2ds (the amount is a share of the scope's weights; the "sparsity" row is the share of the whole UNet).
    "layer-types": dict(prune="0,10,...,90", method="l1-unstructured", quant="fp32", scope="all,linear,conv"),
    # Every CPU quantization mode alone and on top of 30% L1 pruning.
    "quantization": dict(
        prune="0,30",
        method="l1-unstructured",
        scope="all",
        quant="fp32,bf16,int8-weight,bf16+int8-weight,int8-dynamic,int4-weight,simulated-int:8,simulated-int:4",
    ),
    # BK-SDM's MS-COCO protocol (25 PNDM steps, 512 -> 256 px; see compression/paper.py and docs/scaling.md).
    "paper": scaling.PAPER_PRESET,
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


def parse_steps(text: str) -> list[int]:
    """Recovery steps from text: "0,500,2000" -> [0, 500, 2000] (sorted, unique)."""
    try:
        out = sorted({int(p) for p in str(text).split(",") if p.strip()})
    except ValueError:
        raise ValueError(f"bad recovery steps {str(text)[:60]!r}: whole numbers, e.g. 0,500,2000") from None
    if not out or out[0] < 0:
        raise ValueError(f"recovery steps must be whole numbers >= 0, e.g. 0,500,2000, got {str(text)[:60]!r}")
    return out


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


def grid(
    amounts: Sequence[float],
    methods: Sequence[str],
    quant: Sequence[tuple[str, int | None]],
    scopes: Sequence[str] = ("all",),
    seed: int = 0,
    recover_steps: Sequence[int] = (0,),
    recover_data: str = "real",
) -> list[CompressionSpec]:
    """Every combination as validated specs, 0% cells deduplicated, the baseline first. Recovery steps apply to
    pruned settings only, in increasing order (a longer recovery then continues a shorter one's checkpoint).

    Raises:
        ValueError: from `CompressionSpec` (unknown method/mode/scope, amount out of range), naming valid values.
    """
    steps = sorted(set(recover_steps))
    specs = [
        canonical(CompressionSpec(a, m, s, q, b, seed, r, recover_data if r else "real"))
        if a > 0
        else canonical(CompressionSpec(a, m, s, q, b, seed))
        for q, b in quant
        for m in methods
        for s in scopes
        for a in amounts
        for r in steps
    ]
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
        reference (`reference.RealReference`, *optional*): your real images or statistics (replaces the shapes
            world's real images as the "real" reference).
        protocol (`str`, defaults to "native"): how images are prepared before CLIP scores and features (a key
            of `paper.IMAGE_PROTOCOLS`; "bk-sdm-256" for the paper preset).
    """

    judge: metrics.MetricClip | None = None
    features: list = field(default_factory=list)
    real_reference: bool = False
    reference: object = None
    protocol: str = "native"

    def signature(self) -> dict:
        """Names and weight digests: a retrained judge with the same name must not reuse old scores."""
        judge = None
        if self.judge is not None:
            judge = [self.judge.name, _weights_digest(self.judge.model)]
        feats = [[f.name, _weights_digest(_extractor_model(f))] for f in self.features]
        sig = {"judge": judge, "features": feats, "real": self.real_reference}
        if self.reference is not None or self.protocol != "native":  # older cells keep their keys
            sig.update(reference=self.reference.signature() if self.reference else None, protocol=self.protocol)
        return sig

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """The images CLIP scores and features see (the protocol's preparation; PSNR/SSIM see the drawn ones)."""
        prepare = paper.IMAGE_PROTOCOLS[self.protocol]
        return prepare(images) if prepare is not None else images


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

    m = resolve_model(model_name).metrics
    if m.real_reference:
        judge = metrics.MetricClip(m.judge, name=m.judge_name)
        return MetricSet(judge, [judge.feature_extractor()], real_reference=True)
    found = MetricSet()
    local_only = not allow_download
    try:
        found.judge = metrics.MetricClip(m.judge, name=m.judge_name, local_files_only=local_only)
        found.features.append(found.judge.feature_extractor())
    except OSError as err:
        log(f"no CLIP score / CLIP features: {m.judge} not available ({type(err).__name__})")
    for hub_id, label in m.features:
        try:
            found.features.append(metrics.HFImageFeatures.from_pretrained(hub_id, label, local_only))
        except OSError as err:
            log(f"no {label} features: {hub_id} not available ({type(err).__name__})")
    if m.inception and metrics.inception_available()[0]:
        found.features.append(metrics.InceptionFeatures())
    return found


# -------------------------------------------------------------------------------------------- results


class SweepStopped(Cancelled):
    """Raised by `run_sweep` when its `CancelToken` is cancelled.

    Args:
        reason (`str`): the token's reason.
        finished (`list[str]`): labels of the settings finished (in this call or before): their cells are on disk
            and a rerun with the same prompts, sampler and metrics reuses them.
        unfinished (`list[str]`): labels of the settings not finished (the one that was running included).
    """

    def __init__(self, reason: str, finished: list[str], unfinished: list[str]):
        super().__init__(reason)
        self.finished, self.unfinished = list(finished), list(unfinished)


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


_WEIGHT_DIGESTS: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def _weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state_dict, computed once per module object (models here are never mutated)."""
    if module not in _WEIGHT_DIGESTS:
        from .engine import state_dict_digest

        _WEIGHT_DIGESTS[module] = state_dict_digest(module)[:16]
    return _WEIGHT_DIGESTS[module]


def model_fingerprint(pipeline) -> str:
    """Digest of every weight of a pipeline (UNet, VAE, text encoder): a retrained model under the same name
    gets new sweep cells instead of the old model's results."""
    parts = sorted(
        (name, _weights_digest(c)) for name, c in pipeline.components.items() if isinstance(c, torch.nn.Module)
    )
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
        return dict(
            setting=REAL_SETTING,
            prune_amount=math.nan,
            prune_method="",
            prune_scope="",
            quant_mode="",
            bits=None,
            recover_steps=None,
        )
    return dict(
        setting=spec.label,
        prune_amount=spec.prune_amount,
        prune_method=spec.prune_method,
        prune_scope=spec.prune_scope,
        quant_mode=spec.quant_mode,
        bits=spec.bits,
        recover_steps=spec.recover_steps,
    )


def _rows(spec: CompressionSpec | None, estimates: list[metrics.Estimate], model: str, cell: str) -> list[dict]:
    return [{"model": model, **_spec_columns(spec), **e.to_dict(), "cell": cell} for e in estimates]


COLUMNS = [
    "model",
    "setting",
    "prune_amount",
    "prune_method",
    "prune_scope",
    "quant_mode",
    "bits",
    "recover_steps",
    "metric",
    "reference",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "unit",
    "higher_is_better",
    "note",
    "cell",
]


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
        raise ValueError(
            f"{len(prompts)} prompts x {len(seeds)} seeds = {n} images per setting exceed the limit "
            f"of {MAX_IMAGES_PER_CELL}"
        )
    if n * len(specs) > MAX_TOTAL_IMAGES:
        raise ValueError(
            f"{len(specs)} settings x {n} images = {n * len(specs)} images exceed the limit of "
            f"{MAX_TOTAL_IMAGES} per sweep"
        )
    bad = [s for s in seeds if not isinstance(s, (int, np.integer)) or s < 0 or s * SEED_STRIDE + n >= 2**32]
    if bad:
        raise ValueError(f"seeds must be integers from 0 to {(2**32 - n) // SEED_STRIDE}, got {bad[:3]}")
    return n


def _features_of(extractor, judge, embeds: np.ndarray | None, images: np.ndarray) -> np.ndarray:
    # The judge's own CLIP features are its embeddings, already computed for the CLIP score: no second pass.
    if isinstance(extractor, metrics.ClipImageFeatures) and extractor.clip is judge and embeds is not None:
        return embeds.astype(np.float64) * math.sqrt(extractor.num_features)
    return metrics.extract_features(extractor, images)


@overhead.timed("metrics")
def _score_batch(images, nonfinite, ms: MetricSet, prompts, attrs, baseline_images, baseline_nonfinite) -> dict:
    """Per-image numbers of one batch; images with NaN/inf get NaN (they are never scored)."""
    n = len(images)
    ok = ~nonfinite
    good = ms.prepare(images[ok]) if ok.any() else images[ok]
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


@overhead.timed("metrics")
def _quality_estimates(
    per: dict[str, np.ndarray],
    ms: MetricSet,
    refs: dict[str, dict[str, np.ndarray]],
    n_boot: int,
    nonfinite: np.ndarray,
    ref_nonfinite: dict[str, np.ndarray],
) -> list[metrics.Estimate]:
    est: list[metrics.Estimate] = []
    if "clip" in per:
        est.append(
            metrics.mean_estimate(f"CLIP score ({ms.judge.name})", per["clip"], "prompt", "", True, n_boot=n_boot)
        )
    for k in (*world.ATTRIBUTES, "all"):
        if f"acc:{k}" in per:
            est.append(
                metrics.proportion_estimate(
                    f"accuracy: {k}",
                    per[f"acc:{k}"] / 100,
                    "prompt",
                    True,
                    note="pixel judge reads the attribute back" if k == "all" else "",
                )
            )
    if "psnr" in per:
        est.append(metrics.mean_estimate("PSNR", per["psnr"], "baseline", "dB", True, n_boot=n_boot))
        est.append(metrics.mean_estimate("SSIM", per["ssim"], "baseline", "", True, n_boot=n_boot))
    for ref_name, ref in refs.items():
        for ext in ms.features:
            key = f"feat:{ext.name}"
            keep = ~nonfinite & ~ref_nonfinite[ref_name]
            if keep.sum() > PAIRED_DISTANCE_MAX_N:
                why = f"skipped: N > {PAIRED_DISTANCE_MAX_N:,} (KID's n x n kernels would not fit in memory)"
                est += [
                    metrics.Estimate(f"{m}-{ext.name}", math.nan, math.nan, math.nan, 0, ref_name, "", False, why)
                    for m in ("FD", "KID")
                ]
            elif keep.sum() >= 2:
                est += metrics.distance_estimates(ref[key][keep], per[key][keep], ext.name, ref_name, n_boot=n_boot)
    if ms.reference is not None:
        est += ms.reference.estimates(per, nonfinite, n_boot)
    est.append(
        metrics.Estimate(
            "non-finite images",
            float(nonfinite.sum()),
            float(nonfinite.sum()),
            float(nonfinite.sum()),
            len(nonfinite),
            "",
            "images",
            False,
            "images with NaN/inf are left out of every other metric",
        )
    )
    return est


@dataclass(frozen=True)
class SweepConfig:
    """How a sweep draws and measures: everything but the engine, the grid, the prompts and where to write.

    Args:
        steps (`int`, defaults to 20), guidance (`float`, defaults to 4.0), negative_prompt (`str`), height,
            width (`int`, *optional*: the model's native size): sampler settings, the same for every setting.
        batch_size (`int`, defaults to 25): images per denoising batch (memory ~ batch x image size).
        latency_repeats (`int`, defaults to 5), latency_warmup (`int`, defaults to 1): timing of one image
            (batch 1) per setting, in alternating rounds with the baseline. 0 repeats skips latency.
        n_boot (`int`, defaults to 1000): bootstrap resamples per interval.
        show_bar (`bool`, defaults to True): a tqdm progress bar (gr.Progress(track_tqdm=True) follows it).
        max_cells (`int`, defaults to 64): refuse larger grids.
        plotlyjs (`str`, defaults to "inline"): the report embeds plotly.js ("inline", works offline) or links it
            ("cdn", small file).
        samples_per_cell (`int`, defaults to 8): first images of each setting shown in the report.
    """

    steps: int = 20
    guidance: float = 4.0
    negative_prompt: str = ""
    height: int | None = None
    width: int | None = None
    batch_size: int = 25  # 25 tiny-model images are ~40 MB of activations; SD 1.5 wants far fewer
    latency_repeats: int = 5
    latency_warmup: int = 1
    n_boot: int = metrics.N_BOOT
    show_bar: bool = True
    max_cells: int = MAX_CELLS
    plotlyjs: str = "inline"
    samples_per_cell: int = 8

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class _Plan:
    """What a sweep will do, worked out before anything is drawn: the images, the cell keys, the folders."""

    engine: object
    cfg: SweepConfig
    ms: MetricSet
    specs: list[CompressionSpec]
    prompts: list[str]  # one per image: the prompt set once per seed value
    seeds: list[int]  # one generator seed per image
    attrs: list | None  # parsed captions per image (shapes world), else None
    use_real: bool
    height: int
    width: int
    sampler: dict  # what the baseline images depend on (the cache key of the baseline)
    measure: dict  # what the scores depend on besides the images
    keys: dict[CompressionSpec, str]
    out: Path | None
    cache: Path | None
    cancel: CancelToken | None = None  # checked before every batch and inside every drawing (per denoising step)
    world: World = field(default_factory=World)  # which shards (batches) this process draws
    drawn: int = 0  # images this process drew with the denoiser (throughput)
    measure_seconds: float = 0.0  # time this process spent measuring cells (throughput breakdown)
    timing: dict = field(default_factory=dict)  # setting -> seconds per phase on this process (overhead.py)

    @property
    def n(self) -> int:
        return len(self.prompts)

    @property
    def model(self) -> str:
        return self.engine.model_name

    def slices(self):
        b = self.cfg.batch_size
        return [slice(i, min(self.n, i + b)) for i in range(0, self.n, b)]

    @overhead.timed("generation")
    def draw(self, spec: CompressionSpec, sl: slice, prompts=None, seeds=None):
        c = self.cfg
        return self.engine.generate_batch(
            self.prompts[sl] if prompts is None else prompts,
            self.seeds[sl] if seeds is None else seeds,
            c.steps,
            c.guidance,
            spec,
            c.negative_prompt,
            self.height,
            self.width,
            cancel=self.cancel,
        )

    def attrs_of(self, sl: slice):
        return self.attrs[sl] if self.attrs else None

    def finished(self, spec: CompressionSpec) -> dict | None:
        path = self.out / "cells" / f"{self.keys[spec]}.json" if self.out else None
        if path and path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        return None


@dataclass
class _Refs:
    """The references every setting is measured against: the baseline's images and per-image numbers, and the
    features (with non-finite masks) of each reference distribution ("baseline", "real")."""

    images: np.ndarray | None = None
    nonfinite: np.ndarray | None = None
    per: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    feature_nonfinite: dict[str, np.ndarray] = field(default_factory=dict)


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
    cancel: CancelToken | None = None,
    world: World | None = None,
    tracker=None,
) -> SweepResult:
    """Run a grid of settings over a prompt set and measure each against the baseline (and real data).

    The keyword arguments build a `SweepConfig` (see it for each one); `run_sweep_with(engine, specs, prompts,
    seeds, config)` takes one directly.

    Args:
        engine (`Engine`): holds the baseline pipeline; each setting is compressed through its cache.
        specs (`Sequence[CompressionSpec]`): the settings; 0% cells are deduplicated and the baseline is
            always measured first (it is the reference).
        prompts (`Sequence[str]`): the prompt set (see `load_prompts`).
        seeds (`Sequence[int]`, defaults to (0,)): each prompt is drawn once per seed value (N = prompts x
            seeds); image i of seed s uses generator seed s * 100_003 + i.
        metric_set (`MetricSet`, *optional*): judge and feature extractors; defaults to
            `default_metric_set(engine.model_name)`.
        out_dir (`str` or `Path`, *optional*): where cells, caches, results.csv, summary.json, report.html go.
            Without it nothing is written and nothing can be resumed.
        progress (`Callable[[float, str], None]`, *optional*): called after every batch with (fraction, text).
        cancel (`CancelToken`, *optional*): stops the sweep within one denoising step or one batch's scoring.
        world (`distributed.World`, *optional*): this process's share of the work (defaults to the launcher's).
        tracker (`tracking.SweepTracker`, *optional*): also log to trackio / W&B / MLflow.

    Returns:
        `SweepResult`.

    Raises:
        ValueError: no prompts, no seeds, too many settings or images (the message names the limit), bad
            sampler settings.
        SweepStopped: `cancel` was cancelled; finished settings stay on disk for a rerun.

    Example:
        >>> pipe, info = load_pipeline("tiny-shapes")
        >>> engine = Engine(pipe, info.name, cache_size=1)
        >>> specs = grid(parse_amounts("0,30,60"), ["l1-unstructured"], [("fp32", None)])
        >>> res = run_sweep(engine, specs, load_prompts("tiny-shapes", 50), out_dir="runs/quick")
        >>> res.table.query("metric == 'accuracy: all'")[["setting", "value", "ci_low", "ci_high", "n"]]
    """
    config = SweepConfig(
        steps=steps,
        guidance=guidance,
        negative_prompt=negative_prompt,
        height=height,
        width=width,
        batch_size=batch_size,
        latency_repeats=latency_repeats,
        latency_warmup=latency_warmup,
        n_boot=n_boot,
        show_bar=show_bar,
        max_cells=max_cells,
        plotlyjs=plotlyjs,
        samples_per_cell=samples_per_cell,
    )
    return run_sweep_with(
        engine,
        specs,
        prompts,
        seeds,
        config,
        metric_set=metric_set,
        out_dir=out_dir,
        progress=progress,
        cancel=cancel,
        world=world,
        tracker=tracker,
    )


def run_sweep_with(
    engine,
    specs: Sequence[CompressionSpec],
    prompts: Sequence[str],
    seeds: Sequence[int] = (0,),
    config: SweepConfig = SweepConfig(),
    *,
    metric_set: MetricSet | None = None,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    world: World | None = None,
    tracker=None,
) -> SweepResult:
    """`run_sweep` with its settings as one `SweepConfig`: baseline, real data, each setting, outputs.

    Under torchrun / accelerate launch every process calls this with the same arguments; each draws its share
    of every setting's batches (`compression.distributed`), and process 0 returns the results and writes
    the files (the others return an empty table). `world` defaults to the launcher's (one process without one).
    `tracker` (`tracking.SweepTracker`, *optional*) gets the configuration, each setting as it is finished (or
    found on disk) and the report. A cancelled `cancel` token raises `SweepStopped` within one denoising step
    or one batch's scoring; the settings already written stay on disk for a rerun.
    """
    start, load_before = time.perf_counter(), _loadavg()
    plan = _plan(engine, specs, prompts, seeds, config, metric_set, out_dir)
    plan.world = world = world if world is not None else current_world()
    plan.cancel = cancel
    if plan.out:
        check_shared_folder(world, plan.out)
    # Process 0 decides what is finished, so that every process works on the same cells.
    todo_keys = world.share(lambda: [plan.keys[s] for s in plan.specs if plan.finished(s) is None])
    todo = [s for s in plan.specs if plan.keys[s] in todo_keys]
    done = {s: (None if s in todo else plan.finished(s) if world.is_main else {}) for s in plan.specs}
    batches = len(world.shards(len(plan.slices())))
    # Baseline images depend on the sampler only; their scores also on the metric set (own file each).
    base_ready = world.share(
        lambda: bool(plan.cache and (plan.cache / "baseline.done").is_file() and _baseline_scores_path(plan).is_file())
    )
    work = _Work(
        batches * len(todo) + (0 if not todo or base_ready else batches),
        progress if world.is_main else None,
        config.show_bar and world.is_main,
    )
    skipped = [s.label for s in plan.specs if s not in todo]

    if tracker is not None:
        tracker.start(_tracked_config(plan))
    measured = []
    try:
        check(cancel)
        refs = _baseline_phase(plan, work) if todo else _Refs()
        if todo:
            _real_phase(plan, refs, True, floor=False)  # the real reference's features, on every process
        # Drawing is split by shards; measuring (bootstraps, latency) by cells, each cell on one process, so that
        # no process waits while another bootstraps. Process 0 gets the fewest: it also writes the report.
        tasks = [*todo, REAL_SETTING] if todo and plan.use_real else list(todo)
        mine = {t for j, t in enumerate(tasks) if (world.size - 1 - j) % world.size == world.rank}
        per_of = {}
        for spec in todo:
            check(cancel)
            per = _draw_phase(plan, spec, refs, work)
            if spec in mine:
                per_of[spec] = per  # the others' numbers are dropped: memory holds only this process's cells
            if world.size == 1:  # nobody to wait for: measure at once (each cell on disk as soon as it is done)
                measured.append(_timed(plan, (plan.keys[spec], _measure_phase), spec, per_of.pop(spec), refs))
        for t in tasks:
            check(cancel)
            if t in mine and t == REAL_SETTING:
                measured.append(_timed(plan, ("real", _real_phase), refs, True))
            elif t in per_of:
                measured.append(_timed(plan, (plan.keys[t], _measure_phase), t, per_of.pop(t), refs))
    except Cancelled as stop:
        written = {name for name, _ in measured}
        finished = [s.label for s in plan.specs if s not in todo or plan.keys[s] in written]
        unfinished = [s.label for s in plan.specs if s in todo and plan.keys[s] not in written]
        if tracker is not None:
            tracker.finish(None)  # close the tracked run; a stopped sweep has no report to attach
        raise SweepStopped(stop.reason, finished, unfinished) from None
    finally:
        work.close()
    measured = dict(world.gather(measured))
    seconds, drawn = time.perf_counter() - start, total_over(world, plan.drawn)
    computed = [s.label for s in todo]
    if not world.is_main:
        return SweepResult(pd.DataFrame(columns=COLUMNS), {}, plan.out, computed, skipped)
    done.update({s: measured[plan.keys[s]] for s in todo})
    real_rows = measured["real"] if "real" in measured else _real_phase(plan, refs, bool(todo))
    if tracker is not None:
        for i, spec in enumerate(plan.specs):
            tracker.log_cell(i, done[spec], plan.out / "samples" / f"{plan.keys[spec]}.png" if plan.out else None)
    run = dict(
        processes=world.size,
        threads=torch.get_num_threads(),
        seconds=seconds,
        measure_seconds=plan.measure_seconds,  # process 0's: aggregates, bootstraps, latency, cost, cells written
        images_drawn=int(drawn),
        images_per_second=drawn / seconds if seconds > 0 else None,
        load_average=[load_before, _loadavg()],  # the machine's 1-minute load at start and end: was it shared?
        note="wall time of drawing and scoring (process start, model loading and the report excluded)",
    )
    result = _outputs(plan, done, real_rows, computed, skipped, run)
    if tracker is not None:
        tracker.finish(plan.out)
    return result


def _timed(plan: _Plan, named: tuple, *args) -> tuple:
    """(name, fn(plan, *args)), the time it took added to `plan.measure_seconds`."""
    name, fn = named
    t = time.perf_counter()
    out = fn(plan, *args)
    plan.measure_seconds += time.perf_counter() - t
    return name, out


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not on every platform
        return None


def _tracked_config(plan: _Plan) -> dict:
    """What a tracker stores as the run's configuration: model, digests, sampler, grid, metric set."""
    sampler = dict(plan.sampler)
    digest = sampler.pop("prompts")
    return {
        **sampler,
        "prompts_digest": digest,
        "n_images": plan.n,
        "grid": [s.label for s in plan.specs],
        "processes": plan.world.size,
        "metrics": plan.measure,
    }


def _plan(engine, specs, prompts, seeds, cfg: SweepConfig, metric_set, out_dir) -> _Plan:
    """Check the grid against the limits, name every cell, make the folders."""
    specs = list(dict.fromkeys([CompressionSpec(), *(canonical(s) for s in specs)]))
    prompts, seeds = list(prompts), [int(s) for s in seeds]
    _check_limits(specs, prompts, seeds, cfg.max_cells)
    height, width = engine.validate(prompts[0], 0, cfg.steps, cfg.guidance, cfg.negative_prompt, cfg.height, cfg.width)
    ms = metric_set if metric_set is not None else default_metric_set(engine.model_name)
    model = engine.model_name
    parsed = [world.parse_caption(p) for p in prompts]
    attrs = [a for _ in seeds for a in parsed] if all(a is not None for a in parsed) else None
    use_real = ms.real_reference and attrs is not None and ms.reference is None

    sampler = dict(
        model=model,
        weights=model_fingerprint(engine.pipeline),
        prompts=_digest(prompts),
        n_prompts=len(prompts),
        seeds=seeds,
        steps=cfg.steps,
        guidance=cfg.guidance,
        negative=cfg.negative_prompt,
        height=height,
        width=width,
        batch=cfg.batch_size,
    )
    base_key = _digest(sampler)
    measure = dict(
        ms.signature(),
        real=use_real,
        n_boot=cfg.n_boot,
        latency=[cfg.latency_warmup, cfg.latency_repeats],
        version=METRICS_VERSION,
    )
    keys = {
        spec: _digest(dict(base=base_key, spec=spec.to_dict(), measure=measure, **_recovery_key(spec)))
        for spec in specs
    }

    out = Path(out_dir) if out_dir is not None else None
    cache = out / "cache" / base_key if out else None
    if out:
        for sub in ("cells", "samples"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
    return _Plan(
        engine,
        cfg,
        ms,
        specs,
        [p for _ in seeds for p in prompts],
        [s * SEED_STRIDE + i for s in seeds for i in range(len(prompts))],
        attrs,
        use_real,
        height,
        width,
        sampler,
        measure,
        keys,
        out,
        cache,
    )


def _recovery_key(spec: CompressionSpec) -> dict:
    # A recovered cell also depends on how recovery trains: other settings, other cell (no entry otherwise, so
    # the keys of every other cell stay what they were).
    if not spec.recovers:
        return {}
    from .recover import DEFAULT_CONFIG

    return {"recovery": DEFAULT_CONFIG.key()}


def _baseline_scores_path(plan: _Plan) -> Path | None:
    return plan.cache / f"baseline-scores-{_digest(plan.measure)}.npz" if plan.cache else None


def _baseline_phase(plan: _Plan, work: _Work) -> _Refs:
    """The baseline: images (memory-mapped on disk when there is an out_dir), per-image scores and features,
    drawn and scored once and reused by later sweeps with the same sampler and metric set.

    Each process draws its shards into the one shared file; a shard is marked done as soon as it is on disk,
    so a killed run redraws only the shards that are not."""
    cache, n, world = plan.cache, plan.n, plan.world
    images_ready = world.share(lambda: bool(cache and (cache / "baseline.done").is_file()))
    scores_path = _baseline_scores_path(plan)
    refs = _Refs()
    if images_ready:
        refs.images = np.load(cache / "baseline.npy", mmap_mode="r")
        refs.nonfinite = np.load(cache / "baseline-nonfinite.npy")
    else:
        refs.images = _baseline_images(plan)
        refs.nonfinite = np.zeros(n, dtype=bool)
    if world.share(lambda: bool(scores_path and scores_path.is_file())):
        loaded = np.load(scores_path)
        refs.per = {k: loaded[k] for k in loaded.files}
    else:
        slices = plan.slices()
        marks = ShardStore(cache / "baseline.shards" if cache and not images_ready else None)

        def compute(b: int) -> dict[str, np.ndarray]:
            check(plan.cancel)
            sl = slices[b]
            mark = None if images_ready else marks.load(b)
            if images_ready:
                nonfinite = refs.nonfinite[sl]
            elif mark is not None:
                nonfinite = mark["nonfinite"]
            else:
                r = plan.draw(CompressionSpec(), sl)
                plan.drawn += len(r.images)
                refs.images[sl], nonfinite = r.images, r.nonfinite
                if cache:
                    refs.images.flush()
                marks.save(b, {"nonfinite": nonfinite})
            per = _score_batch(
                np.asarray(refs.images[sl]), nonfinite, plan.ms, plan.prompts[sl], plan.attrs_of(sl), None, None
            )
            return {"nonfinite": nonfinite, **per}

        store = ShardStore(scores_path.with_suffix(".shards") if scores_path else None)
        parts = run_shards(world, len(slices), compute, store, lambda b, _: work.step(f"baseline {slices[b].stop}/{n}"))
        refs.per = concat(parts)
        nonfinite = refs.per.pop("nonfinite")
        if not images_ready:
            refs.nonfinite = nonfinite
        if cache and world.is_main:
            if not images_ready:
                np.save(cache / "baseline-nonfinite.npy", refs.nonfinite)
                (cache / "baseline.done").write_text("ok\n")
                marks.remove()
            np.savez(scores_path, **refs.per)
            store.remove()
        world.barrier()
    refs.features["baseline"] = {k: v for k, v in refs.per.items() if k.startswith("feat:")}
    refs.feature_nonfinite["baseline"] = refs.nonfinite
    return refs


def _baseline_images(plan: _Plan) -> np.ndarray:
    """Where the baseline images go: the shared memory-mapped file (created by process 0, kept when a killed
    run left it behind), or memory without an out_dir."""
    shape = (plan.n, plan.height, plan.width, 3)
    if not plan.cache:
        return np.zeros(shape, np.uint8)
    path = plan.cache / "baseline.npy"
    if plan.world.is_main:
        fresh = not path.is_file() or np.load(path, mmap_mode="r").shape != shape
        if fresh:
            np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape).flush()
            ShardStore(plan.cache / "baseline.shards").remove()  # marks of another file mean nothing
    plan.world.barrier()
    return np.load(path, mmap_mode="r+")


def _real_path(plan: _Plan) -> Path | None:
    if not plan.out:
        return None
    return plan.out / "cells" / f"real-{_digest(dict(base=_digest(plan.sampler), measure=plan.measure))}.json"


def _real_phase(plan: _Plan, refs: _Refs, settings_to_do: bool, floor: bool = True) -> list[dict]:
    """Real images of the same prompts (shapes world): the reference distribution, added to `refs`, and its
    floor (a second, independent real set measured like a setting; skipped with `floor=False`). Rows from disk
    where nothing is redrawn."""
    path = _real_path(plan)
    if not plan.use_real:
        return []
    if not settings_to_do and path and path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["rows"]
    n, ms = plan.n, plan.ms
    if "real" not in refs.features:
        real_a = np.stack([np.asarray(world.render(a, s)) for a, s in zip(plan.attrs, plan.seeds)])
        per_a = _score_batch(real_a, np.zeros(n, bool), ms, plan.prompts, plan.attrs, None, None)
        refs.features["real"] = {k: v for k, v in per_a.items() if k.startswith("feat:")}
        refs.feature_nonfinite["real"] = np.zeros(n, dtype=bool)
    if not floor:
        return []
    real_b = np.stack([np.asarray(world.render(a, s + 2**32)) for a, s in zip(plan.attrs, plan.seeds)])
    per_b = _score_batch(real_b, np.zeros(n, bool), ms, plan.prompts, plan.attrs, None, None)
    floor = _quality_estimates(
        per_b, ms, {"real": refs.features["real"]}, plan.cfg.n_boot, np.zeros(n, bool), refs.feature_nonfinite
    )
    floor = [e for e in floor if e.metric != "non-finite images"]
    floor = [
        metrics.Estimate(
            **{
                **e.to_dict(),
                "note": (e.note + "; " if e.note else "")
                + (
                    "two independent real sets: the floor a perfect model would reach"
                    if e.reference == "real"
                    else "real images: the ceiling"
                ),
            }
        )
        for e in floor
    ]
    rows = _rows(None, floor, plan.model, "real")
    if path and rows:
        _write_json(path, {"rows": rows})
    return rows


@overhead.tallied(lambda plan, spec, *_: plan.timing.setdefault(spec, {}))
def _draw_phase(plan: _Plan, spec: CompressionSpec, refs: _Refs, work: _Work) -> dict[str, np.ndarray]:
    """One setting's images, drawn and scored shard by shard (each process its own; finished shards on disk),
    then every shard's per-image numbers, gathered in image order on every process."""
    cfg, n, key = plan.cfg, plan.n, plan.keys[spec]
    slices = plan.slices()

    def compute(b: int) -> dict[str, np.ndarray]:
        check(plan.cancel)  # a setting whose images are all drawn is finished (its latency draws check again)
        sl = slices[b]
        if spec.is_identity:  # the baseline itself: reuse its images, draw nothing
            images, nonfinite = np.asarray(refs.images[sl]), refs.nonfinite[sl]
        else:
            r = plan.draw(spec, sl)
            plan.drawn += len(r.images)
            images, nonfinite = r.images, r.nonfinite
        per = _score_batch(
            images,
            nonfinite,
            plan.ms,
            plan.prompts[sl],
            plan.attrs_of(sl),
            np.asarray(refs.images[sl]),
            refs.nonfinite[sl],
        )
        keep = max(0, min(sl.stop, cfg.samples_per_cell) - sl.start)  # the first images of the setting
        # a copy: a slice (even an empty one) is a view that would keep the whole batch alive until the gather
        return {"nonfinite": nonfinite, **per, "samples": images[:keep].copy()}

    store = ShardStore(plan.out / "cells" / f"{key}.shards" if plan.out else None)
    parts = run_shards(
        plan.world, len(slices), compute, store, lambda b, _: work.step(f"{spec.label} {slices[b].stop}/{n}")
    )
    return concat(parts)


@overhead.tallied(lambda plan, spec, *_: plan.timing.setdefault(spec, {}), report=True)
def _measure_phase(plan: _Plan, spec: CompressionSpec, per: dict[str, np.ndarray], refs: _Refs) -> dict:
    """One setting's aggregates from its per-image numbers, its latency and cost; the finished cell is written to
    disk at once (so an interrupted sweep resumes after it) and its shards dropped."""
    cfg, n, key = plan.cfg, plan.n, plan.keys[spec]
    per = dict(per)
    nonfinite, samples = per.pop("nonfinite"), per.pop("samples")
    est = _quality_estimates(per, plan.ms, refs.features, cfg.n_boot, nonfinite, refs.feature_nonfinite)
    if cfg.latency_repeats > 0:
        est += _latency_estimates(plan, spec)
    if spec.is_identity:
        cost, report, comp_seconds = plan.engine.baseline_cost, None, 0.0
    else:
        entry, _ = plan.engine.compress(spec)
        cost, report, comp_seconds = entry.cost, entry.prune_report, entry.seconds
    est += _cost_estimates(plan, spec, cost, report, comp_seconds)
    cell = {"key": key, "label": spec.label, "spec": spec.to_dict(), "n": n, "rows": _rows(spec, est, plan.model, key)}
    if plan.out:
        if len(samples):
            _save_strip(list(samples), plan.out / "samples" / f"{key}.png")
        per_image = pd.DataFrame(
            {
                "prompt": plan.prompts,
                "seed": plan.seeds,
                "nonfinite": nonfinite,
                **{k: v for k, v in per.items() if v.ndim == 1},
            }
        )
        per_image.to_csv(plan.out / "cells" / f"{key}.images.csv", index=False)
        _write_json(plan.out / "cells" / f"{key}.json", cell)
        ShardStore(plan.out / "cells" / f"{key}.shards").remove()
    return cell


@overhead.timed("latency")
def _latency_estimates(plan: _Plan, spec: CompressionSpec) -> list[metrics.Estimate]:
    """Latency of one image (batch 1) and the speed-up, timed in alternating rounds with the baseline so that
    machine load drifts hit both alike."""
    cfg = plan.cfg

    def timer(s: CompressionSpec) -> Callable[[], float]:
        return lambda: plan.draw(s, slice(0, 1)).seconds

    pair = latency.paired_latency(
        timer(CompressionSpec()), timer(spec), cfg.latency_warmup, cfg.latency_repeats, plan.engine.device
    )
    return pair.sweep_estimates(cfg.steps, cfg.latency_warmup, cfg.n_boot)


@overhead.timed("cost")
def _cost_estimates(plan: _Plan, spec: CompressionSpec, cost, report, comp_seconds: float) -> list[metrics.Estimate]:
    """Measured cost of a setting: MACs, bytes, parameters, sparsity (whole UNet and scope), compression time."""
    est = []
    base_cost = plan.engine.baseline_cost
    macs = _unet_macs(plan.engine, spec, plan.height, plan.width)
    if macs is not None:
        est.append(
            metrics.exact_estimate(
                "UNet MACs", macs / 1e9, "GMAC", False, note="one UNet forward at batch 1, counted on the meta device"
            )
        )
    est += [
        metrics.exact_estimate(
            "UNet size", cost.bytes / 2**20, "MB", False, note=f"baseline {base_cost.bytes / 2**20:.2f} MB"
        ),
        metrics.exact_estimate("parameters", cost.params / 1e6, "M", None),
        metrics.exact_estimate(
            "non-zero parameters",
            (cost.params - cost.zeros) / 1e6,
            "M",
            False,
            note="what a sparse format would have to store",
        ),
        metrics.exact_estimate(
            "sparsity", 100 * cost.sparsity, "%", None, note="measured zeros over all Linear/Conv2d weights of the UNet"
        ),
        metrics.exact_estimate("compression time", comp_seconds, "s", False),
    ]
    if spec.recovers:
        from .recover import recovery_estimates

        est += recovery_estimates(plan.engine.compress(spec)[0].unet)
    if report is not None:
        est.append(
            metrics.exact_estimate(
                "scope sparsity",
                100 * report.sparsity,
                "%",
                None,
                note=f"measured over the {report.scope!r} scope ({report.layers} layers)",
            )
        )
    return est


def _outputs(
    plan: _Plan, done: dict, real_rows: list[dict], computed: list[str], skipped: list[str], run: dict
) -> SweepResult:
    """The tidy table of every cell (and the real rows), the summary (with `run`: processes, threads, wall time,
    images drawn per second), and on disk results.csv, summary.json and report.html."""
    rows = [r for spec in plan.specs for r in done[spec]["rows"]] + real_rows
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["recover_steps"] = table["recover_steps"].astype("Int64")  # whole steps; empty for the real rows
    sampler = dict(plan.sampler)
    config = {**sampler, "prompts_digest": sampler.pop("prompts"), "n_images": plan.n, **plan.measure}
    summary = summarize(table, config, fd_min={f.name: metrics.fd_min_n(f.num_features) for f in plan.ms.features})
    summary["cells"] = [
        {
            "label": s.label,
            "key": plan.keys[s],
            "spec": s.to_dict(),
            "status": "computed" if s.label in computed else "reused",
            "timing": done[s].get("timing"),  # seconds per phase and metrics / generation (overhead.py)
        }
        for s in plan.specs
    ]
    summary["run"] = run
    if plan.out:
        table.to_csv(plan.out / "results.csv", index=False)
        _write_json(plan.out / "summary.json", summary)
        write_report(table, summary, plan.out, plan.cfg.plotlyjs)
    return SweepResult(table, summary, plan.out, computed, skipped)


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


# ------------------------------------------------------------------------------------------- prompts


def available_prompt_sets() -> list[str]:
    """Names of the prompt sets shipped in assets/prompts/ (for the app's Sweep tab)."""
    return sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> SweepResult | None:
    p = argparse.ArgumentParser(
        prog="python -m compression.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--preset", choices=sorted(PRESETS), help="a named grid; --prune/--method/--quant/--scope override it"
    )
    p.add_argument("--model", default=None, help="catalog name (default: env MODEL_ID, else tiny-shapes)")
    p.add_argument("--prune", help="pruning percentages, e.g. 0,10,...,90 (default 0,30)")
    p.add_argument("--method", help="pruning methods, comma-separated (default l1-unstructured)")
    p.add_argument("--quant", help="quantization modes, comma-separated; simulated-int:4 gives bits (default fp32)")
    p.add_argument("--scope", help="pruning scopes, comma-separated (default all)")
    p.add_argument(
        "--recover-steps",
        default="0",
        help="recovery steps of every pruned setting, e.g. 0,500,2000 (fine-tuning against the baseline before "
        "quantization; checkpoints kept in DIR/recovered, so 2000 continues 500)",
    )
    p.add_argument("--recover-data", default="real", choices=["real", "prompts"], help="recovery data (default real)")
    p.add_argument(
        "--prompt-set",
        default=None,
        help="name under assets/prompts/ or a .txt path (default: tiny-shapes for the embedded model, else general)",
    )
    p.add_argument("--prompts", type=int, help="how many prompts of the set (the first N; default 200, a file: all)")
    p.add_argument("--seeds", default="0", help="seed values, comma-separated; each prompt is drawn once per seed")
    p.add_argument("--steps", type=int, help="denoising steps (default 20; the paper preset: 25)")
    p.add_argument("--guidance", type=float, help="guidance scale (default 4.0; the paper preset: 7.5)")
    p.add_argument("--batch", type=int, default=25, help="images per denoising batch")
    p.add_argument("--latency-repeats", type=int, default=5)
    p.add_argument("--boot", type=int, default=metrics.N_BOOT, help="bootstrap resamples per interval")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--plotlyjs",
        choices=["inline", "cdn"],
        default="inline",
        help="inline: self-contained report (~5 MB); cdn: small file that loads plotly.js from the web",
    )
    p.add_argument("--allow-download", action="store_true", help="let hub metric models (CLIP, DINOv2) download")
    p.add_argument(
        "--report-only", action="store_true", help="rebuild report.html from DIR/results.csv and summary.json"
    )
    p.add_argument("--png", action="store_true", help="also save every report figure as DIR/png/*.png (needs Chromium)")
    p.add_argument("--out", required=True, type=Path, help="output folder (resumes what is finished there)")
    scaling.add_arguments(p)
    args = p.parse_args(argv)
    world = current_world()  # under torchrun / accelerate launch: checks the world size the launcher asked for
    say = print if world.is_main else _quiet  # one process speaks for the sweep

    if args.report_only:
        table = pd.read_csv(args.out / "results.csv")
        summary = json.loads((args.out / "summary.json").read_text())
        say(write_report(table, summary, args.out, args.plotlyjs))
        if args.png:
            write_pngs(table, args.out / "png")
        return None
    if args.threads:
        torch.set_num_threads(args.threads)

    preset = PRESETS.get(args.preset, {}) if args.preset else {}
    steps, guidance = args.steps or preset.get("steps", 20), args.guidance or preset.get("guidance", 4.0)
    prune = args.prune or preset.get("prune", "0,30")
    method = args.method or preset.get("method", "l1-unstructured")
    quant = args.quant or preset.get("quant", "fp32")
    scope = args.scope or preset.get("scope", "all")
    try:
        specs = grid(
            parse_amounts(prune),
            [m.strip() for m in method.split(",") if m.strip()],
            parse_quant(quant),
            [s.strip() for s in scope.split(",") if s.strip()],
            recover_steps=parse_steps(args.recover_steps),
            recover_data=args.recover_data,
        )
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        scaling.check_arguments(args)
    except (ValueError, ImportError) as err:
        p.error(str(err))

    from .engine import Engine
    from .models import load_pipeline, resolve_model

    entry = resolve_model(args.model)
    prompt_set = args.prompt_set or entry.prompt_set
    try:
        if args.prompts_file:
            prompts = scaling.load_prompts_file(args)
        else:
            prompts = load_prompts(prompt_set, args.prompts or 200)
    except ValueError as err:
        p.error(str(err))
    pipe, info = load_pipeline(args.model)
    engine = Engine(pipe, info.name, cache_size=1)
    if any(s.recovers for s in specs):
        from . import recover

        recover.STORE_DIR = recover.STORE_DIR or args.out / "recovered"
    ms = default_metric_set(info.name, args.allow_download, log=lambda m: say(m, file=sys.stderr))
    protocol, n_images = preset.get("protocol", "native"), len(prompts) * len(seeds)
    try:
        scaling.apply_metric_options(args, ms, engine, world, protocol, n_images, steps, guidance)
    except ValueError as err:
        p.error(str(err))
    say(
        f"{len(specs)} settings x {len(prompts) * len(seeds)} images on {info.name} ({info.device}); "
        f"{torch.get_num_threads()} threads -> {args.out}",
        file=sys.stderr,
    )
    res = run_sweep(
        engine,
        specs,
        prompts,
        seeds,
        steps=steps,
        guidance=guidance,
        metric_set=ms,
        out_dir=args.out,
        batch_size=args.batch,
        latency_repeats=args.latency_repeats,
        n_boot=args.boot,
        plotlyjs=args.plotlyjs,
        world=world,
        tracker=scaling.make_tracker(args),
    )
    say(
        f"computed {len(res.computed)}, reused {len(res.skipped)}: {args.out / 'results.csv'}, "
        f"{args.out / 'summary.json'}, {args.out / 'report.html'}",
        file=sys.stderr,
    )
    if args.png and world.is_main:
        write_pngs(res.table, args.out / "png")
    return res


def _quiet(*args, **kwargs) -> None:
    """`print` for processes other than 0."""


if __name__ == "__main__":
    main()
