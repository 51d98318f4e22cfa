"""End to end through the API: gradio_client against the real app (app.py) on the embedded tiny model.

The server runs in this process (`lab_app` in conftest.py, launched with prevent_thread_lock=True), so a test can
also look at the app's engine. Each Client is its own browser session (its own history).

/compare returns, in order: baseline image, compressed image, their captions, the slider pair, the difference
heatmap, its caption, the numbers table, the status line, the details JSON, the history table, the history
CSV, the two history charts and their notes (see README "API").
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from app_args import compare_args
from gradio_client import Client
from gradio_client.exceptions import AppError, ValidationError
from PIL import Image

# gradio's own queue code trips pandas 3 deprecation warnings on every event: not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:gradio.*", "ignore::FutureWarning:gradio.*", "ignore:.*:Warning:gradio.queueing"
)

PROMPT = "a red circle on the left on a blue background"
FAST = dict(steps=4)  # enough to exercise every path; the default (20 steps) is timed once

(
    BASELINE,
    COMPRESSED,
    BASE_CAPTION,
    COMP_CAPTION,
    SLIDER,
    HEATMAP,
    HEAT_CAPTION,
    NUMBERS,
    STATUS,
    DETAILS,
    HISTORY,
    HISTORY_CSV,
    COST_PLOT,
    QUALITY_PLOT,
    CHART_NOTES,
) = range(15)


@pytest.fixture(scope="module")
def client(lab_app):
    _, url = lab_app
    return Client(url, verbose=False)


def compare(client: Client, **kwargs):
    return client.predict(api_name="/compare", **kwargs)


def numbers(out) -> dict[str, list[str]]:
    table = out[NUMBERS]
    return {row[0]: row[1:] for row in table["data"]}


def plotly_json(plot) -> dict:
    assert plot["type"] == "plotly"
    return json.loads(plot["plot"])


def test_api_has_named_endpoints_only(client):
    assert set(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == {
        "/compare",
        "/compare_distilled",
        "/sweep",
        "/export",
    }


def test_compare_at_defaults_returns_pair_numbers_and_plots(client):
    start = time.perf_counter()
    out = compare(client)  # every input at its default: what a first visitor gets
    seconds = time.perf_counter() - start
    assert seconds < 10, f"a comparison at default settings took {seconds:.1f} s (must stay under 10 s)"

    base, comp = Image.open(out[BASELINE]), Image.open(out[COMPRESSED])
    assert base.size == comp.size == (64, 64) and base.format == comp.format == "PNG"  # lossless: pixels compared
    assert [Image.open(p).size for p in out[SLIDER]] == [(64, 64), (64, 64)]
    assert Image.open(out[HEATMAP]).size == (64, 64)
    assert "Baseline" in out[BASE_CAPTION] and " ms" in out[BASE_CAPTION]
    assert "L1 30%" in out[COMP_CAPTION] and "× baseline" in out[COMP_CAPTION]

    nums = numbers(out)
    assert math.isfinite(float(nums["PSNR vs baseline (dB)"][1]))
    assert 0 <= float(nums["SSIM vs baseline (0-1)"][1]) <= 1
    assert float(nums["UNet size (MB)"][0]) > 0 and nums["UNet size (MB)"][2] == "1.00x"  # masked: no smaller
    assert 29 <= float(nums["measured sparsity, whole UNet (%)"][1]) <= 31
    assert any(k.startswith("CLIP score (tinyCLIP") for k in nums)
    step = next(v for k, v in nums.items() if k.startswith("denoising step, warm (ms; median of 8 alternating rounds"))
    assert float(step[1]) > 0 and "x [" in step[2]  # timed warm, the ratio with its interval
    assert float(nums["drawing this image (ms, whole loop)"][1]) > 0

    details = out[DETAILS]
    assert details["spec"] == {
        "prune_amount": 0.3,
        "prune_method": "l1-unstructured",
        "prune_scope": "all",
        "quant_mode": "fp32",
        "bits": None,
        "seed": 0,
    }
    assert (details["seed"], details["steps"], details["guidance"], details["height"]) == (42, 20, 4.0, 64)
    assert len(details["baseline_sha256"]) == 64 and details["numbers"]["psnr_db"] > 0

    for plot in (out[COST_PLOT], out[QUALITY_PLOT]):
        fig = plotly_json(plot)
        assert fig["data"], "the history chart has no trace"
    cost = plotly_json(out[COST_PLOT])
    assert "ms" in json.dumps(cost["layout"]) and "MB" in json.dumps(cost["layout"])  # units on the axes
    assert "no speed-up" in out[CHART_NOTES]  # masked pruning: said plainly under the charts


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_baseline_and_compressed_unet_come_from_cache(client, lab_app):
    app, _ = lab_app
    engine = app.LAB.get("tiny-shapes").engine
    first = compare(client, prompt=PROMPT, seed=7, prune_percent=20, **FAST)
    assert first[DETAILS]["baseline_cached"] is False and "baseline drawn now" in first[STATUS]
    assert "compressed UNet built now" in first[STATUS]

    second = compare(client, prompt=PROMPT, seed=7, prune_percent=55, **FAST)  # only the slider moved
    assert second[DETAILS]["baseline_cached"] is True
    assert "baseline from cache" in second[STATUS]
    assert second[DETAILS]["baseline_sha256"] == first[DETAILS]["baseline_sha256"]
    assert second[DETAILS]["spec"]["prune_amount"] == 0.55
    assert "(cached)" in numbers(second)["drawing this image (ms, whole loop)"][0]

    compressions = len(engine.cached_specs())
    third = compare(client, prompt=PROMPT, seed=7, prune_percent=20, **FAST)  # back to the first setting
    assert third[DETAILS]["compression_cached"] is True and "compressed UNet from cache" in third[STATUS]
    assert numbers(third)["compression time (s)"][1] == "cached"
    assert third[DETAILS]["compressed_sha256"] == first[DETAILS]["compressed_sha256"]
    assert len(engine.cached_specs()) == compressions  # nothing was recompressed


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_history_per_session_charted_and_downloadable_as_csv(lab_app):
    _, url = lab_app
    session = Client(url, verbose=False)  # a new visitor: a history of its own
    a = compare(session, prompt=PROMPT, seed=11, prune_percent=0, **FAST)
    assert len(a[HISTORY]["data"]) == 1
    b = compare(session, prompt=PROMPT, seed=11, prune_percent=60, quant_mode="int8-weight", **FAST)
    assert len(b[HISTORY]["data"]) == 2
    assert b[HISTORY]["data"][0][1] == "L1 60% + int8 weights"  # newest first

    csv = pd.read_csv(b[HISTORY_CSV])
    assert len(csv) == 2
    assert list(csv["setting"]) == ["baseline", "L1 60% + int8 weights"]
    assert {
        "prune_amount",
        "quant_mode",
        "psnr_db",
        "ssim",
        "clip_compressed",
        "unet_mb",
        "latency_ms",
        "sparsity_pct",
        "model",
    } <= set(csv.columns)
    assert csv["unet_mb"].iloc[1] < 0.5 * csv["unet_mb"].iloc[0]  # int8 weights: about a quarter of fp32
    assert csv["psnr_db"].iloc[1] == pytest.approx(b[DETAILS]["numbers"]["psnr_db"])

    quality = plotly_json(b[QUALITY_PLOT])
    modes = {t.get("legendgroup") for t in quality["data"]}
    assert {"fp32", "int8-weight"} <= modes  # one line per quantization mode


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_bits_are_passed_only_to_the_simulated_mode(client):
    out = compare(client, prompt=PROMPT, prune_percent=0, quant_mode="int8-weight", bits=3, **FAST)
    assert out[DETAILS]["spec"]["bits"] is None
    out = compare(client, prompt=PROMPT, prune_percent=0, quant_mode="simulated-int", bits=3, **FAST)
    assert out[DETAILS]["spec"]["bits"] == 3 and "int3" in out[DETAILS]["setting"]
    assert "Simulated quantization" in out[STATUS]


BAD = [  # (arguments, the parameter named in the error, the message)
    (dict(prompt="   "), "prompt", "prompt is empty"),
    (dict(prompt="x" * 10_000), "prompt", "at most 1000 characters"),
    (dict(seed=-1), "seed", "seed must be a whole number from 0 to 4294967295"),
    (dict(seed=3.5), "seed", "seed must be a whole number from 0 to 4294967295"),
    (dict(steps=0), "steps", "steps must be a whole number from 1 to 100"),
    (dict(guidance=-1), "guidance", "guidance must be a number from 0 to 20"),
    (dict(prune_percent=100), "prune_percent", "pruning must be a number from 0 to 95%"),
    (dict(quant_mode="<script>alert(1)</script>"), "quant_mode", "unknown quantization mode; choose one of: fp32"),
    (
        dict(prune_method="<img src=x onerror=alert(1)>"),
        "prune_method",
        "unknown pruning method; choose one of: l1-unstructured",
    ),
    (dict(model="../../etc/passwd"), "model", "unknown model; choose one of: tiny-shapes"),
    (dict(height=65), "height", "height must be a multiple of 8 from 32 to 128"),
    (dict(quant_mode="simulated-int", bits=9), "bits", "bits must be a whole number from 2 to 8"),
]


@pytest.mark.parametrize("kwargs, field, message", BAD, ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(BAD)])
def test_bad_input_is_refused_before_the_queue_with_a_plain_message(client, kwargs, field, message):
    start = time.perf_counter()
    with pytest.raises(ValidationError) as caught:  # Gradio's validator: refused before joining the queue
        compare(client, **{"prompt": PROMPT, **FAST, **kwargs})
    assert time.perf_counter() - start < 5
    text = str(caught.value)
    assert message in text and f"- {field}:" in text  # the parameter at fault is named
    assert "<" not in text and "Traceback" not in text  # never the raw input, never a stack trace


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_bad_input_is_refused_at_once_while_the_queue_is_busy(lab_app, client):
    _, url = lab_app
    other = Client(url, verbose=False)
    busy = other.submit(prompt=PROMPT, seed=99, steps=30, prune_percent=10, api_name="/compare")  # holds the queue
    time.sleep(0.3)
    start = time.perf_counter()
    with pytest.raises(ValidationError, match="steps must be a whole number from 1 to 100"):
        compare(client, prompt=PROMPT, steps=10_000)
    assert time.perf_counter() - start < 2
    assert busy.result()[DETAILS]["steps"] == 30


def test_the_handler_checks_again_without_the_validator(lab_app):
    import gradio as gr

    app, _ = lab_app
    for bad in (dict(prompt=""), dict(seed=3.5), dict(guidance=float("nan")), dict(prune_percent=float("inf"))):
        args = compare_args(**{"prompt": PROMPT, "history": [], **bad})
        with pytest.raises(gr.Error):
            app.compare(**args, progress=lambda *a, **k: None)


def test_a_model_that_cannot_load_gets_a_plain_error(client):
    from huggingface_hub.constants import HF_HUB_CACHE

    if any(Path(HF_HUB_CACHE).glob("models--stable-diffusion-v1-5*")):
        pytest.skip("SD 1.5 is in the local hub cache: this test needs a model that cannot load")
    start = time.perf_counter()
    with pytest.raises(AppError, match="could not load sd-1.5 from the Hugging Face hub"):  # offline (conftest)
        compare(client, prompt=PROMPT, model="sd-1.5", **FAST)
    assert time.perf_counter() - start < 10


def test_after_bad_input_the_next_request_succeeds(client):
    with pytest.raises(ValidationError):
        compare(client, prompt="", **FAST)
    out = compare(client, prompt=PROMPT, **FAST)
    assert Image.open(out[COMPRESSED]).size == (64, 64)


def test_long_prompt_warns_and_still_runs(client):
    long_prompt = " ".join([PROMPT] * 9)  # ~90 CLIP tokens, well under the 1000-character limit
    out = compare(client, prompt=long_prompt, **FAST)
    assert out[DETAILS]["prompt_truncated"] is True
    assert any("77 tokens" in w for w in out[DETAILS]["warnings"]) and "77 tokens" in out[STATUS]
    assert Image.open(out[BASELINE]).size == (64, 64)


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_nonfinite_output_is_shown_as_such_and_not_scored(client, lab_app, monkeypatch):
    import dataclasses

    app, _ = lab_app
    engine = app.LAB.get("tiny-shapes").engine
    real = engine.generate_pair

    def broken(*args, **kwargs):  # what 95% pruning + 2-bit weights can do to a trained model
        return dataclasses.replace(real(*args, **kwargs), compressed_nonfinite=True)

    monkeypatch.setattr(engine, "generate_pair", broken)
    out = compare(client, prompt=PROMPT, seed=5, prune_percent=95, quant_mode="simulated-int", bits=2, **FAST)
    assert out[DETAILS]["compressed_nonfinite"] is True
    assert any("NaN/inf" in w for w in out[DETAILS]["warnings"])
    nums = numbers(out)
    assert nums["PSNR vs baseline (dB)"][1] == "NaN/inf: not scored"
    assert out[DETAILS]["numbers"]["psnr_db"] is None and out[DETAILS]["numbers"]["clip_compressed"] is None
    shown = Image.open(out[COMPRESSED])
    pixels = np.asarray(shown.convert("RGB")).reshape(-1, 3)
    assert shown.size[0] >= 64 and len(np.unique(pixels, axis=0)) > 1  # the striped stand-in, not a black square
    assert "NaN/inf" in out[COMP_CAPTION]
    assert out[HISTORY]["data"][0][6] == "NaN/inf"  # the history's CLIP column says so too


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_sweep_returns_table_csv_report_and_charts(client):
    out = client.predict(
        model="tiny-shapes",
        prune_percents=[0, 50],
        prune_methods=["l1-unstructured"],
        quant_modes=["fp32"],
        study="grid",
        n_prompts=3,
        steps=2,
        guidance=4,
        latency_repeats=1,
        api_name="/sweep",
    )
    status, table, csv, report, *plots = out
    assert "2 settings × 3 prompts" in status and "N=3" in status
    rows = {r[0]: r for r in table["data"]}
    assert set(rows) == {"baseline", "L1 50%"}
    assert "KID vs baseline" in table["headers"] and "latency ms" in table["headers"]

    tidy = pd.read_csv(csv)
    assert {"setting", "metric", "reference", "value", "ci_low", "ci_high", "n", "unit"} <= set(tidy.columns)
    assert (tidy.loc[tidy["metric"] == "PSNR", "n"] == 3).all()
    assert "<html" in open(report, encoding="utf-8").read(2000).lower()

    assert len(plots) == 9
    figures = [plotly_json(p) for p in plots]
    clip = figures[1]
    assert clip["data"] and "N=3" in json.dumps(clip)  # quality vs pruning, N shown
    assert figures[5]["data"] and "ms" in json.dumps(figures[5]["layout"])  # latency bars with units
    assert any(t.get("name", "").startswith("Pareto front") for t in figures[7]["data"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_prompts=0), "prompts must be a whole number from 1 to 200"),
        (dict(prune_percents=[]), "choose at least one pruning percentage"),
        (
            dict(
                prune_percents=[0, 10, 20, 30, 40, 50, 60],
                prune_methods=["l1-unstructured", "random-unstructured"],
                quant_modes=["fp32", "int8-weight"],
            ),
            "the app runs at most 24 per sweep",
        ),
        (dict(prune_percents=list(range(0, 96, 5))), "choose at most 14 pruning percentages"),
        (
            dict(prune_percents=[0, 30, 60], n_prompts=200, quant_modes=["fp32", "bf16", "int8-weight"]),
            "the app draws at most 1200 per sweep",
        ),
        (dict(study="layer-sensitivity", prune_percents=[0]), "needs a pruning percentage above 0"),
    ],
)
def test_sweep_refuses_grids_over_the_limits(client, kwargs, message):
    base = dict(
        model="tiny-shapes",
        prune_percents=[0, 30],
        prune_methods=["l1-unstructured"],
        quant_modes=["fp32"],
        study="grid",
        n_prompts=4,
        steps=2,
        guidance=4,
        latency_repeats=0,
    )
    with pytest.raises(ValidationError, match=message):
        client.predict(api_name="/sweep", **{**base, **kwargs})


def test_layer_sensitivity_grid_prunes_one_part_at_a_time(lab_app):
    import app_service as svc

    app, _ = lab_app
    req = svc.parse_sweep(
        app.LAB,
        "tiny-shapes",
        [0, 50],
        ["l1-unstructured", "random-unstructured"],
        ["int8-weight"],
        "layer-sensitivity",
        8,
        20,
        4.0,
        3,
    )
    assert req.layer_study and len(req.specs) == 1 + len(svc.LAYER_SCOPES)
    pruned = req.specs[1:]
    assert {s.prune_scope for s in pruned} == set(svc.LAYER_SCOPES)
    assert {(s.prune_amount, s.prune_method, s.quant_mode) for s in pruned} == {(0.5, "l1-unstructured", "fp32")}
