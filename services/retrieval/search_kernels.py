"""The constrained beam search's per-level loops, compiled (numba).

* :func:`expand_edges`: segment log-softmax over the valid edges, then a per-query top-k.
  Numpy needs some 25 array calls per level for it, each a few microseconds on a small
  array: at batch 1 that was the largest share of the search's own time above the ONNX
  forward passes.
* :func:`csr_edges`: every edge leaving a set of trie nodes, from the trie's CSR arrays
  (a dozen numpy calls per level before).

Compiled on first use (a few seconds) and cached on disk (``cache=True``: ``__pycache__``
beside this file, or ``$NUMBA_CACHE_DIR``); the retrieval service's warm-up search triggers
it before the first request. ``python -m services.retrieval.search_kernels`` compiles it
ahead of time (the container image does, at build).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numba
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from services.retrieval.trie import FlatCsr

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@numba.njit(cache=True, nogil=True)
def _segment_log_softmax(
    logits: FloatArray,
    logit_rows: IntArray,
    offset: int,
    beam: IntArray,
    token: IntArray,
    scores: FloatArray,
) -> FloatArray:
    """Each edge's beam score + its log-probability renormalised over its beam's edges."""
    n = beam.size
    cand = np.empty(n, dtype=np.float64)
    i = 0
    while i < n:
        b = beam[i]
        row = max(logit_rows[b], 0)  # -1: the beam did not run (a single edge: log 1 = 0)
        top = -np.inf
        j = i
        while j < n and beam[j] == b:
            v = np.float64(logits[row, token[j] + offset])
            cand[j] = v
            top = max(top, v)
            j += 1
        total = 0.0
        for k in range(i, j):
            total += math.exp(cand[k] - top)
        norm = top + math.log(total)
        base = np.float64(scores[b])
        for k in range(i, j):
            cand[k] = base + (cand[k] - norm)
        i = j
    return cand.astype(np.float32)


_INSERTION_MAX = 64  # beyond this many kept edges a full sort is cheaper


@numba.njit(cache=True, nogil=True)
def _top_by_insertion(cand: FloatArray, lo: int, hi: int, keep: int) -> IntArray:
    """Offsets (from ``lo``) of the ``keep`` largest ``cand[lo:hi]``, best first, ties by
    offset: what a stable sort of ``-cand[lo:hi]`` starts with, in O(n) for a small
    ``keep`` (a new value goes after every kept value >= it)."""
    best = np.empty(keep, dtype=np.int64)
    vals = np.empty(keep, dtype=np.float32)
    count = 0
    for e in range(lo, hi):
        v = cand[e]
        if count == keep:
            if not v > vals[keep - 1]:
                continue
            pos = keep - 1
        else:
            pos = count
            count += 1
        while pos > 0 and vals[pos - 1] < v:
            vals[pos] = vals[pos - 1]
            best[pos] = best[pos - 1]
            pos -= 1
        vals[pos] = v
        best[pos] = e - lo
    return best


@numba.njit(cache=True, nogil=True)
def _top_per_query(
    cand: FloatArray, beam: IntArray, token: IntArray, width_in: int, widths: IntArray, b_max: int
) -> tuple[FloatArray, IntArray, IntArray, IntArray]:
    """The best ``min(widths[q], b_max)`` edges of each query (ties: earlier edge first)."""
    q_count = widths.size
    n = beam.size
    first = np.zeros(q_count + 1, dtype=np.int64)  # edges of query q: first[q]..first[q+1]
    for i in range(n):
        first[beam[i] // width_in + 1] += 1
    for q in range(q_count):
        first[q + 1] += first[q]
    width = 0
    for q in range(q_count):
        width = max(width, min(first[q + 1] - first[q], widths[q], b_max))
    top_scores = np.full((q_count, width), -np.inf, dtype=np.float32)
    parent = np.zeros((q_count, width), dtype=np.int64)
    tok = np.zeros((q_count, width), dtype=np.int64)
    edge = np.full((q_count, width), -1, dtype=np.int64)
    for q in range(q_count):
        lo, hi = first[q], first[q + 1]
        keep = min(hi - lo, widths[q], b_max)
        if keep <= 0:
            continue
        if keep <= _INSERTION_MAX:
            order = _top_by_insertion(cand, lo, hi, keep)
        else:
            order = np.argsort(-cand[lo:hi], kind="mergesort")  # stable
        for r in range(keep):
            e = lo + order[r]
            top_scores[q, r] = cand[e]
            parent[q, r] = beam[e] - q * width_in
            tok[q, r] = token[e]
            edge[q, r] = e
    return top_scores, parent, tok, edge


@numba.njit(cache=True, nogil=True)
def _csr_edges(
    ptr: npt.NDArray[np.integer], tok: npt.NDArray[np.integer], local: IntArray, child_base: int
) -> tuple[IntArray, IntArray, IntArray]:
    n = local.size
    total = 0
    for i in range(n):
        total += ptr[local[i] + 1] - ptr[local[i]]
    index = np.empty(total, dtype=np.int64)
    token = np.empty(total, dtype=np.int64)
    child = np.empty(total, dtype=np.int64)
    k = 0
    for i in range(n):
        for p in range(ptr[local[i]], ptr[local[i] + 1]):
            index[k] = i
            token[k] = tok[p]
            child[k] = p + child_base
            k += 1
    return index, token, child


def csr_edges(
    ptr: npt.NDArray[np.integer],
    tok: npt.NDArray[np.integer],
    local: npt.NDArray[np.integer],
    child_base: int,
) -> tuple[IntArray, IntArray, IntArray]:
    """Edges leaving the nodes ``local`` of one trie level stored as CSR (node i's children
    are positions ``ptr[i]..ptr[i+1]``, their tokens ``tok``): (position in ``local``,
    token, ``child_base`` + child position), positions ascending, tokens in CSR order."""
    out: tuple[IntArray, IntArray, IntArray] = _csr_edges(
        ptr, tok, np.ascontiguousarray(local, dtype=np.int64), int(child_base)
    )
    return out


def expand_edges(
    logits: FloatArray,
    logit_rows: IntArray,
    offset: int,
    beam: IntArray,
    token: IntArray,
    scores: FloatArray,
    widths: IntArray,
    b_max: int,
) -> tuple[FloatArray, IntArray, IntArray, IntArray]:
    """Best continuations among the valid (beam, token) edges only.

    ``beam`` (flat Q * W index, ascending) and ``token`` list the edges the trie allows;
    beam i's logits are row ``logit_rows[i]`` of ``logits`` (rows, V) (-1: the beam did
    not run; it has a single edge, whose renormalised log-probability is 0 whatever the
    logit). Returns scores, parent beam, token and the chosen edge's index (-1 for empty
    slots), each (Q, width), best first per query.
    """
    q_count, width_in = scores.shape
    if not beam.size:
        empty = np.zeros((q_count, 0), np.int64)
        return np.zeros((q_count, 0), np.float32), empty, empty, empty
    cand = _segment_log_softmax(
        np.ascontiguousarray(logits, dtype=np.float32),
        logit_rows,
        int(offset),
        beam,
        token,
        np.ascontiguousarray(scores, dtype=np.float32).reshape(-1),
    )
    out: tuple[FloatArray, IntArray, IntArray, IntArray] = _top_per_query(
        cand, beam, token, int(width_in), np.asarray(widths, dtype=np.int64), int(b_max)
    )
    return out


# ------------------------------------------------------------------ one search level
#
# A constrained search over one trie (no cold-start delta) runs as one compiled call between
# two decoder steps: expand the level just scored, then plan the next one (its valid edges,
# the beams whose path is forced, the decoder inputs of the others); the last call collects
# the items. With the per-level numpy steps in Python instead, their dozens of small array
# calls cost a third of the served model's forward passes at batch 1
# (``loadtest.benchmarks.search_overhead``). Semantics are those of ``BeamSearch``'s general
# path, which tests compare them against.
#
# A plan is (beam, token, child) of the valid edges (flat beam index ascending), each beam's
# logits row (-1: it does not run), and the running beams' tokens (Q, n_run) and cache rows
# (Q * n_run,); n_run 0 means no decoder call.


@numba.njit(cache=True, nogil=True, inline="always")
def _in_sorted(values: IntArray, lo: int, hi: int, x: int) -> bool:
    """``x`` in the ascending ``values[lo:hi]`` (binary search)."""
    end = hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if values[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo < end and values[lo] == x


@numba.njit(cache=True, nogil=True)
def _plan_level(
    level: int,
    nodes: IntArray,
    tokens: IntArray,
    src: IntArray,
    ptr: npt.NDArray[np.integer],
    ptr_start: IntArray,
    tok: npt.NDArray[np.integer],
    tok_start: IntArray,
    offsets: IntArray,
    dead: IntArray,
    dead_ptr: IntArray,
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, int]:
    depth = ptr_start.size - 1
    q_count, width_in = nodes.shape
    n_beams = q_count * width_in
    lo = offsets[level]
    child_base = offsets[level + 1]
    pbase = ptr_start[level]
    tbase = tok_start[level]
    counts = np.zeros(n_beams, dtype=np.int64)
    total = 0
    for i in range(n_beams):
        node = nodes[i // width_in, i % width_in]
        if node < 0:
            continue
        d0, d1 = dead_ptr[i // width_in], dead_ptr[i // width_in + 1]
        c = 0
        for p in range(ptr[pbase + node - lo], ptr[pbase + node - lo + 1]):
            if d1 == d0 or not _in_sorted(dead, d0, d1, p + child_base):
                c += 1
        counts[i] = c
        total += c
    beam = np.empty(total, dtype=np.int64)
    token = np.empty(total, dtype=np.int64)
    child = np.empty(total, dtype=np.int64)
    first = np.empty(n_beams, dtype=np.int64)
    k = 0
    for i in range(n_beams):
        first[i] = k
        node = nodes[i // width_in, i % width_in]
        if node < 0:
            continue
        d0, d1 = dead_ptr[i // width_in], dead_ptr[i // width_in + 1]
        for p in range(ptr[pbase + node - lo], ptr[pbase + node - lo + 1]):
            if d1 == d0 or not _in_sorted(dead, d0, d1, p + child_base):
                beam[k] = i
                token[k] = tok[tbase + p]
                child[k] = p + child_base
                k += 1
    # after the first level, a beam whose remaining path is forced (one valid token here and
    # at every later level, counted without exclusions below this level) needs no decoder run
    run = np.ones(n_beams, dtype=np.bool_)
    n_run = width_in
    if level > 0:
        n_run = 0
        for q in range(q_count):
            running = 0
            for i in range(q * width_in, (q + 1) * width_in):
                forced = counts[i] <= 1
                if counts[i] == 1:
                    cur = child[first[i]] - child_base
                    for d in range(level + 1, depth):
                        a = ptr[ptr_start[d] + cur]
                        if ptr[ptr_start[d] + cur + 1] - a != 1:
                            forced = False
                            break
                        cur = a
                run[i] = not forced
                if not forced:
                    running += 1
            n_run = max(n_run, running)
    rows = np.full(n_beams, -1, dtype=np.int64)
    run_tokens = np.empty((q_count, n_run), dtype=np.int64)
    run_src = np.empty(q_count * n_run, dtype=np.int64)
    for q in range(q_count):
        # running beams first (beam order), padded with the others (their logits are not read)
        j = 0
        for pass_run in (True, False):
            for b in range(width_in):
                if j == n_run:
                    break
                i = q * width_in + b
                if run[i] == pass_run:
                    run_tokens[q, j] = tokens[q, b]
                    run_src[q * n_run + j] = max(src[q, b], 0)
                    rows[i] = q * n_run + j
                    j += 1
    return beam, token, child, rows, run_tokens, run_src, n_run


@numba.njit(cache=True, nogil=True)
def _advance_level(
    logits: FloatArray,
    rows: IntArray,
    offset: int,
    beam: IntArray,
    token: IntArray,
    child: IntArray,
    scores: FloatArray,
    widths: IntArray,
    b_max: int,
    pad_id: int,
) -> tuple[FloatArray, IntArray, IntArray, IntArray]:
    """The best continuations per query and, per (Q, width) slot, its trie node (-1: empty),
    its row in the new cache and the token id it feeds the next step."""
    q_count, width_in = scores.shape
    cand = _segment_log_softmax(logits, rows, offset, beam, token, scores.reshape(-1))
    top_scores, parent, tok, edge = _top_per_query(cand, beam, token, width_in, widths, b_max)
    width = top_scores.shape[1]
    nodes = np.full((q_count, width), -1, dtype=np.int64)
    src = np.empty((q_count, width), dtype=np.int64)
    next_tokens = np.empty((q_count, width), dtype=np.int64)
    for q in range(q_count):
        for r in range(width):
            if edge[q, r] >= 0:
                nodes[q, r] = child[edge[q, r]]
            src[q, r] = rows[q * width_in + parent[q, r]]
            live = math.isfinite(top_scores[q, r])
            next_tokens[q, r] = tok[q, r] + offset if live else pad_id
    return top_scores, nodes, src, next_tokens


@numba.njit(cache=True, nogil=True)
def _advance_and_plan(
    logits: FloatArray,
    rows: IntArray,
    offset: int,
    beam: IntArray,
    token: IntArray,
    child: IntArray,
    scores: FloatArray,
    widths: IntArray,
    b_max: int,
    pad_id: int,
    level: int,
    ptr: npt.NDArray[np.integer],
    ptr_start: IntArray,
    tok: npt.NDArray[np.integer],
    tok_start: IntArray,
    offsets: IntArray,
    dead: IntArray,
    dead_ptr: IntArray,
) -> tuple[FloatArray, IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, int]:
    top_scores, nodes, src, next_tokens = _advance_level(
        logits, rows, offset, beam, token, child, scores, widths, b_max, pad_id
    )
    b, t, c, r, run_tokens, run_src, n_run = _plan_level(
        level, nodes, next_tokens, src, ptr, ptr_start, tok, tok_start, offsets, dead, dead_ptr
    )
    return top_scores, b, t, c, r, run_tokens, run_src, n_run


@numba.njit(cache=True, nogil=True)
def _advance_and_collect(
    logits: FloatArray,
    rows: IntArray,
    offset: int,
    beam: IntArray,
    token: IntArray,
    child: IntArray,
    scores: FloatArray,
    widths: IntArray,
    b_max: int,
    leaf_ptr: npt.NDArray[np.integer],
    leaf_items: IntArray,
    leaf_lo: int,
    excluded: IntArray,
    excluded_ptr: IntArray,
    ks: IntArray,
) -> tuple[IntArray, FloatArray, IntArray, IntArray]:
    top_scores, nodes, _, _ = _advance_level(
        logits, rows, offset, beam, token, child, scores, widths, b_max, 0
    )
    q_count, width = top_scores.shape
    k_max = 0
    for q in range(q_count):
        k_max = max(k_max, ks[q])
    items = np.full((q_count, k_max), -1, dtype=np.int64)
    item_scores = np.zeros((q_count, k_max), dtype=np.float32)
    found = np.zeros(q_count, dtype=np.int64)
    invalid = np.zeros(q_count, dtype=np.int64)
    for q in range(q_count):
        e0, e1 = excluded_ptr[q], excluded_ptr[q + 1]
        c = 0
        for b in range(width):
            s = top_scores[q, b]
            if not math.isfinite(s):
                continue
            if nodes[q, b] < 0:
                invalid[q] += 1
                continue
            if c >= ks[q]:
                continue
            # distinct beams end in distinct leaves, and leaves hold disjoint items
            for p in range(leaf_ptr[nodes[q, b] - leaf_lo], leaf_ptr[nodes[q, b] - leaf_lo + 1]):
                row = leaf_items[p]
                if e1 > e0 and _in_sorted(excluded, e0, e1, row):
                    continue
                items[q, c] = row
                item_scores[q, c] = s
                c += 1
                if c >= ks[q]:
                    break
        found[q] = c
    return items, item_scores, found, invalid


def _expansion_args(
    logits: FloatArray,
    rows: IntArray,
    offset: int,
    edges: tuple[IntArray, IntArray, IntArray],
    scores: FloatArray,
    widths: IntArray,
    b_max: int,
) -> tuple[FloatArray, IntArray, int, IntArray, IntArray, IntArray, FloatArray, IntArray, int]:
    """The expansion arguments of ``_advance_level``, in its order; the decoder logits
    (..., V) as contiguous float32 rows (rows, V)."""
    flat_logits = np.ascontiguousarray(logits, dtype=np.float32).reshape(-1, logits.shape[-1])
    beam, token, child = edges
    return flat_logits, rows, int(offset), beam, token, child, scores, widths, int(b_max)


def _trie_args(
    flat: FlatCsr, dead: IntArray, dead_ptr: IntArray
) -> tuple[npt.NDArray[np.integer], IntArray, npt.NDArray[np.integer], IntArray, IntArray,
           IntArray, IntArray]:  # fmt: skip
    """The trie and exclusion arguments of ``_plan_level``, in its order."""
    return flat.ptr, flat.ptr_start, flat.tok, flat.tok_start, flat.offsets, dead, dead_ptr


def plan_first_level(
    q_count: int, flat: FlatCsr, dead: IntArray, dead_ptr: IntArray, start_token: int
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, int]:
    """The plan of the first level: every query at the root, one beam each (query q's
    sorted excluded nodes are ``dead[dead_ptr[q]:dead_ptr[q + 1]]``)."""
    out: tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, int] = _plan_level(
        0,
        np.zeros((q_count, 1), dtype=np.int64),
        np.full((q_count, 1), start_token, dtype=np.int64),
        np.arange(q_count, dtype=np.int64).reshape(q_count, 1),
        *_trie_args(flat, dead, dead_ptr),
    )
    return out


def advance_and_plan(
    logits: FloatArray,
    rows: IntArray,
    offset: int,
    edges: tuple[IntArray, IntArray, IntArray],
    scores: FloatArray,
    widths: IntArray,
    b_max: int,
    pad_id: int,
    level: int,
    flat: FlatCsr,
    dead: IntArray,
    dead_ptr: IntArray,
) -> tuple[FloatArray, IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, int]:
    """Expand the level before ``level`` (``logits`` row ``rows[i]`` scores beam i's
    ``edges``, tokens at ``offset`` in the vocabulary), keep the best ``min(widths[q],
    b_max)`` per query, and plan ``level``: (scores (Q, width), then the plan)."""
    out: tuple[FloatArray, IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, int] = (
        _advance_and_plan(
            *_expansion_args(logits, rows, offset, edges, scores, widths, b_max),
            int(pad_id),
            int(level),
            *_trie_args(flat, dead, dead_ptr),
        )
    )
    return out


def advance_and_collect(
    logits: FloatArray,
    rows: IntArray,
    offset: int,
    edges: tuple[IntArray, IntArray, IntArray],
    scores: FloatArray,
    widths: IntArray,
    b_max: int,
    leaves: tuple[npt.NDArray[np.integer], IntArray, int],
    excluded: IntArray,
    excluded_ptr: IntArray,
    ks: IntArray,
) -> tuple[IntArray, FloatArray, IntArray, IntArray]:
    """Expand the last level, then turn the finished beams (best first) into up to ``ks[q]``
    items per query, skipping query q's sorted ``excluded[excluded_ptr[q]:excluded_ptr[q +
    1]]`` rows. ``leaves``: (leaf_ptr, leaf_items, global id of the first leaf). Returns
    items (Q, max k; -1 pads), their scores, how many were found, and live beams on no
    leaf."""
    leaf_ptr, leaf_items, leaf_lo = leaves
    out: tuple[IntArray, FloatArray, IntArray, IntArray] = _advance_and_collect(
        *_expansion_args(logits, rows, offset, edges, scores, widths, b_max),
        leaf_ptr,
        leaf_items,
        int(leaf_lo),
        excluded,
        excluded_ptr,
        ks,
    )
    return out


def compile_ahead() -> None:
    """Compile (or load from the cache) the loops for the types a search passes: the search
    levels over tries with 8- and 16-bit tokens, the expansion, and the CSR listing (a trie
    read from an artifact may add read-only variants, compiled and cached on first use)."""
    from services.retrieval.trie import SidTrie  # the trie imports this module

    no_excl = np.zeros(0, np.int64), np.zeros(2, np.int64)
    for sizes in ((2, 2), (2, 300)):
        trie = SidTrie.build(np.asarray([[0, 1], [1, 0], [1, 1]], np.int64), sizes)
        trie.edges(0, trie.root(1))
        flat = trie.flat_csr()
        assert flat is not None
        csr, leaf_ptr, leaf_items = flat
        widths = np.asarray([2], np.int64)
        logits = np.zeros((2, 8), np.float32)
        beam, token, child, rows, _, _, _ = plan_first_level(1, csr, *no_excl, 0)
        scores, beam, token, child, rows, _, _, _ = advance_and_plan(
            logits, rows, 1, (beam, token, child), np.zeros((1, 1), np.float32), widths, 2,
            0, 1, csr, *no_excl,
        )  # fmt: skip
        leaves = (leaf_ptr, leaf_items, int(csr.offsets[-2]))
        advance_and_collect(
            logits, rows, 3, (beam, token, child), scores, widths, 2, leaves, *no_excl, widths
        )
    expand_edges(
        np.zeros((2, 4), np.float32),
        np.arange(2, dtype=np.int64),
        1,
        np.asarray([0, 1], np.int64),
        np.asarray([0, 2], np.int64),
        np.zeros((1, 2), np.float32),
        np.asarray([2], np.int64),
        2,
    )


if __name__ == "__main__":
    compile_ahead()
