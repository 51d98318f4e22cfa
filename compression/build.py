"""A compressed copy of a UNet, made layer by layer from the baseline: a UNet and a spec, no pipeline.

`build_compressed(source, spec)` fills an empty skeleton copy of `source` (meta tensors: the structure, no
memory) one module at a time: each parameter is the pruning plan's new tensor or the source's own, then the
quantization mode's `layer_` turns the module into its compressed form, and whatever still shares memory with
the source is copied. So the float weights are read once, only the result is written, and peak memory is the
result plus one layer's temporaries (a deep copy first would add a whole float UNet: 3.2 GiB for SD 1.5).

Example:
    >>> unet, report = build_compressed(pipe.unet, CompressionSpec(prune_amount=0.3, quant_mode="int8-weight"))
    >>> state_dict_digest(pipe.unet) == before   # the source is only read
    True
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from .cost import ModuleCost, meta_copy
from .pruning import PruneReport, check_amount, get_pruner, scope_layers
from .quantization import get_quant_mode
from .scratch import scratch
from .spec import CompressionSpec


def _tensor_bytes_for_digest(t: torch.Tensor) -> bytes:
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return b"".join(_tensor_bytes_for_digest(getattr(t, n)) for n in names if getattr(t, n, None) is not None)
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def state_dict_digest(module: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a module's state_dict (proves "never mutated")."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes_for_digest(t))
    return h.hexdigest()


@dataclass(frozen=True)
class CompressedUNet:
    """A cache entry: the compressed UNet and what making it cost.

    Args:
        unet (`nn.Module`): the compressed copy (the baseline's own UNet for an identity spec).
        spec (`CompressionSpec`): what was applied.
        prune_report (`PruneReport`, *optional*): measured pruning over the scope (None when nothing pruned).
        seconds (`float`): copy + prune + quantize wall time.
        cost (`ModuleCost`): bytes, parameters, sparsity of the result.
        built (`str`, defaults to `"layerwise"`): how the copy was made: `"layerwise"` (`build_compressed`),
            `"deepcopy"` (registry entries without a per-layer form), `"recovered"` (pruned, fine-tuned against
            the baseline, then quantized: `compression.recover`) or `"baseline"` (identity spec).
        cost_seconds (`float`, defaults to 0.0): time spent measuring `cost` (after `seconds`).
    """

    unet: nn.Module
    spec: CompressionSpec
    prune_report: PruneReport | None
    seconds: float
    cost: ModuleCost
    built: str = "layerwise"
    cost_seconds: float = 0.0


def _storage(t: torch.Tensor) -> int | None:
    if type(t) not in (torch.Tensor, nn.Parameter) or t.device.type == "meta":
        return None  # a quantized tensor subclass is always new; meta tensors hold nothing
    return t.untyped_storage().data_ptr()


def layerwise_supported(source: nn.Module, spec: CompressionSpec) -> bool:
    """Whether `build_compressed` can make `spec` (the registry entries have per-layer forms)."""
    pruner, mode = get_pruner(spec.prune_method), get_quant_mode(spec.quant_mode)
    if spec.prunes and pruner.plan is None:
        return False
    if mode.layer_ is None:
        return False
    # diffusers keeps some modules in fp32 when a model is cast; the whole-model path knows how.
    return not getattr(source, "_keep_in_fp32_modules", None)


@dataclass
class _Pruning:
    """The pruning side of one build: the plan, the layers it covers, and the zeros and time it adds up."""

    plan: object  # the pruner's plan: `tensor(name, pname, original, alloc)`, `fix_`, `finish_`, `zeros`
    scope_names: set[str]
    seconds: float  # planning + making the pruned tensors (the rest is copying and quantizing)
    zeros: int = 0  # counted per weight when the plan does not know them
    params_before: int = 0
    alloc: object = None  # a work-buffer allocator for pruned weights that are quantized right away


def _check_available(spec: CompressionSpec, device: torch.device) -> None:
    pruner, mode = get_pruner(spec.prune_method), get_quant_mode(spec.quant_mode)
    for entry, kind in ((mode, "quantization mode"), (pruner if spec.prunes else None, "pruning method")):
        if entry is not None:
            ok, why = entry.available(device)
            if not ok:
                raise ValueError(f"{kind} {entry.name!r} is not available on {device.type}: {why}")


def _plan_pruning(source: nn.Module, spec: CompressionSpec, source_zeros: int | None) -> _Pruning | None:
    if not spec.prunes:
        return None
    start = time.perf_counter()
    pruner = get_pruner(spec.prune_method)
    check_amount(pruner, spec.prune_amount)
    scope_names = {n for n, _ in scope_layers(source, spec.prune_scope)}
    plan = pruner.plan(source, spec.prune_amount, spec.prune_scope, spec.seed)
    if plan.zeros is None and source_zeros == 0 and pruner.kind == "structured":
        plan.zeros = 0  # cutting channels out of weights that hold no zero leaves none
    return _Pruning(plan, scope_names, time.perf_counter() - start)


def _work_buffers(owned: set, device: torch.device):
    """An allocator that writes pruned float weights into reusable work buffers.

    The pruned float weight is quantized (or cast) right away and dropped: a reusable buffer instead of fresh
    memory (fresh temporaries freed between the kept results fragment the heap: +0.5 GiB peak on SD 1.5).
    Whatever the mode keeps of it is copied afterwards, like the source's own tensors (its storage joins `owned`).
    """

    def alloc(shape: tuple, dtype: torch.dtype, slot: int = 0) -> torch.Tensor:
        buf = scratch(math.prod(shape), dtype, device, slot=20 + slot).view(shape)
        owned.add(_storage(buf))
        return buf

    return alloc


def _fill_parameters_(sub: nn.Module, src: nn.Module, name: str, pruning: _Pruning | None) -> None:
    """Give the skeleton module `sub` its tensors: pruned where the plan says so, else the source's own."""
    for slot, (pname, value) in enumerate(list(sub._parameters.items())):
        if value is None:
            continue
        original = src._parameters[pname].detach()
        new = None
        if pruning is not None:
            t0 = time.perf_counter()
            alloc = None if pruning.alloc is None else functools.partial(pruning.alloc, slot=slot)
            new = pruning.plan.tensor(name, pname, original, alloc)
            pruning.seconds += time.perf_counter() - t0
        tensor = original if new is None else new
        if pruning is not None and pruning.plan.zeros is None and pname == "weight" and name in pruning.scope_names:
            pruning.zeros += tensor.numel() - int(torch.count_nonzero(tensor))  # before quantization changes them
        sub._parameters[pname] = nn.Parameter(tensor, requires_grad=False)
        del tensor, new
    for bname, value in list(sub._buffers.items()):
        if value is not None:
            sub._buffers[bname] = src._buffers[bname]


def _unshare_(module: nn.Module, owned: set) -> None:
    """Copy whatever of `module`'s own tensors still shares memory with the baseline (or a work buffer)."""
    for tname, t in [*module._parameters.items(), *module._buffers.items()]:
        if t is not None and _storage(t) in owned:
            value = t.detach().clone()
            if tname in module._parameters:
                module._parameters[tname] = nn.Parameter(value, requires_grad=False)
            else:
                module._buffers[tname] = value


def _report(spec: CompressionSpec, unet: nn.Module, pruning: _Pruning) -> PruneReport:
    plan = pruning.plan
    layers = scope_layers(unet, spec.prune_scope)
    channels = (getattr(plan, "channels_before", 0), getattr(plan, "channels_after", 0))
    return PruneReport(
        spec.prune_method,
        spec.prune_amount,
        spec.prune_scope,
        sum(m.weight.numel() for _, m in layers),
        plan.zeros if plan.zeros is not None else pruning.zeros,
        len(layers),
        pruning.seconds,
        pruning.params_before,
        sum(p.numel() for p in unet.parameters()),
        *channels,
    )


@torch.no_grad()
def build_compressed(
    source: nn.Module, spec: CompressionSpec, source_zeros: int | None = None
) -> tuple[nn.Module, PruneReport | None]:
    """A new compressed module made layer by layer from `source`, which is only read.

    Args:
        source (`nn.Module`): the baseline UNet (never written to).
        spec (`CompressionSpec`): what to do; `layerwise_supported(source, spec)` must be True.
        source_zeros (`int`, *optional*): zero weights in the source's Linear/Conv2d layers, if known (the
            engine's baseline cost). 0 lets a structured plan skip counting: cutting channels out of weights
            that hold no zero leaves none.

    Returns:
        `(module, prune_report)`; the report is None when nothing is pruned.

    Raises:
        ValueError: a method or mode that cannot run on the source's device, or a bad amount.
    """
    mode = get_quant_mode(spec.quant_mode)
    device = next(source.parameters()).device
    _check_available(spec, device)
    io_dtype = next(p.dtype for p in source.parameters() if p.is_floating_point())
    pruning = _plan_pruning(source, spec, source_zeros)
    owned = {_storage(t) for t in [*source.parameters(), *source.buffers()]}
    if pruning is not None:
        pruning.params_before = sum(p.numel() for p in source.parameters())
        if spec.quant_mode != "fp32":
            pruning.alloc = _work_buffers(owned, device)
    unet = meta_copy(source)
    # Names, not module objects: a list of the modules would keep every replaced layer (and the pruned float
    # weights it was made from) alive until the end.
    for name in [n for n, m in unet.named_modules() if m._parameters or m._buffers]:
        sub = unet.get_submodule(name)
        _fill_parameters_(sub, source.get_submodule(name), name, pruning)
        if pruning is not None:
            pruning.plan.fix_(name, sub)
        new_sub = mode.layer_(sub, spec.bits)
        _unshare_(new_sub, owned)  # the copy must never share memory with the baseline
        if new_sub is not sub:
            if name:
                unet.set_submodule(name, new_sub)
            else:
                unet = new_sub
        del sub, new_sub
    if pruning is not None:
        pruning.plan.finish_(unet)
    if mode.finish_ is not None:
        unet = mode.finish_(unet, io_dtype)
    unet.eval().requires_grad_(False)
    return unet, None if pruning is None else _report(spec, unet, pruning)
