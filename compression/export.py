"""Take a compressed UNet away: save it as safetensors with its recipe and model card, and load it back.

A bundle is a folder:

    compression.json                       spec, base model (+ its UNet's weights digest), library versions,
                                           measured numbers, how to rebuild the UNet, sha256 of every file
    README.md                              a Hub model card (YAML: base_model, library_name, tags, pipeline_tag)
    unet/config.json                       the base UNet's diffusers config
    unet/diffusion_pytorch_model.safetensors  the compressed UNet's tensors (never a pickle)
    unet/sparse.safetensors                (optional) the same tensors with every sparse one as a bitmask +
                                           its non-zero values, so the bytes a sparse format needs are on disk
    comparison.png                         (optional) baseline | compressed, same prompt and seed

How each compression is stored:

- quanto modes (int8-weight, int4-weight, bf16+int8-weight): the packed integer data and scales exactly as
  quanto's `state_dict()` flattens them, with `optimum.quanto.quantization_map()` in compression.json. The
  loader re-creates the quantized modules with quanto's own `quantize_module` (what `requantize` does, Conv2d
  included) on an empty UNet, then loads with `strict=True`: `requantize` itself loads with `strict=False`,
  which would leave a half-loaded model silently. Layers the lab runs through its dequantizing QLinear
  subclass (bf16 scales) are named in the bundle and get the same class back.
- torchao modes (int8-dynamic): torchao's own safetensors form (`flatten_tensor_state_dict`, its metadata in
  the file's header); a torchao tensor type it cannot serialise is refused with the reason.
- bf16 as bf16 tensors; unstructured pruning as dense weights holding the zeros; structured pruning with the
  shape of every tensor that shrank and every module attribute that changed (out_features, heads, ...), since a
  diffusers config cannot describe per-layer channel counts: the loader builds the base config's UNet on the
  meta device, gives those tensors their recorded shapes and attributes, and assigns the saved tensors.
- Modes that change the compute dtype get the lab's input/output cast hooks back (`finish_` of the mode).

Where diffusers can read the result as the same model, `unet/` is a plain diffusers model folder:
`UNet2DConditionModel.from_pretrained(bundle / "unet", torch_dtype=...)` loads it (without the cast hooks: then
the whole pipeline should run in that dtype). That holds for fp32, bf16 and simulated-int (no quantized tensor
subclass), and for int8-dynamic, whose config.json carries the diffusers `TorchAoConfig` that describes it
(torchao's int8 on every nn.Linear: what diffusers applies, and what the lab did), with or without unstructured
pruning. The quanto modes quantize Conv2d too, which no diffusers quantization config (Linear only) can describe,
and structured pruning changes per-layer shapes: their manifests say so (`layout.diffusers_native_why`).

Integrity: the loader checks the sha256 of every file named in compression.json before reading any tensor,
and refuses a missing, truncated or altered file (`BundleError`), never returning a half-loaded model.

Reproducing the lab's image: the engine encodes the prompt once (empty negative prompt), runs the pipeline to
latents with a fresh scheduler copy and a fresh CPU generator, then decodes. The plain call

    pipe = load_compressed(folder)
    pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=steps,
         guidance_scale=guidance, height=h, width=w).images[0]

does the same work in the same order and gives the same pixels (tests/test_export.py checks the sha256 for
every CPU mode x {none, L1 unstructured, structured channels}); call it with a fresh generator each time.

Example:
    >>> folder = save_compressed("out/l1-30-int8", CompressionSpec(0.3, quant_mode="int8-weight"))
    >>> pipe = load_compressed(folder)
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .engine import Engine, state_dict_digest
from .quantization import _quanto, get_quant_mode, torchao_backend
from .spec import CompressionSpec

FORMAT = "diffusion-compression-lab/bundle"
FORMAT_VERSION = 1
MANIFEST = "compression.json"
UNET_DIR = "unet"
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
SPARSE = "unet/sparse.safetensors"
QUANTO_MODES = ("int8-weight", "int4-weight", "bf16+int8-weight")
TORCHAO_MODES = ("int8-dynamic", "fp8")
# Modes whose model a diffusers quantization config describes exactly, so `from_pretrained` loads the bundle's
# unet/ as it is: int8-dynamic is torchao's Int8DynamicActivationInt8WeightConfig on every nn.Linear, which is
# what diffusers' TorchAoConfig applies (Linear weights only). fp8 would be the same kind of match but runs on
# CUDA only and is untested here, so it is not claimed.
DIFFUSERS_TORCHAO = {"int8-dynamic": torchao_backend.int8_dynamic_config}
RECIPE_KEYS = ("base_model", "spec", "sampler")
SAMPLER_DEFAULTS = {
    "prompt": "a red circle on the left on a white background",
    "seed": 0,
    "steps": 10,
    "guidance": 5.0,
    "height": None,
    "width": None,
}


class BundleError(ValueError):
    """A bundle that cannot be loaded as it is: a missing, truncated or altered file, or an unknown layout."""


class ExportError(ValueError):
    """A compressed UNet this module cannot store faithfully (the message says why)."""


# ------------------------------------------------------------------------------------------------ helpers


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def image_sha256(image) -> str:
    """sha256 of an image's RGB pixels (uint8, row-major): what "the same image" means in tests and bundles."""
    return hashlib.sha256(np.asarray(image.convert("RGB"), dtype=np.uint8).tobytes()).hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "safetensors", "optimum-quanto", "torchao"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _is_plain(t: torch.Tensor) -> bool:
    return type(t) in (torch.Tensor, nn.Parameter)


def _scalar_attrs(module: nn.Module) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(module).items()
        if not k.startswith("_") and isinstance(v, (bool, int, float)) and not isinstance(v, torch.Tensor)
    }


def _layout(unet: nn.Module, base: nn.Module) -> dict[str, Any]:
    """How `unet` differs from the base structure: shapes, attributes, quantized layers."""
    base_modules = dict(base.named_modules())
    shapes: dict[str, list[int]] = {}
    attrs: dict[str, dict[str, Any]] = {}
    dequant: list[str] = []
    q = None
    for name, m in unet.named_modules():
        b = base_modules.get(name)
        if b is None:
            raise ExportError(f"module {name!r} is not in the base UNet: the structure changed beyond shapes")
        for pname, p in [*m._parameters.items(), *m._buffers.items()]:
            bp = b._parameters.get(pname, b._buffers.get(pname))
            if p is not None and bp is not None and tuple(p.shape) != tuple(bp.shape):
                shapes[f"{name}.{pname}" if name else pname] = list(p.shape)
        base_attrs = _scalar_attrs(b)
        changed = {k: v for k, v in _scalar_attrs(m).items() if k in base_attrs and base_attrs[k] != v}
        if changed:
            attrs[name] = changed
        if type(m).__name__ == "DequantQLinear":
            q = q or _quanto()
            if type(m) is q.DequantQLinear:
                dequant.append(name)
    return {"shapes": shapes, "attrs": attrs, "dequant_layers": dequant}


def _pack_sparse(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Each plain tensor that is at least half zeros -> `<name>.__mask__` (bits) + `<name>.__values__`."""
    out: dict[str, torch.Tensor] = {}
    packed = []
    for name, t in tensors.items():
        nz = int(torch.count_nonzero(t)) if t.numel() else 0
        if t.dim() >= 2 and nz * 2 <= t.numel():
            flat = t.reshape(-1)
            mask = flat != 0
            out[f"{name}.__mask__"] = torch.from_numpy(np.packbits(mask.numpy()))
            out[f"{name}.__values__"] = flat[mask].contiguous()
            packed.append(name)
        else:
            out[name] = t
    return out, packed


def _unpack_sparse(
    tensors: dict[str, torch.Tensor], shapes: dict[str, list[int]], dtypes: dict[str, str]
) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in tensors.items() if not k.endswith(("__mask__", "__values__"))}
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        mask = torch.from_numpy(np.unpackbits(tensors[f"{name}.__mask__"].numpy(), count=n).astype(bool))
        values = tensors[f"{name}.__values__"]
        dense = torch.zeros(n, dtype=getattr(torch, dtypes[name]))
        if int(mask.sum()) != values.numel():
            raise BundleError(f"sparse tensor {name!r}: mask and values disagree")
        dense[mask] = values
        out[name] = dense.view(shape)
    return out


def _state_tensors(unet: nn.Module, mode: str) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """The flat tensors to write, and torchao's header metadata (None for other modes)."""
    sd = unet.state_dict()
    if mode in TORCHAO_MODES:
        try:
            from torchao.prototype.safetensors.safetensors_support import (
                flatten_tensor_state_dict,
            )
        except ImportError as err:  # pragma: no cover - torchao is pinned
            raise ExportError(f"{mode} needs torchao's safetensors support ({err})") from None
        try:
            tensors, metadata = flatten_tensor_state_dict(sd)
        except Exception as err:  # noqa: BLE001 - torchao raises several types for a subclass it cannot store
            raise ExportError(f"torchao cannot store {mode} in safetensors: {err}") from None
        return {k: v.detach().contiguous() for k, v in tensors.items()}, metadata
    bad = [k for k, v in sd.items() if not _is_plain(v)]
    if bad:
        raise ExportError(f"{mode}: tensors {bad[:3]} are not plain tensors after quanto's flattening; not storable")
    return {k: v.detach().contiguous() for k, v in sd.items()}, None


# -------------------------------------------------------------------------------------------------- save


@dataclass(frozen=True)
class ExportResult:
    """What `save_compressed` wrote.

    Args:
        folder (`Path`): the bundle.
        unet_bytes (`int`): bytes of the UNet's safetensors file on disk.
        reported_bytes (`int`): the lab's measured bytes of the compressed UNet in memory.
        seconds (`float`): time to write the bundle (compression and drawing excluded).
        manifest (`dict`): the content of compression.json.
    """

    folder: Path
    unet_bytes: int
    reported_bytes: int
    seconds: float
    manifest: dict


def _card(manifest: dict, has_image: bool) -> str:
    spec = CompressionSpec.from_dict(manifest["spec"])
    base = manifest["base_model"]
    m = manifest["measured"]
    tags = ["diffusers", "text-to-image", "compression", "diffusion-compression-lab"]
    if spec.prunes:
        tags.append("pruning")
    if spec.quant_mode != "fp32":
        tags.append("quantization")
    lines = [
        "---",
        f"base_model: {base['source'] if not base.get('local') else base['name']}",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "tags:",
    ]
    lines += [f"- {t}" for t in tags]
    lines += [
        "---",
        "",
        f"# {base['name']}: {spec.label}",
        "",
        (
            f"The UNet of `{base['name']}` compressed with the Diffusion Compression Lab ({spec.label}). "
            "Only the UNet is stored here; the text encoder, VAE, tokenizer and scheduler are the base model's."
        ),
        "",
        "| measured | baseline | compressed |",
        "|---|---|---|",
        f"| UNet bytes (in memory) | {m['baseline_bytes']:,} | {m['unet_bytes']:,} |",
        f"| UNet bytes (this file) | - | {m['file_bytes']:,} |",
        f"| parameters | {m['baseline_params']:,} | {m['params']:,} |",
        f"| weight sparsity | {m['baseline_sparsity']:.1%} | {m['sparsity']:.1%} |",
    ]
    sample = manifest.get("sample")
    if sample:
        lines += [
            (
                f"| denoising seconds ({sample['steps']} steps, CPU) | {sample['baseline_seconds']:.3f} | "
                f"{sample['compressed_seconds']:.3f} |"
            )
        ]
    lines += [
        "",
        "## Load",
        "",
        "```python",
        "import torch",
        "from compression.export import load_compressed",
        "",
        'pipe = load_compressed("path/to/this/folder")',
    ]
    if sample:
        lines += [
            f'image = pipe({sample["prompt"]!r}, generator=torch.Generator("cpu").manual_seed({sample["seed"]}),',
            f"             num_inference_steps={sample['steps']}, guidance_scale={sample['guidance']},",
            f"             height={sample['height']}, width={sample['width']}).images[0]",
            "```",
            "",
            f"gives exactly the lab's compressed image (pixel sha256 `{sample['compressed_sha256']}`).",
        ]
    else:
        lines += ["```"]
    layout = manifest["layout"]
    if layout.get("diffusers_native"):
        dtype = layout.get("diffusers_load", {}).get("torch_dtype")
        extra = f", torch_dtype=torch.{dtype}" if dtype else ""
        lines += [
            "",
            (
                "`unet/` is also a plain diffusers model folder"
                + (" (its config carries the diffusers `TorchAoConfig` that describes it)" if dtype else "")
                + f': `UNet2DConditionModel.from_pretrained(folder, subfolder="unet"{extra})` loads the same model.'
            ),
        ]
    elif layout.get("diffusers_native_why"):
        lines += ["", f"diffusers alone cannot load `unet/`: {layout['diffusers_native_why']}."]
    if has_image:
        lines += ["", "![baseline | compressed](comparison.png)"]
    lines += ["", f"Recipe: `{json.dumps(manifest['spec'], sort_keys=True)}`", ""]
    return "\n".join(lines)


def save_compressed(
    out_dir: str | Path,
    spec: CompressionSpec,
    model: str = "tiny-shapes",
    engine: Engine | None = None,
    sample: dict | None = None,
    sparse: bool = False,
    image: bool = True,
) -> ExportResult:
    """Compress the base model's UNet by `spec` and write a bundle (see the module docstring).

    Args:
        out_dir (`str` or `Path`): the bundle folder; created; must be empty or absent.
        spec (`CompressionSpec`): what to do.
        model (`str`, defaults to `"tiny-shapes"`): a catalog name (ignored when `engine` is given).
        engine (`Engine`, *optional*): reuse a loaded pipeline and its UNet cache (the app, tests).
        sample (`dict`, *optional*): `{"prompt", "seed", "steps", "guidance", "height", "width"}`: draw that
            pair and record its timings, image hash and (with `image`) comparison.png. None: nothing drawn.
        sparse (`bool`, defaults to False): also write `unet/sparse.safetensors` (bitmask + non-zero values).
        image (`bool`, defaults to True): write comparison.png when a sample is drawn.

    Returns:
        `ExportResult`.

    Raises:
        ExportError: a mode whose tensors cannot be stored in safetensors.
        ValueError: a bad spec or sample, or a non-empty `out_dir`.
    """
    if not isinstance(spec, CompressionSpec):
        raise ValueError(f"spec must be a CompressionSpec, got {type(spec).__name__}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: give a new folder for the bundle")
    if engine is None:
        from .models import load_pipeline

        pipe, info = load_pipeline(model)
        engine = Engine(pipe, info.name, cache_size=0)
    base_unet = engine.pipeline.unet
    entry, _ = engine.compress(spec)
    unet = entry.unet
    drawn = None
    if sample is not None:
        s = {**SAMPLER_DEFAULTS, **sample}
        drawn = engine.generate_pair(
            s["prompt"], s["seed"], s["steps"], s["guidance"], spec, height=s["height"], width=s["width"]
        )
    start = time.perf_counter()
    tensors, metadata = _state_tensors(unet, spec.quant_mode)
    layout = _layout(unet, base_unet)
    if spec.quant_mode in QUANTO_MODES:
        from optimum.quanto import quantization_map

        layout["quantization_map"] = quantization_map(unet)
    quantization_config = _diffusers_form(spec, layout, base_unet)
    out.mkdir(parents=True, exist_ok=True)
    _write_unet(out, tensors, metadata, base_unet, layout, spec, sparse, quantization_config)
    if drawn is not None and image:
        _write_comparison(out / "comparison.png", drawn)
    manifest = _manifest(out, spec, engine, model, entry, layout, drawn, s if drawn is not None else None)
    (out / "README.md").write_text(_card(manifest, drawn is not None and image))
    files = [p for p in sorted(out.rglob("*")) if p.is_file() and p.name != MANIFEST]
    manifest["files"] = {str(p.relative_to(out)): {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return ExportResult(
        out, manifest["measured"]["file_bytes"], entry.cost.bytes, time.perf_counter() - start, manifest
    )


def _conv_share(unet: nn.Module) -> float:
    """Share of the Linear + Conv2d weights that sit in Conv2d layers."""
    conv = sum(m.weight.numel() for m in unet.modules() if isinstance(m, nn.Conv2d))
    linear = sum(m.weight.numel() for m in unet.modules() if isinstance(m, nn.Linear))
    return conv / max(1, conv + linear)


def _diffusers_form(spec: CompressionSpec, layout: dict, base_unet: nn.Module) -> dict | None:
    """Decide whether diffusers' `from_pretrained` reads the bundle's unet/ as the same model; record the answer
    (and the reason when it does not) in `layout`. Returns the `quantization_config` for unet/config.json."""
    why = ""
    if layout["shapes"] or layout["attrs"]:
        why = "structured pruning changed per-layer channel counts, which a diffusers config cannot describe"
    elif spec.quant_mode in QUANTO_MODES:
        why = (
            f"{spec.quant_mode} quantizes Conv2d as well as Linear layers (Conv2d holds "
            f"{_conv_share(base_unet):.0%} of this UNet's layer weights); diffusers' quantization configs "
            "(TorchAoConfig, the deprecated QuantoConfig) quantize nn.Linear only, so none describes this model, "
            "and a Linear-only one would be another model (the int8-dynamic mode is that one)"
        )
    elif spec.quant_mode in TORCHAO_MODES and spec.quant_mode not in DIFFUSERS_TORCHAO:
        why = f"{spec.quant_mode} is not checked against diffusers' TorchAoConfig here (it needs a CUDA GPU)"
    layout["diffusers_native"] = not why
    if why:
        layout["diffusers_native_why"] = why
        return None
    if spec.quant_mode not in DIFFUSERS_TORCHAO:
        return None
    from diffusers import TorchAoConfig

    config = DIFFUSERS_TORCHAO[spec.quant_mode]()
    # diffusers warns that torchao wants bf16, but fp32 loads the very tensors the lab built (tests check it).
    layout["diffusers_load"] = {"torch_dtype": str(next(base_unet.parameters()).dtype).removeprefix("torch.")}
    return TorchAoConfig(config).to_dict()


def _write_unet(
    out: Path,
    tensors: dict,
    metadata: dict | None,
    base_unet,
    layout: dict,
    spec: CompressionSpec,
    sparse: bool,
    quantization_config: dict | None = None,
) -> None:
    """unet/: the weights (safetensors), the base config (with the diffusers `quantization_config` that describes
    the model, where one does), and with `sparse` the bitmask form (adds to `layout`)."""
    import diffusers
    from safetensors.torch import save_file

    (out / UNET_DIR).mkdir(exist_ok=True)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt", **(metadata or {})})
    config = dict(base_unet.config)
    config["_class_name"] = type(base_unet).__name__
    config["_diffusers_version"] = diffusers.__version__
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (out / UNET_DIR / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=list))
    if sparse:
        if metadata is not None:
            raise ExportError(f"the sparse form is not written for {spec.quant_mode} (torchao's own layout)")
        sparse_tensors, packed = _pack_sparse(tensors)
        layout["sparse"] = {
            "shapes": {k: list(tensors[k].shape) for k in packed},
            "dtypes": {k: str(tensors[k].dtype).removeprefix("torch.") for k in packed},
        }
        save_file(sparse_tensors, str(out / SPARSE), metadata={"format": "pt"})


def _write_comparison(path: Path, drawn) -> None:
    """The sample pair side by side: baseline left, compressed right."""
    from PIL import Image

    a, b = drawn.baseline_image, drawn.compressed_image
    pair = Image.new("RGB", (a.width + b.width, max(a.height, b.height)), "white")
    pair.paste(a, (0, 0))
    pair.paste(b, (a.width, 0))
    pair.save(path)


def _manifest(
    out: Path, spec: CompressionSpec, engine: Engine, model: str, entry, layout: dict, drawn, sample: dict | None
) -> dict[str, Any]:
    """compression.json's content, less the file digests: spec, base model, versions, measured numbers."""
    from .models import CATALOG

    pipe, base_unet, base_cost = engine.pipeline, engine.pipeline.unet, engine.baseline_cost
    info_source = getattr(engine, "model_name", model)
    cat = CATALOG.get(info_source)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "label": spec.label,
        "base_model": {
            "name": info_source,
            "source": cat.source if cat and not cat.local else info_source,
            "local": bool(cat and cat.local),
            "pipeline_class": type(pipe).__name__,
            "unet_digest": state_dict_digest(base_unet),
            "unet_dtype": str(next(base_unet.parameters()).dtype).removeprefix("torch."),
        },
        "versions": _versions(),
        "measured": {
            "unet_bytes": entry.cost.bytes,
            "params": entry.cost.params,
            "sparsity": entry.cost.sparsity,
            "baseline_bytes": base_cost.bytes,
            "baseline_params": base_cost.params,
            "baseline_sparsity": base_cost.sparsity,
            "compression_seconds": entry.seconds,
            "file_bytes": (out / WEIGHTS).stat().st_size,
        },
        "layout": layout,
    }
    if drawn is not None:
        manifest["sample"] = {
            "prompt": sample["prompt"],
            "negative_prompt": "",
            "seed": drawn.seed,
            "steps": drawn.steps,
            "guidance": drawn.guidance,
            "height": drawn.height,
            "width": drawn.width,
            "scheduler": type(pipe.scheduler).__name__,
            "baseline_seconds": drawn.baseline_seconds,
            "compressed_seconds": drawn.compressed_seconds,
            "compressed_sha256": image_sha256(drawn.compressed_image),
            "baseline_sha256": image_sha256(drawn.baseline_image),
        }
    return manifest


# -------------------------------------------------------------------------------------------------- load


def read_manifest(folder: str | Path, verify: bool = True) -> dict:
    """compression.json of a bundle, after checking every file it names (sha256 and size).

    Raises:
        BundleError: no manifest, unreadable JSON, an unknown format, or a missing/altered file.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"no {MANIFEST} in {folder.name}: not a compression bundle")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{MANIFEST} is not valid JSON ({err.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {manifest.get('format_version')!r}; this loader reads {FORMAT_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise BundleError(f"{MANIFEST} lists no {WEIGHTS}")
    if verify:
        for rel, meta in files.items():
            p = (folder / rel).resolve()
            if folder.resolve() not in p.parents:
                raise BundleError(f"{MANIFEST} names a file outside the bundle: {rel!r}")
            if not p.is_file():
                raise BundleError(f"{rel} is missing")
            size = p.stat().st_size
            if size != meta.get("bytes"):
                raise BundleError(f"{rel} is {size} bytes, {meta.get('bytes')} expected: truncated or altered")
            if _sha256(p) != meta.get("sha256"):
                raise BundleError(f"{rel} does not match its sha256 in {MANIFEST}: altered")
    return manifest


def _empty_unet(folder: Path, manifest: dict) -> nn.Module:
    """The base config's UNet on the meta device, with the recorded shapes, attributes and quantized layers."""
    import diffusers

    config = json.loads((folder / UNET_DIR / "config.json").read_text())
    config.pop("quantization_config", None)  # for diffusers' own loader; the layout below says the same
    cls = getattr(diffusers, config.get("_class_name", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise BundleError(f"unknown UNet class {config.get('_class_name')!r} (only diffusers' own classes load)")
    with torch.device("meta"):
        unet = cls.from_config(config)
    layout = manifest["layout"]
    for full, shape in layout.get("shapes", {}).items():
        mod_name, _, pname = full.rpartition(".")
        m = unet.get_submodule(mod_name)
        old = m._parameters.get(pname)
        if old is not None:
            m._parameters[pname] = nn.Parameter(torch.empty(shape, device="meta", dtype=old.dtype), requires_grad=False)
        elif pname in m._buffers:
            m._buffers[pname] = torch.empty(shape, device="meta", dtype=m._buffers[pname].dtype)
        else:
            raise BundleError(f"recorded shape for unknown tensor {full!r}")
    for name, attrs in layout.get("attrs", {}).items():
        m = unet.get_submodule(name)
        for k, v in attrs.items():
            setattr(m, k, v)
    qmap = layout.get("quantization_map")
    if qmap:
        from optimum.quanto.quantize import _quantize_submodule

        q = _quanto()
        dequant = set(layout.get("dequant_layers", []))
        for name, qconfig in qmap.items():
            weights = None if qconfig.get("weights") in (None, "none") else qconfig["weights"]
            acts = None if qconfig.get("activations") in (None, "none") else qconfig["activations"]
            _quantize_submodule(unet, name, unet.get_submodule(name), weights=weights, activations=acts)
            if name in dequant:
                unet.get_submodule(name).__class__ = q.DequantQLinear
    return unet


def load_unet(folder: str | Path, form: str = "dense", verify: bool = True) -> tuple[nn.Module, dict]:
    """The compressed UNet of a bundle (and its manifest), on the CPU, in eval mode.

    Args:
        folder (`str` or `Path`): the bundle.
        form (`str`, defaults to `"dense"`): `"dense"` reads the main file, `"sparse"` the bitmask form.
        verify (`bool`, defaults to True): check every file's sha256 first (leave on).

    Raises:
        BundleError: see `read_manifest`; or tensors that do not fit the recorded structure.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    folder = Path(folder)
    manifest = read_manifest(folder, verify)
    spec = CompressionSpec.from_dict(manifest["spec"])
    layout = manifest["layout"]
    try:
        if form == "sparse":
            if "sparse" not in layout:
                raise BundleError("this bundle has no sparse form (saved without sparse=True)")
            tensors = _unpack_sparse(
                load_file(str(folder / SPARSE)), layout["sparse"]["shapes"], layout["sparse"]["dtypes"]
            )
        elif form == "dense":
            tensors = load_file(str(folder / WEIGHTS))
        else:
            raise ValueError(f"form must be 'dense' or 'sparse', got {form!r}")
        with safe_open(str(folder / WEIGHTS), "pt") as f:
            metadata = f.metadata() or {}
    except SafetensorError as err:
        raise BundleError(f"unreadable safetensors file: {err}") from None
    if spec.quant_mode in TORCHAO_MODES:
        from torchao.prototype.safetensors.safetensors_support import (
            unflatten_tensor_state_dict,
        )

        tensors, leftover = unflatten_tensor_state_dict(tensors, metadata)
        if leftover:
            raise BundleError(f"torchao could not rebuild {len(leftover)} tensors, e.g. {list(leftover)[:3]}")
    unet = _empty_unet(folder, manifest)
    try:
        unet.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as err:
        raise BundleError(f"the tensors do not fit the recorded UNet structure: {str(err)[:300]}") from None
    left = [n for n, t in [*unet.named_parameters(), *unet.named_buffers()] if t.device.type == "meta"]
    if left:
        raise BundleError(f"{len(left)} tensors were not in the file, e.g. {left[:3]}")
    mode = get_quant_mode(spec.quant_mode)
    if mode.finish_ is not None:
        unet = mode.finish_(unet, getattr(torch, manifest["base_model"].get("unet_dtype", "float32")))
    unet.eval().requires_grad_(False)
    return unet, manifest


def load_compressed(folder: str | Path, pipeline=None, form: str = "dense", check_base: bool = True):
    """The base pipeline with the bundle's compressed UNet (see the module docstring for the exact call).

    Args:
        folder (`str` or `Path`): the bundle.
        pipeline (*optional*): an already loaded base pipeline (only read; a new pipeline object is returned,
            sharing its text encoder, VAE and tokenizer, with its own scheduler copy). Default: the bundle's
            base model from the catalog.
        form (`str`, defaults to `"dense"`): see `load_unet`.
        check_base (`bool`, defaults to True): refuse a base pipeline whose UNet weights digest differs from
            the one the bundle was made from (other weights give other images).

    Raises:
        BundleError: a bad bundle, or a base model other than the one recorded.
    """
    import copy
    import inspect

    unet, manifest = load_unet(folder, form)
    if pipeline is None:
        from .models import load_pipeline

        pipeline, _ = load_pipeline(manifest["base_model"]["name"], device="cpu")
    if check_base and state_dict_digest(pipeline.unet) != manifest["base_model"]["unet_digest"]:
        raise BundleError(
            f"the base pipeline's UNet is not the one this bundle was made from ({manifest['base_model']['name']})"
        )
    components = {**pipeline.components, "unet": unet, "scheduler": copy.deepcopy(pipeline.scheduler)}
    params = inspect.signature(type(pipeline).__init__).parameters
    extra = {k: pipeline.config[k] for k in params if k not in components and k in pipeline.config}
    pipe = type(pipeline)(**components, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------------ recipes


def make_recipe(base_model: str, spec: CompressionSpec, sampler: dict | None = None) -> dict:
    """The small JSON that says how to get a comparison: base model, spec, sampler settings and seed."""
    s = {**SAMPLER_DEFAULTS, **(sampler or {})}
    unknown = set(s) - set(SAMPLER_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown sampler field(s) {sorted(unknown)}; known: {', '.join(SAMPLER_DEFAULTS)}")
    return {"base_model": base_model, "spec": spec.to_dict(), "sampler": s}


def parse_recipe(data: dict | str) -> tuple[str, CompressionSpec, dict]:
    """(base_model, spec, sampler) from a recipe dict or JSON text; ValueError naming what is wrong."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise ValueError(f"a recipe must be JSON ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ValueError("a recipe must be a JSON object")
    extra = set(data) - set(RECIPE_KEYS)
    if extra:
        raise ValueError(f"unknown recipe field(s) {sorted(extra)}; known: {', '.join(RECIPE_KEYS)}")
    base = data.get("base_model", "tiny-shapes")
    if not isinstance(base, str):
        raise ValueError("recipe base_model must be a model name")
    spec = CompressionSpec.from_dict(data.get("spec", {}))
    recipe = make_recipe(base, spec, data.get("sampler"))
    return base, spec, recipe["sampler"]


# ---------------------------------------------------------------------------------------------------- CLI


def _parser():
    import argparse

    from .pruning import PRUNERS, SCOPES
    from .quantization import QUANT_MODES

    p = argparse.ArgumentParser(
        prog="python -m compression.export", description="Compress a model's UNet and write it as a safetensors bundle."
    )
    p.add_argument("--model", default="tiny-shapes", help="catalog name (default: tiny-shapes)")
    p.add_argument("--prune", type=float, default=0.0, help="percent of the scope's weights to prune, 0-95")
    p.add_argument("--method", default="l1-unstructured", choices=list(PRUNERS))
    p.add_argument("--scope", default="all", choices=list(SCOPES))
    p.add_argument("--quant", default="fp32", choices=list(QUANT_MODES))
    p.add_argument("--bits", type=int, default=None, help="bit width for simulated-int")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample image (and of random pruning)")
    p.add_argument("--recipe", type=Path, help="a recipe JSON file (base model, spec, sampler); overrides the above")
    p.add_argument("--sparse", action="store_true", help="also write the bitmask sparse form")
    p.add_argument("--no-sample", action="store_true", help="draw no comparison image")
    p.add_argument("--out", type=Path, required=True, help="the bundle folder (new or empty)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.recipe is not None:
            try:
                text = args.recipe.read_text()
            except OSError as err:
                parser.error(f"cannot read --recipe: {err.strerror}")
            model, spec, sampler = parse_recipe(text)
        else:
            model = args.model
            spec = CompressionSpec(
                prune_amount=args.prune / 100,
                prune_method=args.method,
                prune_scope=args.scope,
                quant_mode=args.quant,
                bits=args.bits,
                seed=args.seed,
            )
            sampler = {**SAMPLER_DEFAULTS, "seed": args.seed}
        from .models import resolve_model

        resolve_model(model)
    except ValueError as err:
        parser.error(str(err).replace("prune_amount must be", "--prune/100 must be"))
    result = save_compressed(args.out, spec, model, sample=None if args.no_sample else sampler, sparse=args.sparse)
    m = result.manifest["measured"]
    print(
        f"wrote {result.folder}: {spec.label}; UNet file {result.unet_bytes:,} bytes "
        f"({result.unet_bytes / m['baseline_bytes']:.3f}x the fp32 UNet), in {result.seconds:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
