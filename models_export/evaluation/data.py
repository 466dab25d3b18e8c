"""Evaluation inputs read from an artifact version: items, users, derived queries, embeddings.

Leave-one-out (the standard protocol for this data): on ``valid`` the history is the user's
training history and the target the second-to-last item; on ``test`` the history is training
history + the validation item and the target the last item.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from models_export.evaluation.protocol import EvalCase, EvalQuery
from services.common.artifacts import ArtifactSet

SPLITS: tuple[str, ...] = ("valid", "test")
QUERY_KINDS: tuple[str, ...] = ("category", "title")
ITEMS_TABLE = "tables/items.parquet"
USERS_TABLE = "tables/users.parquet"
QUERIES_TABLE = "tables/queries.parquet"
EMBEDDINGS = "embeddings/items.npy"


@dataclass(frozen=True, slots=True)
class DerivedQuery:
    """One derived (not real) search query: Ai et al. 2017 category words or title words."""

    user: int  # index into EvalData.user_ids
    split: str
    kind: str
    text: str
    target: int  # item row


@dataclass(slots=True)
class EvalData:
    """Everything the harness and baselines read, with item ids already mapped to item rows."""

    item_ids: list[str]
    titles: list[str]
    brands: list[str]
    descriptions: list[str]
    categories: list[list[str]]
    user_ids: list[str]
    train_histories: list[np.ndarray]  # int64 item rows per user, oldest first
    valid_targets: np.ndarray  # int64 item row per user
    test_targets: np.ndarray
    queries: list[DerivedQuery]
    embeddings: np.ndarray | None = None  # float32 (N, d), L2-normalised
    source: str = ""

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def history(self, split: str, user: int) -> np.ndarray:
        """Input history for ``user`` on ``split`` (leave-one-out)."""
        if split == "valid":
            return self.train_histories[user]
        if split == "test":
            return np.append(self.train_histories[user], self.valid_targets[user])
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")

    def target(self, split: str, user: int) -> int:
        if split == "valid":
            return int(self.valid_targets[user])
        if split == "test":
            return int(self.test_targets[user])
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")

    def recommendation_cases(self, split: str) -> list[EvalCase]:
        """One history-only request per user."""
        return [
            EvalCase(
                EvalQuery(uid, None, tuple(int(x) for x in self.history(split, u))),
                self.target(split, u),
            )
            for u, uid in enumerate(self.user_ids)
        ]

    def search_cases(self, split: str, kind: str, with_history: bool) -> list[EvalCase]:
        """Derived-query requests of one kind, with or without the user's history."""
        cases = []
        for q in self.queries:
            if q.split != split or q.kind != kind:
                continue
            hist = tuple(int(x) for x in self.history(split, q.user)) if with_history else ()
            cases.append(EvalCase(EvalQuery(self.user_ids[q.user], q.text, hist), q.target))
        return cases

    def query_kinds(self) -> list[str]:
        present = {q.kind for q in self.queries}
        return [k for k in QUERY_KINDS if k in present] + sorted(present - set(QUERY_KINDS))


def _str_column(table: object, name: str) -> list[str]:
    return ["" if v is None else str(v) for v in table.column(name).to_pylist()]  # type: ignore[attr-defined]


def load_eval_data(
    resolve: Callable[[str], Path], with_embeddings: bool = True, source: str = ""
) -> EvalData:
    """Read the tables through ``resolve`` (relative artifact path -> file path)."""
    items = pq.read_table(resolve(ITEMS_TABLE))
    item_ids = _str_column(items, "item_id")
    row_of = {iid: i for i, iid in enumerate(item_ids)}
    if len(row_of) != len(item_ids):
        raise ValueError(f"{ITEMS_TABLE}: duplicate item_id values")

    def rows(ids: list[str], what: str) -> np.ndarray:
        try:
            return np.fromiter((row_of[str(i)] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as exc:
            raise ValueError(f"{what}: unknown item id {exc.args[0]!r}") from None

    users = pq.read_table(resolve(USERS_TABLE))
    user_ids = _str_column(users, "user_id")
    user_of = {u: i for i, u in enumerate(user_ids)}
    histories = [
        rows(h or [], f"user {u} train_history")
        for u, h in zip(user_ids, users.column("train_history").to_pylist(), strict=True)
    ]
    valid_t = rows(_str_column(users, "valid_target"), "valid_target")
    test_t = rows(_str_column(users, "test_target"), "test_target")

    queries: list[DerivedQuery] = []
    qt = pq.read_table(resolve(QUERIES_TABLE))
    if "derived" in qt.column_names and not all(qt.column("derived").to_pylist()):
        raise ValueError(f"{QUERIES_TABLE}: every query must be derived (derived=True)")
    for uid, split, tid, kind, text in zip(
        _str_column(qt, "user_id"),
        _str_column(qt, "split"),
        _str_column(qt, "target_item_id"),
        _str_column(qt, "kind"),
        _str_column(qt, "query"),
        strict=True,
    ):
        if uid not in user_of:
            raise ValueError(f"{QUERIES_TABLE}: unknown user {uid!r}")
        u = user_of[uid]
        target = row_of.get(tid)
        expected = valid_t[u] if split == "valid" else test_t[u] if split == "test" else None
        if target is None or expected is None or target != expected:
            raise ValueError(
                f"{QUERIES_TABLE}: query for user {uid} split {split!r} targets {tid!r}, "
                "which is not that user's leave-one-out target"
            )
        queries.append(DerivedQuery(u, split, kind, text, int(target)))

    embeddings = None
    if with_embeddings:
        embeddings = np.load(resolve(EMBEDDINGS), allow_pickle=False).astype(np.float32)
        if embeddings.shape[0] != len(item_ids):
            raise ValueError(f"{EMBEDDINGS}: {embeddings.shape[0]} rows for {len(item_ids)} items")
    return EvalData(
        item_ids=item_ids,
        titles=_str_column(items, "title"),
        brands=_str_column(items, "brand"),
        descriptions=_str_column(items, "description"),
        categories=[list(c or []) for c in items.column("categories").to_pylist()],
        user_ids=user_ids,
        train_histories=histories,
        valid_targets=valid_t,
        test_targets=test_t,
        queries=queries,
        embeddings=embeddings,
        source=source,
    )


def load_from_dir(version_dir: Path, with_embeddings: bool = True) -> EvalData:
    """Read a version directory directly (used by the pipeline before the manifest exists)."""
    return load_eval_data(lambda rel: version_dir / rel, with_embeddings, version_dir.name)


def load_from_artifact(artifact: ArtifactSet, with_embeddings: bool = True) -> EvalData:
    """Read a manifest-checked artifact version (every file's sha256 verified)."""
    return load_eval_data(artifact.path, with_embeddings, artifact.version)
