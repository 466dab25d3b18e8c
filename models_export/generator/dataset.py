"""Training examples for the generator, from the TRAINING histories only.

Three kinds, re-sampled every epoch:

* next item: for every position j of a user's training history, the history before j
  (last ``max_history`` items) → item j, in one of three modes drawn at random:
  recommendation (no query), search with history (a derived query of item j + history),
  search (the derived query alone);
* item text (its title, and its category words) → its own SID ("indexing"), so every
  catalog item, bought or not, is reachable.

Derived queries follow ``models_export.queries`` (category words, Ai et al. SIGIR 2017, or 2–4
informative title words), the same derivation as the evaluation queries. A log whose items
have no text gives recommendation examples only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models_export import ingest, queries
from services.retrieval.encoding import EncoderBatch, InputEncoder


@dataclass(slots=True)
class TrainingData:
    """Catalog text, SIDs and leave-one-out histories, all as item rows."""

    item_ids: list[str]
    item_texts: list[str]  # what an "indexing" example reads (title; "" when missing)
    vocab_texts: list[str]  # every text field of every item, to fit the word-piece vocabulary
    category_queries: list[str | None]
    title_queries: list[str | None]
    codes: npt.NDArray[np.int64]  # (N, L)
    codebook_sizes: tuple[int, ...]
    user_ids: list[str]
    train_histories: list[npt.NDArray[np.int64]]
    valid_targets: npt.NDArray[np.int64]
    test_targets: npt.NDArray[np.int64]
    # KHQE-style keyword augmentation: text -> the query-understanding keywords of that text,
    # appended to it wherever the model reads it (empty: no augmentation)
    keywords: dict[str, str] = field(default_factory=dict)

    def text(self, query: str) -> str:
        """``query`` as the model reads it: with its keywords when augmentation is on."""
        extra = self.keywords.get(query)
        return f"{query} {extra}" if extra else query

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def has_text(self) -> bool:
        """False for a log whose items have no text: recommendation mode only."""
        return any(self.item_texts) or any(q for q in self.category_queries)


def subset_users(data: TrainingData, n: int, seed: int = 0) -> TrainingData:
    """The same catalog with a random sample of ``n`` users (development slices)."""
    if n >= len(data.user_ids):
        return data
    keep = np.sort(np.random.default_rng(seed).choice(len(data.user_ids), n, replace=False))
    return TrainingData(
        item_ids=data.item_ids,
        item_texts=data.item_texts,
        vocab_texts=data.vocab_texts,
        category_queries=data.category_queries,
        title_queries=data.title_queries,
        codes=data.codes,
        codebook_sizes=data.codebook_sizes,
        user_ids=[data.user_ids[i] for i in keep],
        train_histories=[data.train_histories[i] for i in keep],
        valid_targets=data.valid_targets[keep],
        test_targets=data.test_targets[keep],
    )


def catalog_texts(items: Sequence[ingest.Item]) -> list[str]:
    """Title, brand, description and category path of every item (empty fields dropped)."""
    out: list[str] = []
    for i in items:
        out.extend(t for t in (i.title, i.brand, i.description, " ".join(i.categories)) if t)
    return out


def load_training_data(
    tables_dir: Path, codes: npt.ArrayLike, codebook_sizes: Sequence[int]
) -> TrainingData:
    """Read items.parquet / users.parquet; ``codes`` row-aligned with items.parquet."""
    items = ingest.read_items(tables_dir)
    users = ingest.read_users(tables_dir)
    code_arr = np.asarray(codes, dtype=np.int64)
    if code_arr.shape[0] != len(items):
        raise ValueError(f"{code_arr.shape[0]} SIDs for {len(items)} items")
    row = {item.item_id: i for i, item in enumerate(items)}
    idf = queries.TitleIdf.fit(i.title for i in items)

    def rows(ids: Sequence[str]) -> npt.NDArray[np.int64]:
        return np.asarray([row[i] for i in ids], dtype=np.int64)

    return TrainingData(
        item_ids=[i.item_id for i in items],
        item_texts=[i.title for i in items],
        vocab_texts=catalog_texts(items),
        category_queries=[queries.category_query(i.categories) or None for i in items],
        title_queries=[queries.title_query(i, idf) for i in items],
        codes=code_arr,
        codebook_sizes=tuple(int(k) for k in codebook_sizes),
        user_ids=[u.user_id for u in users],
        train_histories=[rows(u.train_history) for u in users],
        valid_targets=rows([u.valid_target for u in users]),
        test_targets=rows([u.test_target for u in users]),
    )


@dataclass(frozen=True, slots=True)
class MixSettings:
    """How often each example kind is drawn (next-item examples)."""

    p_recommendation: float = 0.5
    p_search_history: float = 0.35  # the rest (0.15): search without history
    p_title_query: float = 0.5  # else the category query
    index_repeats: int = 1  # rounds of item-text → SID examples (title, category) per epoch
    max_history: int = 20
    # History augmentation (training only): a context is cut to its last m items, m uniform
    # in [1, len], with probability ``p_history_crop``; then each item but the most recent is
    # dropped with probability ``history_item_dropout``. Same budget, test split
    # (docs/results/generative_quality.md): recommendation R@10 0.062 -> 0.076, search +
    # history / title NDCG@10 0.71 -> 0.83; validation kept improving to the last epoch
    # instead of peaking early. Crop 1.0 + dropout 0.2 gained little more in recommendation
    # (0.079) and lost search quality (0.77).
    p_history_crop: float = 0.5
    history_item_dropout: float = 0.1


@dataclass(slots=True)
class Examples:
    """One epoch's examples, columnar."""

    queries: list[str | None]
    histories: list[npt.NDArray[np.int64]]
    targets: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.queries)


def _query_for(data: TrainingData, item: int, use_title: bool) -> str | None:
    title, category = data.title_queries[item], data.category_queries[item]
    query = (title or category) if use_title else (category or title)
    return data.text(query) if query else None


def augment_history(
    prefix: npt.NDArray[np.int64], mix: MixSettings, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """``prefix`` cropped to a random suffix and thinned (see ``MixSettings``); the most
    recent item always stays."""
    n = len(prefix)
    if n > 1 and mix.p_history_crop > 0 and rng.random() < mix.p_history_crop:
        prefix = prefix[n - int(rng.integers(1, n + 1)) :]
        n = len(prefix)
    if n > 1 and mix.history_item_dropout > 0:
        keep = rng.random(n) >= mix.history_item_dropout
        keep[-1] = True
        prefix = prefix[keep]
    return prefix


def sample_epoch(data: TrainingData, mix: MixSettings, rng: np.random.Generator) -> Examples:
    """Draw one epoch of examples (modes and query kinds re-drawn every call)."""
    qs: list[str | None] = []
    hists: list[npt.NDArray[np.int64]] = []
    targets: list[int] = []
    empty = np.zeros(0, dtype=np.int64)
    text = data.has_text
    for history in data.train_histories:
        n = len(history)
        if n == 0:
            continue
        draws = rng.random(n)
        titles = rng.random(n) < mix.p_title_query
        for j in range(n):
            target = int(history[j])
            prefix = augment_history(history[max(0, j - mix.max_history) : j], mix, rng)
            query = _query_for(data, target, bool(titles[j])) if text else None
            if query is None or (j > 0 and draws[j] < mix.p_recommendation):
                if j == 0:
                    continue  # nothing to condition on
                qs.append(None)
                hists.append(prefix)
            elif j > 0 and draws[j] < mix.p_recommendation + mix.p_search_history:
                qs.append(query)
                hists.append(prefix)
            else:
                qs.append(query)
                hists.append(empty)
            targets.append(target)
    if text:
        for _ in range(mix.index_repeats):
            for item, title in enumerate(data.item_texts):
                for doc in (title, data.category_queries[item]):
                    if doc:
                        qs.append(data.text(doc))
                        hists.append(empty)
                        targets.append(item)
    return Examples(qs, hists, np.asarray(targets, dtype=np.int64))


def batches(
    examples: Examples,
    encoder: InputEncoder,
    batch_size: int,
    rng: np.random.Generator,
    bucket_batches: int = 50,
) -> Iterator[tuple[EncoderBatch, npt.NDArray[np.int64]]]:
    """Shuffled, length-bucketed batches (little padding): (encoder inputs, target rows)."""
    order = rng.permutation(len(examples))
    lengths = np.asarray(
        [
            (len(q.split()) if q else 0) + min(len(h), encoder.config.max_history) * 4
            for q, h in zip(examples.queries, examples.histories, strict=True)
        ]
    )
    chunk = batch_size * bucket_batches
    groups: list[npt.NDArray[np.int64]] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        groups.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    for g in rng.permutation(len(groups)):
        idx = groups[int(g)]
        enc = encoder.encode(
            [examples.queries[i] for i in idx], [examples.histories[i] for i in idx]
        )
        yield enc, examples.targets[idx]
