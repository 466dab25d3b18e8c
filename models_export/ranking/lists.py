"""The ranker's data: candidate lists from the SERVED retriever, their labels and inputs.

Lists come from the served sources of the artifact version (generator, BM25, dense; fused
with the version's own RRF policy, ``services.retrieval.fusion``), on derived queries
(DERIVED: category-path and title words of the target item, ``models_export.queries``)
with the user's history, as the gateway asks retrieval for a ranked search: the top
``RANK_POOL`` fused candidates.

Why validation queries train the ranker: the generator was trained on every training
position, so on training-split targets it places the target far higher than it ever will
on a new request; a ranker fitted to those lists learns to trust retrieval more than
serving warrants. The validation targets are unseen by every model that produces the
lists. Validation users are split by a hash of the user id into ``rank_train`` (the
multi-task model), ``fusion`` (the GRADE policy) and ``tune`` (early stopping, the global
weights, blend and floor). The test split is for evaluation only.

Labels (on the list's target, i.e. the user's next item; features only see the history
before it, and popularity counts the training histories only):

* ``conversion``: the candidate is the target;
* ``relevance``: the candidate's leaf category path equals that of the item the query
  was derived from (OneSearch's relevance term is category / attribute agreement
  between query and item; here the query's category is known because it is derived);
* ``affinity``: the candidate has the target's brand (the user's brand preference, which
  the model predicts from the history's brand and category shares).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from models_export.evaluation.data import QUERY_KINDS, EvalData
from models_export.evaluation.hybrid import HybridSources, sample_cases
from services.common.limits import RANK_POOL
from services.ranking.features import (
    FeatureSpec,
    RankInputs,
    assemble,
    item_features,
    user_features,
)
from services.ranking.fusion import PREDICTED
from services.retrieval.fusion import FusionPolicy, fuse

VALID_PARTS: tuple[tuple[str, float], ...] = (("rank_train", 0.6), ("fusion", 0.25), ("tune", 0.15))


def valid_part(user_id: str) -> str:
    """``rank_train`` / ``fusion`` / ``tune`` by a stable hash of the user id."""
    u = (zlib.crc32(f"ranking:{user_id}".encode()) % 10_000) / 10_000
    edge = 0.0
    for name, share in VALID_PARTS:
        edge += share
        if u < edge:
            return name
    return VALID_PARTS[-1][0]


@dataclass(slots=True)
class RankList:
    """One request: the fused candidates in retrieval order and the target."""

    user: int
    split: str
    part: str
    kind: str
    query: str
    history: np.ndarray  # item rows, oldest first, as of the request
    rows: list[int]
    sources: list[list[str]]
    target: int

    @property
    def hit(self) -> bool:
        return self.target in self.rows


def build_lists(
    data: EvalData,
    sources: HybridSources,
    policy: FusionPolicy,
    split: str,
    max_cases: int | None,
    seed: int,
    pool: int = RANK_POOL,
) -> tuple[list[RankList], np.ndarray]:
    """Every derived query of ``split`` (up to ``max_cases`` per kind) → its fused list;
    also the queries' served embeddings [L, D]."""
    out: list[RankList] = []
    vectors: list[np.ndarray] = []
    user_of = {u: i for i, u in enumerate(data.user_ids)}
    kinds = [k for k in QUERY_KINDS if k in data.query_kinds()]
    for kind in kinds:
        cases = sample_cases(data.search_cases(split, kind, with_history=True), max_cases, seed)
        for start in tqdm(
            range(0, len(cases), 512), desc=f"ranking lists {split}/{kind}", unit="chunk"
        ):
            chunk = cases[start : start + 512]
            lists = sources.lists(chunk, pool)
            known = sources.known(chunk)
            vectors.append(sources.query_vectors([c.request.query or "" for c in chunk]))
            for i, case in enumerate(chunk):
                fused = fuse({s: v[i] for s, v in lists.items()}, policy.for_query(known[i]), pool)
                user = user_of[case.request.user_id]
                out.append(
                    RankList(
                        user=user,
                        split=split,
                        part=valid_part(case.request.user_id) if split == "valid" else split,
                        kind=kind,
                        query=case.request.query or "",
                        history=np.asarray(case.request.history, dtype=np.int64),
                        rows=[f.row for f in fused],
                        sources=[f.sources for f in fused],
                        target=case.target,
                    )
                )
    dim = vectors[0].shape[1] if vectors else 0
    return out, np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)


def labels(spec: FeatureSpec, lst: RankList) -> np.ndarray:
    """Float32 [C, len(PREDICTED)]: conversion, relevance, affinity (see the module doc)."""
    rows = np.asarray(lst.rows, dtype=np.int64)
    t = lst.target
    out = np.zeros((len(rows), len(PREDICTED)), dtype=np.float32)
    out[:, 0] = rows == t
    cat3 = spec.item_cat3[rows]
    out[:, 1] = (cat3 == spec.item_cat3[t]) & (cat3 != 0)
    brand = spec.item_brand[rows]
    out[:, 2] = (brand == spec.item_brand[t]) & (brand != 0)
    return out


def list_inputs(
    spec: FeatureSpec,
    item_vectors: np.ndarray,
    lists: Sequence[RankList],
    query_vectors: np.ndarray,
) -> list[RankInputs]:
    """Model inputs of every list, through the served assembly (``features.assemble``)."""
    out = []
    for lst, qv in zip(lists, query_vectors, strict=True):
        user = user_features(spec, lst.history.tolist())
        items = [item_features(spec, r) for r in lst.rows]
        out.append(assemble(spec, item_vectors, user, items, lst.sources, qv))
    return out
