"""Helpers shared by tests/test_reliability.py and tests/test_load.py: pixel hashes, digests of the baseline
pipeline, a baseline redrawn with no cache, a thread that keeps redrawing it, and the process's resident memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import threading

import numpy as np

from compression import CompressionSpec, Engine, state_dict_digest

PROMPT = "a red circle on the left on a blue background"
STEPS = 2  # only determinism and isolation are checked, never image quality
GUIDANCE = 4.0


def pixels_sha256(image) -> str:
    """What the app echoes as baseline_sha256 / compressed_sha256 (app_service.image_sha256)."""
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def digests(pipe) -> dict:
    """state_dict digests of the UNet, VAE and text encoder, and the scheduler's config."""
    return {
        **{n: state_dict_digest(getattr(pipe, n)) for n in ("unet", "vae", "text_encoder")},
        "scheduler": json.dumps(dict(pipe.scheduler.config), sort_keys=True, default=str),
    }


def redraw(
    pipe, prompt: str = PROMPT, seed: int = 0, spec: CompressionSpec | None = None, steps: int = STEPS
) -> tuple[str, str]:
    """(baseline, compressed) pixel hashes drawn now by a fresh engine with no cache at all."""
    fresh = Engine(pipe, "reference", cache_size=0, baseline_cache_size=0)
    r = fresh.generate_pair(prompt, seed, steps, GUIDANCE, spec or CompressionSpec())
    return pixels_sha256(r.baseline_image), pixels_sha256(r.compressed_image)


def redraw_baseline(pipe, seed: int = 0) -> str:
    """The baseline of (PROMPT, seed) drawn now, as a pixel hash."""
    return redraw(pipe, seed=seed)[0]


class Watcher:
    """A thread that redraws one baseline image (no cache) every `pause` s until stopped; `drawn` holds the hashes."""

    def __init__(self, pipe, pause: float = 0.2):
        self.pipe, self.pause = pipe, pause
        self.drawn: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.drawn.append(redraw_baseline(self.pipe))
            self._stop.wait(self.pause)  # watches without taking a core from the storm

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; psutil is not a dependency), after handing freed heap memory
    back to the OS where glibc allows it: threads get their own malloc arenas, and memory freed in them stays
    resident until trimmed, which would read as growth that no live object holds."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
