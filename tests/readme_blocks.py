"""The fenced code blocks of README.md, so tests run the examples a reader copies."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    """The text of the ``## title`` section (up to the next ``## `` heading)."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        raise LookupError(f"README.md has no section '## {title}'")
    return match.group(1)


def blocks(text: str, *, language: str = "python") -> list[str]:
    """Every fenced ```language block of ``text``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def file_block(name: str) -> str:
    """The README code block that starts with the comment ``# name`` (a file to write)."""
    found = [b for b in blocks(README.read_text()) + blocks(README.read_text(), language="toml")
             if b.startswith(f"# {name}\n")]
    if len(found) != 1:
        raise LookupError(f"README.md has {len(found)} code blocks starting with '# {name}', expected 1")
    return found[0]
