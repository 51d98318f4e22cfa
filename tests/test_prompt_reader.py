"""What people type, read into the embedded model's one sentence: a table of inputs, then the API end to end."""

from __future__ import annotations

import pytest

from compression import world
from compression.models import CATALOG
from compression.prompt_reader import VOCABULARY, read_shapes_prompt

CANONICAL = "a orange triangle in the center on a white background"


@pytest.mark.parametrize(
    "typed, read, unknown",
    [
        ("an orange triangle in the center on a white background", CANONICAL, ()),
        ("red circle, left, blue background", "a red circle on the left on a blue background", ()),
        ("A RED Circle On The Left On A Blue Background.", "a red circle on the left on a blue background", ()),
        ("  a   red\tcircle on the left on a blue   background ", "a red circle on the left on a blue background", ()),
        ("Orange triangle; centre; WHITE background!", CANONICAL, ()),
        ("background: black, green square at the bottom", "a green square at the bottom on a black background", ()),
        ("a purple circle on the right on yellow", "a purple circle on the right on a yellow background", ()),
        (
            "a big shiny red circle top, blue background",
            "a red circle at the top on a blue background",
            ("big", "shiny"),
        ),
        (
            "a yellow square in the middle with a black background",
            "a yellow square in the center on a black background",
            ("with",),
        ),
        (CANONICAL, CANONICAL, ()),
    ],
)
def test_typed_prompts_are_read_into_the_grammar(typed, read, unknown):
    r = read_shapes_prompt(typed)
    assert (r.text, r.in_world, r.unknown, r.note) == (read, True, unknown, "")
    assert world.parse_caption(r.text) is not None  # a sentence the model was trained on
    assert r.rewritten == (typed != read)


@pytest.mark.parametrize(
    "typed, why, unknown",
    [
        ("a red circle", "missing: position and background colour", ()),
        (
            "a photograph of an astronaut riding a horse",
            "missing: shape and position",
            ("photograph", "of", "astronaut", "riding", "horse"),
        ),
        ("two red circles on the left", "missing: shape", ("two", "circles")),
        (
            "a red circle and a blue square on the left on a white background",
            "2 shapes where the world draws one",
            ("and",),
        ),
        ("a red circle at the top left on a blue background", "2 positions", ()),
        ("a red circle on the left on a red background", "a shape the colour of its background", ()),
        ("circle left red blue", "no way to tell the shape's colour from the background's", ()),
        ("a red green circle on the left on a blue background", "3 colours where the world has two", ()),
    ],
)
def test_prompts_outside_the_world_go_in_as_typed_with_a_note(typed, why, unknown):
    r = read_shapes_prompt(typed)
    assert not r.in_world and r.text == typed and not r.rewritten
    assert why in r.note and "outside the model's world" in r.note
    assert r.unknown == unknown


def test_the_reader_knows_exactly_the_tokenizers_words():
    # The embedded model's tokenizer was learned from the captions' words: the reader's vocabulary is that set,
    # so "unknown" means "never seen by this text encoder".
    words = {w for a in world.all_attributes() for w in world.caption(a).split()}
    assert VOCABULARY == words


def test_catalog_entries_carry_their_reader():
    assert CATALOG["tiny-shapes"].read_prompt("red circle, left, blue background").rewritten
    hub = CATALOG["sd-1.5"].read_prompt("an Orange triangle, centre!")  # hub models read what is typed
    assert hub.text == "an Orange triangle, centre!" and hub.in_world and not hub.note


pytestmark_app = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.*", "ignore::FutureWarning:gradio.*")


@pytest.mark.slow  # ~3 s: two comparisons through the server and two direct draws
@pytestmark_app
def test_api_draws_the_read_prompt_and_says_what_it_read(lab_app):
    from gradio_client import Client

    from app_service import image_sha256
    from compression import CompressionSpec

    app, url = lab_app
    client = Client(url, verbose=False)
    args = dict(steps=2, seed=11, prune_percent=0, quant_mode="fp32")
    typed = "an orange triangle in the center on a white background"
    out = client.predict(api_name="/compare", prompt=typed, **args)
    details = out[9]
    assert details["prompt"] == typed and details["read_prompt"] == CANONICAL and details["prompt_in_world"]
    assert f"The model read: *{CANONICAL}*" in out[8]
    # The pair is exactly the canonical sentence's; unread, the typed text draws another image.
    engine = app.LAB.get("tiny-shapes").engine
    canon = engine.generate_pair(CANONICAL, 11, 2, 4.0, CompressionSpec())
    raw = engine.generate_pair(typed, 11, 2, 4.0, CompressionSpec())
    assert (details["baseline_sha256"], details["compressed_sha256"]) == (
        image_sha256(canon.baseline_image),
        image_sha256(canon.compressed_image),
    )
    assert image_sha256(raw.baseline_image) != details["baseline_sha256"]

    outside = client.predict(api_name="/compare", prompt="a cat riding a horse", **args)
    d = outside[9]
    assert d["read_prompt"] == "a cat riding a horse" and d["prompt_in_world"] is False
    assert d["unknown_words"] == ["cat", "riding", "horse"]
    assert any("outside the model's world" in w for w in d["warnings"])
    assert "⚠ This prompt is outside the model" in outside[8] and "“riding”" in outside[8]
