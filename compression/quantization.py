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
| simulated-int | N-bit (2..8) fake-quantized weights stored back as float   | own code (see `_fake_quant_`)  | anywhere   |

Why these backends (checked on torch 2.13 CPU, torchao 0.18, quanto 0.2.7): torchao's int8 configs give an
`Int8Tensor` that has no `aten.convolution` kernel, so they can only take Linear layers (31% of SD 1.5 UNet
weights); quanto converts Conv2d too, which is what lets int8 weights shrink a whole UNet to about a quarter.
torchao's `Int4WeightOnlyConfig` needs the `mslk` kernels (not on CPU) and `IntxWeightOnlyConfig(int4)` stores
int4 unpacked in int8 (no memory gain), so int4 also goes through quanto, which packs two values a byte.

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

import contextlib
import functools
import importlib.util
import inspect
import logging
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .scratch import scratch as _scratch

MIN_BITS, MAX_BITS = 2, 8


@contextlib.contextmanager
def _quiet_backend_import():
    # Importing torchao on a CPU-only torch logs that its CUDA kernels (mxfp8, cutlass) failed to load, and
    # torch logs a deprecation about torchao's enums: noise about kernels that CPU runs never use.
    names = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _unpack_in_torch(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """quanto's unpacking of 2/4-bit values from uint8 (low bits first, stacked along dim 0), in torch ops."""
    parts = [(packed & (2 ** (bits * (i + 1)) - 1)) >> (bits * i) for i in range(8 // bits)]
    return torch.cat(parts).to(torch.uint8)


def _torch_unpack_on_cpu() -> torch.library.Library:
    """Route `quanto::unpack` on CPU to `_unpack_in_torch` instead of quanto's C++ extension.

    quanto compiles that extension on first use (torch.utils.cpp_extension, into its package folder): ~35-50 s
    on 2 cores, a C++ compiler required, and a build killed midway (a restarted Space, a test's server
    subprocess) leaves a lock file behind on which every later int4 request waits forever -- CI hung on exactly
    that. The same six tensor ops run in microseconds per layer, so the lab never builds it. The registration
    lives as long as the returned Library: `_quanto()` (cached, so called once) keeps it.
    """
    lib = torch.library.Library("quanto", "IMPL")
    lib.impl("unpack", _unpack_in_torch, "CPU", allow_override=True)
    return lib


@functools.lru_cache(maxsize=None)
def _quanto():
    # Imported once: the per-layer paths would otherwise pay the logging-level dance for every layer
    # (setLevel clears every logger's cache: 0.4 s over an SD 1.5 UNet's 282 layers).
    with _quiet_backend_import():
        from optimum.quanto import qint4, qint8
        from optimum.quanto.nn import quantize_module
        from optimum.quanto.tensor.weights import WeightQBytesTensor
        from optimum.quanto.nn import QLinear
        from optimum.quanto.tensor.packed import PackedTensor
        from optimum.quanto.tensor.weights import WeightQBitsTensor

    class DequantQLinear(QLinear):
        """quanto's QLinear computing with its dequantized weight.

        On CPU, quanto sends bf16 activations x int8 weights to `torch._weight_int8pack_mm`, a kernel made for
        decode-sized batches: at a UNet's 8192 tokens it ran 7-15x slower than a bf16 matmul here (320x2560:
        192 ms vs 27 ms), while dequantizing the weight first costs ~10% of the matmul.
        """

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(input, self.weight.dequantize(), self.bias)

    return types.SimpleNamespace(unpack_lib=_torch_unpack_on_cpu(), qint4=qint4, qint8=qint8,
                                 quantize_module=quantize_module, WeightQBytesTensor=WeightQBytesTensor,
                                 WeightQBitsTensor=WeightQBitsTensor, PackedTensor=PackedTensor, QLinear=QLinear,
                                 DequantQLinear=DequantQLinear)


@functools.lru_cache(maxsize=None)
def _torchao_quantize():
    with _quiet_backend_import():
        from torchao.quantization import quantize_
    return quantize_


def _module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _module_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


# ------------------------------------------------------------------------------------- availability


def _everywhere(device: torch.device) -> tuple[bool, str]:
    return True, ""


def _needs(package: str, pip_name: str) -> Callable[[torch.device], tuple[bool, str]]:
    def check(device: torch.device) -> tuple[bool, str]:
        if importlib.util.find_spec(package) is None:
            return False, f"needs {pip_name}: pip install -r requirements.txt"
        return True, ""

    return check


def _bf16_check(device: torch.device) -> tuple[bool, str]:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return False, "this GPU has no bfloat16 support"
    return True, ""


def _fp16_check(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, "offered on CUDA only: ~50x slower than fp32 on CPU"
    return True, ""


def _fp8_check(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, "needs a CUDA GPU of compute capability 8.9+ (Ada, Hopper); none here"
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < (8, 9):
        return False, f"needs CUDA compute capability 8.9+ (this GPU is sm{major}{minor})"
    return _needs("torchao", "torchao")(device)


# ------------------------------------------------------------------------------------------ dtype casting


def _cast(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if type(obj) is dict:  # a caller's dict (e.g. added_cond_kwargs): copy, never change it
        return {k: _cast(v, dtype) for k, v in obj.items()}
    if isinstance(obj, dict):  # diffusers' BaseOutput, a fresh output object: set in place to keep its type
        for key in list(obj.keys()):
            obj[key] = _cast(obj[key], dtype)
        return obj
    if isinstance(obj, tuple):
        return type(obj)(_cast(o, dtype) for o in obj)
    if isinstance(obj, list):
        return [_cast(o, dtype) for o in obj]
    return obj


def cast_io_(
    module: nn.Module, compute_dtype: torch.dtype, io_dtype: torch.dtype, keep: tuple[str, ...] = ("timestep",)
) -> nn.Module:
    """Hook `module` so that floating inputs are cast to `compute_dtype` and floating outputs to `io_dtype`.

    Args:
        module (`nn.Module`): changed in place (two hooks) and returned.
        compute_dtype (`torch.dtype`): the dtype the module's weights are in.
        io_dtype (`torch.dtype`): the dtype the caller hands in and expects back.
        keep (`tuple[str, ...]`, defaults to `("timestep",)`): forward arguments left as they are. A float
            timestep such as 999.0 is not exactly representable in bf16 (it would become 1000); the UNet
            embeds it in fp32 itself.

    The hooks keep no per-call state, so one module can serve several threads.
    """
    names = list(inspect.signature(module.forward).parameters)
    keep_positions = {names.index(k) for k in keep if k in names}

    def pre(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        args = tuple(a if i in keep_positions else _cast(a, compute_dtype) for i, a in enumerate(args))
        kwargs = {k: v if k in keep else _cast(v, compute_dtype) for k, v in kwargs.items()}
        return args, kwargs

    def post(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        return _cast(output, io_dtype)

    module.register_forward_pre_hook(pre, with_kwargs=True)
    module.register_forward_hook(post, with_kwargs=True)
    return module


def _to_dtype_(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    io_dtype = _module_dtype(module)
    if io_dtype == dtype:
        return module
    if getattr(module, "_keep_in_fp32_modules", None):
        module.to(dtype)  # diffusers' ModelMixin.to keeps those modules in fp32
    else:
        # diffusers 0.42's ModelMixin.to warns about "modules that should be kept in float32: []" on every
        # dtype cast, even when there are none; nn.Module.to does the same cast without the false alarm.
        nn.Module.to(module, dtype)
    return cast_io_(module, dtype, io_dtype)


# ---------------------------------------------------------------------------------------------- the modes


def _none_(module: nn.Module, bits: int | None) -> nn.Module:
    return module


def _bf16_(module: nn.Module, bits: int | None) -> nn.Module:
    return _to_dtype_(module, torch.bfloat16)


def _fp16_(module: nn.Module, bits: int | None) -> nn.Module:
    return _to_dtype_(module, torch.float16)


def _int8_weight_(module: nn.Module, bits: int | None) -> nn.Module:
    # Same tensors as quanto's quantize() + freeze(), built faster (see `_rowwise_int8`).
    return _each_layer_(module, _int8_layer(None), bits)


def _int4_weight_(module: nn.Module, bits: int | None) -> nn.Module:
    # Same tensors as quanto's quantize() + freeze(), built faster (see `_grouped_int4`).
    return _each_layer_(module, _int4_layer, bits)


def _int8_dynamic_(module: nn.Module, bits: int | None) -> nn.Module:
    with _quiet_backend_import():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    # Linear only: torchao's Int8Tensor has no convolution kernel (see the module docstring).
    quantize_(module, Int8DynamicActivationInt8WeightConfig())
    return module


def _fp8_(module: nn.Module, bits: int | None) -> nn.Module:
    with _quiet_backend_import():
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    # Row-wise float8 scaling expects bfloat16 activations; the rest of the UNet (convs, norms) runs in bf16.
    # Not exercised by CI (no GPU there).
    _to_dtype_(module, torch.bfloat16)
    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return module


@torch.no_grad()
def _fake_quant_(module: nn.Module, bits: int | None) -> nn.Module:
    # Own code, on purpose: torchao's fake quantizers (QAT) wrap Linear only and keep hooks around; a study of
    # "how many bits do the weights need" wants every Linear and Conv2d rounded once, then plain float kernels.
    if bits is None or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"simulated-int needs bits from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    qmax = 2 ** (bits - 1) - 1  # symmetric: 8 bits -> [-127, 127], 2 bits -> [-1, 1] (ternary)
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = m.weight.data
            scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / qmax
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel stays zero
            w.copy_(torch.round(w / scale).clamp_(-qmax, qmax) * scale)
    return module


# -------------------------------------------------------------------------- one layer at a time
#
# The engine builds a compressed UNet layer by layer from the baseline (see engine.py): each module that holds
# tensors is handed to the mode's `layer_` function with the baseline's own tensors in it (or pruned copies).
# A `layer_` function returns the module or its replacement and never writes into the tensors it was given;
# whatever it leaves untouched is copied by the engine. `finish_` then runs once on the whole UNet (the cast
# hooks of the modes that change the compute dtype). The in-place `quantize_` functions use the same pieces.

_WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[name] = value


def _cast_layer(dtype: torch.dtype) -> Callable[[nn.Module, int | None], nn.Module]:
    def cast(module: nn.Module, bits: int | None) -> nn.Module:
        for name, t in [*module._parameters.items(), *module._buffers.items()]:
            if t is not None and t.is_floating_point() and t.dtype != dtype:
                _set_tensor(module, name, t.detach().to(dtype))  # a new tensor: the source stays as it is
        return module

    return cast


def _rowwise_int8(weight: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 data, scale) per output channel, symmetric: quanto's qint8 weights, computed in one pass.

    Own code, on purpose: quanto's `freeze()` computes the same thing (scale = max|w| / 127 per output
    channel, data = round(w / scale)) with ~6 full-size float temporaries per layer; on an SD-1.5-sized UNet
    that took 7-16 s on this CPU. Here rows are taken a few MiB at a time, so max|w|, the division and the
    rounding of a block of rows all run while it is in cache, and memory is read once. Results are
    bit-identical to quanto's for an fp32 scale (tests/test_fast_compression.py checks it). With a bf16
    scale the data is rounded against the bf16 scale that dequantization will really use.
    """
    w2 = weight.detach().reshape(weight.shape[0], -1)
    out_rows, width = w2.shape
    data = torch.empty(w2.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(out_rows, dtype=scale_dtype, device=weight.device)
    rows = max(1, (1 << 20) // max(1, width))  # ~4 MiB of float temporaries at a time
    for r in range(0, out_rows, rows):
        block = w2[r : r + rows]
        work = _scratch(block.numel(), torch.float32, block.device).view(block.shape)
        torch.abs(block, out=work)
        s = work.amax(dim=1).div_(127).to(scale_dtype)
        scale[r : r + rows] = s
        d = s.float()
        d = torch.where(d > 0, d, torch.ones_like(d))[:, None]  # all-zero rows stay 0 (quanto: 0/0)
        torch.div(block, d, out=work)
        data[r : r + rows] = work.round_().clamp_(-127, 127)
    shape = (out_rows,) + (1,) * (weight.dim() - 1)
    return data.view(weight.shape), scale.view(shape)


def _grouped_int4(weight: torch.Tensor, group_size: int):
    """quanto's qint4 weight (groups along the input dim, scale and float shift per group, two values a byte,
    first half of the groups in the low nibbles), computed a few MiB of groups at a time in one pass.

    Own code for the same reason as `_rowwise_int8`: quanto's `freeze()` makes ~8 full-size temporaries per
    layer (6 s on SD 1.5 here). Bit-identical to quanto's result (tests/test_fast_compression.py).
    """
    q = _quanto()
    w = weight.detach()
    grouped = w.reshape(-1, group_size)
    groups = grouped.shape[0]
    half = (groups + 1) // 2  # quanto's pack_weights: row i and row half + i share a byte
    packed = torch.zeros(half, group_size, dtype=torch.uint8, device=w.device)
    scale = torch.empty(groups, 1, dtype=w.dtype, device=w.device)
    shift = torch.empty(groups, 1, dtype=w.dtype, device=w.device)
    rows = max(1, (1 << 20) // group_size)
    for r in range(0, groups, rows):
        block = grouped[r : r + rows]
        low, high = block.amin(dim=1, keepdim=True), block.amax(dim=1, keepdim=True)
        sc = (high - low) / 15  # quanto's MaxOptimizer: (max - min) / (qmax - qmin)
        sh = -low
        scale[r : r + rows], shift[r : r + rows] = sc, sh
        sc = torch.where(sc > 0, sc, torch.ones_like(sc))  # a constant group: its values all map to 0
        work = _scratch(block.numel(), w.dtype, w.device).view(block.shape)
        torch.add(block, sh, out=work).div_(sc).round_().clamp_(0, 15)  # quanto: round((w + shift) / scale)
        ints = _scratch(block.numel(), torch.uint8, w.device, slot=1).view(block.shape)
        ints.copy_(work)
        for lo_row, hi_row, nibble in ((r, min(r + rows, half), 0), (max(r, half), min(r + rows, groups), 4)):
            if hi_row > lo_row:
                part = ints[lo_row - r : hi_row - r]
                if nibble:
                    part.bitwise_left_shift_(nibble)
                packed[lo_row - (half if nibble else 0) : hi_row - (half if nibble else 0)].bitwise_or_(part)
    data = q.PackedTensor(packed, 4, torch.Size((groups, group_size)), (group_size, 1))
    return q.WeightQBitsTensor(q.qint4, 0, group_size, w.size(), w.stride(), data, scale, shift)


def _int4_layer(module: nn.Module, bits: int | None) -> nn.Module:
    if not isinstance(module, _WEIGHT_LAYERS) or type(module.weight) is not nn.Parameter:
        return module
    q = _quanto()
    qmodule = q.quantize_module(module, weights=q.qint4)  # meta-built; picks quanto's group size (128, 96, 64)
    group = qmodule.weight_group_size
    if group is None or module.weight.dtype != torch.float32:
        qmodule.freeze()  # per-channel int4 for narrow layers, or a dtype quanto may pack differently
    else:
        qmodule.weight = nn.Parameter(_grouped_int4(module.weight, group), requires_grad=False)
    return qmodule


def _int8_layer(scale_dtype: torch.dtype | None) -> Callable[[nn.Module, int | None], nn.Module]:
    """Linear/Conv2d -> quanto QLinear/QConv2d holding int8 weights (scales in `scale_dtype`, or the
    weight's own dtype); other modules are cast to `scale_dtype` when one is given."""

    def layer(module: nn.Module, bits: int | None) -> nn.Module:
        if not isinstance(module, _WEIGHT_LAYERS) or type(module.weight) is not nn.Parameter:
            return _cast_layer(scale_dtype)(module, bits) if scale_dtype is not None else module
        q = _quanto()
        w = module.weight.detach()
        dtype = scale_dtype or w.dtype
        data, scale = _rowwise_int8(w, dtype)
        qmodule = q.quantize_module(module, weights=q.qint8)  # built on the meta device, shares the float weight
        qweight = q.WeightQBytesTensor(q.qint8, 0, w.size(), data.stride(), data, scale, None)
        qmodule.weight = nn.Parameter(qweight, requires_grad=False)
        if qmodule.bias is not None and qmodule.bias.dtype != dtype:
            qmodule.bias = nn.Parameter(qmodule.bias.detach().to(dtype), requires_grad=False)
        for name in ("input_scale", "output_scale"):
            setattr(qmodule, name, getattr(qmodule, name).to(dtype))
        if type(qmodule) is q.QLinear and dtype in (torch.bfloat16, torch.float16):
            qmodule.__class__ = q.DequantQLinear  # see its docstring: a bf16 matmul beats int8pack_mm here
        return qmodule

    return layer


def _torchao_layer(config_factory: Callable[[], Any], cast: torch.dtype | None = None
                   ) -> Callable[[nn.Module, int | None], nn.Module]:
    def layer(module: nn.Module, bits: int | None) -> nn.Module:
        if cast is not None:
            _cast_layer(cast)(module, bits)
        if isinstance(module, nn.Linear) and type(module.weight) is nn.Parameter:
            _torchao_quantize()(module, config_factory())  # replaces module.weight by a new tensor subclass
        return module

    return layer


def _int8_dynamic_config():
    with _quiet_backend_import():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    return Int8DynamicActivationInt8WeightConfig()


def _fp8_config():
    with _quiet_backend_import():
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow
    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


@torch.no_grad()
def _fake_quant_layer(module: nn.Module, bits: int | None) -> nn.Module:
    if not isinstance(module, _WEIGHT_LAYERS):
        return module
    if bits is None or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"simulated-int needs bits from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    qmax = 2 ** (bits - 1) - 1
    w = module.weight.detach()
    scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    _set_tensor(module, "weight", torch.round(w / scale).clamp_(-qmax, qmax) * scale)
    return module


def _cast_io_finish(dtype: torch.dtype) -> Callable[[nn.Module, torch.dtype], nn.Module]:
    def finish(module: nn.Module, io_dtype: torch.dtype) -> nn.Module:
        return cast_io_(module, dtype, io_dtype) if io_dtype != dtype else module

    return finish


def _each_layer_(module: nn.Module, layer: Callable[[nn.Module, int | None], nn.Module], bits: int | None
                 ) -> nn.Module:
    """In-place driver of a per-layer function over every module that holds tensors; returns the root."""
    for name, sub in list(module.named_modules()):
        if not sub._parameters and not sub._buffers:
            continue
        new = layer(sub, bits)
        if new is not sub:
            if not name:
                module = new
            else:
                parent, _, child = name.rpartition(".")
                setattr(module.get_submodule(parent) if parent else module, child, new)
    return module


def _bf16_int8_(module: nn.Module, bits: int | None) -> nn.Module:
    io_dtype = _module_dtype(module)
    module = _each_layer_(module, _int8_layer(torch.bfloat16), bits)
    return _cast_io_finish(torch.bfloat16)(module, io_dtype)


@dataclass(frozen=True)
class QuantMode:
    """One quantization mode of the registry.

    Args:
        name (`str`): the registry key.
        short (`str`): a few words for labels ("int8 weights"); `{bits}` is filled in for simulated modes.
        description (`str`): one or two sentences for the UI and README: what it does and what it buys.
        quantize_ (`Callable[[nn.Module, int | None], nn.Module]`): `(module, bits)`, changes the module in
            place and returns it.
        check (`Callable[[torch.device], tuple[bool, str]]`): whether it can run on a device, and why not.
        real_gain (`bool`): False when the mode only simulates the precision loss (no speed or memory gain).
        uses_bits (`bool`): whether the spec's `bits` applies.
        layer_ (`Callable[[nn.Module, int | None], nn.Module]`, *optional*): the mode for one module that holds
            tensors, which may be the baseline's own: returns the module or its replacement and never writes
            into the tensors it was given. Lets the engine build a compressed copy layer by layer (peak memory
            near the result's size). None: the engine deep-copies the UNet and calls `quantize_`.
        finish_ (`Callable[[nn.Module, torch.dtype], nn.Module]`, *optional*): run once on the whole module
            after `layer_`, with the dtype the caller feeds in and expects back (cast hooks).
    """

    name: str
    short: str
    description: str
    quantize_: Callable[[nn.Module, int | None], nn.Module]
    check: Callable[[torch.device], tuple[bool, str]] = _everywhere
    real_gain: bool = True
    uses_bits: bool = False
    layer_: Callable[[nn.Module, int | None], nn.Module] | None = None
    finish_: Callable[[nn.Module, torch.dtype], nn.Module] | None = None

    def available(self, device: torch.device | str = "cpu") -> tuple[bool, str]:
        """`(True, "")`, or `(False, reason)` when this mode cannot run on `device`."""
        return self.check(torch.device(device))

    def label(self, bits: int | None = None) -> str:
        """The short label, with the bit width where it applies."""
        return self.short.format(bits=bits)


QUANT_MODES: dict[str, QuantMode] = {
    q.name: q
    for q in (
        QuantMode("fp32", "", "No quantization: the baseline's own weights and dtype (fp32 on CPU).", _none_,
                  layer_=_none_),
        QuantMode(
            "bf16",
            "bf16",
            "bfloat16 weights and compute: half the bytes, fp32's range (no fp16-style overflow to NaN); on CPUs "
            "with AMX/AVX512-BF16 about 2-3x faster than fp32.",
            _bf16_,
            _bf16_check,
            layer_=_cast_layer(torch.bfloat16),
            finish_=_cast_io_finish(torch.bfloat16),
        ),
        QuantMode(
            "fp16",
            "fp16",
            "float16 weights and compute: half the bytes; fast on GPUs, can overflow to NaN.",
            _fp16_,
            _fp16_check,
            layer_=_cast_layer(torch.float16),
            finish_=_cast_io_finish(torch.float16),
        ),
        QuantMode(
            "fp8",
            "fp8",
            "float8 (e4m3) dynamic activations x float8 weights on Linear layers (torchao), bf16 elsewhere: "
            "fast matmuls on Ada/Hopper GPUs.",
            _fp8_,
            _fp8_check,
            layer_=_torchao_layer(_fp8_config, cast=torch.bfloat16),
            finish_=_cast_io_finish(torch.bfloat16),
        ),
        QuantMode(
            "int8-weight",
            "int8 weights",
            "int8 weights with per-output-channel scales on every Linear AND Conv2d (optimum-quanto): about a "
            "quarter of the fp32 bytes; weights are dequantized on the fly, so no faster on CPU.",
            _int8_weight_,
            _needs("optimum.quanto", "optimum-quanto"),
            layer_=_int8_layer(None),
        ),
        QuantMode(
            "int8-dynamic",
            "int8 dynamic",
            "int8 activations (quantized per call) x int8 weights on Linear layers only (torchao); convolutions "
            "stay fp32, so the UNet shrinks by the Linear share only.",
            _int8_dynamic_,
            _needs("torchao", "torchao"),
            layer_=_torchao_layer(_int8_dynamic_config),
        ),
        QuantMode(
            "int4-weight",
            "int4 weights",
            "int4 weights in groups of 128 with scale and shift on every Linear AND Conv2d (optimum-quanto): "
            "about a seventh of the fp32 bytes, visibly lossy; its asymmetric grid has no exact zero, so pruned "
            "weights stop being exactly zero (measured sparsity drops).",
            _int4_weight_,
            _needs("optimum.quanto", "optimum-quanto"),
            layer_=_int4_layer,
        ),
        QuantMode(
            "bf16+int8-weight",
            "bf16 + int8 weights",
            "int8 weights (per output channel, bf16 scales) on every Linear AND Conv2d, everything else and the "
            "compute in bfloat16 (optimum-quanto): about a quarter of the fp32 bytes and most of bf16's speed.",
            _bf16_int8_,
            lambda d: _needs("optimum.quanto", "optimum-quanto")(d) if _bf16_check(d)[0] else _bf16_check(d),
            layer_=_int8_layer(torch.bfloat16),
            finish_=_cast_io_finish(torch.bfloat16),
        ),
        QuantMode(
            "simulated-int",
            "sim int{bits} (fake)",
            "Weights rounded to N bits (2-8, per output channel, symmetric) and stored back as float: shows the "
            "quality loss of N-bit weights. Simulated: no speed or memory gain.",
            _fake_quant_,
            real_gain=False,
            uses_bits=True,
            layer_=_fake_quant_layer,
        ),
    )
}


def get_quant_mode(mode: str) -> QuantMode:
    """The registry entry for `mode`; ValueError naming the known modes otherwise."""
    try:
        return QUANT_MODES[mode]
    except (KeyError, TypeError):
        text = repr(mode)
        text = text if len(text) <= 40 else text[:37] + "..."
        raise ValueError(f"unknown quantization mode {text}; known: {', '.join(QUANT_MODES)}") from None


def available_quant_modes(device: torch.device | str = "cpu") -> list[str]:
    """Names of the modes that can run on `device`, in registry order (what the UI offers)."""
    return [name for name, q in QUANT_MODES.items() if q.available(device)[0]]


def apply_quantization_(module: nn.Module, mode: str, bits: int | None = None) -> nn.Module:
    """Quantize `module` IN PLACE (pass a copy to keep the original) and return it.

    Args:
        module (`nn.Module`): the module to quantize, usually a deep copy of the baseline UNet.
        mode (`str`): a key of `QUANT_MODES`.
        bits (`int`, *optional*): bit width, 2 to 8, for `"simulated-int"` only.

    Raises:
        ValueError: unknown mode, bits out of range, or a mode not available on the module's device
            (the message gives the reason, e.g. fp16 on CPU).

    Example:
        >>> unet = apply_quantization_(copy.deepcopy(pipe.unet), "simulated-int", bits=4)
    """
    q = get_quant_mode(mode)
    device = _module_device(module)
    ok, why = q.available(device)
    if not ok:
        raise ValueError(f"quantization mode {mode!r} is not available on {device.type}: {why}")
    with torch.no_grad():
        return q.quantize_(module, bits)
