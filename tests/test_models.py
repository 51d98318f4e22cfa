"""Model catalog and loader: the local path is the hub path's code; pickles and unknown ids are refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROMPT, STEPS

from compression import CATALOG, load_pipeline, resolve_model
from compression.models import REPO_ROOT, check_local_folder, default_dtype


def _draw(pipe) -> np.ndarray:
    return pipe(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(0),
    ).images[0]


@pytest.fixture(scope="module")
def saved_folder(tiny_pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "tiny-sd"
    tiny_pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def test_catalog_entries():
    tiny = CATALOG["tiny-shapes"]
    assert tiny.local and tiny.source == str(REPO_ROOT / "assets" / "tiny-shapes-sd")
    assert (tiny.prompt_set, tiny.steps, tiny.guidance, tiny.side) == ("tiny-shapes", 20, 4.0, 64)
    assert not tiny.safety_checker and tiny.metrics.real_reference and tiny.grammar
    assert Path(tiny.metrics.judge).is_dir()  # the embedded metric CLIP ships with the repo
    hub = CATALOG["sd-1.5"]
    assert not hub.local and hub.source == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert (hub.prompt_set, hub.steps, hub.guidance, hub.side) == ("general", 25, 7.5, 512)
    assert hub.safety_checker and not hub.metrics.real_reference and not hub.grammar


def test_every_catalog_entry_has_its_facts():
    """Adding a model is adding one entry: each names a prompt set that exists and prompts to show."""
    from compression.sweep import load_prompts

    for entry in CATALOG.values():
        assert load_prompts(entry.prompt_set), entry.name
        assert entry.examples and all(isinstance(p, str) and p for p in entry.examples), entry.name
        assert entry.side % 8 == 0 and entry.steps >= 1 and entry.guidance >= 0, entry.name


def test_model_id_env_selects(monkeypatch):
    monkeypatch.delenv("MODEL_ID", raising=False)
    assert resolve_model().name == "tiny-shapes"
    monkeypatch.setenv("MODEL_ID", "sd-1.5")
    assert resolve_model().name == "sd-1.5"
    assert resolve_model("tiny-shapes").name == "tiny-shapes"  # an explicit name wins


def test_unknown_ids_refused_unless_allowed(monkeypatch, tmp_path):
    monkeypatch.delenv("ALLOW_ANY_MODEL", raising=False)
    with pytest.raises(ValueError) as err:
        resolve_model("someone/some-model")
    assert "tiny-shapes" in str(err.value) and "sd-1.5" in str(err.value) and "ALLOW_ANY_MODEL" in str(err.value)
    with pytest.raises(ValueError) as err:
        resolve_model("x" * 10_000)
    assert len(str(err.value)) < 300  # never echo a huge input
    monkeypatch.setenv("ALLOW_ANY_MODEL", "1")
    assert not resolve_model("someone/some-model").local
    assert resolve_model(str(tmp_path)).local


def test_local_folder_loads_through_from_pretrained(monkeypatch, tiny_pipe, saved_folder):
    monkeypatch.setenv("ALLOW_ANY_MODEL", "1")
    pipe, info = load_pipeline(str(saved_folder), device="cpu")
    assert info.device == "cpu" and info.dtype == torch.float32 and pipe.unet.dtype == torch.float32
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert not pipe.unet.training and not any(p.requires_grad for p in pipe.unet.parameters())
    assert np.array_equal(_draw(pipe), _draw(tiny_pipe))  # same weights, same seed: the same image


def test_pickle_only_folder_refused(monkeypatch, tiny_pipe, tmp_path):
    folder = tmp_path / "pickled"
    tiny_pipe.save_pretrained(folder, safe_serialization=False)
    # transformers 5 writes safetensors regardless; the diffusers models (unet, vae) are pickled .bin files.
    assert list((folder / "unet").glob("*.bin")) and not list((folder / "unet").glob("*.safetensors"))
    monkeypatch.setenv("ALLOW_ANY_MODEL", "1")
    with pytest.raises(ValueError, match="unet.*only pickled weights"):
        load_pipeline(str(folder), device="cpu")
    for p in folder.rglob("*.safetensors"):
        p.unlink()
    with pytest.raises(ValueError, match="no .safetensors"):
        check_local_folder(folder)


def test_missing_local_model_gives_a_clear_error(monkeypatch, tmp_path):
    missing = tmp_path / "not-trained-yet"
    monkeypatch.setitem(CATALOG, "tiny-shapes", dataclasses.replace(CATALOG["tiny-shapes"], source=str(missing)))
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline("tiny-shapes", device="cpu")
    with pytest.raises(FileNotFoundError):
        check_local_folder(tmp_path)


def test_dtype_policy():
    assert default_dtype("cpu") == torch.float32
    assert default_dtype("cuda") == torch.float16


@pytest.mark.skipif(
    not (REPO_ROOT / "assets" / "tiny-shapes-sd" / "model_index.json").exists(),
    reason="the embedded tiny-shapes model has not been trained into assets/ yet",
)
def test_embedded_model_loads_offline_and_draws():
    pipe, info = load_pipeline("tiny-shapes", device="cpu")
    assert info.name == "tiny-shapes" and pipe.safety_checker is None
    image = _draw(pipe)
    assert np.isfinite(image).all() and image.std() > 0.01
