"""Encoder inputs of the generative retriever: query text + history SIDs → token ids.

The one home of this logic: training (models_export.generator) and serving (the ONNX
retriever) both build model inputs here, so they cannot drift apart. Torch-free.

Token id layout (one vocabulary shared by encoder and decoder)::

    0 pad (also the decoder start token)   1 eos   2 sep (query | history boundary)
    [level_offsets[l], level_offsets[l] + codebook_sizes[l])   SID tokens of level l
    [word_offset, word_offset + n_words)                       query-text word pieces

The decoder only ever scores the first ``decoder_vocab_size`` ids (specials + SID tokens).

Encoder sequence, one POSITION per word piece / item: ``query word pieces (<=
max_query_tokens) · sep · the last max_history items, oldest first · eos``. Either part may
be empty (recommendation mode has no query; a new user has no history). Every position has
``L`` token slots, so ``input_ids`` is (batch, positions, L): an item position holds its L
SID tokens, a word / sep / eos position holds its token in slot 0 and pad elsewhere. The
model embeds a position as the sum of its non-pad slots' token embeddings — an item is one
position whose vector is composed from its semantic ID (4x shorter sequences than one
position per SID token, and items are units the encoder can attend to).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from services.common.errors import InvalidInputError

PAD_ID = 0
EOS_ID = 1
SEP_ID = 2
N_SPECIAL = 3
DECODER_START_ID = PAD_ID

CONFIG_FILE = "encoding.json"
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True, slots=True)
class TokenLayout:
    """Where each kind of token lives in the shared id space."""

    codebook_sizes: tuple[int, ...]
    n_words: int

    def __post_init__(self) -> None:
        if not self.codebook_sizes or any(int(k) < 1 for k in self.codebook_sizes):
            raise InvalidInputError(f"bad codebook sizes {self.codebook_sizes}")
        if self.n_words < 0:
            raise InvalidInputError(f"n_words must be >= 0, got {self.n_words}")

    @property
    def depth(self) -> int:
        return len(self.codebook_sizes)

    @property
    def level_offsets(self) -> tuple[int, ...]:
        """First token id of each SID level."""
        offsets = [N_SPECIAL]
        for size in self.codebook_sizes[:-1]:
            offsets.append(offsets[-1] + int(size))
        return tuple(offsets)

    @property
    def decoder_vocab_size(self) -> int:
        """Specials + all SID tokens: the only ids the decoder is scored over."""
        return N_SPECIAL + sum(int(k) for k in self.codebook_sizes)

    @property
    def word_offset(self) -> int:
        return self.decoder_vocab_size

    @property
    def vocab_size(self) -> int:
        return self.decoder_vocab_size + self.n_words

    def level_slice(self, level: int) -> slice:
        """Token ids of SID level ``level`` as a slice of the vocabulary."""
        lo = self.level_offsets[level]
        return slice(lo, lo + int(self.codebook_sizes[level]))

    def sid_tokens(self, codes: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """SID codes (..., L) → token ids (..., L)."""
        arr = np.asarray(codes, dtype=np.int64)
        if arr.shape[-1] != self.depth:
            raise InvalidInputError(f"codes have {arr.shape[-1]} levels, layout has {self.depth}")
        return arr + np.asarray(self.level_offsets, dtype=np.int64)

    def codes_from_tokens(self, tokens: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Token ids (..., L) → SID codes (..., L); no range check."""
        arr = np.asarray(tokens, dtype=np.int64)
        return arr - np.asarray(self.level_offsets, dtype=np.int64)[: arr.shape[-1]]


@dataclass(frozen=True, slots=True)
class EncodingConfig:
    """Saved next to the tokenizer as ``encoding.json``."""

    codebook_sizes: tuple[int, ...]
    n_words: int
    max_query_tokens: int = 24
    max_history: int = 20
    # Trained with query-understanding keywords appended to the query text (KHQE-style);
    # serving appends them only then.
    keywords: bool = False

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout(tuple(int(k) for k in self.codebook_sizes), self.n_words)

    def max_length(self) -> int:
        """Most encoder positions this configuration can produce."""
        return self.max_query_tokens + 1 + self.max_history + 1

    def to_json(self) -> str:
        data = asdict(self)
        data["codebook_sizes"] = list(self.codebook_sizes)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EncodingConfig:
        data: dict[str, Any] = json.loads(text)
        return cls(
            codebook_sizes=tuple(int(k) for k in data["codebook_sizes"]),
            n_words=int(data["n_words"]),
            max_query_tokens=int(data.get("max_query_tokens", 24)),
            max_history=int(data.get("max_history", 20)),
            keywords=bool(data.get("keywords", False)),
        )


@dataclass(frozen=True, slots=True)
class EncoderBatch:
    """Right-padded encoder inputs: int64 (B, S, L) token slots and (B, S) 0/1 mask."""

    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class InputEncoder:
    """Turns (query text | None, history item rows) into encoder token ids.

    ``item_codes`` (int (N, L)) are the SIDs of the catalog rows that histories refer to;
    ``tokenizer`` is the word-piece tokenizer trained on catalog text (``tokenizers``).
    """

    def __init__(
        self, config: EncodingConfig, tokenizer: Tokenizer, item_codes: npt.ArrayLike
    ) -> None:
        self.config = config
        self.layout = config.layout
        self.tokenizer = tokenizer
        if tokenizer.get_vocab_size() != config.n_words:
            raise InvalidInputError(
                f"tokenizer has {tokenizer.get_vocab_size()} words, config says {config.n_words}"
            )
        self._item_tokens = self._tokens_of(item_codes)

    def _tokens_of(self, item_codes: npt.ArrayLike) -> npt.NDArray[np.int64]:
        codes = np.asarray(item_codes)
        if codes.ndim != 2 or codes.shape[1] != self.layout.depth:
            raise InvalidInputError(
                f"item codes must have shape (N, {self.layout.depth}), got {codes.shape}"
            )
        sizes = np.asarray(self.layout.codebook_sizes)
        if codes.size and (codes.min() < 0 or np.any(codes.max(axis=0) >= sizes)):
            raise InvalidInputError("item codes outside the codebooks")
        return self.layout.sid_tokens(codes)

    @property
    def num_items(self) -> int:
        return int(self._item_tokens.shape[0])

    def add_items(self, item_codes: npt.ArrayLike) -> None:
        """Append the SIDs of cold-start items (their rows follow the existing ones)."""
        self._item_tokens = np.concatenate([self._item_tokens, self._tokens_of(item_codes)])

    @cached_property
    def _word_offset(self) -> int:
        return self.layout.word_offset

    def query_tokens(self, texts: Sequence[str | None]) -> list[list[int]]:
        """Word-piece ids (already offset into the shared vocabulary), truncated."""
        out: list[list[int]] = [[] for _ in texts]
        todo = [(i, t) for i, t in enumerate(texts) if t]
        if todo:
            encoded = self.tokenizer.encode_batch([t for _, t in todo], add_special_tokens=False)
            limit = self.config.max_query_tokens
            offset = self._word_offset
            for (i, _), enc in zip(todo, encoded, strict=True):
                out[i] = [offset + w for w in enc.ids[:limit]]
        return out

    def history_tokens(self, history: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """SID tokens (n, L) of the last ``max_history`` items, oldest first."""
        rows = np.asarray(history, dtype=np.int64).reshape(-1)
        if self.config.max_history <= 0:
            rows = rows[:0]
        elif rows.size > self.config.max_history:
            rows = rows[-self.config.max_history :]
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_items):
            raise InvalidInputError(f"history item row out of range [0, {self.num_items})")
        out: npt.NDArray[np.int64] = self._item_tokens[rows]
        return out

    def encode(
        self,
        queries: Sequence[str | None],
        histories: Sequence[npt.ArrayLike],
    ) -> EncoderBatch:
        """Batch of (query, history) pairs → right-padded slots (B, S, L) and mask (B, S)."""
        if len(queries) != len(histories):
            raise InvalidInputError(
                f"{len(queries)} queries but {len(histories)} histories in one batch"
            )
        words = self.query_tokens(queries)
        items = [self.history_tokens(h) for h in histories]
        lengths = [len(w) + len(h) + 2 for w, h in zip(words, items, strict=True)]
        width = max(lengths, default=0)
        depth = self.layout.depth
        ids = np.full((len(words), width, depth), PAD_ID, dtype=np.int64)
        mask = np.zeros((len(words), width), dtype=np.int64)
        for i, (w, h) in enumerate(zip(words, items, strict=True)):
            n = len(w)
            ids[i, :n, 0] = w
            ids[i, n, 0] = SEP_ID
            ids[i, n + 1 : n + 1 + len(h)] = h
            ids[i, n + 1 + len(h), 0] = EOS_ID
            mask[i, : lengths[i]] = 1
        return EncoderBatch(ids, mask)

    def save(self, folder: Path) -> None:
        """Write ``encoding.json`` and ``tokenizer.json`` (the item codes live in sids/)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(self.config.to_json())
        self.tokenizer.save(str(folder / TOKENIZER_FILE))

    @classmethod
    def load(cls, folder: Path, item_codes: npt.ArrayLike) -> InputEncoder:
        """Read what :meth:`save` wrote; ``item_codes`` row-aligned with the catalog."""
        return cls.from_files(folder / CONFIG_FILE, folder / TOKENIZER_FILE, item_codes)

    @classmethod
    def from_files(
        cls, config_path: Path, tokenizer_path: Path, item_codes: npt.ArrayLike
    ) -> InputEncoder:
        """Build from explicit paths (e.g. manifest-verified ``ArtifactSet.path`` results)."""
        config = EncodingConfig.from_json(config_path.read_text())
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        return cls(config, tokenizer, item_codes)
