"""Memory in bytes: sizes worked out before building, one byte budget over a model's caches, refusals with reasons.

On the shared test UNet (~1.4M parameters): the estimate equals the built UNet's measured bytes for every mode this
device runs, with and without structured pruning; a cache shared by a Compare and a sweep engine stays within its
budget over a sequence of distinct settings, evicts least recently used first and frees what it evicts; a
setting larger than the budget is refused before any work, by the engine and by the real app's checks.
SD-1.5-sized figures (RSS against the budget) come from tests/test_sd15_e2e.py.
"""

from __future__ import annotations

import gc
import weakref

import pytest
from conftest import PROMPT, STEPS

import compression.engine as engine_module
from compression import QUANT_MODES, CompressionSpec, Engine, available_quant_modes, module_cost
from compression.budget import BudgetError, cache_budget, estimate_bytes
from compression.unet_cache import UNetCache

MODES = available_quant_modes("cpu")


def _spec(mode: str, **kw) -> CompressionSpec:
    return CompressionSpec(quant_mode=mode, bits=4 if QUANT_MODES[mode].uses_bits else None, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_estimate_is_the_built_unets_measured_bytes(tiny_pipe, mode):
    for spec in (_spec(mode, prune_amount=0.3), _spec(mode, prune_amount=0.4, prune_method="l1-structured-channels")):
        engine = Engine(tiny_pipe, "tiny-test", cache_size=0)
        estimate = estimate_bytes(tiny_pipe.unet, spec)
        built, _ = engine.compress(spec)
        assert estimate == module_cost(built.unet).bytes, spec.label
    assert estimate < module_cost(tiny_pipe.unet).bytes  # structured pruning shrinks what any mode stores
    assert estimate_bytes(tiny_pipe.unet, CompressionSpec()) == 0  # identity: the baseline's own UNet


def test_shared_cache_stays_in_budget_lru_first_out_and_frees_evictions(tiny_pipe):
    fp32 = module_cost(tiny_pipe.unet).bytes
    cache = UNetCache(max_bytes=int(1.3 * fp32))
    compare = Engine(tiny_pipe, "tiny-test", cache_size=None, cache=cache)
    sweeps = Engine(tiny_pipe, "tiny-test", cache_size=1, baseline_cache_size=0, cache=cache, pool="sweep")
    int8, bf16, int4 = _spec("int8-weight"), _spec("bf16"), _spec("int4-weight")
    refs = {}
    for spec in (int8, bf16, int4):  # 0.26 + 0.5 + 0.16 of fp32: all three fit
        refs[spec] = weakref.ref(compare.compress(spec)[0].unet)
    assert compare.cached_specs() == [int8, bf16, int4] and cache.used_bytes <= cache.max_bytes
    compare.compress(int8)  # a hit: now the most recently used
    assert compare.cached_specs() == [bf16, int4, int8]

    l1 = CompressionSpec(0.3)  # fp32-sized: only room once bf16 and int4 (least recently used) are gone
    sweeps.compress(l1)
    assert cache.used_bytes <= cache.max_bytes
    assert compare.cached_specs() == [int8] and sweeps.cached_specs() == [l1]
    gc.collect()
    assert refs[bf16]() is None and refs[int4]() is None, "evicted UNets are still alive"

    sweeps.compress(_spec("int8-dynamic"))  # the sweeps keep one UNet: theirs is replaced, Compare's kept
    assert sweeps.cached_specs() == [_spec("int8-dynamic")] and int8 in compare.cached_specs()
    assert cache.used_bytes <= cache.max_bytes


def test_a_setting_that_cannot_fit_alone_is_refused_before_any_work(tiny_pipe, monkeypatch):
    built = []
    real = engine_module.build_compressed
    monkeypatch.setattr(engine_module, "build_compressed", lambda *a, **k: built.append(1) or real(*a, **k))
    fp32 = module_cost(tiny_pipe.unet).bytes
    engine = Engine(tiny_pipe, "tiny-test", cache=UNetCache(max_bytes=fp32 // 2))
    with pytest.raises(BudgetError, match=r"L1 30%: its compressed UNet would hold about .* MiB budget for the UNets"):
        engine.generate_pair(PROMPT, 0, STEPS, 4.0, CompressionSpec(0.3))
    assert built == [] and engine.cache.used_bytes == 0
    assert engine.generate_pair(PROMPT, 0, STEPS, 4.0, _spec("int8-weight")).compressed_cost.bytes < fp32 // 2
    assert built == [1]


def test_budget_comes_from_the_env_or_the_memory_left(monkeypatch):
    monkeypatch.setenv("APP_CACHE_MB", "300")
    assert cache_budget("cpu") == (300 * 2**20, "300 MiB set by APP_CACHE_MB")
    monkeypatch.setenv("APP_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="APP_CACHE_MB must be a number"):
        cache_budget("cpu")
    monkeypatch.delenv("APP_CACHE_MB")
    budget, note = cache_budget("cpu")
    assert 0 < budget and "40% of the" in note and "available after loading the model" in note


def test_the_app_refuses_a_setting_over_the_budget_with_its_size(lab_app):
    from gradio_client import Client
    from gradio_client.exceptions import ValidationError

    app, url = lab_app
    cache = app.LAB.get("tiny-shapes").cache
    fp32 = app.LAB.get("tiny-shapes").engine.baseline_cost.bytes
    saved, cache.max_bytes = cache.max_bytes, fp32 // 2
    try:
        client = Client(url, verbose=False, download_files=False)
        with pytest.raises(ValidationError, match=r"(?s)L1 30%: its compressed UNet would hold about.*APP_CACHE_MB"):
            client.predict(prompt=PROMPT, steps=1, prune_percent=30, quant_mode="fp32", api_name="/compare")
        out = client.predict(prompt=PROMPT, steps=1, prune_percent=30, quant_mode="int8-weight", api_name="/compare")
        assert out[9]["numbers"]["unet_mb"] * 2**20 < fp32 // 2
    finally:
        cache.max_bytes = saved
