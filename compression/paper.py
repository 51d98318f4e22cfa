"""The paper protocol: BK-SDM's MS-COCO evaluation, and when an FD may be called comparable to published FIDs.

BK-SDM (Kim et al., 2023) draws 30K MS-COCO val2014 captions at 512 x 512 with the PNDM scheduler, 25 steps,
guidance 7.5 and the safety checker off, saves them as JPEG (PIL's default quality, 75) under COCO's file names,
resizes them to 256 x 256 with PIL's default filter (bicubic) and saves them as JPEG again; FID is pytorch-fid
(Inception-v3 pool3, 2048-d) against the statistics of all 40,504 val2014 images resized the same way
(`real_im256.npz`); the CLIP score is open_clip ViT-g-14 (laion2b_s34b_b88k), the raw cosine averaged over the
images.

    python -m compression.sweep --preset paper --model sd-1.5 --prompts-file metadata.csv --prompt-column caption \\
        --prompts 30000 --reference-stats real_im256.npz --out runs/paper

The lab follows the drawing and the image preparation exactly (`bk_sdm_256`). An FD row is labelled comparable
to published numbers only when the whole protocol is met (`comparability` lists what is not); otherwise it says
"not comparable" and why. The CLIP score here is the catalog's judge (100 x max(cos, 0)), never comparable to
BK-SDM's ViT-g-14 cosine: open_clip and its weights are not part of this lab.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

PNDM = "PNDMScheduler"
PAPER = dict(
    steps=25,
    guidance=7.5,
    size=512,  # drawn at the model's native size (SD 1.x: 512)
    measured=256,
    min_n=10_000,  # the common floor for FID; BK-SDM uses 30,000
    reference_n=40_504,  # all of MS-COCO val2014
    features="Inception",  # Inception-v3 pool3 (torch-fidelity's port of the TF FID network)
    clip="open_clip ViT-g-14 (laion2b_s34b_b88k), raw cosine",
)
JPEG_QUALITY = 75  # PIL's default, what BK-SDM's `img.save(name.jpg)` used


def _jpeg(image: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def bk_sdm_256(images: np.ndarray) -> np.ndarray:
    """BK-SDM's image preparation: JPEG, resize to 256 x 256 (PIL bicubic, no crop), JPEG. uint8 in and out."""
    side = PAPER["measured"]
    out = np.empty((len(images), side, side, 3), np.uint8)
    for i, im in enumerate(images):
        small = _jpeg(Image.fromarray(np.asarray(im))).resize((side, side), Image.Resampling.BICUBIC)
        out[i] = np.asarray(_jpeg(small))
    return out


# How generated images are prepared before CLIP scores and features (PSNR/SSIM and the pixel judge always see
# the drawn images). "native": as drawn.
IMAGE_PROTOCOLS: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {"native": None, "bk-sdm-256": bk_sdm_256}


def measured_size(protocol: str, height: int, width: int) -> tuple[int, int]:
    """The size features are taken at under `protocol` (reference images are prepared to it)."""
    if protocol == "bk-sdm-256":
        return PAPER["measured"], PAPER["measured"]
    return height, width


def comparability(
    *,
    protocol: str,
    scheduler: str,
    steps: int,
    guidance: float,
    height: int,
    width: int,
    n: int,
    features: list[str],
    reference_kind: str | None,
    reference_n: int | None,
    safety_checker: bool = False,
) -> list[str]:
    """What keeps an FD from being comparable to BK-SDM's published FIDs (an empty list: nothing).

    Args:
        reference_kind (`str`, *optional*): "stats", "images" or None (no real reference).
        reference_n (`int`, *optional*): how many real images the reference summarises, where known.
        safety_checker (`bool`, defaults to False): the pipeline blanks flagged images (BK-SDM turns it off for
            the benchmark: black images would enter the FID).
    """
    p = PAPER
    why = []
    if protocol != "bk-sdm-256":
        why.append(f"images not prepared by BK-SDM's protocol ({protocol})")
    if scheduler != PNDM:
        why.append(f"{scheduler}, not {PNDM}")
    if steps != p["steps"]:
        why.append(f"{steps} steps, not {p['steps']}")
    if guidance != p["guidance"]:
        why.append(f"guidance {guidance}, not {p['guidance']}")
    if (height, width) != (p["size"], p["size"]):
        why.append(f"drawn at {width}x{height}, not {p['size']}x{p['size']}")
    if safety_checker:
        why.append("the safety checker is on (BK-SDM turns it off: blanked images enter the FID)")
    if n < p["min_n"]:
        why.append(f"N={n} < {p['min_n']:,}")
    if p["features"] not in features:
        why.append(
            f"no Inception-v3 pool3 features here (torch-fidelity and its weights are not installed): "
            f"FD on {', '.join(features) or 'no features'}"
        )
    if reference_kind != "stats" or reference_n is None or reference_n < p["reference_n"]:
        count = reference_n or "an unstated number of"
        got = "no reference" if reference_kind is None else f"{reference_kind} of {count} images"
        why.append(f"reference must be statistics of all {p['reference_n']:,} val2014 images ({got})")
    return why


def comparability_note(reasons: list[str]) -> str:
    """The label an FD row carries under the paper preset."""
    if not reasons:
        return "comparable to published FIDs (BK-SDM protocol met)"
    return "not comparable to published FIDs: " + "; ".join(reasons)
