"""Retrieval core: validation, deadline-aware beam choice, constrained decoding, ANN fill.

Testable without gRPC: the servicer only converts messages and awaits the
dynamic batcher, which calls :meth:`RetrievalEngine.decode_batch`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from services.common.deadline import Deadline
from services.common.errors import InvalidInputError, VersionMismatchError
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2
from services.common.limits import MAX_EXCLUDE
from services.common.text import MAX_QUERY_CHARS, normalize_query
from services.retrieval import metrics
from services.retrieval.ann import AnnIndex
from services.retrieval.beam_search import NodeBonus
from services.retrieval.catalog import Catalog
from services.retrieval.config import RetrievalSettings
from services.retrieval.covisit import CovisitPrior
from services.retrieval.fusion import FusionPolicy, fuse
from services.retrieval.lexical import LexicalIndex
from services.retrieval.trie import SidTrie

log = logging.getLogger(__name__)

MAX_CATEGORY_PREFIXES = 20
MAX_KEYWORDS = 32

#: candidate source names -> the protobuf enum
SOURCE_ENUM: dict[str, int] = {
    "generated": common_pb2.CANDIDATE_SOURCE_GENERATED,
    "lexical": common_pb2.CANDIDATE_SOURCE_LEXICAL,
    "dense": common_pb2.CANDIDATE_SOURCE_DENSE,
    "ann": common_pb2.CANDIDATE_SOURCE_ANN,
}
#: the hybrid sources that run beside the decoder (in threads), in this order
SIDE_SOURCES: tuple[str, ...] = ("lexical", "dense")
NO_TEXT_MESSAGE = (
    "this catalog has no item text, so it cannot be searched by query: send the request "
    "without a query (recommendation mode)"
)


@dataclass(slots=True)
class DecodeJob:
    """One request's decoding problem."""

    query: str
    history_rows: np.ndarray
    trie: SidTrie
    beam_width: int
    n_results: int
    exclude_rows: np.ndarray
    node_bonus: NodeBonus | None = None  # a decoding prior per trie node (see covisit)


class SidGenerator(Protocol):
    """Constrained generation of SIDs → item rows (implemented on ONNX Runtime)."""

    def decode(self, jobs: Sequence[DecodeJob]) -> list[list[tuple[int, float]]]:
        """For each job: up to ``n_results`` distinct (item row, log-prob), best first."""
        ...


class TextEmbedder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(slots=True)
class Prepared:
    """A validated request, mapped onto catalog rows."""

    query: str
    history_rows: np.ndarray
    k: int
    beam_width: int
    exclude: set[int]
    allowed_rows: np.ndarray | None
    filter_key: tuple[str, ...]
    query_embedding: np.ndarray | None
    ann_fill: bool
    # The generator's input text: the query, plus the keywords when it was trained with them
    generator_query: str = ""
    # Hybrid candidate sources for this request (empty: the generator alone, as for a
    # history-only request); "generated" among them means the decoder runs.
    sources: tuple[str, ...] = ()
    degraded: list[common_pb2.Degradation] = field(default_factory=list)

    @property
    def decodes(self) -> bool:
        """Whether the generator runs for this request."""
        return not self.sources or "generated" in self.sources

    def drop_source(self, source: str, reason: str) -> None:
        """Record that ``source`` gave nothing for this request and why."""
        self.degraded.append(common_pb2.Degradation(stage=f"retrieval.{source}", reason=reason))


class BeamCostModel:
    """Predicts decode time as ``fixed + per_beam * beam`` from observed batches (EWMA)."""

    def __init__(self, fixed: float = 0.002, per_beam: float = 0.0003, alpha: float = 0.2) -> None:
        self.fixed, self.per_beam, self.alpha = fixed, per_beam, alpha
        self._lock = threading.Lock()

    def calibrate(self, small: tuple[int, float], large: tuple[int, float]) -> None:
        (b1, t1), (b2, t2) = small, large
        per_beam = max((t2 - t1) / max(b2 - b1, 1), 1e-6)
        with self._lock:
            self.per_beam = per_beam
            self.fixed = max(t1 - per_beam * b1, 0.0)

    def observe(self, beam_units: int, seconds: float) -> None:
        """Blend in one batch: ``beam_units`` = sum of beam widths decoded together."""
        predicted = self.fixed + self.per_beam * beam_units
        if predicted <= 0:
            return
        ratio = seconds / predicted
        with self._lock:
            scale = 1.0 + self.alpha * (ratio - 1.0)
            self.fixed *= scale
            self.per_beam *= scale

    def predict(self, beam: int) -> float:
        return self.fixed + self.per_beam * beam

    def affordable(self, requested: int, budget: float) -> int:
        """The largest beam <= ``requested`` (halving) predicted to fit ``budget``; >= 1."""
        beam = requested
        while beam > 1 and self.predict(beam) > budget:
            beam = max(1, beam // 2)
        return beam


class RetrievalEngine:
    """Everything retrieval does for one loaded artifact version."""

    def __init__(
        self,
        settings: RetrievalSettings,
        version: str,
        catalog: Catalog,
        trie: SidTrie,
        generator: SidGenerator,
        ann: AnnIndex | None,
        embedder: TextEmbedder | None,
        *,
        manifest_sha256: str = "",
        model_names: Sequence[str] = (),
        prior: CovisitPrior | None = None,
        has_text: bool = True,
        lexical: LexicalIndex | None = None,
        fusion: FusionPolicy | None = None,
        keyword_input: bool = False,
    ) -> None:
        self.settings = settings
        self.keyword_input = keyword_input  # the generator was trained with QU keywords
        self.version = version
        self.manifest_sha256 = manifest_sha256
        self.model_names = list(model_names)
        self.catalog = catalog
        self.trie = trie
        self.generator = generator
        self.ann = ann
        self.embedder = embedder
        self.prior = prior
        self.lexical = lexical
        self.fusion = fusion or FusionPolicy()
        self.has_text = has_text  # False: a log-only catalog, recommendation requests only
        self.cost = BeamCostModel()
        self._filter_tries: OrderedDict[tuple[str, ...], SidTrie] = OrderedDict()
        self._filter_lock = threading.Lock()

    # -- request preparation -------------------------------------------------

    def prepare(self, req: retrieval_pb2.RetrieveRequest, deadline: Deadline) -> Prepared:
        """Validate ``req`` and map it onto rows; raise :class:`InvalidInputError` if bad."""
        s = self.settings
        if req.meta.artifact_version and req.meta.artifact_version != self.version:
            raise VersionMismatchError(
                f"request pinned to artifact {req.meta.artifact_version!r}, "
                f"this service serves {self.version!r}"
            )
        if not 1 <= req.k <= s.max_k:
            raise InvalidInputError(f"k must be in [1, {s.max_k}], got {req.k}")
        if req.beam_width < 0 or req.beam_width > s.max_beam_width:
            raise InvalidInputError(
                f"beam_width must be in [0, {s.max_beam_width}] (0 = default), got {req.beam_width}"
            )
        query = normalize_query(req.query)
        if not self.has_text and (query or any(k.strip() for k in req.keywords)):
            raise InvalidInputError(NO_TEXT_MESSAGE)
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidInputError(f"query longer than {MAX_QUERY_CHARS} characters")
        if len(req.keywords) > MAX_KEYWORDS:
            raise InvalidInputError(f"at most {MAX_KEYWORDS} keywords")
        if len(req.exclude_item_ids) > MAX_EXCLUDE:
            raise InvalidInputError(f"at most {MAX_EXCLUDE} excluded items")
        if len(req.category_prefixes) > MAX_CATEGORY_PREFIXES:
            raise InvalidInputError(f"at most {MAX_CATEGORY_PREFIXES} category prefixes")
        embedding = None
        if req.query_embedding:
            embedding = np.asarray(req.query_embedding, dtype=np.float32)
            if self.ann is not None and embedding.shape != (self.ann.dim,):
                raise InvalidInputError(
                    f"query_embedding must have {self.ann.dim} values, got {embedding.shape[0]}"
                )
        generator_query = query
        if req.keywords and self.keyword_input and query:
            extra = " ".join(normalize_query(k) for k in req.keywords if k.strip())
            generator_query = f"{query} {extra}".strip()[: 2 * MAX_QUERY_CHARS]

        recent = list(req.user.recent_item_ids)[-s.history_len :] if s.history_len else []
        history, _unknown = self.catalog.rows(recent)
        exclude_rows, _ = self.catalog.rows(req.exclude_item_ids)
        prefixes = tuple(sorted({p.strip() for p in req.category_prefixes if p.strip()}))
        allowed = self.catalog.rows_with_prefixes(prefixes) if prefixes else None

        requested = req.beam_width or s.default_beam_width
        budget = deadline.remaining() * s.decode_budget_fraction
        beam = self.cost.affordable(requested, budget)
        prepared = Prepared(
            query=query,
            history_rows=history,
            k=req.k,
            beam_width=beam,
            exclude=set(exclude_rows.tolist()),
            allowed_rows=allowed,
            filter_key=prefixes,
            query_embedding=embedding,
            ann_fill=s.ann_fill and not req.disable_ann_fill,
            generator_query=generator_query,
            sources=self.plan_sources(query, embedding is not None),
        )
        if beam < requested:
            metrics.BEAM_REDUCED.inc()
            prepared.degraded.append(
                common_pb2.Degradation(
                    stage="retrieval.beam",
                    reason=f"beam {requested} -> {beam} to fit the remaining "
                    f"{deadline.remaining() * 1000:.0f} ms",
                )
            )
        return prepared

    def plan_sources(self, query: str, has_embedding: bool) -> tuple[str, ...]:
        """The hybrid sources a text query gets (settings and artifact permitting); ()
        when only the generator runs (no query text, or no other source available)."""
        if not query:
            return ()
        s = self.settings
        sources = ["generated"] if s.source_generated else []
        if s.source_lexical and self.lexical is not None:
            sources.append("lexical")
        if s.source_dense and self.ann is not None and (has_embedding or self.embedder):
            sources.append("dense")
        return () if sources == ["generated"] else tuple(sources)

    def fusion_depth(self, prepared: Prepared) -> int:
        """How many candidates each source hands to the fusion."""
        return max(prepared.k, self.settings.fusion_depth)

    def query_vector(self, prepared: Prepared) -> np.ndarray | None:
        """The query's embedding: given with the request, else encoded once (and kept)."""
        if prepared.query_embedding is None and prepared.query and self.embedder is not None:
            prepared.query_embedding = self.embedder.encode([prepared.query])[0]
        return prepared.query_embedding

    def source_candidates(self, prepared: Prepared, source: str) -> list[tuple[int, float]]:
        """One side source's (row, score) list, best first, filters and exclusions applied.

        Runs in a worker thread beside the decoder (``services.retrieval.hybrid``)."""
        start = time.perf_counter()
        depth = self.fusion_depth(prepared)
        hits: list[tuple[int, float]]
        if source == "lexical":
            assert self.lexical is not None
            hits = self.lexical.search(
                prepared.query, depth, exclude=prepared.exclude, allowed=prepared.allowed_rows
            )
        elif source == "dense":
            assert self.ann is not None
            vector = self.query_vector(prepared)
            hits = (
                []
                if vector is None
                else self.ann.search(
                    vector, depth, exclude=prepared.exclude, allowed=prepared.allowed_rows
                )
            )
        else:
            raise ValueError(f"unknown side source {source!r}; known: {SIDE_SOURCES}")
        metrics.SOURCE_SECONDS.labels(source).observe(time.perf_counter() - start)
        return hits

    def trie_for(self, prepared: Prepared) -> SidTrie:
        """The full trie, or the (cached) sub-trie of the category filter."""
        if prepared.allowed_rows is None:
            return self.trie
        with self._filter_lock:
            cached = self._filter_tries.get(prepared.filter_key)
            if cached is not None:
                self._filter_tries.move_to_end(prepared.filter_key)
                return cached
        sub = self.trie.subset(prepared.allowed_rows)
        with self._filter_lock:
            self._filter_tries[prepared.filter_key] = sub
            while len(self._filter_tries) > self.settings.filter_cache_size:
                self._filter_tries.popitem(last=False)
        return sub

    def job(self, prepared: Prepared) -> DecodeJob:
        """The decoding problem: exclusions are pruned inside decoding, not post-filtered;
        a history-only request gets the co-visitation prior fused in."""
        trie = self.trie_for(prepared)
        return DecodeJob(
            query=prepared.generator_query or prepared.query,
            history_rows=prepared.history_rows,
            trie=trie,
            beam_width=prepared.beam_width,
            n_results=self.fusion_depth(prepared) if prepared.sources else prepared.k,
            exclude_rows=np.asarray(sorted(prepared.exclude), dtype=np.int64),
            node_bonus=self._prior_bonus(prepared, trie),
        )

    def _prior_bonus(self, prepared: Prepared, trie: SidTrie) -> NodeBonus | None:
        """The prior's per-node bonus for a history-only request, else None. A failure
        degrades the request to the generator alone."""
        if self.prior is None or prepared.query or not len(prepared.history_rows):
            return None
        try:
            bonus = self.prior.node_bonus(trie, prepared.history_rows.tolist(), len(self.catalog))
        except Exception as exc:  # an optional stage: never fail the request for it
            log.exception("co-visitation prior failed")
            prepared.degraded.append(
                common_pb2.Degradation(stage="retrieval.prior", reason=f"prior failed: {exc}")
            )
            return None
        metrics.PRIOR.labels("fused" if bonus is not None else "skipped").inc()
        return bonus

    # -- decoding (runs in the batcher's worker thread) ----------------------

    def decode_batch(self, jobs: Sequence[DecodeJob]) -> list[list[tuple[int, float]]]:
        start = time.perf_counter()
        results = self.generator.decode(jobs)
        took = time.perf_counter() - start
        self.cost.observe(sum(j.beam_width for j in jobs), took)
        metrics.BATCH_SIZE.observe(len(jobs))
        metrics.BATCH_SECONDS.observe(took)
        depth = self.trie.depth
        metrics.DECODE_STEPS.inc(depth)
        metrics.STEP_SECONDS.observe(took / max(depth, 1))
        return results

    # -- response assembly ---------------------------------------------------

    def finish(
        self,
        prepared: Prepared,
        decoded: list[tuple[int, float]],
        side: dict[str, list[tuple[int, float]]] | None = None,
    ) -> retrieval_pb2.RetrieveResponse:
        """Apply exclusions, fuse the hybrid sources' lists (``side``: what the side sources
        returned in time), fill from ANN when short, and build the reply."""
        generated = self._valid_generated(prepared, decoded)
        picked: list[common_pb2.Candidate] = []
        if prepared.sources:
            ranked = {"generated": [row for row, _ in generated]} if prepared.decodes else {}
            for source, hits in (side or {}).items():
                ranked[source] = [row for row, _ in hits]
            known = self.lexical is None or self.lexical.all_terms_known(prepared.query)
            for f in fuse(ranked, self.fusion.for_query(known), prepared.k):
                picked.append(self._candidate(f.row, f.score, f.sources))
        else:
            for row, score in generated[: prepared.k]:
                picked.append(self._candidate(row, score, ["generated"]))
        seen = {self.catalog.row_of[c.item_id] for c in picked}
        degraded = list(prepared.degraded)
        if len(picked) < prepared.k and prepared.ann_fill:
            degraded.extend(self._fill(prepared, picked, seen))
        for c in picked:
            metrics.ITEMS.labels(_SOURCE_NAME[c.source]).inc()
        return retrieval_pb2.RetrieveResponse(
            candidates=picked,
            artifact_version=self.version,
            beam_width_used=prepared.beam_width,
            decode_steps=self.trie.depth,
            degraded=degraded,
        )

    def _valid_generated(
        self, prepared: Prepared, decoded: list[tuple[int, float]]
    ) -> list[tuple[int, float]]:
        """Decoded (row, score) that name an item, not excluded, first occurrence only."""
        n_items = len(self.catalog)
        out: list[tuple[int, float]] = []
        seen: set[int] = set()
        for row, score in decoded:
            if not 0 <= row < n_items:
                metrics.INVALID_SIDS.inc()
                continue
            if row in prepared.exclude or row in seen:
                continue
            seen.add(row)
            out.append((row, score))
        return out

    def _candidate(self, row: int, score: float, sources: Sequence[str]) -> common_pb2.Candidate:
        enums = [SOURCE_ENUM[s] for s in sources]
        return common_pb2.Candidate(
            item_id=self.catalog.item_ids[row],
            sid=common_pb2.SemanticId(codes=self.catalog.codes[row].tolist()),
            source=enums[0],  # type: ignore[arg-type]
            sources=enums,  # type: ignore[arg-type]
            retrieval_score=float(score),
        )

    def _fill(
        self, prepared: Prepared, picked: list[common_pb2.Candidate], seen: set[int]
    ) -> list[common_pb2.Degradation]:
        if self.ann is None:
            return [common_pb2.Degradation(stage="retrieval.ann_fill", reason="no ANN index")]
        vector = self.query_vector(prepared)
        if vector is None:
            vector = self.ann.history_vector(prepared.history_rows)
        if vector is None:
            return []  # nothing to search with: an anonymous empty query
        metrics.FILL.inc()
        need = prepared.k - len(picked)
        hits = self.ann.search(
            vector, need, exclude=prepared.exclude | seen, allowed=prepared.allowed_rows
        )
        for row, score in hits:
            seen.add(row)
            picked.append(self._candidate(row, score, ["ann"]))
        return []


_SOURCE_NAME: dict[int, str] = {v: k for k, v in SOURCE_ENUM.items()}
