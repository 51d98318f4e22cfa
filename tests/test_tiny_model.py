"""The embedded default model and its metric CLIP, as shipped in assets/."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compression import metrics, world

REPO = Path(__file__).resolve().parent.parent
PIPELINE = REPO / "assets" / "tiny-shapes-sd"
CLIP = REPO / "assets" / "tiny-shapes-clip"


@pytest.fixture(scope="module")
def pipe():
    from diffusers import DiffusionPipeline

    p = DiffusionPipeline.from_pretrained(str(PIPELINE), use_safetensors=True)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def judge():
    return metrics.MetricClip(str(CLIP))


def test_assets_are_safetensors_only_and_small():
    files = [f for f in (REPO / "assets").rglob("*") if f.is_file() and f.parts[-3:-1] != ("assets", "results")]
    weights = [f for f in files if f.suffix in {".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".pkl"}]
    assert weights and all(f.suffix == ".safetensors" for f in weights), weights
    total = sum(f.stat().st_size for f in (REPO / "assets").rglob("*") if f.is_file() and ("tiny-shapes" in str(f)))
    assert total <= 25 * 1024 * 1024, f"{total / 2**20:.1f} MB"


def test_pipeline_loads_offline_and_draws_a_64px_image(pipe):
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    image = pipe(
        "a red circle on the left on a blue background",
        num_inference_steps=20,
        guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images[0]
    assert image.size == (64, 64)
    judged = world.judge_image(image)
    assert judged["background"] == "blue" and judged["colour"] == "red", judged


def test_different_prompts_give_different_images(pipe):
    def draw(prompt):
        return pipe(
            prompt,
            num_inference_steps=10,
            guidance_scale=4.0,
            output_type="np",
            generator=torch.Generator("cpu").manual_seed(1),
        ).images[0]

    a = draw("a yellow square at the top on a black background")
    b = draw("a white triangle at the bottom on a green background")
    assert np.abs(a - b).mean() > 0.1


def test_metric_clip_ranks_the_true_caption_above_a_one_attribute_change(judge):
    from tinyworld.evaluate import candidates

    attrs, images = world.real_images(5, 60, "heldout")
    wins = 0
    total = 0
    for attribute in ("background", "colour", "position", "shape"):
        changed = []
        for i, a in enumerate(attrs):
            alternatives = [c for c in candidates(a, attribute) if c != a]
            changed.append(alternatives[i % len(alternatives)])
        true = judge.clip_score(images, [world.caption(a) for a in attrs])
        wrong = judge.clip_score(images, [world.caption(c) for c in changed])
        wins += int((true > wrong).sum())
        total += len(attrs)
    assert wins / total >= 0.97, f"{wins}/{total}"


@pytest.mark.slow  # over 3 s: CI runs it, the quick loop does not
def test_quick_evaluation_runs_and_the_model_follows_prompts(tmp_path):
    out = tmp_path / "eval.json"
    subprocess.run(
        [sys.executable, "-m", "tinyworld.evaluate", "--quick", "--threads", "1", "--json", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = json.loads(out.read_text())
    assert result["prompts"] == 8
    # Eight held-out prompts: a trained model gets most attributes right; random weights get ~1/5.
    assert np.mean(list(result["generated_accuracy_pixel"].values())) >= 0.7, result
    assert result["FD-tinyCLIP"]["real_vs_real"] >= 0


@pytest.mark.slow
def test_retraining_command_runs_end_to_end(tmp_path):
    """The one-command retrain, at a few steps per stage: it must write folders the app can load."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tinyworld.train",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path / "out"),
            "--threads",
            "1",
            "--vae-steps",
            "2",
            "--clip-steps",
            "2",
            "--unet-steps",
            "2",
            "--batch",
            "4",
            "--check-prompts",
            "2",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    from diffusers import DiffusionPipeline

    p = DiffusionPipeline.from_pretrained(str(tmp_path / "out" / "tiny-shapes-sd"), use_safetensors=True)
    assert p("a red circle on the left on a blue background", num_inference_steps=2).images[0].size == (64, 64)
    assert (tmp_path / "out" / "tiny-shapes-clip" / "model.safetensors").exists()
