"""The engine: a never-mutated baseline pipeline, a bounded LRU of compressed UNets, and same-seed pairs.

`generate_pair` draws the baseline and the compressed model from the same prompt, seed, steps, guidance and
size. How it keeps the comparison honest:

- the baseline pipeline is never touched: a compressed UNet is built layer by layer from the baseline's
  weights (`build_compressed`, in build.py: an empty skeleton copy, then each layer pruned and quantized as it is
  filled in, so memory never holds a second float UNet and nothing is computed twice), or, for registry entries
  without a per-layer form, a deep copy pruned then quantized; the variant pipeline is built from the baseline's
  components with that UNet (text encoder, VAE, tokenizer are shared, read-only);
- each image gets its own deep copy of the scheduler (diffusers schedulers keep per-run state) and its own
  `torch.Generator("cpu").manual_seed(seed)` (a used generator has advanced);
- the prompt is encoded once and handed to both sides, and the denoising loop is timed alone (text encoding
  and VAE decoding are the same work on both sides and would dilute the difference);
- non-finite latents or pixels are reported (`compressed_nonfinite`) instead of silently becoming a black
  image;
- speed is compared warm and paired (`latency_rounds`): after both images are drawn, both UNets run a short
  denoising loop in alternating rounds, as the benchmark does (`latency.py`); the images' own drawing times are
  kept but compare a cold (or cached) baseline with a warm compressed run.

Stopping: `generate_pair` and `generate_batch` take a `CancelToken` (cancel.py), checked after every denoising
step and between phases, so a cancelled call raises `Cancelled` within one step and frees its images and latents.
`image_steps` counts the denoising image-steps the engine has run (one image through one step: the unit the app
prices jobs in), as they finish, so a watcher can see work go on or stop.

Caches: compressed UNets by (model, spec) in a `UNetCache` (unet_cache.py), bounded in bytes and shared by the
engines of one model (an SD 1.5 UNet is 3.4 GB in fp32), each engine with its own count limit (`cache_size`);
a setting whose UNet cannot fit the byte budget even alone is refused before any work (`budget.BudgetError`),
its size worked out from shapes (`budget.estimate_bytes`). Baseline images by (model, prompt, negative prompt,
seed, steps, guidance, height, width), so moving a compression slider never redraws the baseline. Both are LRU;
generation itself runs outside the locks (modules are only read, schedulers and generators are per call).

Example:
    >>> pipe, info = load_pipeline("tiny-shapes")
    >>> engine = Engine(pipe, info.name)
    >>> result = engine.generate_pair("a red circle on the left on a white background", seed=0, steps=20,
    ...                               guidance=5.0, spec=CompressionSpec(prune_amount=0.3))
    >>> result.compressed_image.save("pruned.png"); result.compressed_cost.sparsity
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from ._text import short_repr as _short
from .budget import check_fits, estimate_bytes
from .build import (  # noqa: F401 - re-exported
    CompressedUNet,
    _storage,
    build_compressed,
    layerwise_supported,
    state_dict_digest,
)
from .cancel import CancelToken, check
from .cost import ModuleCost, module_cost
from .latency import COMPARE_STEPS, COMPARE_WARMUP, PairedLatency, paired_latency
from .pruning import PruneReport, apply_pruning_
from .quantization import apply_quantization_
from .spec import MAX_SEED, CompressionSpec
from .unet_cache import UNetCache

MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MIN_SIZE, MAX_SIZE = 8, 1024  # pixels; 1024x1024 on an SD 1.5 UNet is already past what a CPU can draw
SIZE_MULTIPLE = 8  # the VAE halves the side three times
BASELINE_CACHE_SIZE = 64

# A pipeline's tokenizer (a Rust `tokenizers` backend in transformers 5) stores its padding and truncation settings
# in the backend object and resets them on every call: while one thread encodes a prompt padded to 77 tokens,
# another thread's call with other settings (`_truncated` counts tokens unpadded) can make it return the 12
# unpadded ids, which changes the prompt embeddings and so both images of that request (seen in
# tests/test_reliability.py). Every use of a tokenizer here holds this lock: one for all engines, because several
# engines share one pipeline (the app's Compare and Sweep engines). Tokenizing and encoding take milliseconds.
_TOKENIZER_LOCK = threading.Lock()

# progress(fraction in [0, 1], description)
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class _Drawn:
    image: Image.Image
    seconds: float  # denoising loop only
    nonfinite: bool
    nsfw: bool


@dataclass(frozen=True)
class PairResult:
    """What `Engine.generate_pair` returns.

    Args:
        baseline_image, compressed_image (`PIL.Image.Image`): the two drawings (same prompt, seed, settings).
        spec (`CompressionSpec`): the spec that was applied.
        compression_seconds (`float`): time to build the compressed UNet; 0.0 when it came from the cache.
        compression_cached (`bool`): no compression work was done: the UNet came from the cache, or the spec
            is the identity (0% pruning, fp32) and the baseline's own UNet drew the image.
        baseline_seconds, compressed_seconds (`float`): how long each image's denoising loop took to draw. Not a
            speed comparison: the baseline may be cold or cached (then it reports the time measured when it was
            drawn) and the compressed side runs warm after it; see `latency`.
        baseline_cached (`bool`): the baseline image came from the cache (not redrawn).
        baseline_cost, compressed_cost (`ModuleCost`): UNet bytes, parameters, measured sparsity.
        prune_report (`PruneReport`, *optional*): measured sparsity over the pruning scope.
        prompt_truncated, negative_prompt_truncated (`bool`): the text was longer than the tokenizer's
            limit (77 CLIP tokens) and its tail was ignored by the model.
        compressed_nonfinite (`bool`): the compressed latents or image held NaN/inf (shown as black).
        baseline_nonfinite (`bool`): same for the baseline.
        baseline_nsfw, compressed_nsfw (`bool`): the pipeline's safety checker blanked the image.
        steps, guidance, seed, height, width: the settings used (height/width resolved from the model).
        latency (`PairedLatency`, *optional*): both UNets timed warm in alternating rounds of a
            `latency.COMPARE_STEPS`-step loop (`latency_rounds` of `generate_pair`); None when not asked for.
            `latency.round_ratio()` gives compressed / baseline with its interval.
        latency_cached (`bool`): `latency` was measured at an earlier comparison of this setting at this size and
            guidance (a step's latency depends on nothing else), not now.
    """

    baseline_image: Image.Image
    compressed_image: Image.Image
    spec: CompressionSpec
    compression_seconds: float
    compression_cached: bool
    baseline_seconds: float
    compressed_seconds: float
    baseline_cached: bool
    baseline_cost: ModuleCost
    compressed_cost: ModuleCost
    prune_report: PruneReport | None
    prompt_truncated: bool
    negative_prompt_truncated: bool
    baseline_nonfinite: bool
    compressed_nonfinite: bool
    baseline_nsfw: bool
    compressed_nsfw: bool
    steps: int
    guidance: float
    seed: int
    height: int
    width: int
    latency: PairedLatency | None = None
    latency_cached: bool = False


@dataclass(frozen=True)
class BatchResult:
    """What `Engine.generate_batch` returns: one setting's images for many prompts, as arrays.

    Args:
        images (`np.ndarray`): uint8 (n, H, W, 3); an image with non-finite values is black here and flagged.
        nonfinite (`np.ndarray`): bool (n,): the latents or pixels of that image held NaN/inf.
        nsfw (`np.ndarray`): bool (n,): the pipeline's safety checker blanked that image.
        seconds (`float`): denoising-loop wall time for the whole batch.
        spec (`CompressionSpec`): the spec that was applied.
        cost (`ModuleCost`): bytes, parameters and measured sparsity of the UNet that drew them.
        prune_report (`PruneReport`, *optional*): measured sparsity over the pruning scope.
        compression_seconds (`float`): time to build the compressed UNet; 0.0 when it came from the cache.
    """

    images: np.ndarray
    nonfinite: np.ndarray
    nsfw: np.ndarray
    seconds: float
    spec: CompressionSpec
    cost: ModuleCost
    prune_report: PruneReport | None
    compression_seconds: float


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


class Engine:
    """Baseline pipeline + bounded cache of compressed UNets; draws same-seed baseline/compressed pairs.

    Args:
        pipeline (`StableDiffusionPipeline`): the baseline. Never mutated; keep no other reference that
            mutates it either.
        model_name (`str`): part of every cache key (one engine per model; the name keeps keys distinct in
            logs and shared caches).
        cache_size (`int`, *optional*, defaults to 3): compressed UNets this engine keeps (0 keeps none, None
            no count limit: the byte budget alone bounds them).
        baseline_cache_size (`int`, defaults to 64): baseline images kept.
        cache (`UNetCache`, *optional*): the cache of compressed UNets, shared with the model's other engines so
            that one byte budget bounds them all; default a cache of this engine's own without a byte bound.
        pool (`str`, defaults to `"compare"`): this engine's part of a shared cache (its count limit applies there).
    """

    def __init__(
        self,
        pipeline,
        model_name: str,
        cache_size: int | None = 3,
        baseline_cache_size: int = BASELINE_CACHE_SIZE,
        cache: UNetCache | None = None,
        pool: str = "compare",
    ):
        for arg, value in (("cache_size", cache_size), ("baseline_cache_size", baseline_cache_size)):
            if not (value is None and arg == "cache_size") and (not _is_int(value) or value < 0):
                raise ValueError(f"{arg} must be an integer >= 0, got {_short(value)}")
        self.pipeline = pipeline
        self.model_name = model_name
        self.cache_size = cache_size
        self.baseline_cache_size = baseline_cache_size
        self.cache = cache if cache is not None else UNetCache()
        self.pool = pool
        self._estimates: OrderedDict[CompressionSpec, int] = OrderedDict()
        self._baselines: OrderedDict[tuple, _Drawn] = OrderedDict()
        self._timings: OrderedDict[tuple, PairedLatency] = OrderedDict()  # (model, spec, size, CFG, rounds)
        self._lock = threading.RLock()
        self._estimate_lock = threading.Lock()
        self._baseline_cost: ModuleCost | None = None
        self._steps_lock = threading.Lock()
        self._image_steps = 0

    @property
    def image_steps(self) -> int:
        """Denoising image-steps this engine has run so far (a batch of n images through one step counts n)."""
        return self._image_steps

    def _count_steps(self, n: int) -> None:
        with self._steps_lock:
            self._image_steps += n

    # ------------------------------------------------------------------------------------------- state

    @property
    def device(self) -> torch.device:
        """Where the baseline UNet runs."""
        return next(self.pipeline.unet.parameters()).device

    @property
    def baseline_cost(self) -> ModuleCost:
        """Bytes, parameters and sparsity of the baseline UNet (measured once)."""
        with self._lock:
            if self._baseline_cost is None:
                self._baseline_cost = module_cost(self.pipeline.unet)
            return self._baseline_cost

    def cached_specs(self) -> list[CompressionSpec]:
        """Specs whose compressed UNet this engine holds in the cache, least recently used first."""
        keys = self.cache.keys(self.pool)
        return [k[1] for k in keys if k[0] == self.model_name and isinstance(k[1], CompressionSpec)]

    def clear_cache(self) -> None:
        """Drop this engine's cached UNets and every baseline image."""
        with self._lock:
            self.cache.clear(self.pool)
            self._baselines.clear()
            self._timings.clear()

    def estimate_bytes(self, spec: CompressionSpec) -> int:
        """Bytes the compressed UNet for `spec` will hold, from shapes alone (`budget.estimate_bytes`); remembered
        per spec (the meta skeleton of an SD 1.5 UNet takes ~0.3 s)."""
        with self._estimate_lock:  # not the engine's lock: a check must not wait for a build (seconds on SD 1.5)
            if spec in self._estimates:
                return self._estimates[spec]
        nbytes = estimate_bytes(self.pipeline.unet, spec)  # shapes only: the baseline is only read
        with self._estimate_lock:
            self._estimates[spec] = nbytes
            while len(self._estimates) > 256:
                self._estimates.popitem(last=False)
        return nbytes

    def check_fits(self, spec: CompressionSpec) -> None:
        """Refuse `spec` if its compressed UNet alone is over the cache's byte budget.

        Raises:
            BudgetError: naming the setting, its estimated size and the budget.
        """
        check_fits(self.estimate_bytes(spec), self.cache.max_bytes, spec.label)

    def default_size(self) -> tuple[int, int]:
        """(height, width) the pipeline draws when none is given: UNet sample size x VAE scale factor."""
        pipe = self.pipeline
        side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        return side, side

    # ------------------------------------------------------------------------------------- compression

    def compress(
        self, spec: CompressionSpec, progress: Progress | None = None, cancel: CancelToken | None = None
    ) -> tuple[CompressedUNet, bool]:
        """The compressed UNet for `spec`, from the cache or built now (the one place a spec's type is checked:
        `generate_pair` and `generate_batch` come through here; the spec checked its own fields). `cancel` stops
        a recovery (minutes of training) between its steps; nothing unfinished is cached.

        Returns:
            `(entry, cached)`: cached is True when no compression work was done.

        Raises:
            BudgetError: the UNet alone would be over the cache's byte budget (checked before any work).
        """
        if not isinstance(spec, CompressionSpec):
            raise ValueError(f"spec must be a CompressionSpec, got {type(spec).__name__}")
        key = (self.model_name, spec)
        with self._lock:
            hit = self.cache.get(key, self.pool)
            if hit is not None:
                return hit, True
            if spec.is_identity:
                # Nothing to change: use the baseline's own UNet (read-only), no 3.4 GB copy for SD 1.5.
                return CompressedUNet(self.pipeline.unet, spec, None, 0.0, self.baseline_cost, "baseline"), True
            self.check_fits(spec)  # before any work: a setting that cannot fit alone is refused
            self.cache.reserve(self.estimate_bytes(spec), self.pool, self.cache_size)  # evict to make room first
            if progress:
                progress(0.0, f"compressing: {spec.label}")
            start = time.perf_counter()
            base = self.pipeline.unet
            if spec.recovers:  # prune -> fine-tune against the baseline -> quantize (recover.py)
                from .recover import build_recovered

                unet, report = build_recovered(self, spec, progress, cancel)
                built = "recovered"
            elif layerwise_supported(base, spec):
                unet, report = build_compressed(base, spec, self.baseline_cost.zeros)
                built = "layerwise"
            else:
                unet = copy.deepcopy(base)
                report = None
                if spec.prunes:
                    report = apply_pruning_(unet, spec.prune_method, spec.prune_amount, spec.prune_scope, spec.seed)
                unet = apply_quantization_(unet, spec.quant_mode, spec.bits)
                unet.eval().requires_grad_(False)
                built = "deepcopy"
            seconds = time.perf_counter() - start
            cost = module_cost(unet)
            entry = CompressedUNet(unet, spec, report, seconds, cost, built, time.perf_counter() - start - seconds)
            self.cache.put(key, entry, self.pool, self.cache_size)  # evicted UNets are freed once no result holds them
            return entry, False

    def prepared(
        self, name: str, load: Callable[[], nn.Module], estimate: Callable[[], int]
    ) -> tuple[CompressedUNet, bool]:
        """A UNet made elsewhere that draws over this baseline's VAE and text encoder (a distilled model's), kept in
        the cache under `name` like a compressed one: the same byte budget bounds it, the same LRU evicts it.

        Args:
            name (`str`): its cache name (a catalog name).
            load (`Callable[[], nn.Module]`): makes the UNet (on the baseline's device and dtype).
            estimate (`Callable[[], int]`): its bytes, worked out before loading (checked against the budget
                first; called only when the UNet is not cached).

        Returns:
            `(entry, cached)`: the entry's spec is the identity (nothing of the baseline was changed), `seconds`
            the load time.
        """
        key = (self.model_name, name)
        with self._lock:
            hit = self.cache.get(key, self.pool)
            if hit is not None:
                return hit, True
            nbytes = estimate()
            check_fits(nbytes, self.cache.max_bytes, name, "UNet", "Choose a smaller model, or raise APP_CACHE_MB.")
            self.cache.reserve(nbytes, self.pool, self.cache_size)
            start = time.perf_counter()
            unet = load()
            seconds = time.perf_counter() - start
            entry = CompressedUNet(unet, CompressionSpec(), None, seconds, module_cost(unet), "loaded")
            self.cache.put(key, entry, self.pool, self.cache_size)
            return entry, False

    # --------------------------------------------------------------------------------------- drawing

    def _variant(self, unet: nn.Module):
        """A pipeline over the baseline's components with `unet` and a fresh copy of the scheduler."""
        base = self.pipeline
        components = {**base.components, "unet": unet, "scheduler": copy.deepcopy(base.scheduler)}
        params = inspect.signature(type(base).__init__).parameters
        extra = {k: base.config[k] for k in params if k not in components and k in base.config}
        pipe = type(base)(**components, **extra)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _truncated(self, text: str) -> bool:
        tok = self.pipeline.tokenizer
        with _TOKENIZER_LOCK:
            return len(tok(text, truncation=False).input_ids) > tok.model_max_length

    @torch.no_grad()
    def _draw(
        self,
        unet: nn.Module,
        embeds,
        seed: int,
        steps: int,
        guidance: float,
        height: int,
        width: int,
        progress: Progress | None,
        span: tuple[float, float],
        what: str,
        cancel: CancelToken | None = None,
    ) -> _Drawn:
        pipe = self._variant(unet)
        prompt_embeds = embeds[0]
        lo, hi = span

        def on_step(i: int) -> None:
            if progress:
                progress(lo + (hi - lo) * (i + 1) / steps, f"{what}: step {i + 1}/{steps}")

        latents, seconds = self._denoise(
            pipe, embeds, torch.Generator("cpu").manual_seed(seed), steps, guidance, height, width, on_step, cancel
        )
        check(cancel)
        images, nonfinite, nsfw = self._decode(pipe, latents, prompt_embeds.dtype)
        return _Drawn(Image.fromarray(images[0]), seconds, bool(nonfinite[0]), bool(nsfw[0]))

    def _denoise(
        self,
        pipe,
        embeds,
        generator,
        steps: int,
        guidance: float,
        height: int,
        width: int,
        on_step: Callable[[int], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> tuple[torch.Tensor, float]:
        """Run the denoising loop alone (prompts already encoded, no VAE decode) and time it.

        After every step: count it, report it (`on_step(i)`), and raise `Cancelled` if `cancel` was cancelled.
        Raising from diffusers' `callback_on_step_end` leaves the loop at once; setting `pipe._interrupt` would
        only skip the remaining steps' work one by one. The variant pipeline, its scheduler copy and the latents
        belong to this call alone, so nothing shared is left half-updated.
        """
        prompt_embeds, negative_embeds = embeds
        images = len(prompt_embeds)

        def step_end(p, i, t, kwargs):
            self._count_steps(images)
            if on_step is not None:
                on_step(i)
            check(cancel)
            return {}

        check(cancel)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        latents = pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            generator=generator,
            output_type="latent",
            callback_on_step_end=step_end,
        ).images
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return latents, time.perf_counter() - start

    @torch.no_grad()
    def _decode(self, pipe, latents: torch.Tensor, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Latents -> uint8 images (n, H, W, 3), with per-image non-finite and NSFW flags.

        Non-finite latents or pixels would become 0 (black) in the uint8 conversion anyway; they are made
        black explicitly and flagged, so callers report them instead of scoring a silent black image.
        """
        n = len(latents)
        nonfinite = ~torch.isfinite(latents.reshape(n, -1)).all(1).cpu().numpy()
        vae = pipe.vae
        decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        decoded, nsfw = pipe.run_safety_checker(decoded, self.device, dtype)
        nsfw = np.array([bool(x) for x in nsfw], dtype=bool) if nsfw is not None else np.zeros(n, bool)
        arrays = pipe.image_processor.postprocess(decoded, output_type="np", do_denormalize=[not x for x in nsfw])
        nonfinite |= ~np.isfinite(arrays.reshape(n, -1)).all(1)
        arrays = np.nan_to_num(arrays, nan=0.0, posinf=1.0, neginf=0.0)
        images = (arrays * 255).round().clip(0, 255).astype(np.uint8)
        images[nonfinite] = 0
        return images, nonfinite, nsfw

    def validate(self, prompt, seed, steps, guidance, negative_prompt, height, width) -> tuple[int, int]:
        """Check `generate_pair`'s arguments; returns the resolved (height, width).

        Raises:
            ValueError: naming the valid range of the first bad argument.
        """
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be text, got {type(prompt).__name__}")
        if not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt must be text, got {type(negative_prompt).__name__}")
        if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {_short(seed)}")
        if not _is_int(steps) or not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer from 1 to {MAX_STEPS}, got {_short(steps)}")
        if not _is_real(guidance) or not math.isfinite(guidance) or not 0.0 <= guidance <= MAX_GUIDANCE:
            raise ValueError(f"guidance must be a finite number from 0 to {MAX_GUIDANCE:g}, got {_short(guidance)}")
        dh, dw = self.default_size()
        height = dh if height is None else height
        width = dw if width is None else width
        for name, v in (("height", height), ("width", width)):
            if not _is_int(v) or not MIN_SIZE <= v <= MAX_SIZE or v % SIZE_MULTIPLE:
                raise ValueError(
                    f"{name} must be a multiple of {SIZE_MULTIPLE} from {MIN_SIZE} to {MAX_SIZE} pixels, "
                    f"got {_short(v)}"
                )
        return int(height), int(width)

    def generate_pair(
        self,
        prompt: str,
        seed: int,
        steps: int,
        guidance: float,
        spec: CompressionSpec,
        negative_prompt: str = "",
        height: int | None = None,
        width: int | None = None,
        progress: Progress | None = None,
        entry: CompressedUNet | None = None,
        cancel: CancelToken | None = None,
        latency_rounds: int = 0,
    ) -> PairResult:
        """Draw the baseline and the compressed model with the same prompt, seed and settings.

        Args:
            prompt (`str`): the text prompt (longer than 77 CLIP tokens: truncated, and reported).
            seed (`int`): 0 to 2**32-1; each side gets a fresh CPU generator seeded with it.
            steps (`int`): denoising steps, 1 to 150.
            guidance (`float`): classifier-free guidance scale, 0 to 30 (<= 1 turns guidance off).
            spec (`CompressionSpec`): what to do to the UNet.
            negative_prompt (`str`, defaults to `""`): used only when guidance > 1.
            height, width (`int`, *optional*): multiples of 8 from 8 to 1024; default the model's native size.
            progress (`Callable[[float, str], None]`, *optional*): called with (fraction, description).
            entry (`CompressedUNet`, *optional*): draw this prepared UNet (`prepared`: a distilled model's) on
                the second side instead of compressing for `spec`; the result reports it as cached.
            cancel (`CancelToken`, *optional*): checked after every denoising step and between phases.
            latency_rounds (`int`, defaults to 0): after drawing, time both UNets warm in this many alternating
                rounds (`latency.COMPARE_ROUNDS` = 8 in the app: 18 one-step runs, +0.55-0.75 s on the embedded
                model's 1.25 s pair), once per setting, size and guidance on/off (later comparisons reuse it:
                `latency_cached`); 0 skips it. The images do not depend on it.

        Returns:
            `PairResult`.

        Raises:
            ValueError: an argument out of range (the message names the range).
            Cancelled: `cancel` was cancelled (within one denoising step of it; nothing is cached from the
                unfinished drawing).
        """
        height, width = self.validate(prompt, seed, steps, guidance, negative_prompt, height, width)
        seed, steps, guidance = int(seed), int(steps), float(guidance)
        if not _is_int(latency_rounds) or latency_rounds < 0:
            raise ValueError(f"latency_rounds must be an integer >= 0, got {_short(latency_rounds)}")

        check(cancel)
        prepared = None if entry is None else id(entry.unet)  # a distilled UNet: its own latency, not the spec's
        entry, compression_cached = (entry, True) if entry is not None else self.compress(spec, progress, cancel)
        check(cancel)
        base_key = (self.model_name, prompt, negative_prompt, seed, steps, guidance, height, width)
        with self._lock:
            baseline = self._baselines.get(base_key)
            if baseline is not None:
                self._baselines.move_to_end(base_key)

        pipe = self.pipeline
        with torch.no_grad(), _TOKENIZER_LOCK:
            embeds = pipe.encode_prompt(prompt, self.device, 1, guidance > 1.0, negative_prompt or None)
        baseline_cached = baseline is not None
        if baseline is None:
            baseline = self._draw(
                pipe.unet, embeds, seed, steps, guidance, height, width, progress, (0.0, 0.5), "baseline", cancel
            )
            with self._lock:
                if self.baseline_cache_size > 0:
                    self._baselines[base_key] = baseline
                    while len(self._baselines) > self.baseline_cache_size:
                        self._baselines.popitem(last=False)
        compressed = self._draw(
            entry.unet,
            embeds,
            seed,
            steps,
            guidance,
            height,
            width,
            progress,
            (0.5 if not baseline_cached else 0.0, 1.0),
            spec.label,
            cancel,
        )
        timing, timing_cached = None, False
        if latency_rounds:
            # A step's latency depends on the UNets, the size and whether guidance doubles the batch: not on the
            # prompt, seed or steps. Timed once per setting and size, like a compressed UNet is built once.
            key = (self.model_name, spec, prepared, height, width, guidance > 1.0, latency_rounds)
            with self._lock:
                timing = self._timings.get(key)
                if timing is not None:
                    self._timings.move_to_end(key)
            timing_cached = timing is not None
            if timing is None:
                if progress:
                    progress(1.0, f"timing both UNets warm: {latency_rounds} alternating rounds")
                timing = self._time_pair(
                    pipe.unet, entry.unet, embeds, seed, guidance, height, width, latency_rounds, cancel
                )
                with self._lock:
                    self._timings[key] = timing
                    while len(self._timings) > BASELINE_CACHE_SIZE:
                        self._timings.popitem(last=False)
        return PairResult(
            baseline_image=baseline.image.copy(),  # callers may draw on images; the cached one stays clean
            compressed_image=compressed.image,
            spec=spec,
            compression_seconds=0.0 if compression_cached else entry.seconds,
            compression_cached=compression_cached,
            baseline_seconds=baseline.seconds,
            compressed_seconds=compressed.seconds,
            baseline_cached=baseline_cached,
            baseline_cost=self.baseline_cost,
            compressed_cost=entry.cost,
            prune_report=entry.prune_report,
            prompt_truncated=self._truncated(prompt),
            negative_prompt_truncated=self._truncated(negative_prompt),
            baseline_nonfinite=baseline.nonfinite,
            compressed_nonfinite=compressed.nonfinite,
            baseline_nsfw=baseline.nsfw,
            compressed_nsfw=compressed.nsfw,
            steps=steps,
            guidance=guidance,
            seed=seed,
            height=height,
            width=width,
            latency=timing,
            latency_cached=timing_cached,
        )

    @torch.no_grad()
    def _time_pair(
        self,
        base: nn.Module,
        unet: nn.Module,
        embeds,
        seed: int,
        guidance: float,
        height: int,
        width: int,
        rounds: int,
        cancel: CancelToken | None = None,
    ) -> PairedLatency:
        """Both UNets, warm, in alternating rounds of a short denoising loop (same prompt, size and guidance as the
        pair; own scheduler copies and generators, so nothing the images depend on is touched). Its steps count
        in `image_steps` and `cancel` stops it like any drawing."""

        def timer(module: nn.Module):
            def run() -> float:
                pipe = self._variant(module)  # a fresh scheduler copy per run; built outside the timed loop
                generator = torch.Generator("cpu").manual_seed(seed)
                return self._denoise(pipe, embeds, generator, COMPARE_STEPS, guidance, height, width, None, cancel)[1]

            return run

        return paired_latency(timer(base), timer(unet), COMPARE_WARMUP, rounds, self.device)

    @torch.no_grad()
    def generate_batch(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int,
        guidance: float,
        spec: CompressionSpec,
        negative_prompt: str = "",
        height: int | None = None,
        width: int | None = None,
        cancel: CancelToken | None = None,
    ) -> BatchResult:
        """Draw one setting for many prompts in one batched denoising loop (sweeps: ~2x faster per image
        than one at a time on a CPU for the tiny model).

        Same rules as `generate_pair`: a fresh scheduler copy, one fresh `torch.Generator("cpu")` per image
        seeded with its seed (so image i starts from the same noise as `generate_pair(prompts[i], seeds[i])`),
        the baseline never touched, non-finite images flagged. No baseline is drawn or cached here: callers
        pass the identity spec (`CompressionSpec()`) for baseline images. A batch's numbers can differ from
        one-at-a-time drawing in the last bits (other kernel blocking), so compare batches with batches.

        Args:
            prompts (`list[str]`): n prompts (n >= 1).
            seeds (`list[int]`): n seeds, 0 to 2**32-1.
            steps, guidance, spec, negative_prompt, height, width, cancel: as in `generate_pair`.

        Returns:
            `BatchResult`.

        Raises:
            ValueError: an argument out of range, or prompts and seeds of different lengths.
            Cancelled: `cancel` was cancelled (within one denoising step of it).
        """
        if not isinstance(prompts, (list, tuple)) or not isinstance(seeds, (list, tuple)) or not prompts:
            raise ValueError("prompts and seeds must be non-empty lists")
        if len(prompts) != len(seeds):
            raise ValueError(f"one seed per prompt is needed, got {len(prompts)} prompts and {len(seeds)} seeds")
        for prompt, seed in zip(prompts, seeds):
            height, width = self.validate(prompt, seed, steps, guidance, negative_prompt, height, width)
        steps, guidance = int(steps), float(guidance)
        check(cancel)
        entry, cached = self.compress(spec, cancel=cancel)
        pipe = self._variant(entry.unet)
        cfg = guidance > 1.0
        negatives = [negative_prompt] * len(prompts) if cfg and negative_prompt else None
        with _TOKENIZER_LOCK:
            prompt_embeds, negative_embeds = pipe.encode_prompt(list(prompts), self.device, 1, cfg, negatives)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        latents, seconds = self._denoise(
            pipe, (prompt_embeds, negative_embeds), generators, steps, guidance, height, width, cancel=cancel
        )
        check(cancel)
        images, nonfinite, nsfw = self._decode(pipe, latents, prompt_embeds.dtype)
        return BatchResult(
            images, nonfinite, nsfw, seconds, spec, entry.cost, entry.prune_report, 0.0 if cached else entry.seconds
        )
