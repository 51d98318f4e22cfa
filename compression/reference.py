"""Real data to measure against: a folder of your own images, or published statistics (mu, sigma).

    python -m compression.sweep --reference-dir data/val2014 --out runs/x        # FD and KID against the images
    python -m compression.sweep --reference-stats real_im256.npz --out runs/x   # FD against the statistics

Rows measured against it carry reference "real" (as the shapes world's rendered images do; a given reference
replaces those). Unlike the baseline, a reference set is independent of the generated images (other images,
another count), so its distances are the two-sample ones here, not `metrics.distance_estimates` (which pairs
image i of both sets).

Reference images are prepared by one stated protocol (`REFERENCE_PROTOCOL`): RGB, the shorter side resized to
the measured size with PIL's bicubic filter (antialiased), a centre crop to height x width; then the feature
extractor's own preprocessing, exactly as for generated images. A statistics file holds `mu` (d,) and `sigma`
(d, d) as pytorch-fid writes them (`python -m pytorch_fid --save-stats`), optionally `n` (how many images they
summarise); it applies to the extractor with d features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import metrics

REFERENCE_NAME = "real"
IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
REFERENCE_PROTOCOL = "shorter side -> size (PIL bicubic), centre crop"


def prepare_reference_image(image: Image.Image, height: int, width: int) -> np.ndarray:
    """One real image by `REFERENCE_PROTOCOL`: uint8 (height, width, 3)."""
    image = image.convert("RGB")
    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)))


def load_reference_images(folder: str | Path, height: int, width: int, limit: int | None = None) -> np.ndarray:
    """Every image file of `folder` (sorted by name, not recursive) prepared by `REFERENCE_PROTOCOL`.

    Raises:
        ValueError: no folder, or no image in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no reference folder at {str(folder)[:200]!r}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_TYPES)[:limit]
    if not files:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_TYPES)})")
    out = np.empty((len(files), height, width, 3), np.uint8)
    for i, p in enumerate(files):
        with Image.open(p) as im:
            out[i] = prepare_reference_image(im, height, width)
    return out


@dataclass
class RealReference:
    """A real reference distribution: per-extractor features (from images) or statistics (from a file).

    Args:
        source (`str`): where it came from (a folder or a file), for notes and the report.
        digest (`str`): content digest: other images or statistics are other sweep cells.
        features (`dict[str, np.ndarray]`): extractor name -> (m, d) features of the reference images.
        stats (`dict[str, tuple]`): extractor name -> (mu, sigma) where only statistics are known.
        n_ref (`int`, *optional*): how many images the reference summarises (None: the file does not say).
        note (`str`): added to every row (e.g. whether an FD is comparable to published numbers).
    """

    source: str
    digest: str
    features: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    n_ref: int | None = None
    note: str = ""

    def signature(self) -> dict:
        return {"reference": self.digest, "note": self.note}

    def estimates(self, per: dict[str, np.ndarray], nonfinite: np.ndarray, n_boot: int) -> list[metrics.Estimate]:
        """FD (and KID, from images) of each extractor's generated features against the reference."""
        out = []
        for key, gen in per.items():
            if not key.startswith("feat:"):
                continue
            name = key[len("feat:") :]
            gen = gen[~nonfinite]
            if len(gen) < 2:
                continue
            if name in self.features:
                out += independent_distance_estimates(self.features[name], gen, name, n_boot=n_boot)
            elif name in self.stats:
                out.append(stats_distance_estimate(*self.stats[name], gen, name, self.n_ref, n_boot=n_boot))
        src = f"against {self.source}"
        return [metrics.Estimate(**{**e.to_dict(), "note": _join(e.note, src, self.note)}) for e in out]


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def reference_from_images(images: np.ndarray, extractors: Sequence, source: str, note: str = "") -> RealReference:
    """A reference from prepared images (see `load_reference_images`): features of every extractor."""
    feats = {ext.name: metrics.extract_features(ext, images) for ext in extractors}
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
    return RealReference(source, digest, features=feats, n_ref=len(images), note=note)


def reference_from_stats(path: str | Path, extractors: Sequence, note: str = "") -> RealReference:
    """A reference from a pytorch-fid-style .npz (mu, sigma[, n]) for the extractor with that many features.

    Raises:
        ValueError: no file, no mu/sigma in it, shapes that disagree, or no extractor of that width (the
            message names the widths on offer: 2048-d statistics need Inception-v3 pool3 features).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no statistics file at {str(path)[:200]!r}")
    with np.load(path) as data:
        if "mu" not in data.files or "sigma" not in data.files:
            raise ValueError(f"{path.name} needs arrays 'mu' and 'sigma' (has {', '.join(data.files)})")
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        n_ref = int(data["n"]) if "n" in data.files else None
    d = mu.shape[0]
    if mu.ndim != 1 or sigma.shape != (d, d):
        raise ValueError(f"{path.name}: mu must be (d,) and sigma (d, d), got {mu.shape} and {sigma.shape}")
    match = [e for e in extractors if int(e.num_features) == d]
    if not match:
        have = ", ".join(f"{e.name} ({e.num_features}-d)" for e in extractors) or "none"
        need = " (Inception-v3 pool3: needs torch-fidelity's weights)" if d == 2048 else ""
        raise ValueError(f"{path.name} holds {d}-d statistics{need}; features on offer: {have}")
    digest = hashlib.sha256(mu.tobytes() + sigma.tobytes()).hexdigest()[:16]
    return RealReference(path.name, digest, stats={match[0].name: (mu, sigma)}, n_ref=n_ref, note=note)


def write_stats(path: str | Path, features: np.ndarray) -> Path:
    """Save (mu, sigma, n) of (n, d) features as a pytorch-fid-style .npz (with n, which pytorch-fid omits)."""
    features = np.asarray(features, dtype=np.float64)
    np.savez(path, mu=features.mean(0), sigma=np.cov(features, rowvar=False), n=len(features))
    return Path(path)


# ------------------------------------------------------------------------------------- two-sample distances


def _kid_two_sample(kxx, kyy, kxy, wx, wy) -> np.ndarray:
    """Unbiased MMD^2 (KID's kernel) of independent sets, for resampling counts wx (B, m) and wy (B, n)."""

    def within(k, w):
        k = k.clone()
        k.fill_diagonal_(0)
        return ((w @ k) * w).sum(1) / (w.sum(1) ** 2 - (w * w).sum(1))

    cross = ((wx @ kxy) * wy).sum(1) / (wx.sum(1) * wy.sum(1))
    return (within(kxx, wx) + within(kyy, wy) - 2 * cross).numpy()


def independent_distance_estimates(
    reference: np.ndarray, generated: np.ndarray, feature_name: str, n_boot: int = metrics.N_BOOT, seed: int = 0
) -> list[metrics.Estimate]:
    """FD and KID between two independent feature sets (m, d) and (n, d). N is the generated count; the note
    gives the reference's.

    KID: bootstrap 95% interval, both sets resampled, each on its own. FD: `metrics.fd_estimate` with independent
    sets (bias-corrected with a jackknife interval from 5 x d images in each set; below, no interval).
    """
    ref, gen = np.asarray(reference, np.float64), np.asarray(generated, np.float64)
    m, n = len(ref), len(gen)
    rng = np.random.default_rng(seed)
    ir, ig = rng.integers(0, m, (n_boot, m)), rng.integers(0, n, (n_boot, n))
    r, g = torch.from_numpy(ref), torch.from_numpy(gen)
    k = metrics._poly_kernel
    kxx, kyy, kxy = k(r, r), k(g, g), k(r, g)
    ones = (torch.ones(1, m, dtype=torch.float64), torch.ones(1, n, dtype=torch.float64))
    kid = float(_kid_two_sample(kxx, kyy, kxy, *ones)[0])
    wx = torch.from_numpy(np.stack([np.bincount(row, minlength=m) for row in ir]).astype(np.float64))
    wy = torch.from_numpy(np.stack([np.bincount(row, minlength=n) for row in ig]).astype(np.float64))
    kid_lo, kid_hi = metrics._percentile_interval(_kid_two_sample(kxx, kyy, kxy, wx, wy))
    ref_note = f"{m} reference images"
    return [
        metrics.fd_estimate(ref, gen, feature_name, REFERENCE_NAME, paired=False, seed=seed, note=ref_note),
        metrics.Estimate(
            f"KID-{feature_name}", kid, float(kid_lo), float(kid_hi), n, REFERENCE_NAME, "", False, ref_note
        ),
    ]


def stats_distance_estimate(
    mu: np.ndarray,
    sigma: np.ndarray,
    generated: np.ndarray,
    feature_name: str,
    n_ref: int | None,
    n_boot: int = metrics.N_BOOT,
    seed: int = 0,
) -> metrics.Estimate:
    """FD of generated features (n, d) against fixed statistics (`metrics.fd_estimate`: the jackknife splits the
    generated set only; the statistics' own sampling error is not in the interval). No KID: it needs the
    reference's features. `n_boot` is unused (kept for the callers' signature)."""
    note = f"statistics of {n_ref} images" if n_ref else "statistics of an unstated number of images"
    return metrics.fd_estimate((mu, sigma), generated, feature_name, REFERENCE_NAME, seed=seed, note=note)
