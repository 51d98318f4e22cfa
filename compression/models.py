"""The model catalog and the one loader for every pipeline, local or from the hub.

`CATALOG` maps a short name to a local folder or a hub id. The embedded "tiny-shapes" model lives in `assets/`
and loads through exactly the same `DiffusionPipeline.from_pretrained` call as a hub model, so tests of the
local path cover the hub path's code too. Safety rules, whatever the source:

- `use_safetensors=True` and never remote code: a folder holding only pickles (.ckpt, .bin, .pt, .pth), which
  can run arbitrary code when loaded, a single-file checkpoint, and a model shipping its own .py classes are
  refused with a clear error (`UnsafeModelError`);
- names outside the catalog are refused unless `ALLOW_ANY_MODEL=1` is set (a public Space should not load
  whatever a visitor types).

Device and dtype policy: CPU runs fp32 (fp16 on this CPU is ~50x slower, bf16 is offered as a compression
mode); CUDA runs fp16, the usual setting for SD 1.x. The environment variable `MODEL_ID` picks the model
(a catalog name, or with `ALLOW_ANY_MODEL=1` any hub id or folder); the default is "tiny-shapes".

Example:
    >>> pipe, info = load_pipeline("tiny-shapes")
    >>> info.name, info.device, info.dtype
    ('tiny-shapes', 'cpu', torch.float32)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import world
from ._text import short_repr as _short
from .prompt_reader import PromptReading, read_shapes_prompt

REPO_ROOT = Path(__file__).resolve().parent.parent
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")


class UnsafeModelError(ValueError):
    """A model refused because loading it could run code: pickled weights, or custom code shipped with it.

    Its message is plain text that names the model (a folder by its last component), never a server path; the
    app shows it as is.
    """


@dataclass(frozen=True)
class MetricModels:
    """The models that score a catalog model's images.

    Args:
        judge (`str`): CLIP model (folder or hub id) for the CLIP score; its image features give an FD too.
        judge_name (`str`): the judge's short name in tables ("tinyCLIP", "CLIP-B/16").
        features (`tuple[tuple[str, str], ...]`, defaults to `()`): more image feature models, (hub id, label).
        inception (`bool`, defaults to False): add Inception features when torch-fidelity is installed.
        real_reference (`bool`, defaults to False): real images of the model's world can be drawn (the shapes
            world), so distances are measured against real data, not only against the baseline.
    """

    judge: str
    judge_name: str
    features: tuple[tuple[str, str], ...] = ()
    inception: bool = False
    real_reference: bool = False


# SD-style hub models: openai CLIP and DINOv2 where their weights are cached (or may be downloaded).
HUB_METRICS = MetricModels(
    "openai/clip-vit-base-patch16", "CLIP-B/16", (("facebook/dinov2-base", "DINOv2-B"),), inception=True
)
TINY_METRICS = MetricModels(str(REPO_ROOT / "assets" / "tiny-shapes-clip"), "tinyCLIP", real_reference=True)

GENERAL_EXAMPLES = (
    "a photograph of an astronaut riding a horse on the moon",
    "a watercolor painting of a lighthouse at dusk",
    "a red apple next to a blue cup on a wooden table",
    "a corgi wearing sunglasses, studio photo",
)
TINY_EXAMPLES = (
    "a red circle on the left on a blue background",
    "a yellow triangle at the top on a black background",
    "a green square in the center on a white background",
    "a purple circle at the bottom on a orange background",
    "a white triangle on the right on a green background",
)
TINY_GRAMMAR = (
    f"The tiny model knows one sentence: *a [colour] [shape] [position] on a [colour] background* · "
    f"colours: {', '.join(world.COLOURS)} · shapes: {', '.join(world.SHAPES)} · positions: "
    f'{", ".join(world.POSITIONS)}. Case, punctuation, "an" and short forms (*red circle, left, blue background*) '
    "are read into it; the page shows what it read."
)


@dataclass(frozen=True)
class CatalogEntry:
    """A pipeline the lab knows, with its own facts (adding a model is adding one entry).

    Args:
        name (`str`): short name (the UI and `MODEL_ID` use it).
        source (`str`): a local folder (absolute) or a hub id.
        description (`str`): one line for the UI.
        local (`bool`): True when `source` is a folder shipped with the repo (works offline).
        prompt_set (`str`, defaults to `"general"`): the sweep's prompt set (a file under assets/prompts/).
        steps (`int`, defaults to 25): default denoising steps.
        guidance (`float`, defaults to 7.5): default guidance scale (the usual SD value).
        side (`int`, defaults to 512): native image side in pixels (before the pipeline is loaded).
        examples (`tuple[str, ...]`): example prompts the UI offers.
        grammar (`str`, defaults to `""`): a note on the only prompts the model understands (markdown).
        safety_checker (`bool`, defaults to True): load the pipeline's NSFW safety checker.
        metrics (`MetricModels`): the models that score its images.
        licence (`str`, defaults to `""`): the weights' licence, as its model card states it.
        compare_with (`str`, defaults to `""`): for a distilled UNet, the catalog model whose VAE, text encoder
            and tokenizer it was trained against: the app's distilled comparison draws that model and this UNet
            over them, same prompt and seed.
        gpu_image_step_s (`float`, defaults to 0.05): GPU seconds of one image through one denoising step at the
            native size (an SD 1.x UNet at 512 px in fp16, with a 2x margin); sizes the ZeroGPU duration.
        gpu_build_s (`float`, defaults to 20.0): GPU seconds to compress (or load) one UNet, with a margin.
        prompt_reader (`Callable[[str], PromptReading]`, *optional*): reads a typed prompt into the model's
            grammar before the tokenizer (see prompt_reader.py); None (hub models): prompts go in as typed.
    """

    name: str
    source: str
    description: str
    local: bool
    prompt_set: str = "general"
    steps: int = 25
    guidance: float = 7.5
    side: int = 512
    examples: tuple[str, ...] = GENERAL_EXAMPLES
    grammar: str = ""
    safety_checker: bool = True
    metrics: MetricModels = HUB_METRICS
    licence: str = ""
    compare_with: str = ""
    gpu_image_step_s: float = 0.05
    gpu_build_s: float = 20.0
    prompt_reader: Callable[[str], PromptReading] | None = None

    def read_prompt(self, text: str) -> PromptReading:
        """What this model reads from `text` (as typed, without a reader)."""
        return self.prompt_reader(text) if self.prompt_reader is not None else PromptReading(text, text, True)


OPENRAIL = "CreativeML OpenRAIL-M"
# The distilled SD 1.x UNets people compare against (BK-SDM: Kim et al., ECCV 2024, distilled from SD v1.4, whose
# VAE and text encoder are SD 1.5's; Segmind's SD-Small / SD-Tiny follow BK-SDM's block removal, distilled from
# Realistic Vision V4.0, an SD 1.5 fine-tune). UNet parameters as their model cards give them.
_DISTILLED = (
    (
        "bk-sdm-base",
        "nota-ai/bk-sdm-base",
        "BK-SDM-Base: SD 1.4's UNet with one ResNet + attention pair removed per stage, distilled (0.58B UNet "
        "parameters vs 0.86B).",
    ),
    (
        "bk-sdm-small",
        "nota-ai/bk-sdm-small",
        "BK-SDM-Small: BK-SDM-Base without the mid-block (0.49B UNet parameters).",
    ),
    (
        "bk-sdm-tiny",
        "nota-ai/bk-sdm-tiny",
        "BK-SDM-Tiny: BK-SDM-Small without the innermost down and up stages (0.33B UNet parameters).",
    ),
    (
        "segmind-small-sd",
        "segmind/small-sd",
        "Segmind SD-Small: BK-SDM-Base's block layout distilled from Realistic Vision V4.0 (~35% fewer UNet "
        "parameters).",
    ),
    (
        "segmind-tiny-sd",
        "segmind/tiny-sd",
        "Segmind SD-Tiny: BK-SDM-Tiny's block layout distilled from Realistic Vision V4.0 (~55% fewer UNet "
        "parameters).",
    ),
)


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            "tiny-shapes",
            str(REPO_ROOT / "assets" / "tiny-shapes-sd"),
            "Embedded tiny latent diffusion model trained on the 'shapes' world (64x64, runs on CPU).",
            local=True,
            prompt_set="tiny-shapes",
            # 64x64, and the model follows its one grammar best at guidance 4
            steps=20,
            guidance=4.0,
            side=64,
            examples=TINY_EXAMPLES,
            grammar=TINY_GRAMMAR,
            # it only draws coloured shapes: no NSFW filter to run (and none was trained for it)
            safety_checker=False,
            metrics=TINY_METRICS,
            gpu_image_step_s=0.01,  # 2.8M parameters at 64 px: far under a GPU's launch overhead per step
            gpu_build_s=5.0,
            # trained on one sentence only: what people type is read into it, visibly
            prompt_reader=read_shapes_prompt,
        ),
        CatalogEntry(
            "sd-1.5",
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "Stable Diffusion 1.5 from the hub (needs network and a few GB; a GPU for interactive speed).",
            local=False,
            licence=OPENRAIL,
        ),
        # 512 px, 25 steps, guidance 7.5: the setting of BK-SDM's own evaluation (PNDM, 25 steps).
        *(
            CatalogEntry(n, src, text, local=False, licence=OPENRAIL, compare_with="sd-1.5")
            for n, src, text in _DISTILLED
        ),
    )
}
DISTILLED = [name for name, e in CATALOG.items() if e.compare_with]
DEFAULT_MODEL = "tiny-shapes"


@dataclass(frozen=True)
class ModelInfo:
    """What `load_pipeline` loaded and how.

    Args:
        name (`str`): catalog name, or the raw id/path when `ALLOW_ANY_MODEL=1` let it through.
        source (`str`): the folder or hub id passed to `from_pretrained`.
        device (`str`): "cpu" or "cuda".
        dtype (`torch.dtype`): the pipeline's dtype.
    """

    name: str
    source: str
    device: str
    dtype: torch.dtype


def _any_model_allowed() -> bool:
    return os.environ.get("ALLOW_ANY_MODEL", "").strip().lower() in ("1", "true", "yes")


def resolve_model(name: str | None = None) -> CatalogEntry:
    """The catalog entry for `name` (default: env `MODEL_ID`, else "tiny-shapes").

    Outside the catalog, only with `ALLOW_ANY_MODEL=1`: an existing folder is taken as local, anything else as
    a hub id.

    Raises:
        ValueError: unknown name (listing the catalog) while `ALLOW_ANY_MODEL` is not set.
    """
    name = name or os.environ.get("MODEL_ID") or DEFAULT_MODEL
    if name in CATALOG:
        return CATALOG[name]
    if not _any_model_allowed():
        raise ValueError(
            f"unknown model {_short(name)}; known: {', '.join(CATALOG)} "
            "(set ALLOW_ANY_MODEL=1 to load another hub id or folder)"
        )
    if Path(name).suffix.lower() in PICKLE_SUFFIXES + (".safetensors",) or Path(name).expanduser().is_file():
        # from_pretrained would only say "neither a valid local path nor a valid repo id"
        raise UnsafeModelError(
            f"refusing {_short(Path(name).name)}: single-file checkpoints are not loaded (.ckpt/.bin/.pt files are "
            "pickles, which can run code when loaded); give a diffusers folder or hub id with safetensors weights"
        )
    local = Path(name).expanduser().is_dir()
    source = str(Path(name).expanduser().resolve()) if local else name
    return CatalogEntry(name, source, "a model outside the catalog (ALLOW_ANY_MODEL=1)", local=local)


def default_device() -> str:
    """ "cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """fp16 on CUDA (the usual SD setting), fp32 on CPU (CPU fp16 kernels are ~50x slower)."""
    return torch.float16 if device.startswith("cuda") else torch.float32


def check_local_folder(folder: str | Path) -> Path:
    """Refuse a missing folder, or one whose weights are only pickles.

    Raises:
        FileNotFoundError: the folder or its `model_index.json` does not exist.
        UnsafeModelError: no .safetensors weights, or a component folder whose weights are only pickles.
    """
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no diffusers pipeline at {folder} (model_index.json missing). The embedded model is built by the "
            "repo's training script; or pick another model with MODEL_ID."
        )
    files = [p for p in folder.rglob("*") if p.is_file()]
    if not any(p.suffix == ".safetensors" for p in files):
        raise UnsafeModelError(f"refusing {folder.name}: it has no .safetensors weights")
    # Per component folder (unet/, vae/, ...): pickles without a safetensors twin are refused, naming it.
    pickled = sorted({p.parent for p in files if p.suffix in PICKLE_SUFFIXES})
    unsafe = [d for d in pickled if not any(q.suffix == ".safetensors" for q in d.iterdir())]
    if unsafe:
        names = ", ".join(str(d.relative_to(folder)) or "." for d in unsafe[:4])
        raise UnsafeModelError(
            f"refusing {folder.name}: {names} has only pickled weights (.bin/.ckpt/.pt), which can run code when "
            "loaded; convert them to safetensors first"
        )
    return folder


def load_pipeline(name: str | None = None, device: str | None = None, dtype: torch.dtype | None = None):
    """Load a catalog pipeline with the safety rules and the device/dtype policy.

    Args:
        name (`str`, *optional*): catalog name; default env `MODEL_ID`, else "tiny-shapes".
        device (`str`, *optional*): "cpu" or "cuda"; default: CUDA when available.
        dtype (`torch.dtype`, *optional*): default fp32 on CPU, fp16 on CUDA.

    Returns:
        `(pipeline, ModelInfo)`; the pipeline's progress bar is off and its modules are in eval mode.

    Raises:
        ValueError: unknown name.
        UnsafeModelError: a single-file checkpoint, a pickle-only folder, or a model that ships custom code.
        FileNotFoundError: a local model that has not been built.
    """
    from diffusers import (
        DiffusionPipeline,  # heavy import, kept out of `import compression.models`
    )

    entry = resolve_model(name)
    if entry.local:
        check_local_folder(entry.source)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    kwargs = {}
    if not entry.safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = DiffusionPipeline.from_pretrained(
            entry.source, use_safetensors=True, trust_remote_code=False, dtype=dtype, **kwargs
        )
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        # diffusers refuses (before importing anything) and names the file with its full path: say it plainly.
        raise UnsafeModelError(
            f"refusing {_short(Path(entry.name).name or entry.name)}: it ships custom code (a pipeline or component "
            "class in a .py file) that would run when loaded; only diffusers' and transformers' own classes are "
            "loaded (trust_remote_code is never set)"
        ) from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    return pipe, ModelInfo(entry.name, entry.source, device, dtype)


def unet_config(name: str) -> dict:
    """The UNet config of a catalog model (its `unet/config.json`; from the hub, only that small file is fetched).

    Raises:
        ValueError: unknown name. FileNotFoundError: a local model that has not been built.
    """
    from diffusers import UNet2DConditionModel

    entry = resolve_model(name)
    if entry.local:
        check_local_folder(entry.source)
    return dict(UNet2DConditionModel.load_config(entry.source, subfolder="unet"))


def load_unet(name: str, device: str | None = None, dtype: torch.dtype | None = None):
    """Load only the UNet of a catalog model (a distilled UNet drawn over another model's VAE and text encoder),
    with the same safety rules as `load_pipeline`: safetensors only, never remote code.

    Returns:
        `(unet, ModelInfo)`; the UNet is in eval mode without gradients.

    Raises:
        ValueError: unknown name. UnsafeModelError: pickle-only weights. FileNotFoundError: not built.
    """
    from diffusers import UNet2DConditionModel

    entry = resolve_model(name)
    if entry.local:
        check_local_folder(entry.source)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    unet = UNet2DConditionModel.from_pretrained(entry.source, subfolder="unet", use_safetensors=True, dtype=dtype)
    unet = unet.to(device).eval().requires_grad_(False)
    return unet, ModelInfo(entry.name, entry.source, device, dtype)
