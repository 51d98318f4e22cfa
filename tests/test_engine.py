"""Engine: the baseline never changes, caches are bounded and free memory, pairs are same-seed and honest."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
from conftest import PROMPT, STEPS
from torch import nn

from compression import CompressionSpec, Engine, quantization, state_dict_digest
from compression.quantization import QuantMode

SPECS = [
    CompressionSpec(0.3),
    CompressionSpec(0.5, "random-unstructured", quant_mode="bf16"),
    CompressionSpec(0.3, quant_mode="int8-weight"),
    CompressionSpec(quant_mode="int8-dynamic"),
    CompressionSpec(0.9, "l1-unstructured-layer", "no-io", "int4-weight"),
    CompressionSpec(quant_mode="simulated-int", bits=3),
]


def _pair(engine, spec=None, **kw):
    args = dict(prompt=PROMPT, seed=0, steps=STEPS, guidance=5.0, spec=spec)
    args.update(kw)
    return engine.generate_pair(**args)


def _px(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.fixture
def engine(tiny_pipe):
    return Engine(tiny_pipe, "tiny-test", cache_size=2)


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_baseline_never_changes(tiny_pipe):
    digest = state_dict_digest(tiny_pipe.unet)
    others = {n: state_dict_digest(getattr(tiny_pipe, n)) for n in ("vae", "text_encoder")}
    scheduler_config = dict(tiny_pipe.scheduler.config)
    before = _pair(Engine(tiny_pipe, "tiny-test"), CompressionSpec()).baseline_image
    engine = Engine(tiny_pipe, "tiny-test", cache_size=2)
    for spec in SPECS + SPECS[:2]:
        _pair(engine, spec)
    assert state_dict_digest(tiny_pipe.unet) == digest
    assert {n: state_dict_digest(getattr(tiny_pipe, n)) for n in others} == others
    assert dict(tiny_pipe.scheduler.config) == scheduler_config
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in tiny_pipe.unet.modules())
    after = _pair(Engine(tiny_pipe, "tiny-test"), CompressionSpec()).baseline_image  # redrawn, not cached
    assert np.array_equal(_px(before), _px(after))


def test_identity_spec_draws_the_baseline(engine):
    r = _pair(engine, CompressionSpec())
    assert np.array_equal(_px(r.baseline_image), _px(r.compressed_image))
    assert r.compression_seconds == 0.0 and r.compressed_cost == r.baseline_cost


def test_same_request_twice_gives_the_same_images(tiny_pipe):
    # Fresh generator and scheduler copy per image: a second, uncached run matches the first exactly.
    a = _pair(Engine(tiny_pipe, "tiny-test", cache_size=0, baseline_cache_size=0), SPECS[0])
    b = _pair(Engine(tiny_pipe, "tiny-test", cache_size=0, baseline_cache_size=0), SPECS[0])
    assert not a.baseline_cached and not b.baseline_cached
    assert np.array_equal(_px(a.baseline_image), _px(b.baseline_image))
    assert np.array_equal(_px(a.compressed_image), _px(b.compressed_image))


def test_pair_result_reports_costs_and_caching(engine):
    spec = CompressionSpec(0.3, quant_mode="int8-weight")
    first = _pair(engine, spec)
    assert first.compression_seconds > 0 and not first.compression_cached and not first.baseline_cached
    assert first.baseline_seconds > 0 and first.compressed_seconds > 0
    assert first.spec == spec and first.steps == STEPS and (first.height, first.width) == (32, 32)
    assert first.compressed_cost.bytes <= 0.3 * first.baseline_cost.bytes
    assert first.compressed_cost.params == first.baseline_cost.params
    assert abs(first.prune_report.sparsity - 0.3) <= 0.005
    assert abs(first.compressed_cost.sparsity - 0.3) <= 0.005  # measured on the int8 weights themselves
    assert first.baseline_cost.sparsity == 0.0
    assert not (first.prompt_truncated or first.compressed_nonfinite or first.baseline_nonfinite)
    assert first.baseline_image.size == first.compressed_image.size == (32, 32)
    assert not np.array_equal(_px(first.baseline_image), _px(first.compressed_image))

    again = _pair(engine, spec)  # same everything: both caches hit
    assert again.compression_seconds == 0.0 and again.compression_cached and again.baseline_cached
    assert np.array_equal(_px(again.compressed_image), _px(first.compressed_image))
    assert again.baseline_seconds == first.baseline_seconds  # the latency measured when it was drawn

    moved = _pair(engine, CompressionSpec(0.5))  # a slider moved: the baseline is not redrawn
    assert moved.baseline_cached and not moved.compression_cached
    assert np.array_equal(_px(moved.baseline_image), _px(first.baseline_image))
    assert not _pair(engine, spec, seed=1).baseline_cached  # a new seed is a new baseline


def test_lru_is_bounded_and_frees_evicted_unets(tiny_pipe):
    engine = Engine(tiny_pipe, "tiny-test", cache_size=2)
    entry, cached = engine.compress(SPECS[0])
    assert not cached
    first = weakref.ref(entry.unet)
    del entry
    for spec in SPECS[1:4]:
        engine.compress(spec)
        assert len(engine.cached_specs()) <= 2
    assert engine.cached_specs() == SPECS[2:4]
    gc.collect()
    assert first() is None, "the evicted UNet is still alive"
    engine.compress(SPECS[2])  # a hit moves it to the most recent end
    assert engine.cached_specs() == [SPECS[3], SPECS[2]]


def test_zero_cache_keeps_nothing(tiny_pipe):
    engine = Engine(tiny_pipe, "tiny-test", cache_size=0, baseline_cache_size=0)
    r = _pair(engine, SPECS[0])
    assert engine.cached_specs() == [] and r.compression_seconds > 0
    assert not _pair(engine, SPECS[0]).baseline_cached


@pytest.fixture
def nan_mode():
    # A real UNet whose weights are NaN, registered like any mode (specs validate against the live registry).
    def poison_(module: nn.Module, bits):
        module.conv_out.weight.data.fill_(float("nan"))
        return module

    quantization.QUANT_MODES["nan-test"] = QuantMode("nan-test", "nan", "test only: NaN weights", poison_)
    yield "nan-test"
    del quantization.QUANT_MODES["nan-test"]


def test_nonfinite_output_is_reported_not_hidden(engine, nan_mode):
    r = _pair(engine, CompressionSpec(quant_mode=nan_mode))
    assert r.compressed_nonfinite and not r.baseline_nonfinite
    assert _px(r.compressed_image).max() == 0  # shown black, and flagged


def test_long_prompt_is_flagged(engine):
    long = " ".join(["a red circle on the left"] * 20)
    r = _pair(engine, CompressionSpec(), prompt=long, negative_prompt="a blue square")
    assert r.prompt_truncated and not r.negative_prompt_truncated
    assert _pair(engine, CompressionSpec(), negative_prompt=long).negative_prompt_truncated


def test_progress_is_reported_in_order(engine):
    seen = []
    _pair(engine, SPECS[0], progress=lambda fraction, text: seen.append((fraction, text)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0.0 <= fractions[0]
    assert any("baseline" in t for _, t in seen) and any("L1 30%" in t for _, t in seen)


def test_guidance_off_and_negative_prompt(engine):
    off = _pair(engine, SPECS[0], guidance=1.0)
    neg = _pair(engine, SPECS[0], negative_prompt="a blue square at the top on a black background")
    plain = _pair(engine, SPECS[0])
    assert not np.array_equal(_px(off.baseline_image), _px(plain.baseline_image))
    assert not np.array_equal(_px(neg.baseline_image), _px(plain.baseline_image))


def test_size_is_honoured(engine):
    r = _pair(engine, SPECS[0], height=48, width=24)
    assert r.baseline_image.size == r.compressed_image.size == (24, 48)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "1 to 150"),
        ({"steps": 151}, "1 to 150"),
        ({"steps": 2.5}, "1 to 150"),
        ({"guidance": float("nan")}, "0 to 30"),
        ({"guidance": float("inf")}, "0 to 30"),
        ({"guidance": -1.0}, "0 to 30"),
        ({"guidance": 30.5}, "0 to 30"),
        ({"seed": -1}, "4294967295"),
        ({"seed": 2**32}, "4294967295"),
        ({"seed": 1.5}, "4294967295"),
        ({"height": 30}, "multiple of 8"),
        ({"width": 2048}, "multiple of 8 from 8 to 1024"),
        ({"height": 0}, "multiple of 8"),
        ({"prompt": None}, "prompt must be text"),
        ({"negative_prompt": 3}, "negative_prompt must be text"),
        ({"spec": "L1 30%"}, "CompressionSpec"),
    ],
)
def test_bad_arguments_name_the_range(engine, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _pair(engine, **{"spec": SPECS[0], **kwargs})
    assert engine.cached_specs() == []  # rejected before any work


def test_bad_cache_size(tiny_pipe):
    with pytest.raises(ValueError, match=">= 0"):
        Engine(tiny_pipe, "tiny-test", cache_size=-1)


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_concurrent_requests_match_sequential_ones(tiny_pipe):
    specs = [SPECS[0], SPECS[2], SPECS[3]]
    sequential = [_pair(Engine(tiny_pipe, "tiny-test"), s) for s in specs]
    engine = Engine(tiny_pipe, "tiny-test", cache_size=3)
    results: dict[int, object] = {}

    def work(i):
        results[i] = _pair(engine, specs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, seq in enumerate(sequential):
        assert np.array_equal(_px(results[i].compressed_image), _px(seq.compressed_image))
        assert np.array_equal(_px(results[i].baseline_image), _px(seq.baseline_image))
