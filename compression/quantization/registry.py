"""The registry of quantization modes: `QuantMode`, `QUANT_MODES`, the `register_mode` decorator, the verb.

A mode is written once, in modes.py: its check, its per-layer transform and its registry entry side by side.
The whole-module form is that per-layer transform applied to every module holding tensors, then the mode's
finishing step, unless the mode names its own (`quantize_=`) because it does something the layers cannot.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .casting import module_device, module_dtype

LayerFn = Callable[[nn.Module, "int | None"], nn.Module]
FinishFn = Callable[[nn.Module, torch.dtype], nn.Module]
CheckFn = Callable[[torch.device], "tuple[bool, str]"]


def everywhere(device: torch.device) -> tuple[bool, str]:
    return True, ""


def each_layer_(module: nn.Module, layer: LayerFn, bits: int | None) -> nn.Module:
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


def layerwise_quantize_(module: nn.Module, bits: int | None, *, layer: LayerFn, finish: FinishFn | None) -> nn.Module:
    """The whole-module form of a per-layer mode: `layer` on each module, then `finish` once."""
    io_dtype = module_dtype(module)
    module = each_layer_(module, layer, bits)
    return finish(module, io_dtype) if finish is not None else module


@dataclass(frozen=True)
class QuantMode:
    """One quantization mode of the registry.

    Args:
        name (`str`): the registry key.
        short (`str`): a few words for labels ("int8 weights"); `{bits}` is filled in for simulated modes.
        description (`str`): one or two sentences for the UI and README: what it does and what it buys.
        quantize_ (`Callable[[nn.Module, int | None], nn.Module]`, *optional*): `(module, bits)`, changes the
            module in place and returns it. None: `layer_` over every module, then `finish_`.
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
    quantize_: LayerFn | None = None
    check: CheckFn = everywhere
    real_gain: bool = True
    uses_bits: bool = False
    layer_: LayerFn | None = None
    finish_: FinishFn | None = None

    def __post_init__(self) -> None:
        if self.quantize_ is None:
            if self.layer_ is None:
                raise ValueError(f"quantization mode {self.name!r} needs quantize_ or layer_")
            whole = functools.partial(layerwise_quantize_, layer=self.layer_, finish=self.finish_)
            object.__setattr__(self, "quantize_", whole)

    def available(self, device: torch.device | str = "cpu") -> tuple[bool, str]:
        """`(True, "")`, or `(False, reason)` when this mode cannot run on `device`."""
        return self.check(torch.device(device))

    def label(self, bits: int | None = None) -> str:
        """The short label, with the bit width where it applies."""
        return self.short.format(bits=bits)


QUANT_MODES: dict[str, QuantMode] = {}


def register_mode(name: str, short: str, description: str, **fields) -> Callable[[LayerFn], LayerFn]:
    """Decorate a mode's per-layer function to register it as `QUANT_MODES[name]`.

    Args:
        name, short, description: as in `QuantMode`.
        **fields: the other `QuantMode` fields (`check`, `finish_`, `quantize_`, `real_gain`, `uses_bits`).

    Example:
        >>> @register_mode("bf16", "bf16", "bfloat16 weights and compute.", check=bf16_check, finish_=bf16_finish)
        ... def bf16_layer(module, bits):
        ...     return cast_layer(module, torch.bfloat16)
    """

    def register(layer: LayerFn) -> LayerFn:
        if name in QUANT_MODES:
            raise ValueError(f"quantization mode {name!r} is registered twice")
        QUANT_MODES[name] = QuantMode(name, short, description, layer_=layer, **fields)
        return layer

    return register


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
    device = module_device(module)
    ok, why = q.available(device)
    if not ok:
        raise ValueError(f"quantization mode {mode!r} is not available on {device.type}: {why}")
    with torch.no_grad():
        return q.quantize_(module, bits)
