"""Diffusion Compression Lab: prune and quantize a diffusion UNet, draw same-seed pairs, measure the cost.

The library behind the app; it never imports gradio. Main entry points:

- `CompressionSpec` (spec.py): what to do, validated and hashable;
- `PRUNERS` / `apply_pruning_` (pruning/) and `QUANT_MODES` / `apply_quantization_` (quantization/):
  the registries, each entry with a description and `available(device) -> (ok, reason)`;
- `module_cost` (cost.py): real bytes, parameters and measured sparsity of a module;
- `CATALOG` / `load_pipeline` (models.py): the models and the one safe loader;
- `Engine` (engine.py): baseline + cached compressed UNets -> `generate_pair(...)` -> `PairResult`;
- `build_compressed` (build.py): a compressed copy of a UNet, layer by layer, from a UNet and a spec;
- `save_compressed` / `load_compressed` (export.py): a bundle in safetensors, reloaded to the same pixels;
- `CancelToken` / `Cancelled` (cancel.py): ask running work (engine calls, sweeps) to stop at its next step;
- `count_macs` (cost.py), `structured_size` (pruning/): measured MACs, and what a structured amount means in
  parameters; `compression.bench` measures speed and memory (`load_results`/`results_frame` for charts).

Example:
    >>> from compression import CompressionSpec, Engine, load_pipeline
    >>> pipe, info = load_pipeline()
    >>> engine = Engine(pipe, info.name)
    >>> r = engine.generate_pair("a red circle on the left on a white background", 0, 20, 5.0,
    ...                          CompressionSpec(prune_amount=0.3, quant_mode="int8-weight"))
"""

from .build import CompressedUNet, build_compressed, state_dict_digest
from .cancel import Cancelled, CancelToken
from .cost import ModuleCost, count_macs, module_bytes, module_cost, param_count, weight_sparsity
from .engine import Engine, PairResult
from .models import CATALOG, ModelInfo, load_pipeline, resolve_model
from .pruning import (
    PRUNERS,
    SCOPES,
    PrunePlan,
    PruneReport,
    apply_pruning_,
    available_pruners,
    get_pruner,
    scope_layers,
    structured_size,
)
from .quantization import QUANT_MODES, apply_quantization_, available_quant_modes, get_quant_mode
from .spec import CompressionSpec

__all__ = [
    "CATALOG",
    "PRUNERS",
    "QUANT_MODES",
    "SCOPES",
    "CancelToken",
    "Cancelled",
    "CompressedUNet",
    "CompressionSpec",
    "Engine",
    "ModelInfo",
    "ModuleCost",
    "PairResult",
    "PrunePlan",
    "PruneReport",
    "apply_pruning_",
    "apply_quantization_",
    "available_pruners",
    "available_quant_modes",
    "build_compressed",
    "count_macs",
    "get_pruner",
    "get_quant_mode",
    "load_pipeline",
    "module_bytes",
    "module_cost",
    "param_count",
    "resolve_model",
    "scope_layers",
    "state_dict_digest",
    "structured_size",
    "weight_sparsity",
]
