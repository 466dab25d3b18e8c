"""The word-piece vocabulary for query text, trained on catalog text with ``tokenizers``.

Serving loads the same ``tokenizer.json`` through :mod:`services.retrieval.encoding`
(the Rust ``tokenizers`` runtime, no torch).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

UNK = "[UNK]"


def train_wordpiece(
    texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2
) -> Tokenizer:
    """A lower-casing, accent-stripping WordPiece tokenizer fitted to ``texts``."""
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=32))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[UNK],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer
