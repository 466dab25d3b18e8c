"""Constrained beam search over the SID trie: batch × beams in one array program per step.

The model is reached through :class:`StepModel` (ONNX Runtime at serving, see
``onnx_generator.py``; torch in offline validation), so this module is numpy only.

Per step (one SID level): the decoder scores the level's tokens for every live beam of every
query at once; tokens the trie does not allow after the beam's prefix (and, for a category
filter, tokens outside the request's sub-trie; for exclusions, subtrees whose every item is
excluded) are masked, the log-softmax is taken over the remaining tokens (log-probabilities
renormalised over valid tokens, as Hugging Face's ``renormalize_logits=True`` does after its
prefix constraint), and the best ``beam_width`` (prefix + token) continuations per query are
kept. The encoder runs once per query; its cross-attention K/V are computed once and shared by
all beams; the decoder's self-attention K/V are cached and reordered with the beams. A beam
whose remaining path through the trie is forced (one valid token at every level left) gets no
more decoder runs: renormalised over one token, its score cannot change. Finished hypotheses
are leaves of the trie, so no invalid SID can come out of constrained mode. An optional
per-node bonus (a prior, see ``covisit.py``) is added to each valid edge's logit before the
renormalisation, so a step's distribution becomes the product of the model's and the prior's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from services.common.errors import InvalidInputError
from services.retrieval.encoding import DECODER_START_ID, PAD_ID, EncoderBatch, TokenLayout
from services.retrieval.search_kernels import (
    advance_and_collect,
    advance_and_plan,
    expand_edges,
    plan_first_level,
)
from services.retrieval.trie import FlatCsr, SidTrie

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
MAX_BEAM_WIDTH = 512


class StepModel(Protocol):
    """The calls a beam search makes (shapes use Q queries, B beams, S source tokens).

    ``encode``: token slots int64 (Q, S, L), mask (Q, S) → the cross-attention state (for
    ONNX: each decoder layer's cross K/V and the source mask as an additive bias), computed
    once per query and shared by its beams.
    ``empty_cache(rows)``: a self-attention cache with no steps for ``rows`` hypotheses.
    ``step``: last tokens int64 (Q, B), ``beam_rows`` int64 (Q * B,) (the row of ``cache``
    each beam extends: the beam reorder), the cache, the cross state → logits float32
    (Q, B, V_dec) over the decoder vocabulary and the extended cache, whose row q * B + j
    is beam j of query q.
    """

    num_layers: int
    num_heads: int
    d_kv: int

    def encode(self, input_ids: IntArray, attention_mask: IntArray) -> list[FloatArray]: ...

    def empty_cache(self, rows: int) -> list[FloatArray]: ...

    def step(
        self,
        tokens: IntArray,
        beam_rows: IntArray,
        cache: Sequence[FloatArray],
        cross: Sequence[FloatArray],
    ) -> tuple[FloatArray, list[FloatArray]]: ...


@dataclass(frozen=True, slots=True)
class SparseNodeBonus:
    """A per-node bonus that is ``base[node]`` everywhere except at ``nodes`` (sorted,
    unique global ids), where it is ``values``: a prior that departs from a per-trie
    default only on the paths of a few items (``covisit.CovisitPrior.node_bonus``). A
    search reads it at the edges it expands only, so building one costs the request
    O(len(nodes)), not O(trie nodes). ``base`` is shared between requests: never written."""

    base: FloatArray
    nodes: IntArray
    values: FloatArray

    def __len__(self) -> int:
        """The number of trie nodes it covers."""
        return len(self.base)

    def at(self, nodes: IntArray) -> FloatArray:
        """The bonus of each of ``nodes`` (valid global ids), float32."""
        out: FloatArray = self.base[nodes]
        if self.nodes.size:
            pos = np.minimum(np.searchsorted(self.nodes, nodes), self.nodes.size - 1)
            hit = self.nodes[pos] == nodes
            out[hit] = self.values[pos[hit]]
        return out

    def dense(self) -> FloatArray:
        """The same bonus as one value per node."""
        out = self.base.copy()
        out[self.nodes] = self.values
        return out


#: ``SearchOptions.node_bonus``: one value per trie node, dense or sparse
NodeBonus: TypeAlias = FloatArray | SparseNodeBonus


@dataclass(frozen=True, slots=True)
class SearchOptions:
    """Per-request options. ``trie`` None = the searcher's full trie; give a
    ``SidTrie.subset`` (same item rows) to restrict results, e.g. to a category.
    ``exclude``: item rows never returned; removed inside decoding. ``node_bonus``: one
    value per node of the query's trie (an array, or a :class:`SparseNodeBonus`), added
    to the logit of every edge into that node before the renormalisation over valid
    tokens (a prior fused into decoding, e.g.
    ``services.retrieval.covisit.CovisitPrior.node_bonus``); result scores include it."""

    beam_width: int = 20
    k: int = 10
    trie: SidTrie | None = None
    exclude: npt.NDArray[np.int64] | None = None
    node_bonus: NodeBonus | None = None


@dataclass(slots=True)
class SearchResult:
    """Up to ``k`` distinct items, best first. ``scores`` are the SID's summed
    log-probabilities (items that share a SID share its score)."""

    items: IntArray
    scores: FloatArray
    invalid_sids: int = 0  # unconstrained mode only: finished beams that name no item


@dataclass(slots=True)
class StepTimes:
    """Seconds spent in the model, in trie lookups (masks + node steps during decoding)
    and in the whole search, accumulated over calls."""

    model: float = 0.0
    trie: float = 0.0
    total: float = 0.0
    calls: int = 0

    def search_overhead(self) -> float:
        """(search time outside the model) / model time."""
        return (self.total - self.model) / self.model if self.model > 0 else float("nan")

    def trie_share(self) -> float:
        """Trie lookups / model time: the direct cost of the constraint."""
        return self.trie / self.model if self.model > 0 else float("nan")


@dataclass(slots=True)
class _Exclusion:
    """Nodes (per depth 1..L) whose every item is excluded, for one query."""

    dead: list[npt.NDArray[np.int64]] = field(default_factory=list)
    rows: set[int] = field(default_factory=set)


def _log_softmax(x: FloatArray) -> FloatArray:
    """Log-softmax over the last axis; rows that are all -inf stay -inf."""
    top = np.max(x, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, np.float32(0.0))
    shifted = x - top
    with np.errstate(divide="ignore"):
        norm = np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    norm = np.where(np.isfinite(norm), norm, np.float32(0.0))  # dead rows stay -inf
    out: FloatArray = (shifted - norm).astype(np.float32, copy=False)
    return out


def _walk(trie: SidTrie, codes: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
    """Node ids at every depth 0..L for each row of ``codes`` (-1 once off the trie)."""
    nodes = trie.root(codes.shape[0])
    path = [nodes]
    for level in range(trie.depth):
        nodes = trie.advance(level, nodes, codes[:, level])
        path.append(nodes)
    return path


def excluded_nodes(
    trie: SidTrie, item_codes: npt.NDArray[np.int64], rows: npt.ArrayLike
) -> _Exclusion:
    """The trie nodes under which every item is in ``rows`` (bottom-up, per depth)."""
    row_arr = np.unique(np.asarray(rows, dtype=np.int64).reshape(-1))
    row_arr = row_arr[(row_arr >= 0) & (row_arr < item_codes.shape[0])]
    excl = _Exclusion(dead=[np.zeros(0, np.int64) for _ in range(trie.depth + 1)])
    excl.rows = set(row_arr.tolist())
    if not row_arr.size:
        return excl
    path = _walk(trie, item_codes[row_arr])
    leaves = np.unique(path[-1][path[-1] >= 0])
    dead = [
        int(leaf)
        for leaf, items in zip(leaves, trie.leaf_items(leaves), strict=True)
        if excl.rows.issuperset(items.tolist())
    ]
    excl.dead[trie.depth] = np.asarray(sorted(dead), dtype=np.int64)
    for depth in range(trie.depth - 1, 0, -1):
        below = excl.dead[depth + 1]
        if not below.size:
            break
        parents = np.unique(path[depth][np.isin(path[depth + 1], below)])
        r, _, child = trie.edges(depth, parents)
        alive = ~np.isin(child, below)
        keep = np.ones(len(parents), dtype=bool)
        keep[np.unique(r[alive])] = False
        excl.dead[depth] = parents[keep]
    return excl


def _packed_exclusions(
    q_count: int, exclusions: dict[int, _Exclusion]
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Each query's excluded trie nodes (every depth; global ids are unique across depths)
    and item rows, sorted, as flat arrays with (Q + 1,) segment pointers."""
    if not exclusions:  # the common case, without a loop over the queries
        ptr = np.zeros(q_count + 1, dtype=np.int64)
        return np.zeros(0, np.int64), ptr, np.zeros(0, np.int64), ptr
    dead: list[IntArray] = []
    rows: list[IntArray] = []
    for q in range(q_count):
        excl = exclusions.get(q)
        if excl is None:
            dead.append(np.zeros(0, np.int64))
            rows.append(np.zeros(0, np.int64))
        else:
            dead.append(np.sort(np.concatenate(excl.dead)).astype(np.int64))
            rows.append(np.asarray(sorted(excl.rows), dtype=np.int64))

    def pack(parts: list[IntArray]) -> tuple[IntArray, IntArray]:
        ptr = np.zeros(q_count + 1, dtype=np.int64)
        np.cumsum([len(p) for p in parts], out=ptr[1:])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64), ptr

    return (*pack(dead), *pack(rows))


def _expand_dense(
    level_logits: FloatArray, scores: FloatArray, widths: IntArray, b_max: int
) -> tuple[FloatArray, IntArray, IntArray]:
    """Best continuations over every token of the level (unconstrained search)."""
    q_count, _, size = level_logits.shape
    cand = (scores[:, :, None] + _log_softmax(level_logits)).reshape(q_count, -1)
    n_valid = int(np.max(np.sum(np.isfinite(cand), axis=1)))
    width = min(b_max, n_valid)
    if width == 0:
        empty = np.zeros((q_count, 0), np.int64)
        return np.zeros((q_count, 0), np.float32), empty, empty
    if width < cand.shape[1]:
        part = np.argpartition(cand, cand.shape[1] - width, axis=1)[:, -width:]
    else:
        part = np.broadcast_to(np.arange(cand.shape[1]), cand.shape).copy()
    part_scores = np.take_along_axis(cand, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)  # best first, ties by index
    top = np.take_along_axis(part, order, axis=1)
    top_scores = np.take_along_axis(part_scores, order, axis=1)
    top_scores[np.arange(width)[None, :] >= widths[:, None]] = -np.inf
    return top_scores, top // size, top % size


def _bonuses(options: Sequence[SearchOptions]) -> list[NodeBonus | None] | None:
    """Each query's node bonus; None if no query has one."""
    given = [o.node_bonus for o in options]
    return None if all(b is None for b in given) else given


def _bonus_at(bonus: NodeBonus, nodes: IntArray) -> FloatArray:
    if isinstance(bonus, SparseNodeBonus):
        return bonus.at(nodes)
    out: FloatArray = bonus[nodes].astype(np.float32, copy=False)
    return out


def _edge_bonus(
    bonuses: Sequence[NodeBonus | None], query: IntArray, child: IntArray
) -> FloatArray:
    """The bonus of each edge's child under its query's bonus (0 where the query has none).
    ``query`` is ascending: a level's edges are listed beam by beam."""
    if len(bonuses) == 1 and bonuses[0] is not None:
        return _bonus_at(bonuses[0], child)
    out = np.zeros(len(child), dtype=np.float32)
    bounds = np.searchsorted(query, np.arange(len(bonuses) + 1)).tolist()
    for q, bonus in enumerate(bonuses):
        lo, hi = bounds[q], bounds[q + 1]
        if bonus is not None and hi > lo:
            out[lo:hi] = _bonus_at(bonus, child[lo:hi])
    return out


def _add_bonus(
    logits: FloatArray,
    rows: IntArray,
    offset: int,
    edges: tuple[IntArray, IntArray, IntArray],
    width_in: int,
    bonuses: Sequence[NodeBonus | None] | None,
) -> FloatArray:
    """``logits`` with each edge's child bonus added at (its beam's row, its token); beams
    that did not run (row -1) are skipped: their one valid token scores 0 whatever it gets."""
    if bonuses is None:
        return logits
    beam, token, child = edges
    edge_rows = rows.reshape(-1)[beam]
    ran = edge_rows >= 0
    out = np.array(logits, dtype=np.float32, copy=True).reshape(-1, logits.shape[-1])
    # (row, token) pairs are unique: one row per running beam, one edge per token
    bonus = _edge_bonus(bonuses, beam[ran] // width_in, child[ran])
    out[edge_rows[ran], token[ran] + offset] += bonus
    return out.reshape(logits.shape)


class BeamSearch:
    """Batched beam search of SIDs; ``constrained=False`` drops the trie (for comparison).

    A constrained batch whose queries share one trie without a cold-start delta (what the
    batcher hands over) runs each level as compiled loops (``_decode_compiled``); anything
    else takes the numpy path (``_decode_general``). Both give the same results."""

    def __init__(
        self,
        model: StepModel,
        layout: TokenLayout,
        trie: SidTrie,
        item_codes: npt.ArrayLike,
        *,
        constrained: bool = True,
        compiled: bool = True,
    ) -> None:
        if trie.depth != layout.depth or tuple(trie.codebook_sizes) != tuple(layout.codebook_sizes):
            raise InvalidInputError(
                f"trie codebooks {trie.codebook_sizes} do not match the model's "
                f"{layout.codebook_sizes}"
            )
        self.model = model
        self.layout = layout
        self.trie = trie
        self.item_codes = np.asarray(item_codes, dtype=np.int64)
        self.constrained = constrained
        self.compiled = compiled  # False: always the general path (tests compare the two)
        self._no_logits = np.zeros((1, layout.decoder_vocab_size), np.float32)
        self.times = StepTimes()

    def add_items(self, item_codes: npt.ArrayLike) -> None:
        """Cold start: codes of items appended to the catalog (and to the trie by the caller)."""
        self.item_codes = np.concatenate([self.item_codes, np.asarray(item_codes, np.int64)])

    # ------------------------------------------------------------------ helpers

    def _check(self, batch: EncoderBatch, options: Sequence[SearchOptions]) -> None:
        if len(batch) != len(options):
            raise InvalidInputError(f"{len(batch)} inputs but {len(options)} option sets")
        for o in options:
            if not 1 <= o.beam_width <= MAX_BEAM_WIDTH:
                raise InvalidInputError(f"beam_width must be in [1, {MAX_BEAM_WIDTH}]")
            if o.k < 1:
                raise InvalidInputError("k must be >= 1")
            if o.trie is not None and o.trie.codebook_sizes != self.trie.codebook_sizes:
                raise InvalidInputError("a request trie must share the model's codebooks")
            if o.node_bonus is not None:
                if not self.constrained:
                    raise InvalidInputError("node_bonus needs constrained decoding")
                nodes = (o.trie if o.trie is not None else self.trie).num_nodes
                given = o.node_bonus
                shape = (len(given),) if isinstance(given, SparseNodeBonus) else np.shape(given)
                if shape != (nodes,):
                    raise InvalidInputError(
                        f"node_bonus must have one value per trie node ({nodes}), got {shape}"
                    )

    def _groups(self, options: Sequence[SearchOptions]) -> list[tuple[SidTrie, IntArray]]:
        """Queries grouped by the trie that constrains them."""
        by_trie: dict[int, tuple[SidTrie, list[int]]] = {}
        for q, o in enumerate(options):
            trie = o.trie if o.trie is not None else self.trie
            by_trie.setdefault(id(trie), (trie, []))[1].append(q)
        return [(t, np.asarray(qs, dtype=np.int64)) for t, qs in by_trie.values()]

    def _edges(
        self,
        level: int,
        nodes: IntArray,
        groups: list[tuple[SidTrie, IntArray]],
        exclusions: dict[int, _Exclusion],
    ) -> tuple[IntArray, IntArray, IntArray]:
        """The valid continuations of every beam: (flat beam index Q * W, ascending; token;
        child node), from each query's own trie, minus subtrees whose items are all
        excluded."""
        width = nodes.shape[1]
        if len(groups) == 1:
            beam, token, child = groups[0][0].edges(level, nodes.reshape(-1))
        else:
            parts = []
            for trie, qs in groups:
                i, t, c = trie.edges(level, nodes[qs].reshape(-1))
                parts.append((qs[i // width] * width + i % width, t, c))
            beam = np.concatenate([p[0] for p in parts])
            order = np.argsort(beam, kind="stable")  # tokens stay ascending within a beam
            beam = beam[order]
            token = np.concatenate([p[1] for p in parts])[order]
            child = np.concatenate([p[2] for p in parts])[order]
        for q, excl in exclusions.items():
            dead = excl.dead[level + 1]
            if not dead.size:
                continue
            drop = (beam // width == q) & np.isin(child, dead)
            if drop.any():
                keep = ~drop
                beam, token, child = beam[keep], token[keep], child[keep]
        return beam, token, child

    def _forced(
        self,
        level: int,
        counts: IntArray,
        child: IntArray,
        groups: list[tuple[SidTrie, IntArray]],
        width: int,
    ) -> npt.NDArray[np.bool_]:
        """(Q * W,): True where this level and every later one leave the beam at most one
        valid token (``counts``: valid tokens per beam at this level; ``child``: the edges'
        children, sorted by beam). The decoder's logits cannot change such a beam's score
        any more (a single valid token scores log 1 = 0 after renormalisation), so it
        needs no decoder run from here on."""
        forced = counts <= 1
        depth = self.layout.depth
        if level == depth - 1 or not forced.any():
            return forced
        # follow the single valid path of the forced beams that are still alive
        single = np.flatnonzero(counts == 1)
        first_edge = np.cumsum(counts) - counts
        cur_all = child[first_edge[single]]
        for trie, qs in groups:
            if len(groups) == 1:
                where, cur = single, cur_all
            else:
                mine = np.isin(single // width, qs)
                where, cur = single[mine], cur_all[mine]
            for d in range(level + 1, depth):
                if not where.size:
                    break
                index, _, below = trie.edges(d, cur)
                n = np.bincount(index, minlength=len(cur))
                one = n == 1
                forced[where[~one]] = False
                where, cur = where[one], below[(np.cumsum(n) - n)[one]]
        return forced

    def _step_some(
        self,
        tokens: IntArray,
        src: IntArray,
        cache: list[FloatArray],
        cross: list[FloatArray],
        run: npt.NDArray[np.bool_] | None,
    ) -> tuple[FloatArray, list[FloatArray], IntArray, float]:
        """One decoder step for the beams in ``run`` (Q, W) only (None: all); ``src``
        (Q, W) is each beam's row in ``cache``. Returns the logits (rows, V), the new
        cache, each beam's row in both (-1: the beam did not run; nothing reads its
        logits, see :meth:`_forced`) and the seconds spent in the model."""
        q_count, width = tokens.shape
        if run is None or bool(run.all()):
            t0 = time.perf_counter()
            logits, cache = self.model.step(tokens, src.reshape(-1), cache, cross)
            rows = np.arange(q_count * width, dtype=np.int64).reshape(q_count, width)
            return logits.reshape(q_count * width, -1), cache, rows, time.perf_counter() - t0
        n_run = int(run.sum(axis=1).max())
        rows = np.full((q_count, width), -1, dtype=np.int64)
        if n_run == 0:
            return np.zeros((1, self.layout.decoder_vocab_size), np.float32), cache, rows, 0.0
        # the beams that run first, per query (stable: keeps beam order); a query with
        # fewer running beams pads with beams whose results are not read
        order = np.argsort(~run, axis=1, kind="stable")[:, :n_run]
        q_idx = np.arange(q_count)[:, None]
        run_tokens = tokens[q_idx, order]
        run_src = np.maximum(src[q_idx, order], 0).reshape(-1)
        t0 = time.perf_counter()
        logits, cache = self.model.step(run_tokens, run_src, cache, cross)
        seconds = time.perf_counter() - t0
        rows[q_idx, order] = np.arange(q_count * n_run, dtype=np.int64).reshape(q_count, n_run)
        return logits.reshape(q_count * n_run, -1), cache, rows, seconds

    # ------------------------------------------------------------------ search

    def search(self, batch: EncoderBatch, options: Sequence[SearchOptions]) -> list[SearchResult]:
        """Decode every query of ``batch`` with its own options; one result per query."""
        self._check(batch, options)
        t_start = time.perf_counter()
        q_count = len(options)
        if q_count == 0:
            return []
        widths = np.asarray([o.beam_width for o in options], dtype=np.int64)
        b_max = int(widths.max())
        groups = self._groups(options)
        exclusions: dict[int, _Exclusion] = {}
        for q, o in enumerate(options):
            if o.exclude is not None and len(o.exclude):
                trie = o.trie if o.trie is not None else self.trie
                exclusions[q] = excluded_nodes(trie, self.item_codes, o.exclude)

        one_trie = self.constrained and self.compiled and len(groups) == 1
        flat = groups[0][0].flat_csr() if one_trie else None
        if flat is not None:
            results, model_s, trie_s = self._decode_compiled(
                batch, options, flat, exclusions, widths, b_max
            )
        else:
            results, model_s, trie_s = self._decode_general(
                batch, options, groups, exclusions, widths, b_max
            )
        self.times.model += model_s
        self.times.trie += trie_s
        self.times.total += time.perf_counter() - t_start
        self.times.calls += 1
        return results

    def _encode(self, batch: EncoderBatch) -> tuple[list[FloatArray], float]:
        t0 = time.perf_counter()
        cross = self.model.encode(batch.input_ids, batch.attention_mask)
        return cross, time.perf_counter() - t0

    def _decode_compiled(
        self,
        batch: EncoderBatch,
        options: Sequence[SearchOptions],
        flat: tuple[FlatCsr, npt.NDArray[np.integer[Any]], IntArray],
        exclusions: dict[int, _Exclusion],
        widths: IntArray,
        b_max: int,
    ) -> tuple[list[SearchResult], float, float]:
        """Constrained decoding of queries that share one trie without a cold-start delta:
        each level is two compiled calls around the decoder step (``search_kernels``), the
        same search as :meth:`_decode_general`. Returns results, model and trie seconds.

        Everything that does not need the encoder's output (the first level's plan included)
        runs before it: right after an ONNX Runtime run, caches are cold and the same small
        calls cost several times more (``loadtest.benchmarks.search_overhead``)."""
        t_start = time.perf_counter()
        csr, leaf_ptr, leaf_items = flat
        q_count = len(options)
        dead, dead_ptr, excluded, excluded_ptr = _packed_exclusions(q_count, exclusions)
        offsets = self.layout.level_offsets
        last = self.layout.depth - 1
        ks = np.asarray([o.k for o in options], dtype=np.int64)
        cache = self.model.empty_cache(q_count)
        scores = np.zeros((q_count, 1), dtype=np.float32)
        bonus = _bonuses(options)
        beam, token, child, rows, run_tokens, run_src, n_run = plan_first_level(
            q_count, csr, dead, dead_ptr, DECODER_START_ID
        )
        cross, model_s = self._encode(batch)
        for level in range(last + 1):
            if n_run:
                t0 = time.perf_counter()
                logits, cache = self.model.step(run_tokens, run_src, cache, cross)
                model_s += time.perf_counter() - t0
            else:  # every beam is forced: no decoder run, no logits read
                logits = self._no_logits
            if n_run and bonus is not None:
                edges = (beam, token, child)
                logits = _add_bonus(logits, rows, offsets[level], edges, scores.shape[1], bonus)
            if level == last:
                break
            scores, beam, token, child, rows, run_tokens, run_src, n_run = advance_and_plan(
                logits, rows, offsets[level], (beam, token, child), scores, widths, b_max,
                PAD_ID, level + 1, csr, dead, dead_ptr,
            )  # fmt: skip
            if scores.shape[1] == 0:
                empty = SearchResult(np.zeros(0, np.int64), np.zeros(0, np.float32))
                return [empty for _ in options], model_s, time.perf_counter() - t_start - model_s
        items, item_scores, found, invalid = advance_and_collect(
            logits, rows, offsets[last], (beam, token, child), scores, widths, b_max,
            (leaf_ptr, leaf_items, int(csr.offsets[-2])), excluded, excluded_ptr, ks,
        )  # fmt: skip
        results = [
            SearchResult(items[q, :n].copy(), item_scores[q, :n].copy(), int(invalid[q]))
            for q, n in enumerate(found.tolist())
        ]
        # the compiled calls list the edges and pick the beams in one go: all of their time
        # counts as the constraint's (the "trie" share)
        return results, model_s, time.perf_counter() - t_start - model_s

    def _decode_general(
        self,
        batch: EncoderBatch,
        options: Sequence[SearchOptions],
        groups: list[tuple[SidTrie, IntArray]],
        exclusions: dict[int, _Exclusion],
        widths: IntArray,
        b_max: int,
    ) -> tuple[list[SearchResult], float, float]:
        """Any batch (several tries, a cold-start delta, unconstrained): numpy per level
        around the compiled expansion. Returns results, model and trie seconds."""
        layout = self.layout
        q_count = len(options)
        cross, model_s = self._encode(batch)
        trie_s = 0.0
        offsets = layout.level_offsets
        q_index = np.arange(q_count, dtype=np.int64)[:, None]
        tokens = np.full((q_count, 1), DECODER_START_ID, dtype=np.int64)
        cache = self.model.empty_cache(q_count)
        src = np.arange(q_count, dtype=np.int64)[:, None]  # each beam's row in ``cache``
        scores = np.zeros((q_count, 1), dtype=np.float32)
        nodes = np.zeros((q_count, 1), dtype=np.int64)  # root
        codes = np.zeros((q_count, 1, 0), dtype=np.int64)
        bonus = _bonuses(options)
        for level in range(layout.depth):
            width_in = nodes.shape[1]
            run: npt.NDArray[np.bool_] | None = None
            if self.constrained:
                t0 = time.perf_counter()
                beam, token, child = self._edges(level, nodes, groups, exclusions)
                if level > 0:
                    # beams whose remaining path is forced need no decoder run: their
                    # score cannot change (exact, see _forced)
                    counts = np.bincount(beam, minlength=q_count * width_in)
                    forced = self._forced(level, counts, child, groups, width_in)
                    run = ~forced.reshape(q_count, width_in)
                trie_s += time.perf_counter() - t0
            logits, cache, rows, step_s = self._step_some(tokens, src, cache, cross, run)
            model_s += step_s
            if self.constrained:
                edges = (beam, token, child)
                logits = _add_bonus(logits, rows, offsets[level], edges, width_in, bonus)
                top_scores, parent, token, edge = expand_edges(
                    logits, rows.reshape(-1), offsets[level], beam, token, scores, widths, b_max
                )
            else:
                top_scores, parent, token = _expand_dense(
                    logits.reshape(q_count, width_in, -1)[:, :, layout.level_slice(level)],
                    scores,
                    widths,
                    b_max,
                )
            width = top_scores.shape[1]
            if width == 0:
                empty = SearchResult(np.zeros(0, np.int64), np.zeros(0, np.float32))
                return [empty for _ in options], model_s, trie_s
            live = np.isfinite(top_scores)
            if self.constrained:  # constrained beams are tracked by their trie nodes
                nodes = np.where(edge >= 0, child[np.maximum(edge, 0)], -1)
            else:
                codes = np.concatenate([codes[q_index, parent], token[:, :, None]], axis=2)
            scores = top_scores
            if level + 1 < layout.depth:
                src = rows[q_index, parent]
                tokens = np.where(live, token + offsets[level], PAD_ID)
        results = self._finish(codes, scores, nodes, options, exclusions, groups)
        return results, model_s, trie_s

    def _finish(
        self,
        codes: IntArray,
        scores: FloatArray,
        nodes: IntArray,
        options: Sequence[SearchOptions],
        exclusions: dict[int, _Exclusion],
        groups: list[tuple[SidTrie, IntArray]],
    ) -> list[SearchResult]:
        """Finished beams → distinct items (a leaf names several items only on collisions)."""
        leaves = np.full(scores.shape, -1, dtype=np.int64)
        live = np.isfinite(scores)
        per_leaf: list[list[npt.NDArray[np.int64]]] = [[] for _ in options]
        for trie, qs in groups:  # one leaf lookup per trie, not per query
            if self.constrained:
                sub = np.where(live[qs], nodes[qs], -1)
            else:
                sub = _walk(trie, codes[qs].reshape(-1, codes.shape[-1]))[-1].reshape(len(qs), -1)
                sub = np.where(live[qs], sub, -1)
            leaves[qs] = sub
            found = trie.leaf_items(sub.reshape(-1))
            width = sub.shape[1]
            for i, q in enumerate(qs.tolist()):
                per_leaf[q] = found[i * width : (i + 1) * width]
        invalid_per_query = np.count_nonzero(live & (leaves < 0), axis=1).tolist()
        out: list[SearchResult] = []
        for q, o in enumerate(options):
            invalid = invalid_per_query[q]
            excluded = exclusions[q].rows if q in exclusions else set()
            items: list[int] = []
            item_scores: list[float] = []
            seen: set[int] = set()
            for leaf_rows, score in zip(per_leaf[q], scores[q].tolist(), strict=True):
                for row in leaf_rows.tolist():
                    if row in seen or row in excluded:
                        continue
                    seen.add(row)
                    items.append(row)
                    item_scores.append(score)
                if len(items) >= o.k:
                    break
            out.append(
                SearchResult(
                    np.asarray(items[: o.k], dtype=np.int64),
                    np.asarray(item_scores[: o.k], dtype=np.float32),
                    invalid,
                )
            )
        return out
