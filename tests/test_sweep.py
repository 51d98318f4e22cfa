"""Sweeps end to end on the tiny real pipeline: batched drawing, CSV/JSON/HTML outputs, resumption, limits."""

from __future__ import annotations

import numpy as np
import pytest

from compression.engine import Engine, state_dict_digest
from compression.spec import CompressionSpec

PROMPTS = ["a red circle on the left on a white background", "a blue square at the top on a black background"]


@pytest.fixture(scope="module")
def engine(tiny_pipe):
    return Engine(tiny_pipe, "tiny-test", cache_size=2)


def test_generate_batch_matches_single_drawing_and_leaves_the_baseline_alone(engine, tiny_pipe):
    digest = state_dict_digest(tiny_pipe.unet)
    spec = CompressionSpec(prune_amount=0.5)
    one = engine.generate_batch(PROMPTS[:1], [3], 2, 2.0, spec)
    pair = engine.generate_pair(PROMPTS[0], 3, 2, 2.0, spec)
    assert np.array_equal(one.images[0], np.asarray(pair.compressed_image))  # same noise, same result
    two = engine.generate_batch(PROMPTS, [3, 4], 2, 2.0, spec)
    assert two.images.shape == (2, 32, 32, 3) and two.images.dtype == np.uint8
    assert np.abs(two.images[0].astype(int) - one.images[0]).max() <= 2  # batching changes last bits only
    assert not two.nonfinite.any() and two.cost.sparsity > 0.4 and two.seconds > 0
    assert state_dict_digest(tiny_pipe.unet) == digest
    with pytest.raises(ValueError, match="one seed per prompt"):
        engine.generate_batch(PROMPTS, [1], 2, 2.0, spec)


def test_layer_sensitivity_scopes_partition_the_unet(tiny_pipe):
    from compression.pruning import scope_layers

    unet = tiny_pipe.unet
    names = {
        s: {n for n, _ in scope_layers(unet, s)}
        for s in (
            "all",
            "attention",
            "down",
            "mid",
            "up",
            "self-attention",
            "cross-attention",
            "feed-forward",
            "projection",
        )
    }
    # where: the three locations and the entry/exit layers make up the whole UNet, without overlap
    io = {n for n in names["all"] if n.split(".")[0] in ("conv_in", "conv_out", "time_embedding")}
    assert names["down"] | names["mid"] | names["up"] | io == names["all"]
    assert not (names["down"] & names["up"]) and not (names["mid"] & names["up"])
    # what: the four transformer parts make up the attention scope, without overlap
    parts = [names[s] for s in ("self-attention", "cross-attention", "feed-forward", "projection")]
    assert set().union(*parts) == names["attention"] and sum(map(len, parts)) == len(names["attention"])
    assert all(".attn2." in n for n in names["cross-attention"]) and all(
        ".attn1." in n for n in names["self-attention"]
    )
    assert all(n.endswith(("proj_in", "proj_out")) for n in names["projection"])


# ------------------------------------------------------------------------------------ sweeps end to end

import json  # noqa: E402

import pandas as pd  # noqa: E402
from metric_models import build_tiny_clip  # noqa: E402

from compression import metrics, quantization, sweep  # noqa: E402

WORLD_PROMPTS = [
    "a red circle on the left on a white background",
    "a blue square at the top on a black background",
    "a green triangle on the right on a yellow background",
    "a purple circle at the bottom on a orange background",
]
FAST = dict(steps=2, guidance=2.0, batch_size=4, latency_repeats=1, n_boot=50, show_bar=False, plotlyjs="cdn")


@pytest.fixture(scope="module")
def metric_set(tmp_path_factory, tokenizer_dir):
    judge = metrics.MetricClip(build_tiny_clip(tmp_path_factory.mktemp("clip"), tokenizer_dir), name="rand")
    return sweep.MetricSet(judge, [judge.feature_extractor()], real_reference=True)


def _strict_json(path):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_tiny_sweep_writes_csv_json_html_and_resumes(engine, metric_set, tmp_path, tokenizer_dir):
    specs = [sweep.CompressionSpec(prune_amount=0.5)]
    seen = []
    first = sweep.run_sweep(
        engine,
        specs,
        WORLD_PROMPTS,
        metric_set=metric_set,
        out_dir=tmp_path,
        progress=lambda f, what: seen.append(f),
        **FAST,
    )
    assert first.computed == ["baseline", "L1 50%"] and first.skipped == []
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)

    table = pd.read_csv(tmp_path / "results.csv")
    assert list(table.columns) == sweep.COLUMNS
    assert set(table["setting"]) == {"baseline", "L1 50%", sweep.REAL_SETTING}
    metrics_of = set(table[table["setting"] == "L1 50%"]["metric"])
    assert {
        "CLIP score (rand)",
        "accuracy: all",
        "PSNR",
        "SSIM",
        "FD-rand",
        "KID-rand",
        "latency",
        "UNet size",
        "sparsity",
        "non-finite images",
        "speed-up",
        "UNet MACs",
    } <= metrics_of
    quality = table[table["reference"].isin(["baseline", "real", "prompt"]) & (table["metric"] != "speed-up")]
    assert (quality["n"] == 4).all()  # every aggregate says how many images it stands on
    finite = quality.dropna(subset=["value", "ci_low", "ci_high"])
    assert ((finite["ci_low"] <= finite["value"] + 1e-9) & (finite["value"] <= finite["ci_high"] + 1e-9)).all()
    kid = table.query("metric == 'KID-rand' and reference == 'baseline'").set_index("setting")["value"]
    fd = table.query("metric == 'FD-rand' and reference == 'baseline'").set_index("setting")["value"]
    assert kid["baseline"] == pytest.approx(0, abs=1e-12) and fd["baseline"] == pytest.approx(0, abs=1e-6)
    assert fd["L1 50%"] > 1e-6  # (KID is unbiased, so at N=4 it may fall either side of 0)
    psnr = table.query("metric == 'PSNR'").set_index("setting")["value"]
    assert psnr["baseline"] == pytest.approx(metrics.psnr_cap_db(32, 32)) and psnr["L1 50%"] < 60
    assert "read KID" in table.query("metric == 'FD-rand'")["note"].iloc[0]  # 4 images: FD is not to be read
    sparsity = table.query("metric == 'sparsity'").set_index("setting")["value"]
    assert sparsity["baseline"] < 1 and sparsity["L1 50%"] > 40

    summary = _strict_json(tmp_path / "summary.json")
    assert summary["config"]["n_images"] == 4 and summary["fd_min_n"] == {"rand": 80}
    assert [c["status"] for c in summary["cells"]] == ["computed", "computed"]
    timing = summary["cells"][1]["timing"]  # where the pruned setting's time went (overhead.py)
    assert timing["generation_s"] > 0 and timing["metrics_s"] > 0 and timing["budget"] == 0.15
    assert timing["metrics_share"] == pytest.approx(timing["metrics_s"] / timing["generation_s"], abs=1e-3)
    assert summary["cells"][0]["timing"]["metrics_share"] is None  # the baseline reuses its images: no drawing
    page = (tmp_path / "report.html").read_text()
    assert "Compression sweep" in page and "plotly" in page.lower() and "data:image/png;base64" in page

    # A rerun finds every cell finished and draws nothing.
    cells = {p: p.stat().st_mtime_ns for p in (tmp_path / "cells").glob("*.json")}
    again = sweep.run_sweep(engine, specs, WORLD_PROMPTS, metric_set=metric_set, out_dir=tmp_path, **FAST)
    assert again.computed == [] and again.skipped == ["baseline", "L1 50%"]
    assert [c["timing"] for c in again.summary["cells"]] == [None, None]  # nothing was measured this time
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cells").glob("*.json")} == cells
    pd.testing.assert_frame_equal(
        again.table.reset_index(drop=True), first.table.reset_index(drop=True), check_dtype=False
    )

    # A grown grid computes only the new cell; the baseline images come from the cache on disk.
    grown = sweep.run_sweep(
        engine,
        [*specs, sweep.CompressionSpec(0.5, "random-unstructured")],
        WORLD_PROMPTS,
        metric_set=metric_set,
        out_dir=tmp_path,
        **FAST,
    )
    assert grown.computed == ["random 50%"] and grown.skipped == ["baseline", "L1 50%"]
    diff = sweep.paired_difference(tmp_path, "L1 50%", "random 50%", "psnr")
    assert diff.n == 4 and diff.ci_low <= diff.value <= diff.ci_high
    with pytest.raises(ValueError, match="known: baseline, L1 50%, random 50%"):
        sweep.paired_difference(tmp_path, "L1 90%", "random 50%")

    # A retrained judge under the same name re-scores every cell, from the baseline images already on disk.
    baseline_npy = next((tmp_path / "cache").glob("*/baseline.npy"))
    drawn = baseline_npy.stat().st_mtime_ns
    retrained = sweep.MetricSet(
        metrics.MetricClip(build_tiny_clip(tmp_path / "clip2", tokenizer_dir, seed=1), name="rand")
    )
    rescored = sweep.run_sweep(engine, specs, WORLD_PROMPTS, metric_set=retrained, out_dir=tmp_path, **FAST)
    assert rescored.computed == ["baseline", "L1 50%"] and baseline_npy.stat().st_mtime_ns == drawn

    # Other sampler settings are other cells, not silently reused ones.
    other = sweep.run_sweep(
        engine, specs, WORLD_PROMPTS, metric_set=metric_set, out_dir=tmp_path, **{**FAST, "steps": 3}
    )
    assert other.computed == ["baseline", "L1 50%"]


@pytest.fixture
def nan_mode():
    # A real UNet whose output layer is NaN, registered like any mode (specs validate against the registry).
    def poison_(module, bits):
        module.conv_out.weight.data.fill_(float("nan"))
        return module

    quantization.QUANT_MODES["nan-test"] = quantization.QuantMode("nan-test", "nan", "test only: NaN weights", poison_)
    yield "nan-test"
    del quantization.QUANT_MODES["nan-test"]


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_other_weights_under_the_same_name_are_other_cells(tiny_pipe, engine, metric_set, tmp_path):
    import copy

    specs = [sweep.CompressionSpec(prune_amount=0.5)]
    sweep.run_sweep(engine, specs, WORLD_PROMPTS[:2], metric_set=metric_set, out_dir=tmp_path, **FAST)
    other = copy.deepcopy(tiny_pipe)
    other.unet.conv_out.bias.data += 0.01  # "retrained"
    assert sweep.model_fingerprint(other) != sweep.model_fingerprint(tiny_pipe)
    res = sweep.run_sweep(
        Engine(other, "tiny-test"), specs, WORLD_PROMPTS[:2], metric_set=metric_set, out_dir=tmp_path, **FAST
    )
    assert res.computed == ["baseline", "L1 50%"]


def test_non_finite_images_are_counted_and_not_scored(engine, metric_set, nan_mode):
    res = sweep.run_sweep(
        engine, [sweep.CompressionSpec(quant_mode=nan_mode)], WORLD_PROMPTS[:2], metric_set=metric_set, **FAST
    )
    rows = res.table[res.table["quant_mode"] == nan_mode].set_index("metric")
    assert rows.loc["non-finite images", "value"] == 2
    assert rows.loc["CLIP score (rand)", "n"] == 0 and pd.isna(rows.loc["CLIP score (rand)", "value"])
    assert rows.loc["PSNR", "n"] == 0 and "KID-rand" not in rows.index  # nothing finite to compare
    assert res.out_dir is None  # without out_dir nothing is written


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompts=[]), "at least 1 prompt"),
        (dict(seeds=[]), "at least 1 seed"),
        (dict(max_cells=1), "limit of 1 per sweep"),
        (dict(prompts=["a red circle on the left on a white background"] * 30_001), "limit of 30000"),
        (dict(seeds=[-1]), "seeds must be integers"),
    ],
)
def test_absurd_grids_are_refused_naming_the_limit(engine, metric_set, kwargs, match):
    args = dict(
        specs=[sweep.CompressionSpec(prune_amount=0.3)], prompts=WORLD_PROMPTS, seeds=[0], metric_set=metric_set
    )
    with pytest.raises(ValueError, match=match):
        sweep.run_sweep(engine, **{**args, **kwargs}, **FAST)


def test_grid_parsing_and_presets():
    assert sweep.parse_amounts("0,10,...,50") == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert sweep.parse_amounts("30, 0, 30") == [0.0, 0.3]
    with pytest.raises(ValueError, match="'...' needs"):
        sweep.parse_amounts("0,...,90")
    assert sweep.parse_quant("fp32,simulated-int:4") == [("fp32", None), ("simulated-int", 4)]
    specs = sweep.grid([0.0, 0.3], ["l1-unstructured", "random-unstructured"], [("fp32", None)])
    assert [s.label for s in specs] == ["baseline", "L1 30%", "random 30%"]  # one 0% cell, not two
    with pytest.raises(ValueError, match="known"):
        sweep.grid([0.3], ["magic"], [("fp32", None)])
    for name, preset in sweep.PRESETS.items():  # every preset is a valid grid on this machine's registries
        specs = sweep.grid(
            sweep.parse_amounts(preset["prune"]),
            preset["method"].split(","),
            sweep.parse_quant(preset["quant"]),
            preset["scope"].split(","),
        )
        assert 1 < len(specs) <= sweep.MAX_CELLS, name
    assert len(sweep.load_prompts("tiny-shapes", 200)) == 200
    assert all(sweep.world.parse_caption(p) for p in sweep.load_prompts("tiny-shapes"))
    with pytest.raises(ValueError, match="known: general, tiny-shapes"):
        sweep.load_prompts("nope")


def _curve(values, cis, method="l1-unstructured", metric="accuracy: all", higher=True):
    rows = []
    for amount, value, ci in zip((0.0, 0.2, 0.3, 0.4, 0.5), values, cis):
        rows.append(
            dict(
                setting=f"{amount}",
                prune_amount=amount,
                prune_method="l1-unstructured" if amount == 0 else method,
                prune_scope="all",
                quant_mode="fp32",
                bits=None,
                metric=metric,
                reference="prompt",
                value=value,
                ci_low=value - ci,
                ci_high=value + ci,
                n=200,
                unit="%",
                higher_is_better=higher,
                note="",
            )
        )
    return pd.DataFrame(rows)


def test_knee_rules():
    table = _curve([90, 89, 86, 80, 40], [3, 3, 3, 3, 3])
    # within 5 points up to 30% (86 >= 85), not at 40% (80)
    assert sweep.quality_holds_until(table, "accuracy: all", "prompt", "l1-unstructured", 5.0) == 0.3
    # intervals part first at 40%: [77, 83] lies below [87, 93]; at 30% [83, 89] still overlaps
    assert sweep.first_clear_drop(table, "accuracy: all", "prompt", "l1-unstructured") == 0.4
    kid = _curve([0.0, 0.001, 0.01, 0.05, 0.2], [0.002] * 5, metric="KID-x", higher=False)
    assert sweep.first_clear_drop(kid, "KID-x", "prompt", "l1-unstructured") == 0.3
    assert sweep.first_clear_drop(table, "accuracy: all", "prompt", "random-unstructured") is None
    assert sweep.available_prompt_sets() == ["general", "tiny-shapes"]
