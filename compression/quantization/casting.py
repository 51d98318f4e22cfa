"""Dtype casting shared by the modes that change the compute dtype (bf16, fp16, fp8, bf16+int8-weight).

They cast the UNet's floating inputs to that dtype and its outputs back, with a forward pre-hook and a forward
hook, so the rest of the pipeline (text encoder, VAE, scheduler) keeps its own precision: fp16 VAEs and
schedulers are where NaN/black images come from.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter or buffer `name` of `module` by `value` (a new tensor; the old one is not written)."""
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[name] = value


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


def to_dtype_(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the whole `module` in place and hook its inputs and outputs (see `cast_io_`).

    Not the per-layer `cast_layer` plus `cast_io_finish`: diffusers models may name modules to keep in fp32,
    which only `ModelMixin.to` honours, and an in-place cast keeps the caller's Parameter objects.
    """
    io_dtype = module_dtype(module)
    if io_dtype == dtype:
        return module
    if getattr(module, "_keep_in_fp32_modules", None):
        module.to(dtype)  # diffusers' ModelMixin.to keeps those modules in fp32
    else:
        # diffusers 0.42's ModelMixin.to warns about "modules that should be kept in float32: []" on every
        # dtype cast, even when there are none; nn.Module.to does the same cast without the false alarm.
        nn.Module.to(module, dtype)
    return cast_io_(module, dtype, io_dtype)


def cast_layer(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """One module's own floating tensors as new `dtype` tensors (the source tensors stay as they are)."""
    for name, t in [*module._parameters.items(), *module._buffers.items()]:
        if t is not None and t.is_floating_point() and t.dtype != dtype:
            set_tensor(module, name, t.detach().to(dtype))
    return module


def cast_io_finish(module: nn.Module, dtype: torch.dtype, io_dtype: torch.dtype) -> nn.Module:
    """The finishing step of a per-layer dtype change: hook the whole module's inputs and outputs."""
    return cast_io_(module, dtype, io_dtype) if io_dtype != dtype else module
