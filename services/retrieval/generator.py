"""The engine's :class:`~services.retrieval.engine.SidGenerator` on ONNX Runtime.

Joins the input encoding (``encoding.py``) and the constrained beam search
(``beam_search.py``) behind the batch interface the dynamic batcher calls.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.retrieval.beam_search import BeamSearch, SearchOptions
from services.retrieval.encoding import InputEncoder
from services.retrieval.engine import DecodeJob


class OnnxSidGenerator:
    """Decodes a batch of jobs in one beam search (per-job beam, trie and exclusions)."""

    def __init__(self, encoder: InputEncoder, search: BeamSearch) -> None:
        self.encoder = encoder
        self.search = search

    def decode(self, jobs: Sequence[DecodeJob]) -> list[list[tuple[int, float]]]:
        if not jobs:
            return []
        batch = self.encoder.encode(
            [job.query or None for job in jobs], [job.history_rows for job in jobs]
        )
        options = [
            SearchOptions(
                beam_width=job.beam_width,
                k=job.n_results,
                trie=None if job.trie is self.search.trie else job.trie,
                exclude=job.exclude_rows if len(job.exclude_rows) else None,
                node_bonus=job.node_bonus,
            )
            for job in jobs
        ]
        results = self.search.search(batch, options)
        return [list(zip(r.items.tolist(), r.scores.tolist(), strict=True)) for r in results]
