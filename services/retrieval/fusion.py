"""Candidate fusion: one list from several ranked sources (weighted reciprocal-rank fusion).

RRF (Cormack, Clarke & Büttcher, SIGIR 2009) scores an item ``sum_s w_s / (k0 + rank_s)``
over the sources ``s`` that returned it (rank from 1). It needs no score calibration
between sources whose scores live on different scales (sequence log-probabilities, BM25,
cosine), which is exactly our case. The weights ``w_s`` and ``k0`` are chosen on the
validation split by the artifact build (``models_export.hybrid``) and stored with the
artifact; see ``docs/results/hybrid_retrieval.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: the source names, in the order used for ties and for the primary source of an item
SOURCES: tuple[str, ...] = ("generated", "lexical", "dense")
DEFAULT_K0 = 60.0
#: the artifact file holding the weights chosen on validation
FUSION_FILE = "hybrid/fusion.json"


@dataclass(frozen=True, slots=True)
class FusionWeights:
    """Per-source RRF weights (a missing source weighs 0) and the rank offset ``k0``."""

    weights: Mapping[str, float] = field(
        default_factory=lambda: {"generated": 1.0, "lexical": 1.0, "dense": 1.0}
    )
    k0: float = DEFAULT_K0

    def weight(self, source: str) -> float:
        return float(self.weights.get(source, 0.0))

    def to_dict(self) -> dict[str, object]:
        return {"weights": dict(self.weights), "k0": self.k0}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> FusionWeights:
        raw = data.get("weights", {})
        if not isinstance(raw, Mapping):
            raise ValueError("fusion 'weights' must be a mapping of source -> weight")
        weights = {str(k): float(v) for k, v in raw.items()}
        unknown = set(weights) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown fusion sources {sorted(unknown)}; known: {SOURCES}")
        k0 = data.get("k0", DEFAULT_K0)
        if not isinstance(k0, int | float) or k0 < 0:
            raise ValueError(f"fusion k0 must be a number >= 0, got {k0!r}")
        return cls(weights, float(k0))


#: the two query conditions a policy tells apart
KNOWN, UNKNOWN = "known", "unknown"


@dataclass(frozen=True, slots=True)
class FusionPolicy:
    """Fusion weights per query condition: ``known`` when every query term is in the
    catalog's vocabulary (the lexical index's), ``unknown`` when one is not (a typo, a
    word the catalog never uses). The generator reads text through its own sub-word
    vocabulary and is brittle to misspelt words, while BM25 still matches the other terms;
    so the two conditions get their own weights, both chosen on validation."""

    known: FusionWeights = field(default_factory=FusionWeights)
    unknown: FusionWeights = field(default_factory=FusionWeights)

    def for_query(self, all_terms_known: bool) -> FusionWeights:
        return self.known if all_terms_known else self.unknown

    def to_dict(self) -> dict[str, object]:
        return {KNOWN: self.known.to_dict(), UNKNOWN: self.unknown.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> FusionPolicy:
        """From ``{"known": {...}, "unknown": {...}}``, or one weight set for both."""
        if KNOWN not in data:
            single = FusionWeights.from_dict(data)
            return cls(single, single)
        parts = {}
        for key in (KNOWN, UNKNOWN):
            part = data.get(key)
            if not isinstance(part, Mapping):
                raise ValueError(f"fusion policy needs a '{key}' weight set")
            parts[key] = FusionWeights.from_dict(part)
        return cls(parts[KNOWN], parts[UNKNOWN])


@dataclass(slots=True)
class Fused:
    """One fused item: its row, RRF score and the sources that found it (best first)."""

    row: int
    score: float
    sources: list[str]


def fuse(
    ranked: Mapping[str, Sequence[int]], weights: FusionWeights, k: int | None = None
) -> list[Fused]:
    """Weighted RRF over ``ranked`` (source -> item rows, best first), best first.

    Each item lists every source that returned it, ordered by that source's contribution
    (so ``sources[0]`` is the one that placed it highest, weight considered). Equal fused
    scores keep the order of :data:`SOURCES` and then rank, so the result is deterministic.
    A source with weight 0 still tags the items it found but adds nothing to their score.
    """
    score: dict[int, float] = {}
    contrib: dict[int, list[tuple[float, int, str]]] = {}
    first_seen: dict[int, tuple[int, int]] = {}
    order = {s: i for i, s in enumerate(SOURCES)}
    for source, rows in ranked.items():
        w = weights.weight(source)
        s_index = order.get(source, len(order))
        seen: set[int] = set()
        for rank, row in enumerate(rows, 1):
            if row in seen:
                continue
            seen.add(row)
            part = w / (weights.k0 + rank)
            score[row] = score.get(row, 0.0) + part
            contrib.setdefault(row, []).append((part, -s_index, source))
            key = (rank, s_index)
            if row not in first_seen or key < first_seen[row]:
                first_seen[row] = key
    rows_sorted = sorted(score, key=lambda r: (-score[r], first_seen[r]))
    if k is not None:
        rows_sorted = rows_sorted[:k]
    return [
        Fused(row, score[row], [s for _, _, s in sorted(contrib[row], reverse=True)])
        for row in rows_sorted
    ]
