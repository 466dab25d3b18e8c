"""The generator as an evaluation-harness ``Retriever`` (any StepModel: ONNX or torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models_export.evaluation.protocol import MODES, RECOMMENDATION, EvalQuery
from services.retrieval.beam_search import BeamSearch, NodeBonus, SearchOptions, StepModel
from services.retrieval.covisit import CovisitPrior
from services.retrieval.encoding import InputEncoder
from services.retrieval.onnx_generator import GENERATOR_DIR, OnnxStepModel
from services.retrieval.trie import SidTrie

__all__ = ["GENERATOR_DIR", "GenerativeRetriever", "open_onnx_retriever"]


class GenerativeRetriever:
    """Encode (query, history) → constrained beam search → top-k item rows; a query's
    ``exclude`` items are removed inside decoding (the beam is spent on the others).
    With a ``prior``, queries without text (recommendation mode) decode with the
    co-visitation prior fused in, as the retrieval service does; the retriever then
    answers recommendation mode only."""

    def __init__(
        self,
        name: str,
        encoder: InputEncoder,
        search: BeamSearch,
        beam_width: int = 20,
        batch_size: int = 64,
        text: bool = True,
        prior: CovisitPrior | None = None,
    ) -> None:
        self.name = name
        self.encoder = encoder
        self.search = search
        self.beam_width = beam_width
        self.batch_size = batch_size
        self.prior = prior
        self.modes = frozenset(MODES) if text and prior is None else frozenset({RECOMMENDATION})

    def _bonus(self, query: EvalQuery) -> NodeBonus | None:
        if self.prior is None or query.query:
            return None
        num_rows = len(self.search.item_codes)
        return self.prior.node_bonus(self.search.trie, query.history, num_rows)

    def retrieve(self, queries: Sequence[EvalQuery], k: int) -> list[list[int]]:
        """Top-``k`` item rows per query (fewer when the beam holds fewer items)."""
        out: list[list[int]] = []
        for start in range(0, len(queries), self.batch_size):
            chunk = queries[start : start + self.batch_size]
            batch = self.encoder.encode(
                [q.query for q in chunk], [np.asarray(q.history, np.int64) for q in chunk]
            )
            options = [
                SearchOptions(
                    beam_width=self.beam_width,
                    k=k,
                    exclude=np.asarray(q.exclude, np.int64) if q.exclude else None,
                    node_bonus=self._bonus(q),
                )
                for q in chunk
            ]
            out.extend(r.items.tolist() for r in self.search.search(batch, options))
        return out


def open_onnx_retriever(
    run_dir: Path,
    item_codes: np.ndarray,
    name: str = "generative",
    beam_width: int = 20,
    threads: int = 2,
    constrained: bool = True,
    text: bool = True,
) -> GenerativeRetriever:
    """A retriever over the ONNX graphs and encoding files a training run wrote."""
    encoder = InputEncoder.load(run_dir / GENERATOR_DIR, item_codes)
    model: StepModel = OnnxStepModel.from_artifact(lambda rel: run_dir / rel, threads)
    trie = SidTrie.build(item_codes, encoder.layout.codebook_sizes)
    search = BeamSearch(model, encoder.layout, trie, item_codes, constrained=constrained)
    return GenerativeRetriever(name, encoder, search, beam_width, text=text)
