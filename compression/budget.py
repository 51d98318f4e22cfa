"""Memory in bytes: what a compressed UNet will hold before it is built, and how much a server may keep.

`estimate_bytes(unet, spec)` works the size out from shapes alone: a skeleton copy of the UNet on the meta device
(no memory), cut to the structured plan's channel counts when the spec removes channels, then each module that
holds tensors goes through the quantization mode's own per-layer transform (`QuantMode.layer_`, the one the
build uses) and its stored bytes are counted the way `cost.module_cost` counts them (quantized tensor subclasses
unwrapped to their int8/uint8 data, scales and shifts). So the registry is the only place that knows how many
bytes a mode stores per weight, and a new mode is sized without new code. On the SD 1.5 UNet the estimate
equals the built UNet's measured bytes for every CPU mode (fp32 3,279 MiB, bf16 1,639, int8 weights 822, int4
463, int8 dynamic 2,507); tests/test_budget.py checks every mode and structured pruning on the test UNet.
Unstructured and 2:4 pruning write zeros into dense tensors, so they are sized as dense (an upper bound where a
backend later stores 2:4 sparsely). Distinct layer shapes are sized once per process (`_LAYER_BYTES`): 58 on SD
1.5, ~1 s for a quanto mode the first time, microseconds after.

`cache_budget(device)` is the byte budget for one model's compressed UNets: env `APP_CACHE_MB` when set, else
`DEFAULT_BUDGET_SHARE` of the memory available when the model has been loaded (RAM on a CPU: the smaller of the
kernel's MemAvailable and what the container's cgroup limit leaves; free VRAM on a GPU).

Example:
    >>> estimate_bytes(pipe.unet, CompressionSpec(quant_mode="int8-weight")) / 2**20   # SD 1.5: 822.2
    >>> cache_budget("cpu")                                                            # (bytes, how it was chosen)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .cost import meta_copy, tensor_bytes
from .pruning import get_pruner
from .quantization import get_quant_mode
from .spec import CompressionSpec

# The default budget is this share of the memory available once the baseline is loaded: the rest covers the
# transient of a build (the result plus one layer's temporaries, 1.0-1.3x the result on SD 1.5), images,
# sessions, a second model (APP_MAX_MODELS) and the allocator's slack.
DEFAULT_BUDGET_SHARE = 0.4
FALLBACK_BUDGET = 4 * 2**30  # when no memory figure can be read (a patched or unusual device)

_LAYER_BYTES: dict[tuple, int] = {}  # (QuantMode, bits, module signature) -> stored bytes; shapes only, so never stale


class BudgetError(ValueError):
    """A setting whose compressed UNet cannot fit the cache budget even alone; the message says by how much and
    what to choose instead (plain text, shown as is)."""


def _own_bytes(module: nn.Module) -> int:
    seen, total = set(), 0
    for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
        if id(t) not in seen:
            seen.add(id(t))
            total += tensor_bytes(t)
    return total


def _signature(module: nn.Module) -> tuple:
    tensors = [*module._parameters.items(), *module._buffers.items()]
    return (type(module), tuple((n, tuple(t.shape), t.dtype) for n, t in tensors if t is not None))


@torch.no_grad()
def skeleton(unet: nn.Module, spec: CompressionSpec) -> nn.Module:
    """A meta-device copy of `unet` (no memory) with the shapes the spec's pruning leaves.

    Structured methods cut channels: their plan runs on the meta copy (every channel scores the same there, and
    the number kept per layer, the only thing that matters for the size, is the plan's own rounding). Other
    methods keep every shape.
    """
    meta = meta_copy(unet)
    if not spec.prunes or get_pruner(spec.prune_method).kind != "structured":
        return meta
    plan = get_pruner(spec.prune_method).plan(meta, spec.prune_amount, spec.prune_scope, spec.seed)
    for name, sub in list(meta.named_modules()):
        for pname, value in list(sub._parameters.items()):
            new = None if value is None else plan.tensor(name, pname, value)
            if new is not None:
                sub._parameters[pname] = nn.Parameter(new, requires_grad=False)
        plan.fix_(name, sub)
    plan.finish_(meta)
    return meta


@torch.no_grad()
def estimate_bytes(unet: nn.Module, spec: CompressionSpec) -> int:
    """Bytes the compressed copy of `unet` for `spec` will store, worked out from shapes before building it.

    Args:
        unet (`nn.Module`): the baseline UNet (only its shapes and dtypes are read).
        spec (`CompressionSpec`): the setting.

    Returns:
        `int`: bytes of parameters and buffers, counted like `cost.module_bytes` counts a built UNet. 0 for the
        identity spec (the baseline's own UNet is used, nothing new is held).
    """
    if spec.is_identity:
        return 0
    mode = get_quant_mode(spec.quant_mode)
    total = 0
    for _, sub in skeleton(unet, spec).named_modules():
        if not sub._parameters and not sub._buffers:
            continue
        key = (mode, spec.bits, _signature(sub))
        if key not in _LAYER_BYTES:
            try:  # a mode without a per-layer form, or a backend that cannot run on meta: the layer as it is
                _LAYER_BYTES[key] = _own_bytes(sub if mode.layer_ is None else mode.layer_(meta_copy(sub), spec.bits))
            except Exception:  # noqa: BLE001
                _LAYER_BYTES[key] = _own_bytes(sub)
        total += _LAYER_BYTES[key]
    return total


# ------------------------------------------------------------------------------------------ memory available


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> int | None:
    """Bytes the container's memory cgroup still allows (v2, then v1), or None when unlimited or unknown.

    A container (a Space) sees the host's /proc/meminfo: its own limit is only in the cgroup files."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            return max(0, limit - usage)
    return None


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_available(device: str | torch.device = "cpu") -> tuple[int | None, str]:
    """(bytes free for new tensors on `device`, what was read), or (None, why not)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free), "free GPU memory"
        except Exception:  # noqa: BLE001 - e.g. ZeroGPU at import time, where CUDA is only emulated
            try:
                props = torch.cuda.get_device_properties(device.index or 0)
                return int(props.total_memory - torch.cuda.memory_allocated(device)), "GPU memory not yet allocated"
            except Exception:  # noqa: BLE001
                return None, "GPU memory could not be read"
    figures = [(v, what) for v, what in ((_mem_available(), "RAM"), (_cgroup_room(), "container RAM")) if v]
    if not figures:
        return None, "available RAM could not be read"
    return min(figures)


def cache_budget(device: str | torch.device = "cpu") -> tuple[int, str]:
    """The byte budget for one model's cached compressed UNets, and how it was chosen (a sentence for the page).

    Env `APP_CACHE_MB` wins; else `DEFAULT_BUDGET_SHARE` of `memory_available(device)`, read when called (call it
    once the baseline is loaded); else `FALLBACK_BUDGET`.
    """
    env = os.environ.get("APP_CACHE_MB", "").strip()
    if env:
        try:
            mb = float(env)
        except ValueError:
            raise ValueError(f"APP_CACHE_MB must be a number of MiB, got {env[:20]!r}") from None
        if not mb >= 0:
            raise ValueError(f"APP_CACHE_MB must be >= 0, got {env[:20]!r}")
        return int(mb * 2**20), f"{mb:,.0f} MiB set by APP_CACHE_MB"
    free, what = memory_available(device)
    if free is None:
        return FALLBACK_BUDGET, f"{FALLBACK_BUDGET / 2**30:.0f} GiB ({what}; set APP_CACHE_MB)"
    budget = int(DEFAULT_BUDGET_SHARE * free)
    return budget, (
        f"{budget / 2**20:,.0f} MiB: {DEFAULT_BUDGET_SHARE:.0%} of the {free / 2**30:.1f} GiB of {what} available "
        "after loading the model (APP_CACHE_MB overrides)"
    )


SMALLER_SETTING = (
    "Choose a setting that stores fewer bytes: int8 or int4 weights, bf16, or structured (channel) pruning; "
    "unstructured pruning and simulated bits keep every float weight."
)


def check_fits(estimate: int, budget: int | None, label: str, what: str = "compressed UNet", advice: str = "") -> None:
    """Refuse a UNet that alone is over the budget (None: no budget).

    Args:
        estimate (`int`): its bytes (`estimate_bytes`).
        budget (`int`, *optional*): the cache's byte budget.
        label (`str`): the setting or model, as the message names it.
        what (`str`, defaults to `"compressed UNet"`): what would be held.
        advice (`str`, defaults to `SMALLER_SETTING`): what to choose instead.

    Raises:
        BudgetError: naming the setting, both sizes and what to choose instead.
    """
    if budget is None or estimate <= budget:
        return
    raise BudgetError(
        f"{label}: its {what} would hold about {estimate / 2**20:,.0f} MiB, more than this server's "
        f"{budget / 2**20:,.0f} MiB budget for the UNets it keeps (APP_CACHE_MB). {advice or SMALLER_SETTING}"
    )
