"""Stand-in pipelines: a model's architecture built from its configs with random weights, saved like a hub model.

The lab cannot download SD 1.5 or the distilled SD 1.x models here (no network in tests and CI), but memory, speed
and the loader path depend on the architecture, not on the weight values. So this module builds a real
`StableDiffusionPipeline` from SD 1.5's configs (`assets/configs/sd15_*_config.json`: UNet 859.5M parameters, VAE
83.7M, CLIP ViT-L/14 text encoder 123.1M), or with a distilled model's UNet block layout (`LAYOUTS`: BK-SDM and
Segmind's SD-Small / SD-Tiny), with a CLIP BPE tokenizer written from a word list (tinyworld/tokenizer.py), and
writes it into a Hugging Face cache folder under the model's real hub id (`save_snapshot`), so that
`models.load_pipeline("sd-1.5")` with `HF_HUB_OFFLINE=1` loads it through exactly the code a Space runs.

Building is cheap: modules are made on the meta device (no memory, no default init: diffusers' kaiming init of
an SD 1.5 UNet takes ~30 s on one core) and filled once (`_fill_`): norms to 1/0, biases to 0, weights tiled from
a pool of seeded normals, scaled to std 1/sqrt(fan-in), so activations keep their scale through 25 residual blocks
and stay finite.
`width="tiny"` keeps a layout's blocks but shrinks every width (tests: a few MB per model).

Run `python -m compression.standin --layout sd-1.5 --hub-cache DIR` to write one (SD-1.5-sized: 4.2 GB of fp32
safetensors); tests/test_sd15_e2e.py drives the app with it.

Example:
    >>> pipe = build_pipeline("bk-sdm-small", words=["a", "red", "circle"], width="tiny")
    >>> save_snapshot(pipe, "nota-ai/bk-sdm-small", tmp / "hub")   # then HF_HUB_CACHE=tmp/hub, HF_HUB_OFFLINE=1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from .models import CATALOG, REPO_ROOT

CONFIGS = REPO_ROOT / "assets" / "configs"
SNAPSHOT = "0" * 40  # the commit hash the snapshot is filed under (refs/main points at it)

# UNet config edits of each catalog model's block layout, on top of SD 1.5's. BK-SDM's configs
# (github.com/Nota-NetsPresso/BK-SDM, src/unet_config/bk_*): one ResNet (+ attention) per down stage, two per up
# stage (diffusers adds one to layers_per_block going up); Small drops the mid-block; Tiny also the innermost
# stages. Segmind's SD-Small / SD-Tiny remove the same blocks (segmind/distill-sd, prepare_unet): Small keeps the
# mid-block (BK-SDM-Base's layout), Tiny is BK-SDM-Tiny's.
_BASE = {"layers_per_block": 1, "mid_block_type": "UNetMidBlock2DCrossAttn"}
_SMALL = {"layers_per_block": 1, "mid_block_type": None}
_TINY = {
    "layers_per_block": 1,
    "mid_block_type": None,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3,
    "up_block_types": ["CrossAttnUpBlock2D"] * 3,
}
LAYOUTS: dict[str, dict] = {
    "sd-1.5": {},
    "bk-sdm-base": _BASE,
    "bk-sdm-small": _SMALL,
    "bk-sdm-tiny": _TINY,
    "segmind-small-sd": _BASE,
    "segmind-tiny-sd": _TINY,
}


def _config(name: str) -> dict:
    return json.loads((CONFIGS / f"sd15_{name}_config.json").read_text(encoding="utf-8"))


def unet_config(layout: str = "sd-1.5", width: str = "full") -> dict:
    """The UNet config of `layout` (a `LAYOUTS` key); `width="tiny"`: the same blocks, every width shrunk."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    config = {**_config("unet"), **copy.deepcopy(LAYOUTS[layout])}
    # A config from diffusers < 0.9 makes StableDiffusionPipeline "fix" any sample_size below 64 to 64 (512 px).
    config.pop("_diffusers_version", None)
    if width == "tiny":
        n = len(config["block_out_channels"])
        config.update(
            block_out_channels=[32, 64, 64, 64][:n],
            cross_attention_dim=32,
            attention_head_dim=4,  # heads (diffusers' legacy name): several, so head pruning has work to do
            sample_size=8,  # 64 px images
        )
    return config


def _tiny_vae(config: dict) -> dict:
    return {**config, "block_out_channels": [32, 32, 32, 32], "layers_per_block": 1, "sample_size": 64}


def _tiny_text(config: dict) -> dict:
    return {**config, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}


POOL = 1 << 20  # seeded normals tiled into every weight: drawing 1.07B fresh normals took 26 s here, tiling 3 s


def _tile_(p: torch.Tensor, pool: torch.Tensor, offset: int, std: float) -> None:
    flat, n = p.view(-1), p.numel()
    for start in range(0, n, POOL):
        k = (offset + start // POOL * 7919) % POOL  # a different window of the pool for each block
        m = min(POOL, n - start)
        flat[start : start + m].copy_(pool[k : k + m])
    flat.mul_(std)


@torch.no_grad()
def _fill_(module: nn.Module, seed: int) -> nn.Module:
    """Materialise a meta-device module on the CPU with cheap, finite, scale-keeping values."""
    module = module.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(POOL, generator=g)
    pool = torch.cat([pool, pool])  # any window of POOL values is contiguous
    for i, sub in enumerate(module.modules()):
        for name, p in sub.named_parameters(recurse=False):
            if isinstance(sub, (nn.GroupNorm, nn.LayerNorm)):
                p.fill_(1.0 if name == "weight" else 0.0)
            elif p.dim() < 2:
                p.zero_()
            else:
                std = 0.02 if isinstance(sub, nn.Embedding) else 1 / math.sqrt(p[0].numel())
                _tile_(p, pool, (i * 104729) % POOL, std)
        for name, b in sub.named_buffers(recurse=False):
            if b.is_floating_point():
                b.zero_()
            elif name == "position_ids":
                b.copy_(torch.arange(b.shape[-1]).expand_as(b))
    return module.eval().requires_grad_(False)


def build_pipeline(layout: str = "sd-1.5", words: list[str] | None = None, width: str = "full", seed: int = 0):
    """A random-weight `StableDiffusionPipeline` with SD 1.5's VAE, text encoder and scheduler configs and the
    UNet of `layout`, its tokenizer learned from `words` (default: a few general words).

    Args:
        layout (`str`, defaults to `"sd-1.5"`): a `LAYOUTS` key (a catalog model's UNet block layout).
        words (`list[str]`, *optional*): the tokenizer's vocabulary (any text still tokenizes, byte by byte).
        width (`str`, defaults to `"full"`): `"tiny"` shrinks every width (same blocks) for tests.
        seed (`int`, defaults to 0): the weights' seed.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tinyworld.tokenizer import write_clip_tokenizer

    words = words or "a photograph of an astronaut riding a horse on the moon red apple blue cup".split()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(words, folder)))
    vae_cfg, text_cfg = _config("vae"), _config("text_encoder")
    if width == "tiny":
        vae_cfg, text_cfg = _tiny_vae(vae_cfg), _tiny_text(text_cfg)
        text_cfg["vocab_size"] = len(tokenizer)
    # Our tokenizer's special ids (the real vocabulary has 49,408 entries: the embedding keeps SD 1.5's size).
    text_cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    text_cfg.update(pad_token_id=tokenizer.pad_token_id)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config(layout, width))
        vae = AutoencoderKL.from_config(vae_cfg)
        text_encoder = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in text_cfg.items() if k != "architectures"}))
    pipe = StableDiffusionPipeline(
        unet=_fill_(unet, seed),
        vae=_fill_(vae, seed + 1),
        text_encoder=_fill_(text_encoder, seed + 2),
        tokenizer=tokenizer,
        scheduler=PNDMScheduler.from_config(_config("scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_snapshot(pipe, repo_id: str, hub_cache: str | Path) -> Path:
    """Save `pipe` (safetensors) into a Hugging Face cache folder as the snapshot of `repo_id`'s main branch.

    With `HF_HUB_CACHE=hub_cache` and `HF_HUB_OFFLINE=1`, `from_pretrained(repo_id)` then loads it like a
    downloaded model. Returns the snapshot folder.
    """
    root = Path(hub_cache) / f"models--{repo_id.replace('/', '--')}"
    folder = root / "snapshots" / SNAPSHOT
    pipe.save_pretrained(folder, safe_serialization=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(SNAPSHOT)
    return folder


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description="Write a random-weight stand-in of a catalog model into a hub cache.")
    p.add_argument("--layout", default="sd-1.5", choices=list(LAYOUTS))
    p.add_argument("--hub-cache", required=True, help="folder to use as HF_HUB_CACHE")
    p.add_argument("--width", default="full", choices=["full", "tiny"])
    args = p.parse_args(argv)
    folder = save_snapshot(build_pipeline(args.layout, width=args.width), CATALOG[args.layout].source, args.hub_cache)
    print(f"wrote {folder}: HF_HUB_CACHE={args.hub_cache} HF_HUB_OFFLINE=1 MODEL_ID={args.layout} python app.py")
    return folder


if __name__ == "__main__":
    main()
