"""Sentence embeddings on ONNX Runtime (all-MiniLM-L6-v2 exported with pooling)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from services.common.onnx_sessions import ExecutionSettings, open_session

#: where every artifact keeps the query/text encoder (``models_export.export_text_encoder``)
TEXT_ENCODER_MODEL = "models/text_encoder/1/model.onnx"
TEXT_ENCODER_TOKENIZER = "models/text_encoder/tokenizer.json"
TEXT_ENCODER_NAME = "text_encoder"


class TextEncoder:
    """Embeds texts into L2-normalised vectors; torch-free."""

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        intra_op_threads: int = 1,
        max_length: int = 128,
        execution: ExecutionSettings | None = None,
    ) -> None:
        """``execution``: where the model runs (default: ``GENSEARCH_ONNX_*``)."""
        self.session = open_session(
            model_path,
            intra_op_threads=intra_op_threads,
            settings=execution,
            model_name=TEXT_ENCODER_NAME,
        )
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding()
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    @classmethod
    def load(
        cls,
        resolve: Callable[[str], Path],
        intra_op_threads: int = 1,
        max_length: int = 128,
        execution: ExecutionSettings | None = None,
    ) -> TextEncoder:
        """The artifact's encoder, opened through ``resolve`` (``ArtifactSet.path`` checks
        each sha256)."""
        return cls(
            resolve(TEXT_ENCODER_MODEL),
            resolve(TEXT_ENCODER_TOKENIZER),
            intra_op_threads=intra_op_threads,
            max_length=max_length,
            execution=execution,
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Float32 [len(texts), dim] unit vectors."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (out,) = self.session.run(
            ["embedding"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        )
        return np.asarray(out, dtype=np.float32)
