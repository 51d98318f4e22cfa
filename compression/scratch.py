"""Reusable work buffers for the block-by-block kernels of pruning and quantization.

Compression reads a UNet a few MiB at a time; the temporaries of each block come from here instead of malloc.
Freed between the results a build keeps, malloc'd temporaries left holes in glibc's heap that it could not give
back: peak RSS of an SD 1.5 int4 build grew to 1.6x the result's size, with these buffers ~1.1x (and builds got
faster: no page faults on fresh memory). A buffer is per thread, so concurrent builds never share one.

Example:
    >>> work = scratch(block.numel(), torch.float32, block.device).view(block.shape)
    >>> torch.abs(block, out=work)
"""

from __future__ import annotations

import threading

import torch

_LOCAL = threading.local()
MIN_ELEMENTS = 1 << 20  # 4 MiB of float32: the block size the kernels use


def scratch(numel: int, dtype: torch.dtype, device: torch.device | str, slot: int = 0) -> torch.Tensor:
    """A flat work buffer of `numel` elements, reused across calls with the same (dtype, device, slot).

    Args:
        numel (`int`): elements needed.
        dtype (`torch.dtype`), device: of the buffer.
        slot (`int`, defaults to 0): separate buffers for temporaries that are alive at the same time.

    The contents are garbage on return; a caller must be done with a buffer before asking for the same slot
    again (nested users take different slots).
    """
    buffers = getattr(_LOCAL, "buffers", None)
    if buffers is None:
        buffers = _LOCAL.buffers = {}
    key = (slot, dtype, str(device))
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = buffers[key] = torch.empty(max(numel, MIN_ELEMENTS), dtype=dtype, device=device)
    return buf[:numel]
