"""The compiled per-level expansion against a plain numpy statement of the same rule."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from services.retrieval.search_kernels import expand_edges


def oracle(
    logits: np.ndarray,
    logit_rows: np.ndarray,
    offset: int,
    beam: np.ndarray,
    token: np.ndarray,
    scores: np.ndarray,
    widths: np.ndarray,
    b_max: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per beam: log-softmax over its edges' logits; per query: the best min(width, b_max)
    edges by score, ties broken by edge order. Edge by edge, no vectorisation."""
    q_count, width_in = scores.shape
    cand = np.zeros(beam.size)
    for b in np.unique(beam):
        idx = np.flatnonzero(beam == b)
        row = max(int(logit_rows[b]), 0)
        v = logits[row, token[idx] + offset].astype(np.float64)
        cand[idx] = scores.reshape(-1)[b] + v - (v.max() + np.log(np.exp(v - v.max()).sum()))
    cand32 = cand.astype(np.float32)  # scores are float32: ranks follow them
    per_query = []
    for q in range(q_count):
        idx = [int(i) for i in np.flatnonzero(beam // width_in == q)]
        idx.sort(key=lambda i: (-cand32[i], i))
        per_query.append(idx[: min(int(widths[q]), b_max)])
    width = max(len(p) for p in per_query)
    top = np.full((q_count, width), -np.inf, np.float32)
    parent = np.zeros((q_count, width), np.int64)
    tok = np.zeros((q_count, width), np.int64)
    edge = np.full((q_count, width), -1, np.int64)
    for q, idx in enumerate(per_query):
        for r, i in enumerate(idx):
            top[q, r], parent[q, r] = cand32[i], beam[i] - q * width_in
            tok[q, r], edge[q, r] = token[i], i
    return top, parent, tok, edge


@settings(max_examples=300, deadline=None)
@given(
    q_count=st.integers(1, 4),
    width_in=st.integers(1, 6),
    density=st.floats(0.05, 1.0),
    b_max=st.integers(1, 10),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernel_matches_the_rule(
    q_count: int, width_in: int, density: float, b_max: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    vocab, offset = 12, 2
    logits = rng.normal(0.0, 2.0, (q_count * width_in, vocab + offset)).astype(np.float32)
    logits[:, offset + 1] = logits[:, offset]  # exact ties between tokens
    allowed = rng.random((q_count * width_in, vocab)) < density
    beam, token = (a.astype(np.int64) for a in np.nonzero(allowed))
    logit_rows = np.arange(q_count * width_in, dtype=np.int64)
    logit_rows[rng.random(logit_rows.size) < 0.3] = -1  # beams that did not run
    scores = rng.normal(-3.0, 1.0, (q_count, width_in)).astype(np.float32)
    scores[:, -1] = scores[:, 0]  # tied beams
    widths = rng.integers(1, b_max + 1, q_count).astype(np.int64)
    args = (logits, logit_rows, offset, beam, token, scores, widths, b_max)
    got, want = expand_edges(*args), oracle(*args) if beam.size else None
    if want is None:
        assert all(a.shape == (q_count, 0) for a in got)
        return
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    for g, w in zip(got[1:], want[1:], strict=True):
        np.testing.assert_array_equal(g, w)
