"""Read what people type into the one sentence a small model knows, and say what was read.

A model trained on a fixed grammar reads nothing else: the embedded tiny-shapes model was trained only on
`a {colour} {shape} {position} on a {background} background`, so "an orange triangle in the center on a
white background" (natural English: "an") or "red circle, left, blue background" (a short form) reach its text
encoder as token sequences it never saw, and it draws a smear without any warning. A catalog entry carries its
model's reader (`CatalogEntry.prompt_reader`); the app runs it before the tokenizer and shows the result. Hub
models have no reader: their prompts reach the tokenizer as typed.

The shapes reader lowercases, drops punctuation, takes "an" as "a" and "centre"/"middle" as "center", then
picks the four attributes out of the words in any order:

- the shape: the one shape word;
- the position: one of left, right, top, bottom, center;
- the background: the colour next to "background" ("blue background", "background: blue");
- the shape's colour: the colour right before the shape word;
- a single colour left over fills whichever of the two is still missing ("a red circle on the left on blue":
  this world holds one shape on one background).

With all four, the model reads the grammar's sentence (`world.caption`), and words outside the model's
vocabulary are listed as left out. Without them (a missing or doubled attribute, or a shape the colour of its
background) the prompt is outside the model's world: it goes to the tokenizer as typed, and the reading carries
a note saying why, for the page to show. The reader never guesses a missing attribute.

Example:
    >>> r = read_shapes_prompt("Red circle, left, blue background!")
    >>> r.text, r.in_world, r.unknown
    ('a red circle on the left on a blue background', True, ())
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import world

# Words the tokenizer never saw that mean a grammar word exactly; anything else unknown is left out, not mapped.
SYNONYMS = {"an": "a", "centre": "center", "middle": "center", "centered": "center", "centred": "center"}
POSITION_WORDS = {phrase.split()[-1]: phrase for phrase in world.POSITIONS}  # "left" -> "on the left"
# The grammar's own words; "the" and "at"/"in" live inside the position phrases.
VOCABULARY = frozenset(
    w for a in (world.COLOURS, world.SHAPES, world.POSITIONS, ("a on background",)) for p in a for w in p.split()
)
GRAMMAR = "a [colour] [shape] [position] on a [colour] background"


@dataclass(frozen=True)
class PromptReading:
    """What a model reads from a typed prompt.

    Args:
        typed (`str`): the prompt as typed.
        text (`str`): what goes to the tokenizer: the grammar's sentence when the prompt was read, else `typed`.
        in_world (`bool`): the prompt was read into the model's grammar (a model without a reader: True).
        unknown (`tuple[str, ...]`): words outside the model's vocabulary (left out), in typed order.
        note (`str`): why the prompt is outside the model's world ("" when it is inside).
    """

    typed: str
    text: str
    in_world: bool
    unknown: tuple[str, ...] = ()
    note: str = ""

    @property
    def rewritten(self) -> bool:
        """The model reads something other than what was typed."""
        return self.text != self.typed


def words_of(text: str) -> list[str]:
    """Lowercase words (letters and digits, any script), punctuation and spacing dropped, synonyms applied."""
    return [SYNONYMS.get(w, w) for w in re.findall(r"[^\W_]+", text.lower())]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _pick_colours(words: list[str], shape_at: int | None) -> tuple[str | None, str | None, list[str]]:
    """(shape colour, background colour, problems): a colour next to "background" is the background, one
    right before the shape word is the shape's, and a single colour left over fills the one still missing."""
    colours = [i for i, w in enumerate(words) if w in world.COLOURS]
    marks = [i for i, w in enumerate(words) if w == "background"]
    problems = [f'"background" {len(marks)} times'] if len(marks) > 1 else []
    near = [j for i in marks[:1] for j in (i - 1, i + 1) if j in colours]  # "blue background", "background: blue"
    background = near[0] if near else None
    shape_colour = shape_at - 1 if shape_at is not None and shape_at - 1 in colours else None
    if shape_colour == background:
        shape_colour = None
    rest = [i for i in colours if i not in (background, shape_colour)]
    unset = (shape_colour is None) + (background is None)
    if len(rest) == 1 and unset == 1:
        if shape_colour is None:
            shape_colour = rest[0]
        else:
            background = rest[0]  # "a red circle on the left on blue": one shape, one background in this world
        rest = []
    if len(rest) > unset:
        problems.append(f"{len(colours)} colours where the world has two")
    elif len(rest) == 2:
        problems.append("no way to tell the shape's colour from the background's")
    return (
        words[shape_colour] if shape_colour is not None else None,
        words[background] if background is not None else None,
        problems,
    )


def read_shapes_prompt(text: str) -> PromptReading:
    """Read a typed prompt into the shapes world's grammar (see the module docstring).

    Args:
        text (`str`): the prompt as typed.

    Returns:
        `PromptReading`: the grammar's sentence with the words left out, or the typed text with a note.
    """
    words = words_of(text)
    shapes = [i for i, w in enumerate(words) if w in world.SHAPES]
    positions = [POSITION_WORDS[w] for w in words if w in POSITION_WORDS]
    unknown = tuple(dict.fromkeys(w for w in words if w not in VOCABULARY))
    problems = [f"{len(shapes)} shapes where the world draws one"] if len(shapes) > 1 else []
    if len(set(positions)) > 1:
        problems.append(f"{len(set(positions))} positions")
    colour, background, colour_problems = _pick_colours(words, shapes[0] if len(shapes) == 1 else None)
    wanted = [("shape", shapes), ("position", positions)]
    if len(shapes) == 1 and not colour_problems:  # colours are told apart only around the one shape word
        wanted += [("shape colour", colour), ("background colour", background)]
    problems += colour_problems if len(shapes) == 1 else []
    missing = [name for name, value in wanted if not value]
    if not missing and not problems and colour == background:
        problems.append("a shape the colour of its background")
    if missing or problems:
        why = "; ".join(([f"missing: {_join(missing)}"] if missing else []) + problems)
        note = (
            f"This prompt is outside the model's world ({why}). It knows one sentence, '{GRAMMAR}', and draws "
            "noise or a smear for other text: the prompt went to it as typed."
        )
        return PromptReading(text, text, False, unknown, note)
    return PromptReading(
        text, world.caption(world.Attributes(colour, words[shapes[0]], positions[0], background)), True, unknown
    )
