"""The shapes world: deterministic data, exact grammar, a pixel judge that reads every attribute back."""

import re

import numpy as np
import pytest

from compression import world
from tinyworld.tokenizer import write_clip_tokenizer

GRAMMAR = re.compile(
    r"^a (red|green|blue|yellow|purple|orange|white|black) (circle|square|triangle) "
    r"(on the left|on the right|at the top|at the bottom|in the center) "
    r"on a (red|green|blue|yellow|purple|orange|white|black) background$"
)


def test_data_is_deterministic_in_the_seed():
    a1, x1 = world.real_images(3, 16)
    a2, x2 = world.real_images(3, 16)
    _, x3 = world.real_images(4, 16)
    assert a1 == a2 and np.array_equal(x1, x2)
    assert not np.array_equal(x1, x3)
    assert x1.shape == (16, 64, 64, 3) and x1.dtype == np.uint8


def test_every_caption_follows_the_grammar():
    everything = world.all_attributes()
    assert len(everything) == 8 * 3 * 5 * 7  # background never equals the shape colour
    for a in everything:
        text = world.caption(a)
        match = GRAMMAR.match(text)
        assert match, text
        assert match.group(1) != match.group(4)
        assert world.parse_caption(text) == a
    assert world.parse_caption("a dog on a sofa") is None


def test_attributes_validate():
    with pytest.raises(ValueError, match="known: circle, square, triangle"):
        world.Attributes("red", "hexagon", "on the left", "blue")
    with pytest.raises(ValueError, match="differ"):
        world.Attributes("red", "circle", "on the left", "red")


def test_held_out_split_is_stable_and_disjoint():
    held = {world.caption(a) for a in world.all_attributes() if world.is_held_out(a)}
    assert 0.15 < len(held) / 840 < 0.25
    assert all(world.caption(a) in held for a in world.sample_attributes(0, 200, "heldout"))
    assert not any(world.caption(a) in held for a in world.sample_attributes(0, 200, "train"))
    with pytest.raises(ValueError, match="known: all, train, heldout"):
        world.sample_attributes(0, 1, "test")


def test_pixel_judge_reads_real_images_exactly():
    attrs, images = world.real_images(11, 400)
    for a, im in zip(attrs, images):
        assert world.judge_image(im) == {
            "background": a.background,
            "colour": a.colour,
            "position": a.position,
            "shape": a.shape,
        }


def test_pixel_judge_reports_a_missing_shape():
    blank = np.full((64, 64, 3), world.COLOURS["blue"], dtype=np.uint8)
    assert world.judge_image(blank) == {"background": "blue", "colour": None, "position": None, "shape": None}


def test_tokenizer_gives_one_token_per_grammar_word(tmp_path):
    from transformers import CLIPTokenizer

    words = sorted({w for a in world.all_attributes() for w in world.caption(a).split()})
    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(words, tmp_path))
    ids = tok("a red circle on the left on a blue background").input_ids
    assert len(ids) == 10 + 2  # ten words, one token each, plus start and end
    other = tok("a red circle on the left on a green background").input_ids
    assert ids != other
    # Text outside the vocabulary still tokenizes (byte-level fallback), it is never dropped.
    assert len(tok("zebra").input_ids) > 2
