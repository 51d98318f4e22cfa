"""Prompts from your own files: a text file (one prompt a line), a CSV or a JSONL file with a named column.

    python -m compression.sweep --prompts-file captions.csv --prompt-column caption --prompts 30000 --out runs/x

BK-SDM's MS-COCO list (`mscoco_val2014_30k/metadata.csv`, columns `file_name,caption`) reads with
`--prompt-column caption`. Every prompt is kept as written (inner whitespace and case); only surrounding
whitespace is stripped. An empty prompt is an error naming its line, not a silent skip: a dropped caption would
shift every later image's seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

PROMPT_FILE_TYPES = (".txt", ".csv", ".jsonl")
DEFAULT_COLUMN = "prompt"


def load_prompt_file(path: str | Path, column: str | None = None, n: int | None = None) -> list[str]:
    """Prompts from a file, in file order.

    Args:
        path (`str` or `Path`): a .txt file (one prompt a line; blank lines and lines starting with # are
            skipped, as in the shipped prompt sets), a .csv file with a header, or a .jsonl file (one JSON
            object a line).
        column (`str`, *optional*): the CSV / JSONL field holding the prompt (defaults to "prompt"; a CSV with a
            single column needs none).
        n (`int`, *optional*): take the first n.

    Returns:
        the prompts.

    Raises:
        ValueError: unknown file type, a missing column (the message lists the file's columns), an empty or
            non-text prompt (naming its line), fewer than n prompts.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no prompt file at {str(path)[:200]!r}")
    kind = path.suffix.lower()
    if kind == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    elif kind == ".csv":
        prompts = _column(pd.read_csv(path, dtype=str, keep_default_na=False), column, path, first_line=2)
    elif kind == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path.name} line {i}: not JSON ({err.msg})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path.name}: every line must be a JSON object")
        prompts = _column(pd.DataFrame(rows), column, path, first_line=1)
    else:
        raise ValueError(f"prompt files are {', '.join(PROMPT_FILE_TYPES)}; got {path.name!r}")
    if not prompts:
        raise ValueError(f"{path.name} holds no prompts")
    if n is not None:
        if n > len(prompts):
            raise ValueError(f"{path.name} has {len(prompts)} prompts, {n} asked")
        prompts = prompts[:n]
    return prompts


def _column(table: pd.DataFrame, column: str | None, path: Path, first_line: int) -> list[str]:
    if column is None:
        column = table.columns[0] if len(table.columns) == 1 else DEFAULT_COLUMN
    if column not in table.columns:
        known = ", ".join(map(str, table.columns[:20]))
        raise ValueError(f"{path.name} has no column {column!r} (columns: {known}); name one with --prompt-column")
    out = []
    for i, value in enumerate(table[column].tolist()):
        text = value.strip() if isinstance(value, str) else ""
        if not text:
            raise ValueError(f"{path.name} line {i + first_line}: empty or non-text {column!r}")
        out.append(text)
    return out
