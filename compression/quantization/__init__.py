"""Quantization registry: mode name -> a function that quantizes a (copied) module in place and returns it.

| mode          | what it does                                               | backend                        | where      |
|---------------|------------------------------------------------------------|--------------------------------|------------|
| fp32          | nothing: the baseline's own dtype                          | -                              | anywhere   |
| bf16          | weights and compute in bfloat16                            | torch                          | CPU, CUDA  |
| fp16          | weights and compute in float16                             | torch                          | CUDA only  |
| fp8           | float8 dynamic activations x float8 weights, Linear only   | torchao Float8DynamicAct...    | CUDA sm89+ |
| int8-weight   | int8 weights (per output channel), Linear AND Conv2d       | optimum-quanto qint8           | CPU, CUDA  |
| int8-dynamic  | int8 dynamic activations x int8 weights, Linear only       | torchao Int8DynamicAct...      | CPU, CUDA  |
| int4-weight   | int4 weights (groups of 128), Linear AND Conv2d            | optimum-quanto qint4           | CPU, CUDA  |
| simulated-int | N-bit (2..8) fake-quantized weights stored back as float   | own code (modes.py)  | anywhere   |

Why these backends (checked on torch 2.13 CPU, torchao 0.18, quanto 0.2.7): torchao's int8 configs give an
`Int8Tensor` that has no `aten.convolution` kernel, so they can only take Linear layers (31% of SD 1.5 UNet
weights); quanto converts Conv2d too, which is what lets int8 weights shrink a whole UNet to about a quarter.
torchao's `Int4WeightOnlyConfig` needs the `mslk` kernels (not on CPU) and `IntxWeightOnlyConfig(int4)` stores
int4 unpacked in int8 (no memory gain), so int4 also goes through quanto, which packs two values a byte.

Files: registry.py (`QuantMode`, `QUANT_MODES`, `register_mode`, `apply_quantization_`); modes.py (each mode's
check, transform and entry together); casting.py (dtype changes and the I/O cast hooks); quanto_backend.py
(every optimum-quanto detail); torchao_backend.py (the torchao configs). A new mode is one `@register_mode`
function in modes.py.

Measured on an SD-1.5-config UNet (859.5M parameters, 3.20 GiB fp32; Linear 31.4%, Conv2d 68.5%): int8-weight
0.251x the bytes, int8-dynamic 0.765x, int4-weight 0.141x.

Modes that change the compute dtype (bf16, fp16, fp8) cast the UNet's floating inputs to that dtype and its
outputs back, with a forward pre-hook and a forward hook, so the rest of the pipeline (text encoder, VAE,
scheduler) keeps its own precision: fp16 VAEs and schedulers are where NaN/black images come from.

Example:
    >>> unet = apply_quantization_(copy.deepcopy(pipe.unet), "int8-weight")
    >>> QUANT_MODES["fp16"].available("cpu")
    (False, 'offered on CUDA only: ~50x slower than fp32 on CPU')
"""

from __future__ import annotations

from . import modes as _modes  # noqa: F401  (registers every mode, in registry order)

# The underscored names: private names of the former single-file module, kept for code that reached into it.
from ._quiet import quiet_backend_import as _quiet_backend_import  # noqa: F401
from .casting import (
    _cast,  # noqa: F401
    cast_io_,
)
from .casting import module_device as _module_device  # noqa: F401
from .casting import module_dtype as _module_dtype  # noqa: F401
from .casting import set_tensor as _set_tensor  # noqa: F401
from .modes import MAX_BITS, MIN_BITS
from .quanto_backend import (  # noqa: F401
    _grouped_int4,
    _rowwise_int8,
    _torch_unpack_on_cpu,
    _unpack_in_torch,
)
from .quanto_backend import quanto as _quanto  # noqa: F401
from .registry import (
    QUANT_MODES,
    QuantMode,
    apply_quantization_,
    available_quant_modes,
    get_quant_mode,
    register_mode,
)
from .registry import each_layer_ as _each_layer_  # noqa: F401

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "QUANT_MODES",
    "QuantMode",
    "apply_quantization_",
    "available_quant_modes",
    "cast_io_",
    "get_quant_mode",
    "register_mode",
]
