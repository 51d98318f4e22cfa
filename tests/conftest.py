"""Shared fixtures: a tiny but real StableDiffusionPipeline built in code (no network, no files but a tokenizer).

Like diffusers' own `get_dummy_components()`: a 2-block UNet2DConditionModel with cross-attention, a 2-block
AutoencoderKL, a 2-layer CLIPTextModel and a real CLIP BPE tokenizer written to a folder from the shapes
world's words (in transformers 5, `CLIPTokenizer(vocab_file=..., merges_file=...)` silently ignores both files,
so it is loaded with `from_pretrained(folder)` and checked to tell prompts apart).
"""

from __future__ import annotations

import os

import torch

# Another process trains on the second core: two threads here ran >10x slower. Set before anything runs.
torch.set_num_threads(1)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub

import pytest  # noqa: E402

from compression import world  # noqa: E402
from tinyworld.tokenizer import write_clip_tokenizer  # noqa: E402

STEPS = 2
PROMPT = "a red circle on the left on a white background"


def world_words() -> list[str]:
    """Every word of every caption of the shapes world."""
    return sorted({w for a in world.all_attributes() for w in world.caption(a).split()})


def build_tiny_pipeline(tokenizer_dir):
    """A real StableDiffusionPipeline of ~1.4M UNet parameters, seeded so every build is identical."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,  # latents 16x16 -> 32x32 images
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=16,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=16,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-5,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    return pipe


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    folder = write_clip_tokenizer(world_words(), tmp_path_factory.mktemp("tokenizer"))
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(folder))
    # Guard against the transformers 5 trap: a tokenizer that ignored its files maps every word to one id.
    assert tok("a red circle").input_ids != tok("a blue square").input_ids
    return folder


@pytest.fixture(scope="session")
def tiny_pipe(tokenizer_dir):
    """The shared baseline pipeline. Tests must not mutate it (test_engine checks its digest)."""
    return build_tiny_pipeline(tokenizer_dir)


@pytest.fixture(scope="session")
def unet_inputs(tiny_pipe):
    """A fixed batch for direct UNet forwards: (sample, timestep, encoder_hidden_states)."""
    g = torch.Generator("cpu").manual_seed(1)
    sample = torch.randn(2, 4, 16, 16, generator=g)
    timestep = torch.tensor([500, 500])
    with torch.no_grad():
        ids = tiny_pipe.tokenizer(
            [PROMPT, "a blue square at the top on a black background"],
            padding="max_length",
            max_length=tiny_pipe.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
        hidden = tiny_pipe.text_encoder(ids)[0]
    return sample, timestep, hidden


def unet_out(unet, inputs) -> torch.Tensor:
    sample, timestep, hidden = inputs
    with torch.no_grad():
        return unet(sample, timestep, encoder_hidden_states=hidden, return_dict=False)[0].float()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------------------------------
# The app (issue 4): one in-process server for tests/test_app.py and tests/test_browser.py (and issue 7's).


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def lab_app(tmp_path_factory):
    """The real app.py on the embedded tiny model, launched in-process with prevent_thread_lock=True.

    Downloads and sweep folders go to a temporary directory. Yields `(app_module, url)`; the server is closed
    at the end of the session.
    """
    import app
    import app_service

    out = tmp_path_factory.mktemp("app-outputs")
    app_service.DOWNLOAD_DIR = out / "downloads"
    app_service.SWEEP_DIR = out / "sweeps"
    app.LAB.startup()
    assert app.LAB.startup_error is None, app.LAB.startup_error
    _, url, _ = app.launch(prevent_thread_lock=True, server_port=_free_port(), quiet=True)
    try:
        yield app, url
    finally:
        app.demo.close()
