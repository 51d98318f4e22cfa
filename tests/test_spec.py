"""CompressionSpec: validation (raise, never clamp), labels, hashing and the dict/JSON round trip."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from compression import PRUNERS, QUANT_MODES, SCOPES, CompressionSpec

VALID = [
    CompressionSpec(),
    CompressionSpec(prune_amount=0.3, quant_mode="int8-weight"),
    CompressionSpec(0.5, "random-unstructured", "attention", "bf16", seed=7),
    CompressionSpec(0.95, "l1-unstructured-layer", "no-io"),
    CompressionSpec(quant_mode="simulated-int", bits=2),
    CompressionSpec(0.125, quant_mode="simulated-int", bits=8),
]


@pytest.mark.parametrize("spec", VALID, ids=lambda s: s.label)
def test_round_trip_dict_and_json(spec):
    assert CompressionSpec.from_dict(spec.to_dict()) == spec
    assert CompressionSpec.from_json(spec.to_json()) == spec
    assert hash(CompressionSpec.from_json(spec.to_json())) == hash(spec)


def test_hashable_and_frozen():
    a, b = CompressionSpec(0.3, quant_mode="int8-weight"), CompressionSpec(0.3, quant_mode="int8-weight")
    assert a == b and len({a, b, CompressionSpec()}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.prune_amount = 0.5


def test_numbers_are_normalised_not_clamped():
    assert CompressionSpec(prune_amount=0) == CompressionSpec(prune_amount=0.0)
    spec = CompressionSpec(prune_amount=np.float32(0.5), quant_mode="simulated-int", bits=np.int64(4))
    assert type(spec.prune_amount) is float and type(spec.bits) is int
    assert spec.to_json()  # numpy values would not serialise


@pytest.mark.parametrize(
    "spec, label",
    [
        (CompressionSpec(), "baseline"),
        (CompressionSpec(0.3, quant_mode="int8-weight"), "L1 30% + int8 weights"),
        (CompressionSpec(0.35), "L1 35%"),
        (CompressionSpec(0.125, "l1-unstructured-layer"), "L1/layer 12.5%"),
        (CompressionSpec(0.5, "random-unstructured", "attention"), "random 50% (attention)"),
        (CompressionSpec(quant_mode="bf16"), "bf16"),
        (CompressionSpec(quant_mode="simulated-int", bits=4), "sim int4 (fake)"),
    ],
)
def test_label(spec, label):
    assert spec.label == label


@pytest.mark.parametrize("amount", [-0.1, 1.0, 0.96, math.nan, math.inf, -math.inf, "0.3", None, True])
def test_bad_amount_names_range(amount):
    with pytest.raises(ValueError, match=r"0\.0 to 0\.95"):
        CompressionSpec(prune_amount=amount)


@pytest.mark.parametrize(
    "field, registry",
    [("prune_method", PRUNERS), ("prune_scope", SCOPES), ("quant_mode", QUANT_MODES)],
)
@pytest.mark.parametrize("bad", ["nope", "", None, 3])
def test_unknown_names_list_known_ones(field, registry, bad):
    with pytest.raises(ValueError) as err:
        CompressionSpec(**{field: bad})
    for name in registry:
        assert name in str(err.value)


@pytest.mark.parametrize("bits", [1, 9, 0, None, 4.0, True, "8"])
def test_bad_bits_for_simulated_names_range(bits):
    with pytest.raises(ValueError, match="2 to 8"):
        CompressionSpec(quant_mode="simulated-int", bits=bits)


@pytest.mark.parametrize("mode", [m for m in QUANT_MODES if not QUANT_MODES[m].uses_bits])
def test_bits_refused_where_meaningless(mode):
    # Two specs that do the same thing must be one cache key: bits only exists for simulated-int.
    with pytest.raises(ValueError, match="simulated-int"):
        CompressionSpec(quant_mode=mode, bits=8)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, None])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        CompressionSpec(seed=seed)


def test_huge_input_is_not_echoed():
    # Error messages end up in the app's HTML: a pasted megabyte must not come back.
    for kwargs in ({"prune_method": "x" * 100_000}, {"quant_mode": "<b>" * 10_000}, {"prune_amount": "9" * 10_000}):
        with pytest.raises(ValueError) as err:
            CompressionSpec(**kwargs)
        assert len(str(err.value)) < 400


def test_from_dict_and_json_errors():
    with pytest.raises(ValueError, match="unknown CompressionSpec field"):
        CompressionSpec.from_dict({"prune_amount": 0.3, "speed": "fast"})
    with pytest.raises(ValueError, match="dict"):
        CompressionSpec.from_dict([0.3])
    with pytest.raises(ValueError, match="JSON"):
        CompressionSpec.from_json("{not json")
    assert CompressionSpec.from_dict({}) == CompressionSpec()


def test_identity():
    assert CompressionSpec().is_identity
    assert CompressionSpec(0.0, "random-unstructured").is_identity
    assert not CompressionSpec(0.1).is_identity
    assert not CompressionSpec(quant_mode="bf16").is_identity
