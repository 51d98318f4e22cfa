"""Sweeps on several processes (torchrun, gloo on CPU), resumed shards, trackio logging, own prompts and real
references, the paper protocol's label, and the errors for trackers that are not installed."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from compression import paper, scaling, sweep, tracking, world
from compression.datasets import load_prompt_file
from compression.distributed import World
from compression.engine import Engine
from compression.reference import (
    load_reference_images,
    reference_from_images,
    reference_from_stats,
    write_stats,
)

REPO = Path(__file__).resolve().parent.parent
TIMING = ["latency", "speed-up", "compression time"]  # the only rows that may differ between runs
# 7 prompts in batches of 2: four shards per setting, the last one short (uneven shards across 2 processes).
GRID = dict(prompts=7, steps=2, batch=2, boot=50)
CLI = [
    "--model",
    "tiny-shapes",
    "--prune",
    "0,50",
    "--prompts",
    str(GRID["prompts"]),
    "--steps",
    str(GRID["steps"]),
    "--batch",
    str(GRID["batch"]),
    "--latency-repeats",
    "0",
    "--boot",
    str(GRID["boot"]),
    "--threads",
    "1",
    "--plotlyjs",
    "cdn",
]


def _without_timing(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    return table[~table["metric"].isin(TIMING)].reset_index(drop=True)


class _Killed(Exception):
    pass


def _kill_after(k: int):
    seen = []

    def progress(fraction, what):
        seen.append(what)
        if len(seen) == k:
            raise _Killed(what)

    return progress


@pytest.mark.slow
def test_two_processes_resume_a_killed_run_and_match_one_process(tmp_path):
    """One process (the library) against two (torchrun + the CLI) that resume a run killed mid-baseline."""
    from compression.models import load_pipeline

    pipe, info = load_pipeline("tiny-shapes")
    engine = Engine(pipe, info.name, cache_size=1)
    ms = sweep.default_metric_set(info.name)
    specs = sweep.grid([0.0, 0.5], ["l1-unstructured"], [("fp32", None)])
    prompts = sweep.load_prompts("tiny-shapes", GRID["prompts"])
    args = dict(
        steps=GRID["steps"],
        guidance=4.0,
        metric_set=ms,
        batch_size=GRID["batch"],
        latency_repeats=0,
        n_boot=GRID["boot"],
        show_bar=False,
        plotlyjs="cdn",
    )
    one = tmp_path / "one"
    sweep.run_sweep(engine, specs, prompts, out_dir=one, **args)

    # Killed after 3 of the baseline's 4 shards: those are on disk, marked, and stay.
    two = tmp_path / "two"
    with pytest.raises(_Killed):
        sweep.run_sweep(engine, specs, prompts, out_dir=two, progress=_kill_after(3), **args)
    marks = sorted(p.name for p in two.glob("cache/*/baseline.shards/*.npz"))
    assert marks == ["000000.npz", "000001.npz", "000002.npz"]

    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "TRACKIO_DIR": str(tmp_path / "trackio"),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "compression.sweep"]
    cmd += [*CLI, "--out", str(two), "--track", "trackio", "--track-project", "dcl-test"]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]

    summary = json.loads((two / "summary.json").read_text())
    assert summary["run"]["processes"] == 2  # not two processes each running the whole sweep alone
    # Only the unfinished shards were drawn: the baseline's last shard (1 image) and the 7 images of L1 50%.
    assert summary["run"]["images_drawn"] == 1 + 7
    pd.testing.assert_frame_equal(_without_timing(two / "results.csv"), _without_timing(one / "results.csv"))
    for a in sorted(one.glob("cells/*.images.csv")):  # every per-image number, bit for bit
        assert (two / "cells" / a.name).read_bytes() == a.read_bytes()
    (base_one,) = one.glob("cache/*/baseline.npy")
    assert np.array_equal(np.load(two / "cache" / base_one.parent.name / "baseline.npy"), np.load(base_one))
    for a in sorted(one.glob("samples/*.png")):  # the images themselves, for the first images of each setting
        assert np.array_equal(np.asarray(Image.open(two / "samples" / a.name)), np.asarray(Image.open(a)))
    assert not list(two.glob("cells/*.shards")) and not list(two.glob("cache/*/*.shards"))

    # trackio (process 0 only): the config, every setting's aggregates with interval and N, the strips, the report.
    db = sqlite3.connect(tmp_path / "trackio" / "dcl-test.db")
    runs = {r[0] for r in db.execute("select distinct run_name from metrics")}
    assert runs == {"two"}
    logged = [json.loads(r[0]) for r in db.execute("select metrics from metrics order by step, id")]
    numbers = [m for m in logged if "prune_amount" in m]
    assert [m["prune_amount"] for m in numbers] == [0.0, 0.5]
    table = pd.read_csv(two / "results.csv").set_index(["setting", "metric", "reference"])
    fd = table.loc[("L1 50%", "FD-tinyCLIP", "real")]
    assert numbers[1]["FD-tinyCLIP vs real"] == pytest.approx(fd["value"])
    kid = table.loc[("L1 50%", "KID-tinyCLIP", "real")]
    assert numbers[1]["KID-tinyCLIP vs real/ci_high"] == pytest.approx(kid["ci_high"])
    assert "FD-tinyCLIP vs real/ci_high" not in numbers[1]  # 7 images: under FD's trusted N, so no interval
    assert numbers[1]["FD-tinyCLIP vs real/n"] == 7
    assert sum("samples" in m for m in logged) == 2
    (config,) = [json.loads(r[0]) for r in db.execute("select config from configs")]
    assert config["model"] == "tiny-shapes" and config["prompts_digest"] == summary["config"]["prompts_digest"]
    assert config["grid"] == "baseline, L1 50%" and config["processes"] == 2
    assert [r[0] for r in db.execute("select name from artifacts")] == ["sweep-report"]


@pytest.fixture(scope="module")
def engine(tiny_pipe):
    return Engine(tiny_pipe, "tiny-test", cache_size=2)


@pytest.fixture(scope="module")
def metric_set(tmp_path_factory, tokenizer_dir):
    from metric_models import build_tiny_clip

    from compression import metrics

    judge = metrics.MetricClip(build_tiny_clip(tmp_path_factory.mktemp("clip"), tokenizer_dir), name="rand")
    return sweep.MetricSet(judge, [judge.feature_extractor()])


WORLD_PROMPTS = [
    "a red circle on the left on a white background",
    "a blue square at the top on a black background",
    "a green triangle on the right on a yellow background",
    "a purple circle at the bottom on a orange background",
    "a red square on the right on a black background",
]
FAST = dict(steps=2, guidance=2.0, batch_size=2, latency_repeats=0, n_boot=20, show_bar=False, plotlyjs="cdn")


@pytest.mark.slow
def test_a_setting_killed_mid_way_resumes_its_finished_shards(engine, metric_set, tmp_path):
    specs = [sweep.CompressionSpec(prune_amount=0.5)]
    # 3 shards a setting: baseline (3 steps), its identity cell (3), then L1 50% killed after its first shard.
    with pytest.raises(_Killed):
        sweep.run_sweep(engine, specs, WORLD_PROMPTS, metric_set=metric_set, out_dir=tmp_path, **FAST,
                        progress=_kill_after(7))  # fmt: skip
    (shards,) = tmp_path.glob("cells/*.shards")
    assert [p.name for p in shards.iterdir()] == ["000000.npz"]
    resumed = sweep.run_sweep(engine, specs, WORLD_PROMPTS, metric_set=metric_set, out_dir=tmp_path, **FAST)
    assert resumed.computed == ["L1 50%"] and resumed.skipped == ["baseline"]
    assert resumed.summary["run"]["images_drawn"] == 3  # shards 1 and 2 only
    fresh = sweep.run_sweep(engine, specs, WORLD_PROMPTS, metric_set=metric_set, out_dir=tmp_path / "b", **FAST)
    cols = ["setting", "metric", "reference", "value", "ci_low", "ci_high", "n"]

    def numbers(table):
        return table[~table["metric"].isin(TIMING)][cols].reset_index(drop=True)

    pd.testing.assert_frame_equal(numbers(resumed.table), numbers(fresh.table))


# ------------------------------------------------------------------------------------------ your own data


def test_prompt_files_txt_csv_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("# a comment\n a red circle \n\nthe second, with a comma\n")
    assert load_prompt_file(tmp_path / "p.txt") == ["a red circle", "the second, with a comma"]
    pd.DataFrame({"file_name": ["1.jpg", "2.jpg"], "caption": ["A cat, on a mat", "Two dogs"]}).to_csv(
        tmp_path / "meta.csv", index=False
    )
    assert load_prompt_file(tmp_path / "meta.csv", "caption") == ["A cat, on a mat", "Two dogs"]
    assert load_prompt_file(tmp_path / "meta.csv", "caption", n=1) == ["A cat, on a mat"]
    with pytest.raises(ValueError, match=r"no column 'prompt' \(columns: file_name, caption\)"):
        load_prompt_file(tmp_path / "meta.csv")
    (tmp_path / "p.jsonl").write_text('{"prompt": "one"}\n\n{"prompt": "two", "id": 2}\n')
    assert load_prompt_file(tmp_path / "p.jsonl") == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "one"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match="line 2: empty or non-text 'prompt'"):
        load_prompt_file(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="has 2 prompts, 3 asked"):
        load_prompt_file(tmp_path / "p.txt", n=3)
    (tmp_path / "p.json").write_text("[]")
    with pytest.raises(ValueError, match=r"\.txt, \.csv, \.jsonl"):
        load_prompt_file(tmp_path / "p.json")


@pytest.mark.slow
def test_reference_dir_and_stats_give_the_same_fd(engine, metric_set, tmp_path):
    refdir = tmp_path / "real"
    refdir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):  # real shapes-world images, saved larger and non-square: the protocol resizes and crops
        attrs = world.parse_caption(WORLD_PROMPTS[i % len(WORLD_PROMPTS)])
        world.render(attrs, int(rng.integers(1 << 30))).resize((48, 40)).save(refdir / f"{i:02d}.png")
    images = load_reference_images(refdir, 32, 32)
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    ms = sweep.MetricSet(metric_set.judge, metric_set.features, reference=None)
    ms.reference = reference_from_images(images, ms.features, "real")
    res = sweep.run_sweep(engine, [sweep.CompressionSpec(prune_amount=0.5)], WORLD_PROMPTS, metric_set=ms, **FAST)
    rows = res.table.query("reference == 'real'").set_index(["setting", "metric"])
    assert set(rows.index.get_level_values("metric")) == {"FD-rand", "KID-rand"}
    fd = rows.loc[("L1 50%", "FD-rand")]
    assert fd["n"] == 5 and "12 reference images" in fd["note"] and fd["value"] > 0
    assert np.isnan(fd["ci_low"]) and "read KID" in fd["note"]  # 5 images: under FD's trusted N, no interval

    # The same reference as statistics: the same FD (no KID: it needs the images' features).
    stats = write_stats(tmp_path / "real.npz", ms.reference.features["rand"])
    ms.reference = reference_from_stats(stats, ms.features)
    assert ms.reference.n_ref == 12
    again = sweep.run_sweep(engine, [sweep.CompressionSpec(prune_amount=0.5)], WORLD_PROMPTS, metric_set=ms, **FAST)
    rows2 = again.table.query("reference == 'real'").set_index(["setting", "metric"])
    assert list(rows2.index.get_level_values("metric").unique()) == ["FD-rand"]
    assert rows2.loc[("L1 50%", "FD-rand"), "value"] == pytest.approx(fd["value"], rel=1e-9)
    assert "statistics of 12 images" in rows2.loc[("L1 50%", "FD-rand"), "note"]

    # The paper preset's glue: BK-SDM's preparation before features, and an FD labelled with what is missing.
    args = argparse.Namespace(reference_dir=None, reference_stats=stats, reference_limit=None)
    scaling.apply_metric_options(args, ms, engine, World(), "bk-sdm-256", len(WORLD_PROMPTS), 2, 2.0)
    assert ms.protocol == "bk-sdm-256"
    labelled = sweep.run_sweep(engine, [sweep.CompressionSpec(0.5)], WORLD_PROMPTS, metric_set=ms, **FAST)
    note = labelled.table.query("reference == 'real' and setting == 'L1 50%'")["note"].iloc[0]
    assert "not comparable to published FIDs" in note and "N=5 < 10,000" in note and "not PNDMScheduler" in note
    assert labelled.summary["config"]["protocol"] == "bk-sdm-256"

    np.savez(tmp_path / "inception.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match=r"2048-d statistics \(Inception-v3 pool3.*features on offer: rand \(16-d\)"):
        reference_from_stats(tmp_path / "inception.npz", ms.features)


def test_paper_protocol_is_labelled_comparable_only_when_whole():
    met = dict(
        protocol="bk-sdm-256",
        scheduler="PNDMScheduler",
        steps=25,
        guidance=7.5,
        height=512,
        width=512,
        n=30_000,
        features=["Inception"],
        reference_kind="stats",
        reference_n=40_504,
    )
    assert paper.comparability(**met) == []
    assert paper.comparability_note([]).startswith("comparable to published FIDs")
    short = paper.comparability(
        **{**met, "n": 9_999, "features": ["CLIP-B/16"], "reference_n": None, "safety_checker": True}
    )
    note = paper.comparability_note(short)
    assert note.startswith("not comparable") and "N=9999 < 10,000" in note and "no Inception-v3" in note
    assert "safety checker is on" in note
    assert "unstated number" in note
    images = np.random.default_rng(0).integers(0, 256, (2, 512, 512, 3), dtype=np.uint8)
    small = paper.bk_sdm_256(images)
    assert small.shape == (2, 256, 256, 3) and np.array_equal(small, paper.bk_sdm_256(images))
    assert sweep.PRESETS["paper"]["steps"] == 25 and sweep.PRESETS["paper"]["protocol"] == "bk-sdm-256"


# --------------------------------------------------------------------------------------------- trackers


@pytest.mark.parametrize("name", [n for n in ("wandb", "mlflow") if importlib.util.find_spec(n) is None])
def test_a_missing_tracker_package_is_named(name, tmp_path, capsys):
    with pytest.raises(ImportError, match=f"--track {name} needs the {name} package.*pip install {name}"):
        tracking.check_tracker(name)
    with pytest.raises(SystemExit):  # the command refuses before loading any model
        sweep.main(["--track", name, "--out", str(tmp_path)])
    assert f"pip install {name}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="known: trackio, wandb, mlflow"):
        tracking.check_tracker("tensorboardx")
