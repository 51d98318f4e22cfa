"""The README and docs/ against the code: size, CI commands, links, the registries' tables, the example.

The registries are the source of truth: every pruning method, quantization mode, scope and catalog model must
have its row in docs/library.md, and every row there must name a real key, so the reference cannot drift.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compression import CATALOG, PRUNERS, QUANT_MODES, SCOPES

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_LIMIT = 15_000  # characters: the front door, depth lives in docs/

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """The page without its fenced code blocks (code may hold brackets that are not links)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", prose(page.read_text()), re.M)}


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text) < README_LIMIT, f"README.md is {len(text)} characters; move depth to docs/"
    # The Space's front matter must stay the file's first lines (Hugging Face reads it from there).
    assert text.startswith("---\ntitle: Diffusion Compression Lab\n")
    assert "sdk: gradio\n" in text.split("\n---\n", 1)[0] and "app_file: app.py\n" in text


@pytest.mark.parametrize("marker", ["run-command", "test-command"])
def test_exactly_one_command_after_each_marker(marker):
    """What .ci/run extracts: the fenced block right after the marker line, which must be one line."""
    lines = README.read_text().splitlines()
    assert lines.count(f"<!-- {marker} -->") == 1, f"one <!-- {marker} --> marker"
    start = lines.index(f"<!-- {marker} -->") + 1
    assert lines[start].startswith("```"), f"a fenced block must follow <!-- {marker} -->"
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    block = lines[start + 1 : end]
    assert len(block) == 1 and block[0].strip(), f"exactly one command line after <!-- {marker} -->: {block}"


def test_quick_test_loop_is_documented():
    assert 'python -m pytest -q -m "not slow and not browser"' in README.read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # http(s):, mailto:: not checked offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, broken


def table_keys(text: str, first_column: str) -> list[str]:
    """The backticked first cells of the table whose header's first column is `first_column`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_column:
            keys = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                first = row.strip().strip("|").split("|")[0].strip()
                keys.append(re.fullmatch(r"`([^`]+)`", first).group(1))
            return keys
    raise AssertionError(f"docs/library.md has no table whose first column is '{first_column}'")


@pytest.mark.parametrize(
    "column, registry", [("method", PRUNERS), ("mode", QUANT_MODES), ("scope", SCOPES), ("model", CATALOG)]
)
def test_library_tables_match_the_registries(column, registry):
    documented = table_keys((DOCS / "library.md").read_text(), column)
    assert len(documented) == len(set(documented)), f"a {column} is listed twice: {documented}"
    missing = sorted(set(registry) - set(documented))
    unknown = sorted(set(documented) - set(registry))
    assert not missing, f"add a row to the {column} table of docs/library.md for: {missing}"
    assert not unknown, f"docs/library.md lists a {column} the code does not have: {unknown}"


@pytest.mark.slow
def test_readme_example_runs(tmp_path):
    """The README's ten-line example, verbatim, on the embedded model (offline)."""
    section = README.read_text().split("## The library in ten lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12, "the README's example should stay about ten lines"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "x the bytes" in run.stdout and "zeros" in run.stdout, run.stdout
    assert (tmp_path / "baseline.png").exists() and (tmp_path / "compressed.png").exists()
