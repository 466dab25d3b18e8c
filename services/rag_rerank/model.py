"""The DIG-trained cross-encoder on ONNX Runtime (torch-free): (query, document) pairs in,
one score per document out, with the pairs the model's length limit cut reported.

The artifact holds ``models/<name>/1/model.onnx`` (fp32 ``rag_reranker`` and the int8
``rag_reranker_int8``), ``rag/tokenizer.json`` and ``rag/reranker.json`` (maximum length,
the "no document" threshold, the variant served by default). The offline evaluation scores
through this class too, so what was measured is what is served.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from services.common.onnx_sessions import ExecutionSettings, open_session

RAG_DIR = "rag"
RERANKER_CONFIG = f"{RAG_DIR}/reranker.json"
RERANKER_TOKENIZER = f"{RAG_DIR}/tokenizer.json"
VARIANTS = {"fp32": "rag_reranker", "int8": "rag_reranker_int8"}


def model_path(variant: str) -> str:
    """Artifact path of a reranker variant's ONNX graph."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown reranker variant {variant!r}; expected one of {list(VARIANTS)}")
    return f"models/{VARIANTS[variant]}/1/model.onnx"


@dataclass(frozen=True, slots=True)
class Scored:
    scores: np.ndarray  # float32 [n_docs]
    truncated: list[bool]  # the pair was cut to the model's maximum length
    tokens: list[int]  # tokens per pair after truncation


class CrossEncoder:
    """Scores documents for a query; batches of at most ``batch_size`` pairs per run."""

    def __init__(
        self,
        onnx_path: Path,
        tokenizer_path: Path,
        max_length: int,
        intra_op_threads: int = 1,
        batch_size: int = 32,
        execution: ExecutionSettings | None = None,
        model_name: str = VARIANTS["fp32"],
    ) -> None:
        """``execution``: where the model runs (default: ``GENSEARCH_ONNX_*``)."""
        self.session = open_session(
            onnx_path,
            intra_op_threads=intra_op_threads,
            settings=execution,
            model_name=model_name,
        )
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length, strategy="only_second")
        self.max_length = max_length
        self.batch_size = batch_size
        self.input_names = {i.name for i in self.session.get_inputs()}

    @classmethod
    def load(
        cls,
        resolve: Callable[[str], Path],
        variant: str,
        max_length: int,
        intra_op_threads: int = 1,
        batch_size: int = 32,
        execution: ExecutionSettings | None = None,
    ) -> CrossEncoder:
        """The artifact's reranker ``variant``, opened through ``resolve`` (sha256-checked)."""
        return cls(
            resolve(model_path(variant)),
            resolve(RERANKER_TOKENIZER),
            max_length=max_length,
            intra_op_threads=intra_op_threads,
            batch_size=batch_size,
            execution=execution,
            model_name=VARIANTS[variant],
        )

    def score(self, query: str, documents: Sequence[str]) -> Scored:
        """One logit per document (higher: more information gain expected)."""
        if not documents:
            return Scored(np.zeros(0, dtype=np.float32), [], [])
        encodings = self.tokenizer.encode_batch([(query, d) for d in documents])
        truncated = [bool(e.overflowing) for e in encodings]
        lengths = [len(e.ids) for e in encodings]
        order = np.argsort(lengths)  # similar lengths share a batch: less padding
        out = np.zeros(len(documents), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(lengths[r] for r in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for j, r in enumerate(rows):
                e = encodings[r]
                ids[j, : lengths[r]] = e.ids
                mask[j, : lengths[r]] = e.attention_mask
                types[j, : lengths[r]] = e.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            feeds = {k: v for k, v in feeds.items() if k in self.input_names}
            (scores,) = self.session.run(["score"], feeds)
            out[rows] = np.asarray(scores, dtype=np.float32).reshape(-1)
        return Scored(out, truncated, lengths)


def select(scores: np.ndarray, threshold: float, top_k: int) -> list[int]:
    """Indices of the documents to keep: best first, at most ``top_k``, only scores at or
    above ``threshold`` (possibly none: "no document helps")."""
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:top_k] if scores[i] >= threshold]
