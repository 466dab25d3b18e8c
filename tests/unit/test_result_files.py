"""docs/results pairs: regenerated from the data, hand-written readings kept."""

from __future__ import annotations

import json
from pathlib import Path

from models_export.result_files import KEEP_MARKER, write_results


def test_regeneration_keeps_the_hand_written_part(tmp_path: Path) -> None:
    stem = tmp_path / "nested" / "bench"
    jpath, mpath = write_results(stem, {"p50": 1.0}, "# Bench\n\np50 1.0\n")
    mpath.write_text(mpath.read_text() + "\nReading: fast enough.\n")
    write_results(stem, {"p50": 2.0}, "# Bench\n\np50 2.0\n")
    text = mpath.read_text()
    assert json.loads(jpath.read_text()) == {"p50": 2.0}
    assert "p50 2.0" in text and "p50 1.0" not in text
    assert text.count(KEEP_MARKER) == 1
    assert text.endswith("Reading: fast enough.\n")
