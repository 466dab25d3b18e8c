"""The one home for writing a ``docs/results`` pair: ``<stem>.json`` and ``<stem>.md``.

The Markdown is regenerated from the measurements on every run; whatever follows
:data:`KEEP_MARKER` in the existing file (a hand-written reading of the run) is kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KEEP_MARKER = "<!-- hand-written notes below are kept when this file is regenerated -->"


def write_markdown(path: Path, text: str) -> None:
    """Write generated ``text`` to ``path``, keeping the hand-written part after the marker."""
    kept = ""
    if path.is_file() and KEEP_MARKER in (old := path.read_text()):
        kept = old.split(KEEP_MARKER, 1)[1]
    path.write_text(text.rstrip("\n") + "\n\n" + KEEP_MARKER + kept)


def write_results(stem: Path, doc: Mapping[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``doc`` to ``<stem>.json`` and ``markdown`` to ``<stem>.md``; return both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    jpath, mpath = stem.with_suffix(".json"), stem.with_suffix(".md")
    jpath.write_text(json.dumps(doc, indent=2) + "\n")
    write_markdown(mpath, markdown)
    return jpath, mpath
