"""The torchao details of the int8-dynamic and fp8 modes, in one file.

torchao's int8 configs give an `Int8Tensor` that has no `aten.convolution` kernel, so they can only take Linear
layers (31% of SD 1.5 UNet weights; checked on torchao 0.18). Its `Int4WeightOnlyConfig` needs the `mslk`
kernels (not on CPU) and `IntxWeightOnlyConfig(int4)` stores int4 unpacked in int8 (no memory gain), so int4
goes through quanto instead (quanto_backend.py).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._quiet import quiet_backend_import


def available(device: torch.device) -> tuple[bool, str]:
    if importlib.util.find_spec("torchao") is None:
        return False, "needs torchao: pip install -r requirements.txt"
    return True, ""


@functools.cache
def _quantize() -> Callable[..., None]:
    with quiet_backend_import():
        from torchao.quantization import quantize_
    return quantize_


def int8_dynamic_config() -> Any:
    with quiet_backend_import():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    return Int8DynamicActivationInt8WeightConfig()


def fp8_config() -> Any:
    with quiet_backend_import():
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
        )
    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def is_float_linear(module: nn.Module, fqn: str = "") -> bool:
    """torchao's `filter_fn(module, fqn)`: Linear layers whose weight is still a plain float Parameter."""
    return isinstance(module, nn.Linear) and type(module.weight) is nn.Parameter


def quantize_linear_(module: nn.Module, config_factory: Callable[[], Any]) -> nn.Module:
    """Quantize `module` in place if it is a float Linear (a new tensor subclass as its weight); returns it."""
    if is_float_linear(module):
        _quantize()(module, config_factory())
    return module


def quantize_whole_(module: nn.Module, config_factory: Callable[[], Any]) -> nn.Module:
    """torchao's own whole-module walk over every Linear of `module`, in place; returns it."""
    _quantize()(module, config_factory())
    return module
