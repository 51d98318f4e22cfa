"""Small text helpers shared by the library's error messages."""

from __future__ import annotations


def short_repr(value: object, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters with "..." at the end.

    Messages are shown as HTML by the app and reach API callers: a huge raw input is never echoed in full.
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
