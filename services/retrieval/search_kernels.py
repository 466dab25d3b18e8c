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

import numba
import numpy as np
import numpy.typing as npt

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


def compile_ahead() -> None:
    """Compile (or load from the cache) the loops for the types a search passes: the
    expansion, and the CSR listing for the index types of a built trie (a trie read from an
    artifact may add read-only variants, compiled and cached on first use)."""
    from services.retrieval.trie import SidTrie  # the trie imports this module

    trie = SidTrie.build(np.asarray([[0, 1], [1, 0], [1, 1]], np.int64), (2, 2))
    trie.edges(0, trie.root(1))
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
