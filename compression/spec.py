"""CompressionSpec: one compression request (pruning + quantization), validated, hashable, printable.

Frozen so it can key the engine's cache; validated in `__post_init__`, which raises ValueError naming the
valid range or the known names and never clamps or corrects (a slider's range is checked by Gradio, but NaN and
out-of-range API calls are not). Registry names are checked against the live registries, so a method added to
`PRUNERS` or `QUANT_MODES` is accepted here without touching this file.

Example:
    >>> spec = CompressionSpec(prune_amount=0.3, quant_mode="int8-weight")
    >>> spec.label
    'L1 30% + int8 weights'
    >>> CompressionSpec.from_json(spec.to_json()) == spec
    True
    >>> CompressionSpec(prune_amount=0.7, recover_steps=500).label
    'L1 70% + recovered 500 steps'
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

from ._text import short_repr as _short
from .pruning import MAX_AMOUNT, PRUNERS, SCOPES
from .quantization import MAX_BITS, MIN_BITS, QUANT_MODES

MAX_SEED = 2**32 - 1  # torch.Generator.manual_seed takes 64 bits; numpy's legacy seeding and the UI take 32
MAX_RECOVER_STEPS = 100_000  # ~6 h of the embedded model on one CPU core; the app admits far fewer (priced)
# Where recovery's training pairs come from: "real" (real images of the model's world with their captions: the
# shapes world) or "prompts" (data-free: captions only, the baseline's predictions the only target).
RECOVER_DATA = ("real", "prompts")


def _check_name(kind: str, value: object, known: dict) -> None:
    if not isinstance(value, str) or value not in known:
        raise ValueError(f"unknown {kind} {_short(value)}; known: {', '.join(known)}")


@dataclass(frozen=True)
class CompressionSpec:
    """What to do to the UNet: prune, then quantize.

    Args:
        prune_amount (`float`, defaults to 0.0): fraction of the scope's weights to prune, 0.0 to 0.95.
            The measured sparsity is reported separately (it can exceed this if weights were zero already).
        prune_method (`str`, defaults to `"l1-unstructured"`): a key of `compression.pruning.PRUNERS`.
        prune_scope (`str`, defaults to `"all"`): a key of `compression.pruning.SCOPES`.
        quant_mode (`str`, defaults to `"fp32"`): a key of `compression.quantization.QUANT_MODES`.
        bits (`int`, *optional*): weight bit width, 2 to 8, required by `"simulated-int"` and must be None for
            every other mode (so two specs that do the same thing are one cache key).
        seed (`int`, defaults to 0): seed of the random pruning control; part of the key because it changes
            which weights go.
        recover_steps (`int`, defaults to 0): optimiser steps of distillation fine-tuning against the baseline
            after pruning and before quantization (`compression.recover`), 0 to 100,000; 0 is off. Needs pruning.
        recover_data (`str`, defaults to `"real"`): `"real"` (real image-caption pairs of the model's world) or
            `"prompts"` (data-free: captions only, the baseline the only target); must stay `"real"` when
            `recover_steps` is 0 (one setting, one key).

    Raises:
        ValueError: with the valid range or the known names.
    """

    prune_amount: float = 0.0
    prune_method: str = "l1-unstructured"
    prune_scope: str = "all"
    quant_mode: str = "fp32"
    bits: int | None = None
    seed: int = 0
    recover_steps: int = 0
    recover_data: str = "real"

    def __post_init__(self) -> None:
        amount = self.prune_amount
        if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
            raise ValueError(f"prune_amount must be a number from 0.0 to {MAX_AMOUNT}, got {_short(amount)}")
        amount = float(amount)
        if math.isnan(amount) or not 0.0 <= amount <= MAX_AMOUNT:
            raise ValueError(f"prune_amount must be from 0.0 to {MAX_AMOUNT}, got {_short(self.prune_amount)}")
        # A numpy float or an int 0 becomes a plain float: same hash/equality, and JSON-serialisable.
        object.__setattr__(self, "prune_amount", amount)

        _check_name("pruning method", self.prune_method, PRUNERS)
        fixed = PRUNERS[self.prune_method].fixed_amount
        if fixed is not None and amount not in (0.0, fixed):
            raise ValueError(
                f"{self.prune_method} prunes a fixed share: prune_amount must be 0.0 or {fixed}, "
                f"got {_short(self.prune_amount)}"
            )
        _check_name("pruning scope", self.prune_scope, SCOPES)
        _check_name("quantization mode", self.quant_mode, QUANT_MODES)

        mode = QUANT_MODES[self.quant_mode]
        if mode.uses_bits:
            bits = self.bits
            if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not MIN_BITS <= bits <= MAX_BITS:
                raise ValueError(
                    f"bits must be an integer from {MIN_BITS} to {MAX_BITS} for {self.quant_mode!r}, got {_short(bits)}"
                )
            object.__setattr__(self, "bits", int(bits))
        elif self.bits is not None:
            raise ValueError(
                f"bits applies only to quant_mode 'simulated-int' (must be None for {self.quant_mode!r}), "
                f"got {_short(self.bits)}"
            )

        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {_short(seed)}")
        object.__setattr__(self, "seed", int(seed))
        self._check_recovery()

    def _check_recovery(self) -> None:
        steps = self.recover_steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 0 <= steps <= MAX_RECOVER_STEPS:
            raise ValueError(f"recover_steps must be an integer from 0 to {MAX_RECOVER_STEPS:,}, got {_short(steps)}")
        object.__setattr__(self, "recover_steps", int(steps))
        if not isinstance(self.recover_data, str) or self.recover_data not in RECOVER_DATA:
            raise ValueError(f"unknown recover_data {_short(self.recover_data)}; known: {', '.join(RECOVER_DATA)}")
        if steps and not self.prunes:
            # Recovery runs before quantization, so an unpruned UNet has nothing to recover from.
            raise ValueError("recover_steps > 0 needs pruning (prune_amount > 0): recovery fine-tunes a pruned UNet")
        if not steps and self.recover_data != RECOVER_DATA[0]:
            raise ValueError(f"recover_data applies only when recover_steps > 0 (got {self.recover_data!r} with 0)")

    @property
    def recovers(self) -> bool:
        """Whether the pruned UNet is fine-tuned against the baseline before quantization."""
        return self.recover_steps > 0

    @property
    def prunes(self) -> bool:
        """Whether any weight is pruned."""
        return self.prune_amount > 0

    @property
    def is_identity(self) -> bool:
        """True when the spec changes nothing (0% pruning, fp32): the compressed UNet is the baseline's."""
        return not self.prunes and self.quant_mode == "fp32"

    @property
    def label(self) -> str:
        """A short human label, e.g. "L1 30% + int8 weights", "random 50% (attention)", "baseline".

        Settings that differ get different labels: the amount is shown to 12 significant digits, not snapped
        to a grid ("L1 30%" and "L1 30.001%" are two settings and two rows of a sweep's summary)."""
        parts = []
        if self.prunes:
            # 12 significant digits: two amounts that differ show different labels (30% vs 30.001%), while
            # float noise (0.07 * 100 = 7.000000000000001) does not reach the label.
            text = f"{PRUNERS[self.prune_method].short} {self.prune_amount * 100:.12g}%"
            if self.prune_scope != "all":
                text += f" ({self.prune_scope})"
            parts.append(text)
        if self.recovers:
            data = ", data-free" if self.recover_data == "prompts" else ""
            parts.append(f"recovered {self.recover_steps} steps{data}")
        quant = QUANT_MODES[self.quant_mode].label(self.bits)
        if quant:
            parts.append(quant)
        return " + ".join(parts) if parts else "baseline"

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the fields (JSON-safe). The recovery fields are left out while recovery is off, so
        every spec without recovery keeps the dict, JSON and digests (sweep cells, bundles) it always had."""
        data = asdict(self)
        if not self.recovers:
            del data["recover_steps"], data["recover_data"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionSpec:
        """Build from a dict such as `to_dict()` gives; missing keys take their defaults, unknown keys raise."""
        if not isinstance(data, dict):
            raise ValueError(f"a CompressionSpec dict is needed, got {_short(data)}")
        known = {f.name for f in fields(cls)}
        extra = [k for k in data if k not in known]
        if extra:
            raise ValueError(f"unknown CompressionSpec field(s) {_short(extra)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_json(self) -> str:
        """JSON text of `to_dict()`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CompressionSpec:
        """Inverse of `to_json()`."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"not a CompressionSpec JSON text: {err.__class__.__name__}") from None
        return cls.from_dict(data)
