"""Sweeps end to end on the tiny real pipeline: batched drawing, CSV/JSON/HTML outputs, resumption, limits."""

from __future__ import annotations

import numpy as np
import pytest

from compression.engine import Engine, state_dict_digest
from compression.spec import CompressionSpec

PROMPTS = ["a red circle on the left on a white background", "a blue square at the top on a black background"]


@pytest.fixture(scope="module")
def engine(tiny_pipe):
    return Engine(tiny_pipe, "tiny-test", cache_size=2)


def test_generate_batch_matches_single_drawing_and_leaves_the_baseline_alone(engine, tiny_pipe):
    digest = state_dict_digest(tiny_pipe.unet)
    spec = CompressionSpec(prune_amount=0.5)
    one = engine.generate_batch(PROMPTS[:1], [3], 2, 2.0, spec)
    pair = engine.generate_pair(PROMPTS[0], 3, 2, 2.0, spec)
    assert np.array_equal(one.images[0], np.asarray(pair.compressed_image))  # same noise, same result
    two = engine.generate_batch(PROMPTS, [3, 4], 2, 2.0, spec)
    assert two.images.shape == (2, 32, 32, 3) and two.images.dtype == np.uint8
    assert np.abs(two.images[0].astype(int) - one.images[0]).max() <= 2  # batching changes last bits only
    assert not two.nonfinite.any() and two.cost.sparsity > 0.4 and two.seconds > 0
    assert state_dict_digest(tiny_pipe.unet) == digest
    with pytest.raises(ValueError, match="one seed per prompt"):
        engine.generate_batch(PROMPTS, [1], 2, 2.0, spec)


def test_layer_sensitivity_scopes_partition_the_unet(tiny_pipe):
    from compression.pruning import scope_layers

    unet = tiny_pipe.unet
    names = {s: {n for n, _ in scope_layers(unet, s)} for s in
             ("all", "attention", "down", "mid", "up", "self-attention", "cross-attention", "feed-forward", "projection")}
    # where: the three locations and the entry/exit layers make up the whole UNet, without overlap
    io = {n for n in names["all"] if n.split(".")[0] in ("conv_in", "conv_out", "time_embedding")}
    assert names["down"] | names["mid"] | names["up"] | io == names["all"]
    assert not (names["down"] & names["up"]) and not (names["mid"] & names["up"])
    # what: the four transformer parts make up the attention scope, without overlap
    parts = [names[s] for s in ("self-attention", "cross-attention", "feed-forward", "projection")]
    assert set().union(*parts) == names["attention"] and sum(map(len, parts)) == len(names["attention"])
    assert all(".attn2." in n for n in names["cross-attention"]) and all(".attn1." in n for n in names["self-attention"])
    assert all(n.endswith(("proj_in", "proj_out")) for n in names["projection"])
