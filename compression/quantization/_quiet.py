"""Silence the import-time log noise of the optional backends (torchao, quanto)."""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def quiet_backend_import():
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
