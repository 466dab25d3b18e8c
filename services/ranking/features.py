"""Ranking features: ONE assembly path for training, evaluation and serving.

The artifact's feature spec (``ranking/features.json``, written by
``models_export.ranking``) fixes the vocabularies: item rows (the catalog order, the same
rows as ``embeddings/items.npy``), leaf (level-3) and level-2 category ids, brand ids and
the items' popularity over the TRAINING histories only. From it:

* :func:`item_features` -- per item ``[row, cat2, cat3, brand, log1p(popularity)]``;
  unknown items get :data:`COLD_ITEM` (row -1, every id 0);
* :func:`user_features` -- from the user's history as of the request (oldest first): the
  last :data:`MAX_HISTORY` rows and the history's level-2 / level-3 category and brand
  counts; an unknown user with no history is :data:`COLD_USER`;
* :func:`assemble` -- one request's model inputs from those, the query embedding and the
  retrieval list (rank, sources): the cross features of :data:`DENSE_FEATURES`, the ids
  the model embeds and the user-interest sequence.

The gateway's materialise command stores item and user features in Redis with
:func:`encode_item` / :func:`encode_user`; the ranking service reads them back (or
computes them from the artifact when it has no Redis), so what the model is trained on
and what it is served are computed by the same functions.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

FEATURES_FILE = "ranking/features.json"
#: the user-interest sequence: the most recent items, oldest first
MAX_HISTORY = 20
#: candidate sources as the retrieval service names them (order of the flag features)
SOURCE_NAMES: tuple[str, ...] = ("generated", "lexical", "dense", "ann")
DENSE_FEATURES: tuple[str, ...] = (
    "retrieval_rank_discount",  # 1 / log2(rank + 2), rank from 0
    "retrieval_rank_fraction",  # rank / list length
    "source_generated",
    "source_lexical",
    "source_dense",
    "source_ann",
    "source_count",  # sources that found it / 3
    "popularity",  # log1p(train interactions) / log1p(max)
    "query_item_cosine",
    "has_query",
    "history_item_cosine",  # the user's mean history vector against the item
    "history_share_cat3",  # share of the history in the item's leaf category
    "history_share_cat2",
    "history_share_brand",
    "in_history",  # the user already has it
    "history_length",  # log1p(len) / log1p(MAX_HISTORY_COUNTED)
)
NUM_DENSE = len(DENSE_FEATURES)
MAX_HISTORY_COUNTED = 200
#: [row, cat2, cat3, brand, log1p(popularity)] of an item the spec does not know
COLD_ITEM: tuple[float, ...] = (-1.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Vocabularies and item tables of one artifact version (index 0 = unknown)."""

    item_ids: list[str]
    item_cat2: np.ndarray  # int64 [N]
    item_cat3: np.ndarray  # int64 [N]
    item_brand: np.ndarray  # int64 [N]
    item_popularity: np.ndarray  # int64 [N], interactions in the training histories
    cat2_names: list[str]
    cat3_names: list[str]
    brand_names: list[str]
    row_of: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.row_of:
            self.row_of.update({iid: i for i, iid in enumerate(self.item_ids)})

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def log_max_popularity(self) -> float:
        top = int(self.item_popularity.max()) if len(self.item_popularity) else 0
        return math.log1p(max(top, 1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_ids": self.item_ids,
            "item_cat2": self.item_cat2.tolist(),
            "item_cat3": self.item_cat3.tolist(),
            "item_brand": self.item_brand.tolist(),
            "item_popularity": self.item_popularity.tolist(),
            "cat2_names": self.cat2_names,
            "cat3_names": self.cat3_names,
            "brand_names": self.brand_names,
            "dense_features": list(DENSE_FEATURES),
            "max_history": MAX_HISTORY,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> FeatureSpec:
        if list(doc.get("dense_features", [])) != list(DENSE_FEATURES):
            raise ValueError(
                "the artifact's ranking features differ from this code's DENSE_FEATURES: "
                "rebuild the ranking step"
            )
        return cls(
            item_ids=[str(i) for i in doc["item_ids"]],
            item_cat2=np.asarray(doc["item_cat2"], dtype=np.int64),
            item_cat3=np.asarray(doc["item_cat3"], dtype=np.int64),
            item_brand=np.asarray(doc["item_brand"], dtype=np.int64),
            item_popularity=np.asarray(doc["item_popularity"], dtype=np.int64),
            cat2_names=list(doc["cat2_names"]),
            cat3_names=list(doc["cat3_names"]),
            brand_names=list(doc["brand_names"]),
        )

    @classmethod
    def load(cls, resolve: Callable[[str], Path]) -> FeatureSpec:
        return cls.from_dict(orjson.loads(resolve(FEATURES_FILE).read_bytes()))

    @classmethod
    def build(
        cls,
        item_ids: Sequence[str],
        categories: Sequence[Sequence[str]],
        brands: Sequence[str],
        train_histories: Sequence[Sequence[int] | np.ndarray],
    ) -> FeatureSpec:
        """Vocabularies from the catalog; popularity from the training histories only."""
        cat2 = [" > ".join(c[:2]) for c in categories]
        cat3 = [" > ".join(c[:3]) for c in categories]
        brand = [b.strip().casefold() for b in brands]
        names2 = ["", *sorted(set(cat2) - {""})]
        names3 = ["", *sorted(set(cat3) - {""})]
        names_b = ["", *sorted(set(brand) - {""})]
        id2 = {n: i for i, n in enumerate(names2)}
        id3 = {n: i for i, n in enumerate(names3)}
        idb = {n: i for i, n in enumerate(names_b)}
        pop = np.zeros(len(item_ids), dtype=np.int64)
        for hist in train_histories:
            np.add.at(pop, np.asarray(hist, dtype=np.int64), 1)
        return cls(
            item_ids=list(item_ids),
            item_cat2=np.array([id2[c] for c in cat2], dtype=np.int64),
            item_cat3=np.array([id3[c] for c in cat3], dtype=np.int64),
            item_brand=np.array([idb[b] for b in brand], dtype=np.int64),
            item_popularity=pop,
            cat2_names=names2,
            cat3_names=names3,
            brand_names=names_b,
        )


def item_features(spec: FeatureSpec, row: int) -> tuple[float, ...]:
    """``[row, cat2, cat3, brand, log1p(popularity)]`` of one catalog row."""
    return (
        float(row),
        float(spec.item_cat2[row]),
        float(spec.item_cat3[row]),
        float(spec.item_brand[row]),
        math.log1p(int(spec.item_popularity[row])),
    )


@dataclass(frozen=True, slots=True)
class UserFeatures:
    """What ranking knows about a user at request time."""

    recent: tuple[int, ...]  # the last MAX_HISTORY known item rows, oldest first
    cat2: dict[int, int]  # counts over the whole (known) history
    cat3: dict[int, int]
    brand: dict[int, int]
    length: int  # known history items

    def to_dict(self) -> dict[str, Any]:
        return {
            "recent": list(self.recent),
            "cat2": {str(k): v for k, v in self.cat2.items()},
            "cat3": {str(k): v for k, v in self.cat3.items()},
            "brand": {str(k): v for k, v in self.brand.items()},
            "length": self.length,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> UserFeatures:
        def counts(d: Mapping[str, Any]) -> dict[int, int]:
            return {int(k): int(v) for k, v in d.items()}

        return cls(
            tuple(int(r) for r in doc["recent"]),
            counts(doc["cat2"]),
            counts(doc["cat3"]),
            counts(doc["brand"]),
            int(doc["length"]),
        )


COLD_USER = UserFeatures((), {}, {}, {}, 0)


def user_features(spec: FeatureSpec, history_rows: Sequence[int]) -> UserFeatures:
    """Features of a history (item rows, oldest first; rows < 0 -- unknown items -- are
    skipped); at most the last :data:`MAX_HISTORY_COUNTED` items are counted."""
    rows = [int(r) for r in history_rows if 0 <= int(r) < spec.num_items][-MAX_HISTORY_COUNTED:]
    if not rows:
        return COLD_USER
    arr = np.asarray(rows, dtype=np.int64)

    def counts(values: np.ndarray) -> dict[int, int]:
        return {int(k): int(v) for k, v in Counter(values.tolist()).items() if k != 0}

    return UserFeatures(
        tuple(rows[-MAX_HISTORY:]),
        counts(spec.item_cat2[arr]),
        counts(spec.item_cat3[arr]),
        counts(spec.item_brand[arr]),
        len(rows),
    )


def history_rows(spec: FeatureSpec, item_ids: Sequence[str]) -> list[int]:
    """Catalog rows of ``item_ids`` (unknown ids left out)."""
    return [spec.row_of[i] for i in item_ids if i in spec.row_of]


def encode_user(features: UserFeatures) -> bytes:
    return orjson.dumps(features.to_dict())


def decode_user(raw: bytes) -> UserFeatures:
    return UserFeatures.from_dict(orjson.loads(raw))


def encode_item(values: Sequence[float]) -> bytes:
    return orjson.dumps(list(values))


def decode_item(raw: bytes) -> tuple[float, ...]:
    values = tuple(float(v) for v in orjson.loads(raw))
    if len(values) != len(COLD_ITEM):
        raise ValueError(f"item features have {len(values)} values, expected {len(COLD_ITEM)}")
    return values


@dataclass(slots=True)
class RankInputs:
    """One list's model inputs (the model takes a batch of these, stacked)."""

    dense: np.ndarray  # float32 [C, NUM_DENSE]
    item_row: np.ndarray  # int64 [C], -1 unknown
    item_cat3: np.ndarray  # int64 [C]
    item_brand: np.ndarray  # int64 [C]
    history: np.ndarray  # int64 [MAX_HISTORY], -1 padding (left)
    query: np.ndarray  # float32 [D], zeros without a query


def assemble(
    spec: FeatureSpec,
    item_vectors: np.ndarray,
    user: UserFeatures,
    items: Sequence[Sequence[float]],
    sources: Sequence[Sequence[str]],
    query_vector: np.ndarray | None,
) -> RankInputs:
    """The model inputs of one retrieval list (``items``: per candidate the values of
    :func:`item_features`, in retrieval order; ``sources``: the sources that found each).

    ``item_vectors`` are the artifact's L2-normalised item embeddings (rows of the spec)."""
    c = len(items)
    table = np.asarray(items, dtype=np.float64).reshape(c, len(COLD_ITEM))
    rows = table[:, 0].astype(np.int64)
    cat2 = table[:, 1].astype(np.int64)
    cat3 = table[:, 2].astype(np.int64)
    brand = table[:, 3].astype(np.int64)
    known = rows >= 0
    vecs = np.zeros((c, item_vectors.shape[1]), dtype=np.float32)
    vecs[known] = item_vectors[rows[known]]
    dense = np.zeros((c, NUM_DENSE), dtype=np.float32)
    rank = np.arange(c, dtype=np.float64)
    dense[:, 0] = 1.0 / np.log2(rank + 2.0)
    dense[:, 1] = rank / max(c, 1)
    for j, name in enumerate(SOURCE_NAMES):
        dense[:, 2 + j] = [1.0 if name in s else 0.0 for s in sources]
    dense[:, 6] = [min(len(s), 3) / 3.0 for s in sources]
    dense[:, 7] = table[:, 4] / spec.log_max_popularity
    has_query = query_vector is not None and bool(np.any(query_vector))
    query = np.zeros(item_vectors.shape[1], dtype=np.float32)
    if has_query:
        assert query_vector is not None
        query = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        dense[:, 8] = vecs @ query
        dense[:, 9] = 1.0
    if user.length:
        recent = np.asarray(user.recent, dtype=np.int64)
        mean = item_vectors[recent].mean(axis=0)
        norm = float(np.linalg.norm(mean))
        if norm > 0:
            dense[:, 10] = vecs @ (mean / norm)
        n = float(user.length)
        dense[:, 11] = [user.cat3.get(int(x), 0) / n if x else 0.0 for x in cat3]
        dense[:, 12] = [user.cat2.get(int(x), 0) / n if x else 0.0 for x in cat2]
        dense[:, 13] = [user.brand.get(int(x), 0) / n if x else 0.0 for x in brand]
        owned = set(user.recent)
        dense[:, 14] = [1.0 if int(r) in owned else 0.0 for r in rows]
        dense[:, 15] = math.log1p(n) / math.log1p(MAX_HISTORY_COUNTED)
    history = np.full(MAX_HISTORY, -1, dtype=np.int64)
    if user.recent:
        history[MAX_HISTORY - len(user.recent) :] = user.recent
    return RankInputs(
        dense=dense,
        item_row=rows,
        item_cat3=cat3,
        item_brand=brand,
        history=history,
        query=query,
    )


def stack(inputs: Sequence[RankInputs], width: int | None = None) -> dict[str, np.ndarray]:
    """A batch of lists as the ONNX model's feeds, padded to ``width`` candidates (padding:
    row -1, zeros); ``candidate_mask`` marks the real ones."""
    c = width or max(len(x.item_row) for x in inputs)
    n = len(inputs)
    d = inputs[0].query.shape[0]
    dense = np.zeros((n, c, NUM_DENSE), dtype=np.float32)
    rows = np.full((n, c), -1, dtype=np.int64)
    cat3 = np.zeros((n, c), dtype=np.int64)
    brand = np.zeros((n, c), dtype=np.int64)
    mask = np.zeros((n, c), dtype=np.float32)
    for i, x in enumerate(inputs):
        k = len(x.item_row)
        dense[i, :k], rows[i, :k], cat3[i, :k], brand[i, :k] = (
            x.dense,
            x.item_row,
            x.item_cat3,
            x.item_brand,
        )
        mask[i, :k] = 1.0
    return {
        "dense": dense,
        "item_row": rows,
        "item_cat3": cat3,
        "item_brand": brand,
        "history": np.stack([x.history for x in inputs]),
        "query": np.stack([x.query for x in inputs]).astype(np.float32).reshape(n, d),
        "candidate_mask": mask,
    }
