"""A tiny metric CLIP built in code (random weights) for tests of the measuring code paths.

It exercises exactly the loading and scoring code of `compression.metrics.MetricClip` (saved to a folder and
loaded back with `from_pretrained`), in a second. It knows nothing: tests that need a judge with an opinion
(matching caption beats a mismatched one) use the trained `assets/tiny-shapes-clip`.
"""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_clip(folder: Path, tokenizer_dir: Path, image_size: int = 32, seed: int = 0) -> Path:
    """Save a ~60k-parameter CLIPModel + CLIPProcessor (the shapes-world tokenizer) to `folder`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=image_size,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return Path(folder)
