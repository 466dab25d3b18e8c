"""Synthetic catalogs + behaviour logs in the shared JSON layout, and tiny build settings.

The one home for made-up pipeline inputs: ``write_dataset`` writes
``<root>/<folder>/<Stem>.inter.json`` (and ``<Stem>.item.json`` unless log only) the way
``../shared/data/amazon_scientific`` lays them out; ``TINY`` are build settings small
enough for a unit test; ``fake_encode`` replaces MiniLM with a deterministic hash encoder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from models_export import embeddings, pipeline
from models_export.embeddings import EmbedConfig, TextConfig
from models_export.semantic_ids import SidConfig

N_ITEMS = 420  # OPQ needs more items than embedding dimensions (384 + collab)
N_USERS = 120
WORDS = ["steel", "brass", "bolt", "nut", "probe", "meter", "glove", "tape", "wire", "lamp"]

TINY = pipeline.BuildSettings(
    quick=True,
    text=TextConfig(),
    embed=EmbedConfig(),
    sids=SidConfig(
        rq_levels=(8,),
        opq_subspaces=2,
        opq_bits=4,
        kmeans_niter=5,
        opq_niter=3,
        threads=1,
        collab_weight=0.2,
        collab_dim=4,
    ),
)


def fake_encode(texts: list[str], _folder: Path, _config: EmbedConfig) -> np.ndarray:
    """Unit vectors seeded by each text's sha256 (stands in for MiniLM)."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        rows.append(np.random.default_rng(seed).standard_normal(embeddings.EMBEDDING_DIM))
    out = np.asarray(rows, dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_items(n_items: int = N_ITEMS, top_category: str = "Root") -> dict[str, dict[str, str]]:
    """``{item_id: {title, description, brand, categories}}``; ids are ``"0".."n-1"``."""
    return {
        str(i): {
            "title": f"{WORDS[i % 10]} {WORDS[(i * 3) % 10]} {WORDS[(i * 7) % 10]} model {i}",
            "description": "a description" if i % 4 else "",
            "brand": f"Brand{i % 5}",
            "categories": f"{top_category},Group {i % 3},Kind {i % 6}",
        }
        for i in range(n_items)
    }


def make_log(
    n_items: int = N_ITEMS, n_users: int = N_USERS, seed: int = 0
) -> dict[str, list[int | str]]:
    """``{user_id: [item_id, ...]}``: 5-8 distinct items per user (ints, like the shared log).

    Users come in pairs with the same taste (a block of 40 items), so the log carries a
    co-occurrence signal."""
    rng = np.random.default_rng(seed)
    log: dict[str, list[int | str]] = {}
    for u in range(n_users):
        block = (u // 2) % max(1, n_items // 40)
        pool = np.arange(block * 40, min(n_items, block * 40 + 40))
        size = min(len(pool), 5 + u % 4)
        log[f"u{u}"] = [int(x) for x in rng.choice(pool, size=size, replace=False)]
    return log


def write_dataset(
    root: Path,
    name: str = "toyshop/Toys",
    *,
    items: dict[str, dict[str, str]] | None = None,
    log: dict[str, list[int | str]] | None = None,
    log_only: bool = False,
) -> Path:
    """Write dataset ``name`` (``<folder>/<Stem>``) under ``root``; returns ``root``.

    Defaults: :func:`make_items` and :func:`make_log`; ``log_only`` writes no item file."""
    folder, stem = name.split("/")
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    if not log_only:
        catalog = items if items is not None else make_items()
        (target / f"{stem}.item.json").write_text(json.dumps(catalog))
    (target / f"{stem}.inter.json").write_text(json.dumps(log if log is not None else make_log()))
    return root
