"""Metrics on known inputs: identical sets give FD ~ 0 and KID ~ 0, shifted sets clearly more; intervals carry N;
non-finite images are refused; the trained metric CLIP prefers the true caption."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_models import build_tiny_clip

from compression import metrics, world
from compression.spec import CompressionSpec

REPO = Path(__file__).resolve().parent.parent
TRAINED_CLIP = REPO / "assets" / "tiny-shapes-clip"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory, tokenizer_dir):
    return metrics.MetricClip(build_tiny_clip(tmp_path_factory.mktemp("clip"), tokenizer_dir), name="rand")


@pytest.fixture(scope="module")
def real_sets():
    """Two independent real sets of the same 48 prompts, and a colour-inverted copy of the first."""
    attrs, a = world.real_images(1, 48, "heldout")
    b = np.stack([np.asarray(world.render(x, 5000 + i)) for i, x in enumerate(attrs)])
    return attrs, a, b, 255 - a


def test_identical_sets_give_zero_distances_and_shifted_sets_do_not(tiny_clip, real_sets):
    _, a, b, shifted = real_sets
    feats = tiny_clip.feature_extractor()
    fa, fb, fs = (metrics.extract_features(feats, x) for x in (a, b, shifted))
    assert fa.shape == (48, 16) and fa.dtype == np.float64
    same = {e.metric: e for e in metrics.distance_estimates(fa, fa, feats.name, "real", n_boot=100)}
    floor = {e.metric: e for e in metrics.distance_estimates(fa, fb, feats.name, "real", n_boot=100)}
    far = {e.metric: e for e in metrics.distance_estimates(fa, fs, feats.name, "real", n_boot=100)}
    assert abs(same["FD-rand"].value) < 1e-6 and abs(same["KID-rand"].value) < 1e-9
    # A resample of identical pairs is still identical: the duplicate-aware KID stays exactly 0.
    assert abs(same["KID-rand"].ci_low) < 1e-9 and abs(same["KID-rand"].ci_high) < 1e-9
    assert far["FD-rand"].value > 5 * floor["FD-rand"].value > 0
    assert far["KID-rand"].value > floor["KID-rand"].ci_high
    assert far["KID-rand"].value > 100 * abs(floor["KID-rand"].value)
    for est in (*floor.values(), *far.values()):
        assert est.n == 48 and est.reference == "real"
    for est in (floor["KID-rand"], far["KID-rand"]):
        assert est.ci_low <= est.value <= est.ci_high
    # 48 images and 16 features: under 5 x 16, so FD says it should not be read, and spends nothing on an interval.
    assert metrics.fd_min_n(16) == 80 and "read KID" in far["FD-rand"].note and far["KID-rand"].note == ""
    assert math.isnan(far["FD-rand"].ci_low) and math.isnan(far["FD-rand"].ci_high)


def test_image_level_wrappers_match_feature_level(tiny_clip, real_sets):
    _, a, b, _ = real_sets
    feats = tiny_clip.feature_extractor()
    fd = metrics.frechet_distance(feats, a, b)
    assert fd == pytest.approx(
        metrics.frechet_distance_features(metrics.extract_features(feats, a), metrics.extract_features(feats, b))
    )
    mean, std = metrics.kernel_inception_distance(feats, a, b, subsets=20)
    assert std > 0  # subsets of half the set differ; subsets of the whole set would all be the same set
    assert metrics.kernel_inception_distance(feats, a, b, subsets=20) == (mean, std)  # seeded


def test_distance_estimates_refuse_mismatched_sets():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match="same size"):
        metrics.distance_estimates(x, x[:3], "f", "real")
    with pytest.raises(ValueError, match="at least 2"):
        metrics.distance_estimates(x[:1], x[:1], "f", "real")


def test_bootstrap_mean_reports_n_and_leaves_out_non_finite():
    value, lo, hi, n = metrics.bootstrap_mean([1.0, 2.0, 3.0, float("nan"), 4.0, float("inf")], n_boot=200)
    assert (value, n) == (2.5, 4) and lo <= value <= hi and lo >= 1.0 and hi <= 4.0
    assert math.isnan(metrics.bootstrap_mean([float("nan")])[0])
    est = metrics.mean_estimate("PSNR", [30.0, 32.0], reference="baseline", unit="dB")
    assert est.to_dict()["n"] == 2 and est.unit == "dB"


def test_non_finite_images_are_flagged_and_never_scored():
    images = np.full((3, 8, 8, 3), 0.5, dtype=np.float32)
    images[1, 0, 0, 0] = np.nan
    images[2, 3, 3, 1] = np.inf
    assert metrics.finite_mask(images).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="2 of 3 images hold NaN/inf"):
        metrics.as_uint8(images)
    assert metrics.as_uint8(images[:1]).dtype == np.uint8


def test_psnr_and_ssim_same_seed_pairs(real_sets):
    _, a, b, _ = real_sets
    same = metrics.psnr(a[:4], a[:4])
    assert np.allclose(same, metrics.psnr_cap_db(64, 64))  # identical: capped, finite
    assert np.allclose(metrics.ssim(a[:4], a[:4]), 1.0)
    noisy = np.clip(a[:4].astype(int) + np.random.default_rng(0).integers(-20, 21, a[:4].shape), 0, 255).astype(
        np.uint8
    )
    p, s = metrics.psnr(a[:4], noisy), metrics.ssim(a[:4], noisy)
    assert (p < 35).all() and (p > 20).all() and (s < 0.99).all()
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(a[:2], a[:3])


def test_prompt_following_reads_real_images_and_catches_wrong_ones(real_sets):
    attrs, a, _, _ = real_sets
    right = metrics.prompt_following(a, attrs)
    assert right["all"].mean() > 0.95
    wrong = [x.replace(position="on the left" if x.position != "on the left" else "on the right") for x in attrs]
    judged = metrics.prompt_following(a, wrong)
    assert not judged["position"].any() and not judged["all"].any() and judged["background"].mean() > 0.95


def test_measure_latency_skips_warmup_and_prefers_self_timed_seconds():
    calls = []

    def fn():
        calls.append(1)
        return 0.25 if len(calls) > 2 else 9.0  # the two warm-up calls are "slow"

    stats = metrics.measure_latency(fn, warmup=2, repeats=3)
    assert len(calls) == 5 and stats.times_s == (0.25, 0.25, 0.25) and stats.median_s == 0.25
    est = stats.estimate()
    assert (est.value, est.unit, est.n) == (250.0, "ms", 3)
    with pytest.raises(ValueError):
        metrics.measure_latency(fn, repeats=0)


def test_clip_score_range_and_one_text_per_image(tiny_clip, real_sets):
    attrs, a, _, _ = real_sets
    scores = tiny_clip.clip_score(a[:5], [world.caption(x) for x in attrs[:5]])
    assert scores.shape == (5,) and ((scores >= 0) & (scores <= 100)).all()
    with pytest.raises(ValueError, match="one text per image"):
        tiny_clip.clip_score(a[:5], ["x"])


def test_clip_score_clamps_each_image_then_averages(tiny_clip, real_sets):
    attrs, a, _, _ = real_sets
    wrong = [world.caption(x) for x in attrs[1:] + attrs[:1]]  # every image with another image's caption
    cos = tiny_clip.cosines(a, wrong)
    scores = tiny_clip.clip_score(a, wrong)
    assert np.allclose(scores, 100 * np.maximum(cos, 0))  # Hessel et al.'s CLIP-S, weight 100
    assert (cos < 0).any() and (cos > 0).any()  # so the two forms part:
    assert scores.mean() > max(100 * cos.mean(), 0)  # torchmetrics' CLIPScore clamps the mean instead


def test_dinov2_features_through_transformers():
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(
        Dinov2Config(
            hidden_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=28,
            patch_size=14,
        )
    )
    processor = BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    feats = metrics.HFImageFeatures(model, processor, "DINOv2-test")
    x = metrics.extract_features(feats, world.real_images(0, 3)[1])
    assert x.shape == (3, 24) and np.allclose(np.linalg.norm(x, axis=1), math.sqrt(24))


def test_inception_fid_is_gated_with_a_clear_message():
    ok, why = metrics.inception_available()
    if ok:
        pytest.skip("torch-fidelity is installed here")
    assert "torch-fidelity" in why
    with pytest.raises(ImportError, match="torch-fidelity"):
        metrics.InceptionFeatures()


def test_pair_row_for_the_history(tiny_pipe, tiny_clip):
    from compression.engine import Engine

    engine = Engine(tiny_pipe, "tiny-test", cache_size=1)
    result = engine.generate_pair(
        "a red circle on the left on a white background", 0, 2, 1.0, CompressionSpec(prune_amount=0.5)
    )
    row = metrics.pair_row(result, "a red circle on the left on a white background", tiny_clip)
    assert row["setting"] == "L1 50%" and row["prune_amount"] == 0.5 and row["clip_judge"] == "rand"
    assert 0 <= row["clip_compressed"] <= 100 and row["psnr_db"] > 0 and -1 <= row["ssim"] <= 1
    assert row["sparsity_pct"] > 40 and row["latency_ms"] > 0 and not row["nonfinite"]
    broken = dataclasses.replace(result, compressed_nonfinite=True)
    row = metrics.pair_row(broken, "a red circle on the left on a white background", tiny_clip)
    assert row["nonfinite"] and math.isnan(row["clip_compressed"]) and math.isnan(row["psnr_db"])
    assert not math.isnan(row["clip_baseline"])


@pytest.mark.skipif(
    not TRAINED_CLIP.is_dir(), reason="assets/tiny-shapes-clip (the trained metric CLIP) is not built yet"
)
def test_trained_clip_scores_the_true_caption_higher():
    judge = metrics.MetricClip(TRAINED_CLIP)
    attrs, images = world.real_images(3, 24, "heldout")
    true = judge.clip_score(images, [world.caption(a) for a in attrs])
    swapped = [a.replace(shape=world.SHAPES[(world.SHAPES.index(a.shape) + 1) % 3]) for a in attrs]
    wrong = judge.clip_score(images, [world.caption(a) for a in swapped])
    won = (true > wrong).mean()
    assert won >= 0.9 and true.mean() > wrong.mean() + 2, (
        f"the metric CLIP prefers the true caption for only {won:.0%} of real images: "
        f"is {TRAINED_CLIP} the trained model?"
    )


def test_interleaved_latency_pairs_rounds_and_gives_a_speedup():
    order = []

    def make(name, seconds):
        def fn():
            order.append(name)
            return seconds

        return fn

    stats = metrics.measure_latency_interleaved(
        {"base": make("base", 0.4), "fast": make("fast", 0.1)}, warmup=1, repeats=4
    )
    assert order == [
        "base",
        "fast",
        "base",
        "fast",
        "fast",
        "base",
        "base",
        "fast",
        "fast",
        "base",
    ]  # warm-ups, then a-b, b-a, ...
    assert stats["base"].times_s == (0.4,) * 4 and stats["fast"].median_s == 0.1
    est = metrics.speedup_estimate(stats["base"], stats["fast"])
    assert est.value == pytest.approx(4.0) and est.n == 4 and est.unit == "x" and est.higher_is_better
