"""Reliability under a shared model (issue 7): isolation, numerical faults, sweeps that stream and take turns.

One process, one baseline pipeline, many visitors. What must hold, and the figures used here (isolation and
memory through the app under load are in tests/test_load.py):

- The tokenizer: 3 threads on 2 engines over one pipeline never run inside its tokenizer at once (its Rust
  backend keeps padding state: concurrent calls returned 12 unpadded ids instead of 77).
- Isolation, engine level: 18 requests on 4 threads over every pruning method and quantization mode available
  here plus scoped ones (a cache of 2 UNets, so they are built, evicted and rebuilt while others draw), against
  references drawn alone, while a 5th thread redraws one baseline image with no cache every ~0.3 s: every image
  bit-identical to its reference, the UNet / VAE / text-encoder state_dict digests and the scheduler config
  unchanged, no hooks left on the baseline UNet.
- Sweeps stream: a sweep of 12 prompts in batches of 2 holds at most 2 batches of images at a time; baseline
  images go to a memory-mapped file on disk. Two sweeps of one model at once take turns (each gets its own report).
- Numerical faults: fp16 on a model whose residual stream carries ~1e6 (fp32 holds it, fp16's largest number is
  65504) really overflows to NaN/inf; the app shows it as such (striped stand-in, "NaN/inf: not scored", null
  numbers, a gap in the charts) and the sweep table counts the images and scores none of them.

Images are drawn at 1-2 denoising steps: only determinism and isolation are checked, never image quality.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
import threading
import time
import weakref
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from gradio_client import Client
from PIL import Image
from reliability_tools import GUIDANCE, PROMPT, STEPS, Watcher, digests, pixels_sha256, redraw_baseline

from compression import CompressionSpec, Engine, available_pruners, available_quant_modes
from compression.models import load_pipeline
from compression.quantization import QUANT_MODES

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:gradio.*", "ignore::FutureWarning:gradio.*", "ignore:.*:Warning:gradio.queueing"
)

DETAILS = 9  # index of the details JSON among /compare's outputs


def every_path_specs() -> list[CompressionSpec]:
    """A spec per pruning method and per quantization mode available on this device, plus scoped ones:
    every way the engine builds a compressed UNet (layer by layer, deep copy, structured) is taken."""
    specs = [CompressionSpec(0.5, m) for m in available_pruners("cpu")]
    specs += [
        CompressionSpec(0.3, quant_mode=q, bits=3 if QUANT_MODES[q].uses_bits else None)
        for q in available_quant_modes("cpu")
        if q != "fp32"
    ]
    specs += [
        CompressionSpec(0.95, "l1-unstructured", "attention", "simulated-int", 2),
        CompressionSpec(0.6, "random-unstructured", "no-io", "int8-weight"),
        CompressionSpec(0.4, "l1-unstructured-layer", "up", "bf16"),
    ]
    return list(dict.fromkeys(specs))


@pytest.fixture(scope="module")
def app_model(lab_app):
    app, _ = lab_app
    return app.LAB.get("tiny-shapes")


# ------------------------------------------------------------------------------------------- isolation


class TokenizerProbe:
    """A pipeline's tokenizer, wrapped: counts the threads inside it at once. Each call pauses 20 ms inside, which
    widens the window a missing lock leaves open (the real race hits about 1 call in 1000)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._guard = threading.Lock()
        self.inside = self.most = self.calls = 0

    def __call__(self, *args, **kwargs):
        with self._guard:
            self.inside += 1
            self.calls += 1
            self.most = max(self.most, self.inside)
        try:
            time.sleep(0.02)
            return self._tokenizer(*args, **kwargs)
        finally:
            with self._guard:
                self.inside -= 1

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_no_two_threads_use_the_tokenizer_at_once(app_model):
    """The Rust tokenizer keeps padding/truncation settings in shared state set on every call: concurrent calls
    with different settings gave a 77-token request 12 unpadded ids (another prompt embedding, other images)."""
    pipe = app_model.engine.pipeline
    probe = TokenizerProbe(pipe.tokenizer)
    probed = type(pipe)(**{**pipe.components, "tokenizer": probe}, requires_safety_checker=False)
    engines = [Engine(probed, "probe", cache_size=0, baseline_cache_size=0) for _ in range(2)]  # 2 engines, 1 pipe
    long_prompt = " ".join([PROMPT] * 9)  # over 77 tokens: the truncation check runs too
    errors = []

    def work(engine, prompt):
        try:
            for seed in range(2):
                engine.generate_pair(prompt, seed, 1, GUIDANCE, CompressionSpec(), negative_prompt="a blue square")
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))

    threads = [threading.Thread(target=work, args=(engines[k % 2], (PROMPT, long_prompt)[k % 2])) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert probe.calls >= 12
    assert probe.most == 1, f"{probe.most} threads were inside the shared tokenizer at once"


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_engine_storm_never_changes_the_baseline_or_another_request(app_model):
    pipe = app_model.engine.pipeline
    before = digests(pipe)
    base_ref = redraw_baseline(pipe)
    specs = every_path_specs()
    assert len(specs) >= 12
    # Sequential references: each spec with its own seed, drawn alone with no cache.
    alone = Engine(pipe, "alone", cache_size=0, baseline_cache_size=0)
    refs = {}
    for i, spec in enumerate(specs):
        r = alone.generate_pair(PROMPT, i, STEPS, GUIDANCE, spec)
        refs[spec] = (pixels_sha256(r.baseline_image), pixels_sha256(r.compressed_image))

    shared = Engine(pipe, "storm", cache_size=2)  # small: UNets are evicted and rebuilt under contention
    work = [(i, s) for i, s in enumerate(specs)] + [(0, specs[0]), (1, specs[1])] * 2  # repeats: cache hits
    random.Random(7).shuffle(work)
    results, errors = [], []

    def worker(items):
        for i, spec in items:
            try:
                r = shared.generate_pair(PROMPT, i, STEPS, GUIDANCE, spec)
                results.append((spec, pixels_sha256(r.baseline_image), pixels_sha256(r.compressed_image), r.spec))
            except Exception as err:  # noqa: BLE001 - reported below with the spec
                errors.append((spec.label, repr(err)))

    threads = [threading.Thread(target=worker, args=(work[k::4],)) for k in range(4)]
    with Watcher(pipe) as watcher:
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
    assert not errors, errors
    assert len(results) == len(work)
    for spec, base, comp, echoed in results:
        assert echoed == spec
        assert (base, comp) == refs[spec], f"{spec.label}: not the image it draws alone"
    assert len(watcher.drawn) >= 2, "the watcher did not draw during the storm"
    assert set(watcher.drawn) == {base_ref}, "the baseline image changed during the storm"
    assert digests(pipe) == before
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in pipe.unet.modules())
    assert redraw_baseline(pipe) == base_ref  # after


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_sweep_streams_batches_and_keeps_baseline_images_on_disk(app_model, tmp_path, monkeypatch):
    from compression.sweep import load_prompts, run_sweep

    engine = Engine(app_model.engine.pipeline, app_model.name, cache_size=1, baseline_cache_size=0)
    batches: list[weakref.ref] = []
    most_alive = [0]
    real = engine.generate_batch

    def tracked(*args, **kwargs):
        most_alive[0] = max(most_alive[0], sum(r() is not None for r in batches))
        out = real(*args, **kwargs)
        batches.append(weakref.ref(out.images))
        return out

    monkeypatch.setattr(engine, "generate_batch", tracked)
    prompts = load_prompts("tiny-shapes")[:12]
    # samples_per_cell=2: the report's sample strip keeps views of one batch (8 would pin the first 4 batches of 2)
    res = run_sweep(
        engine,
        [CompressionSpec(), CompressionSpec(0.5)],
        prompts,
        steps=1,
        guidance=GUIDANCE,
        metric_set=app_model.metric_set,
        out_dir=tmp_path,
        batch_size=2,
        latency_repeats=0,
        n_boot=20,
        show_bar=False,
        samples_per_cell=2,
    )
    assert len(batches) == 12  # 6 baseline batches + 6 of the pruned setting
    assert most_alive[0] <= 2, f"{most_alive[0]} earlier batches of images were still held (of {len(batches)})"
    stored = list((tmp_path / "cache").glob("*/baseline.npy"))
    assert len(stored) == 1
    on_disk = np.load(stored[0], mmap_mode="r")
    h, w = app_model.native
    assert on_disk.shape == (12, h, w, 3)
    assert set(res.table["setting"]) >= {"baseline", "L1 50%"}


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_two_sweeps_of_one_model_take_turns_and_each_gets_its_own_report(lab_app, monkeypatch):
    """APP_MODEL_CONCURRENCY > 1 lets Gradio run two sweeps at once: they share one work folder."""
    import compression.sweep as sweep_mod

    app, _ = lab_app
    inside, most = [0], [0]
    guard = threading.Lock()
    real = sweep_mod.run_sweep

    def counted(*args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.3)  # widen the window a missing lock would leave open
            return real(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(sweep_mod, "run_sweep", counted)
    grids = {"L1 10%": [0, 10], "L1 90%": [0, 90]}
    outputs, errors = {}, []

    def run(label, percents):
        try:
            outputs[label] = app.sweep(
                "tiny-shapes",
                percents,
                ["l1-unstructured"],
                ["fp32"],
                "grid",
                2,
                1,
                GUIDANCE,
                0,
                progress=lambda *a, **k: None,
            )
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))

    threads = [threading.Thread(target=run, args=item) for item in grids.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    assert most[0] == 1, "two sweeps ran in one work folder at once"
    for label, out in outputs.items():
        report = Path(out[3]).read_text(encoding="utf-8")
        other = next(k for k in grids if k != label)
        assert label in report and other not in report, f"the {label} sweep got another sweep's report"
        assert set(out[1]["setting"]) == {"baseline", label}  # the summary table


# ------------------------------------------------------------------------------------ numerical faults


@pytest.fixture
def overflowing_model(lab_app, app_model, monkeypatch):
    """The app's model with a residual stream near 1e6, served in place of the real one for one test, with fp16
    allowed on this CPU (it is offered on CUDA only, where Spaces would run it).

    conv_in's output is scaled so its largest value on random latents is ~1e6: every later block reads it
    through a GroupNorm, so fp32 draws a (different, finite) picture, while fp16 (largest number 65504)
    overflows to inf and then NaN: the mechanism behind real fp16 black images."""
    import app_service as svc

    app, url = lab_app
    pipe, _ = load_pipeline("tiny-shapes")  # a second copy: the shared baseline is never touched
    unet = pipe.unet
    with torch.no_grad():
        side = unet.config.sample_size
        latents = torch.randn(1, unet.config.in_channels, side, side, generator=torch.Generator().manual_seed(0))
        k = 1e6 / float(unet.conv_in(latents).abs().max())
        unet.conv_in.weight.mul_(k)
        unet.conv_in.bias.mul_(k)
    hot = svc.LoadedModel(
        app_model.name,
        Engine(pipe, app_model.name, cache_size=1),
        Engine(pipe, app_model.name, cache_size=1, baseline_cache_size=0),
        app_model.metric_set,
        app_model.native,
        app_model.device,
        "overflow-" + app_model.fingerprint,
    )
    monkeypatch.setitem(app.LAB._models, app_model.name, hot)
    monkeypatch.setitem(QUANT_MODES, "fp16", dataclasses.replace(QUANT_MODES["fp16"], check=lambda d: (True, "")))
    yield hot


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_overflow_to_nan_is_reported_not_scored_and_not_shown_as_a_picture(lab_app, overflowing_model):
    _, url = lab_app
    client = Client(url, verbose=False, download_files=False)
    ok = client.predict(
        api_name="/compare", prompt=PROMPT, seed=3, steps=STEPS, prune_percent=0, quant_mode="bf16"
    )  # the same model in bf16 (fp32's range): finite
    assert ok[DETAILS]["compressed_nonfinite"] is False and ok[DETAILS]["baseline_nonfinite"] is False
    out = client.predict(api_name="/compare", prompt=PROMPT, seed=3, steps=STEPS, prune_percent=30, quant_mode="fp16")
    details = out[DETAILS]
    assert details["compressed_nonfinite"] is True and details["baseline_nonfinite"] is False
    assert any("NaN/inf" in w for w in details["warnings"])
    nums = details["numbers"]
    assert nums["psnr_db"] is None and nums["ssim"] is None and nums["clip_compressed"] is None
    assert nums["clip_baseline"] is not None and math.isfinite(nums["clip_baseline"])  # the baseline is scored
    table = {row[0]: row[1:] for row in out[7]["data"]}
    assert table["PSNR vs baseline (dB)"][1] == "NaN/inf: not scored"
    assert next(v for k, v in table.items() if k.startswith("CLIP score"))[1] == "NaN/inf: not scored"
    assert "NaN/inf" in out[3]  # the caption
    shown = np.asarray(Image.open(io.BytesIO(httpx.get(out[1]["url"], timeout=10).content)).convert("RGB"))
    assert shown.max() > 0 and len(np.unique(shown.reshape(-1, 3), axis=0)) > 1  # the striped stand-in
    assert out[10]["data"][0][6] == "NaN/inf"  # the history's CLIP column
    quality = json.loads(out[13]["plot"])
    fp16 = [t for t in quality["data"] if t.get("legendgroup") == "fp16"]
    assert fp16 and all(
        y is None or (isinstance(y, float) and math.isnan(y)) for t in fp16 for y in _values(t.get("y"))
    ), "a NaN comparison was charted as a number"
    assert "not scored" in out[14]  # the note under the charts


def _values(y):
    if isinstance(y, dict) and "bdata" in y:  # Plotly's base64 typed arrays
        import base64

        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]).tolist()
    return list(y or [])


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_overflow_in_a_sweep_is_counted_and_left_out_of_every_score(lab_app, overflowing_model):
    _, url = lab_app
    client = Client(url, verbose=False, download_files=False)
    status, summary, csv, *_ = client.predict(
        api_name="/sweep",
        model="tiny-shapes",
        prune_percents=[0, 30],
        prune_methods=["l1-unstructured"],
        quant_modes=["fp32", "fp16"],
        study="grid",
        n_prompts=2,
        steps=STEPS,
        guidance=GUIDANCE,
        latency_repeats=0,
    )
    rows = {r[0]: dict(zip(summary["headers"], r)) for r in summary["data"]}
    assert set(rows) == {"baseline", "L1 30%", "fp16", "L1 30% + fp16"}
    for setting in ("fp16", "L1 30% + fp16"):
        assert rows[setting]["NaN/inf images"] == "2"
        for col in ("accuracy %", "CLIP score", "PSNR dB", "SSIM"):
            if col in rows[setting]:
                assert rows[setting][col] == "-", (setting, col, rows[setting][col])
    for setting in ("baseline", "L1 30%"):
        assert rows[setting]["NaN/inf images"] == "0"
        assert rows[setting]["CLIP score"] not in ("-", "")
    tidy = pd.read_csv(io.BytesIO(httpx.get(csv["url"], timeout=10).content))
    fp16 = tidy[tidy["setting"].isin(["fp16", "L1 30% + fp16"])]
    assert (fp16.loc[fp16["metric"] == "non-finite images", "value"] == 2).all()
    quality = fp16[fp16["metric"].str.startswith(("CLIP", "accuracy", "PSNR", "SSIM", "KID", "FD"))]
    assert quality["value"].isna().all() and (quality["n"] == 0).all(), quality[["setting", "metric", "value", "n"]]
    assert not fp16["metric"].str.startswith(("KID", "FD")).any()  # no distance from fewer than 2 images
