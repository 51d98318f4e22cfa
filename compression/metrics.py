"""Quality metrics: CLIP score, Frechet distance and KID on pluggable features, same-seed PSNR/SSIM.

Images enter every function as uint8 arrays (n, H, W, 3) or lists of PIL images. Each distance is named by the
feature extractor that produced it ("FD-tinyCLIP", "KID-tinyCLIP"): a Frechet distance on tiny-CLIP features is
not Inception FID, and numbers from different extractors must never share an axis.

Why an own CLIP score: torchmetrics' `CLIPScore` accepts only model names containing "openai" and, with
transformers 5, breaks on `get_image_features` returning an output object instead of a tensor. The definition
is the same: 100 * max(cos(image, text), 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

Images = np.ndarray | list[Image.Image]


def as_uint8(images: Images) -> np.ndarray:
    """uint8 (n, H, W, 3) from a list of PIL images or an array (float arrays are taken as [0, 1])."""
    if isinstance(images, np.ndarray):
        arr = images
    else:
        arr = np.stack([np.asarray(im.convert("RGB")) for im in images])
    if arr.dtype != np.uint8:
        arr = (np.nan_to_num(arr.astype(np.float64), nan=0.0).clip(0, 1) * 255).round().astype(np.uint8)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected images of shape (n, H, W, 3), got {arr.shape}")
    return arr


class MetricClip:
    """A transformers CLIPModel with its processor, used as a judge: embeddings, CLIP score, zero-shot.

    Args:
        path (`str` or `Path`): a local folder with a CLIPModel and its processor (safetensors).
        name (`str`, defaults to "tinyCLIP"): how metrics computed with it are labelled.

    Example:
        >>> judge = MetricClip("assets/tiny-shapes-clip")
        >>> judge.clip_score(images, ["a red circle on the left on a blue background"] * len(images))
    """

    def __init__(self, path: str | Path, name: str = "tinyCLIP", device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.name = name
        self.device = device
        self.model = CLIPModel.from_pretrained(path, use_safetensors=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(path)

    @torch.no_grad()
    def image_embeds(self, images: Images, batch: int = 256) -> torch.Tensor:
        """L2-normalised projected image embeddings, (n, d)."""
        arr = as_uint8(images)
        out = []
        for i in range(0, len(arr), batch):
            pixels = self.processor(images=list(arr[i : i + batch]), return_tensors="pt").pixel_values
            feats = self.model.get_image_features(pixel_values=pixels.to(self.device)).pooler_output
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)

    @torch.no_grad()
    def text_embeds(self, texts: list[str], batch: int = 512) -> torch.Tensor:
        """L2-normalised projected text embeddings, (n, d); texts longer than the model's window are cut."""
        out = []
        for i in range(0, len(texts), batch):
            tok = self.processor.tokenizer(texts[i : i + batch], padding=True, truncation=True, return_tensors="pt")
            feats = self.model.get_text_features(**{k: v.to(self.device) for k, v in tok.items()}).pooler_output
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out)

    def clip_score(self, images: Images, texts: list[str]) -> np.ndarray:
        """Per-image CLIP score, 100 * max(cos(image_i, text_i), 0), as torchmetrics defines it."""
        if len(as_uint8(images)) != len(texts):
            raise ValueError("clip_score needs one text per image")
        cos = (self.image_embeds(images) * self.text_embeds(texts)).sum(-1)
        return (100 * cos.clamp(min=0)).numpy()

    def choose(self, images: Images, candidates: list[list[str]]) -> np.ndarray:
        """Zero-shot: for image i, the index of the best-matching text among candidates[i]."""
        img = self.image_embeds(images)
        flat = [t for group in candidates for t in group]
        txt = self.text_embeds(flat)
        picks, start = [], 0
        for i, group in enumerate(candidates):
            sims = txt[start : start + len(group)] @ img[i]
            picks.append(int(sims.argmax()))
            start += len(group)
        return np.array(picks)

    def feature_extractor(self) -> "ClipImageFeatures":
        return ClipImageFeatures(self)


class ClipImageFeatures(torch.nn.Module):
    """A torchmetrics-compatible feature extractor: uint8 (n, 3, H, W) -> CLIP image embeddings (n, d)."""

    def __init__(self, clip: MetricClip):
        super().__init__()
        self.clip = clip
        self.num_features = clip.model.config.projection_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
        return self.clip.image_embeds(arr).double()


def _chw(images: Images) -> torch.Tensor:
    return torch.from_numpy(as_uint8(images)).permute(0, 3, 1, 2).contiguous()


def frechet_distance(features: torch.nn.Module, reference: Images, generated: Images) -> float:
    """Frechet distance between the feature distributions of two image sets (torchmetrics FID, own features)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=features, normalize=False)
    fid.update(_chw(reference), real=True)
    fid.update(_chw(generated), real=False)
    return float(fid.compute())


def kernel_inception_distance(features: torch.nn.Module, reference: Images, generated: Images, subsets: int = 50) -> tuple[float, float]:
    """KID (unbiased MMD^2 with a cubic polynomial kernel) mean and std over random subsets."""
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(as_uint8(reference)), len(as_uint8(generated)))
    kid = KernelInceptionDistance(feature=features, subsets=subsets, subset_size=max(2, min(1000, n)), normalize=False)
    kid.update(_chw(reference), real=True)
    kid.update(_chw(generated), real=False)
    mean, std = kid.compute()
    return float(mean), float(std)
