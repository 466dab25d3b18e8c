"""Constrained beam search: exactness against brute force, validity, filters, exclusions.

The model is a numpy fake whose logits are a fixed random function of (query, SID prefix).
It reads the prefix back out of the self-attention cache it is handed, so a wrong cache
reordering changes the scores and fails the brute-force comparisons.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidInputError
from services.retrieval.beam_search import (
    BeamSearch,
    SearchOptions,
    SparseNodeBonus,
    excluded_nodes,
)
from services.retrieval.covisit import CovisitPrior, CovisitTable
from services.retrieval.encoding import EncoderBatch, TokenLayout
from services.retrieval.trie import SidTrie


class FakeStepModel:
    """Logits = hash(query ids, prefix tokens) → N(0, scale) over the decoder vocabulary."""

    num_layers = 1
    num_heads = 1
    d_kv = 1

    def __init__(self, layout: TokenLayout, scale: float = 2.0) -> None:
        self.layout = layout
        self.scale = scale
        self.calls: list[tuple[int, int]] = []

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
        return [np.where(attention_mask > 0, input_ids[:, :, 0], 0).astype(np.float32)]

    def empty_cache(self, rows: int) -> list[np.ndarray]:
        return [np.zeros((rows, 0), np.float32)]  # the cache holds each beam's tokens

    def logits_for(self, query: tuple[int, ...], prefix: tuple[int, ...]) -> np.ndarray:
        seed = zlib.crc32(repr((query, prefix)).encode())
        rng = np.random.default_rng(seed)
        out: np.ndarray = rng.normal(0.0, self.scale, self.layout.decoder_vocab_size)
        return out.astype(np.float32)

    def step(
        self,
        tokens: np.ndarray,
        beam_rows: np.ndarray,
        cache: list[np.ndarray],
        cross: list[np.ndarray],
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        q, b = tokens.shape
        self.calls.append((q, b))
        prefixes = np.concatenate(
            [cache[0][beam_rows], tokens.reshape(-1, 1).astype(np.float32)], axis=1
        )
        logits = np.zeros((q, b, self.layout.decoder_vocab_size), np.float32)
        for i in range(q):
            query = tuple(int(x) for x in cross[0][i] if x != 0)  # unpad
            for j in range(b):
                prefix = tuple(int(x) for x in prefixes[i * b + j])
                logits[i, j] = self.logits_for(query, prefix[1:])  # drop the start token
        return logits, [prefixes]


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x)
    return x - m - np.log(np.sum(np.exp(x - m)))


def brute_force(
    model: FakeStepModel, trie: SidTrie, codes: np.ndarray, query: tuple[int, ...], rows: np.ndarray
) -> dict[int, float]:
    """Exact constrained score of every item in ``rows`` (renormalised over valid tokens)."""
    layout = model.layout
    out: dict[int, float] = {}
    for r in rows.tolist():
        total = 0.0
        prefix: tuple[int, ...] = ()
        for level in range(layout.depth):
            mask = trie.valid_next_mask(codes[r : r + 1, :level])[0]
            logits = model.logits_for(query, prefix)[layout.level_slice(level)]
            lp = log_softmax(logits[mask])
            total += float(lp[np.flatnonzero(mask).tolist().index(codes[r, level])])
            prefix = (*prefix, int(codes[r, level]) + layout.level_offsets[level])
        out[r] = total
    return out


def make_catalog(n: int, sizes: tuple[int, ...], seed: int = 0, unique: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, k, n * 3) for k in sizes], axis=1)
    if unique:
        codes = np.unique(codes, axis=0)
        codes = codes[rng.permutation(len(codes))][:n]
    else:
        codes = codes[:n]
    return codes.astype(np.int64)


def batch_of(queries: list[list[int]]) -> EncoderBatch:
    """Encoder inputs whose first token slots are ``queries`` (the fake's query identity)."""
    width = max(len(q) for q in queries)
    ids = np.zeros((len(queries), width, 3), np.int64)
    mask = np.zeros((len(queries), width), np.int64)
    for i, q in enumerate(queries):
        ids[i, : len(q), 0] = q
        mask[i, : len(q)] = 1
    return EncoderBatch(ids, mask)


SIZES = (6, 5, 4)


@pytest.fixture
def setup() -> tuple[TokenLayout, np.ndarray, SidTrie, FakeStepModel]:
    layout = TokenLayout(SIZES, n_words=10)
    codes = make_catalog(40, SIZES)
    trie = SidTrie.build(codes, SIZES)
    return layout, codes, trie, FakeStepModel(layout)


def test_wide_beam_equals_exhaustive_search(setup: tuple) -> None:
    layout, codes, trie, model = setup
    search = BeamSearch(model, layout, trie, codes)
    queries = [[5, 9, 11], [7], [3, 4, 5, 6, 7]]
    results = search.search(
        batch_of(queries), [SearchOptions(beam_width=len(codes), k=10)] * len(queries)
    )
    for q, res in zip(queries, results, strict=True):
        exact = brute_force(model, trie, codes, tuple(q), np.arange(len(codes)))
        expected = sorted(exact, key=lambda r: -exact[r])[:10]
        assert res.items.tolist() == expected
        np.testing.assert_allclose(res.scores, [exact[r] for r in expected], atol=1e-4)


def test_scores_are_renormalised_over_valid_tokens(setup: tuple) -> None:
    layout, codes, trie, model = setup
    search = BeamSearch(model, layout, trie, codes)
    res = search.search(batch_of([[1, 2]]), [SearchOptions(beam_width=len(codes), k=len(codes))])
    # probabilities of all valid SIDs sum to 1 when every item is reached
    assert len(res[0].items) == len(codes)
    assert np.exp(res[0].scores.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-4)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    beam=st.integers(1, 12),
    k=st.integers(1, 12),
    seed=st.integers(0, 10_000),
)
def test_constrained_results_are_always_valid_items(n: int, beam: int, k: int, seed: int) -> None:
    sizes = (8, 8, 8)
    layout = TokenLayout(sizes, n_words=4)
    codes = make_catalog(n, sizes, seed=seed)
    trie = SidTrie.build(codes, sizes)
    model = FakeStepModel(layout, scale=4.0)
    res = BeamSearch(model, layout, trie, codes).search(
        batch_of([[seed % 97 + 1]]), [SearchOptions(beam_width=beam, k=k)]
    )[0]
    assert res.invalid_sids == 0
    assert np.all((res.items >= 0) & (res.items < len(codes)))
    assert len(set(res.items.tolist())) == len(res.items)
    assert len(res.items) == min(k, beam, len(codes))
    assert np.all(np.isfinite(res.scores)) and np.all(np.diff(res.scores) <= 1e-6)


def test_unconstrained_mode_can_produce_invalid_sids() -> None:
    sizes = (16, 16, 16)
    layout = TokenLayout(sizes, n_words=4)
    codes = make_catalog(30, sizes, seed=3)  # 30 of 4096 possible SIDs exist
    trie = SidTrie.build(codes, sizes)
    model = FakeStepModel(layout)
    batch = batch_of([[1], [2], [3]])
    opts = [SearchOptions(beam_width=10, k=10)] * 3
    free = BeamSearch(model, layout, trie, codes, constrained=False).search(batch, opts)
    bound = BeamSearch(model, layout, trie, codes).search(batch, opts)
    assert sum(r.invalid_sids for r in free) > 0
    assert all(r.invalid_sids == 0 and len(r.items) == 10 for r in bound)


def test_category_filter_is_a_constraint_not_a_post_filter(setup: tuple) -> None:
    layout, codes, trie, model = setup
    allowed = np.arange(0, len(codes), 3)  # 14 items
    sub = trie.subset(allowed)
    search = BeamSearch(model, layout, trie, codes)
    res = search.search(batch_of([[4, 2]]), [SearchOptions(beam_width=10, k=10, trie=sub)])[0]
    assert len(res.items) == 10
    assert set(res.items.tolist()) <= set(allowed.tolist())
    # and it is the exact top-10 of the constrained distribution over the subset
    full = search.search(batch_of([[4, 2]]), [SearchOptions(beam_width=40, k=40, trie=sub)])[0]
    exact = brute_force(model, sub, codes, (4, 2), allowed)
    assert full.items.tolist() == sorted(exact, key=lambda r: -exact[r])[:40]


def test_exclusions_are_removed_inside_decoding(setup: tuple) -> None:
    layout, codes, trie, model = setup
    search = BeamSearch(model, layout, trie, codes)
    base = search.search(batch_of([[9]]), [SearchOptions(beam_width=10, k=10)])[0]
    exclude = base.items[:6]
    res = search.search(batch_of([[9]]), [SearchOptions(beam_width=10, k=10, exclude=exclude)])[0]
    assert len(res.items) == 10
    assert not set(res.items.tolist()) & set(exclude.tolist())


def test_excluding_a_whole_subtree_prunes_it_early() -> None:
    sizes = (3, 4)
    layout = TokenLayout(sizes, n_words=2)
    codes = np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 3]], np.int64)
    trie = SidTrie.build(codes, sizes)
    excl = excluded_nodes(trie, codes, [0, 1, 2, 5])
    # first-level prefixes 0 and 2 hold only excluded items
    dead_first = excl.dead[1]
    assert set(trie.advance(0, np.zeros(3, np.int64), np.arange(3))[[0, 2]].tolist()) == set(
        dead_first.tolist()
    )
    model = FakeStepModel(layout)
    res = BeamSearch(model, layout, trie, codes).search(
        batch_of([[1]]), [SearchOptions(beam_width=2, k=2, exclude=np.array([0, 1, 2, 5]))]
    )[0]
    # a beam of 2 still finds the only two allowed items
    assert sorted(res.items.tolist()) == [3, 4]


def test_mixed_requests_in_one_batch_match_separate_runs(setup: tuple) -> None:
    layout, codes, trie, model = setup
    sub = trie.subset(np.arange(20))
    queries = [[1, 2], [3], [4, 5, 6]]
    options = [
        SearchOptions(beam_width=3, k=3),
        SearchOptions(beam_width=12, k=7, trie=sub),
        SearchOptions(beam_width=8, k=5, exclude=np.array([1, 2, 3])),
    ]
    search = BeamSearch(model, layout, trie, codes)
    together = search.search(batch_of(queries), options)
    for q, o, res in zip(queries, options, together, strict=True):
        alone = search.search(batch_of([q]), [o])[0]
        assert res.items.tolist() == alone.items.tolist()
        np.testing.assert_allclose(res.scores, alone.scores, atol=1e-5)


def test_colliding_sids_return_every_item_with_the_same_score() -> None:
    sizes = (4, 4)
    layout = TokenLayout(sizes, n_words=2)
    codes = np.array([[0, 1], [0, 1], [2, 3], [1, 1]], np.int64)  # rows 0 and 1 collide
    trie = SidTrie.build(codes, sizes)
    res = BeamSearch(FakeStepModel(layout), layout, trie, codes).search(
        batch_of([[3]]), [SearchOptions(beam_width=3, k=4)]
    )[0]
    assert sorted(res.items.tolist()) == [0, 1, 2, 3]
    pos = {r: i for i, r in enumerate(res.items.tolist())}
    assert res.scores[pos[0]] == res.scores[pos[1]]


def test_beam_of_one_is_greedy(setup: tuple) -> None:
    layout, codes, trie, model = setup
    res = BeamSearch(model, layout, trie, codes).search(
        batch_of([[2, 7]]), [SearchOptions(beam_width=1, k=1)]
    )[0]
    prefix: tuple[int, ...] = ()
    nodes = trie.root(1)
    for level in range(layout.depth):
        mask = trie.next_mask(level, nodes)[0]
        logits = model.logits_for((2, 7), prefix)[layout.level_slice(level)]
        tok = int(np.argmax(np.where(mask, logits, -np.inf)))
        nodes = trie.advance(level, nodes, np.array([tok]))
        prefix = (*prefix, tok + layout.level_offsets[level])
    assert res.items.tolist() == trie.leaf_items(nodes)[0].tolist()


def test_encoder_runs_once_and_step_zero_uses_one_beam(setup: tuple) -> None:
    layout, codes, trie, model = setup
    BeamSearch(model, layout, trie, codes).search(
        batch_of([[1], [2]]), [SearchOptions(beam_width=8, k=5)] * 2
    )
    assert model.calls[0] == (2, 1)  # one start hypothesis per query
    assert all(b <= 8 for _, b in model.calls)
    assert len(model.calls) == layout.depth


def test_empty_filter_returns_nothing(setup: tuple) -> None:
    layout, codes, trie, model = setup
    empty = trie.subset(np.zeros(0, np.int64))
    res = BeamSearch(model, layout, trie, codes).search(
        batch_of([[1]]), [SearchOptions(beam_width=5, k=5, trie=empty)]
    )[0]
    assert len(res.items) == 0


def test_bad_options_are_rejected(setup: tuple) -> None:
    layout, codes, trie, model = setup
    search = BeamSearch(model, layout, trie, codes)
    with pytest.raises(InvalidInputError):
        search.search(batch_of([[1]]), [SearchOptions(beam_width=0, k=5)])
    with pytest.raises(InvalidInputError):
        search.search(batch_of([[1]]), [SearchOptions(beam_width=5, k=0)])
    with pytest.raises(InvalidInputError):
        search.search(batch_of([[1], [2]]), [SearchOptions()])
    with pytest.raises(InvalidInputError):
        BeamSearch(model, TokenLayout((6, 5, 5), 10), trie, codes)


def test_last_level_runs_the_decoder_only_for_beams_with_a_choice() -> None:
    sizes = (4, 4, 4)
    layout = TokenLayout(sizes, n_words=2)
    # every 2-token prefix has exactly one last token: the last step is never needed
    codes = np.array([[a, b, (a + b) % 4] for a in range(4) for b in range(3)], np.int64)
    trie = SidTrie.build(codes, sizes)
    model = FakeStepModel(layout)
    res = BeamSearch(model, layout, trie, codes).search(
        batch_of([[7]]), [SearchOptions(beam_width=len(codes), k=len(codes))]
    )[0]
    assert len(model.calls) == layout.depth - 1
    exact = brute_force(model, trie, codes, (7,), np.arange(len(codes)))
    assert res.items.tolist() == sorted(exact, key=lambda r: -exact[r])
    # one prefix with two last tokens: only that beam is decoded at the last level
    codes2 = np.vstack([codes, [[0, 0, 3]]])
    trie2 = SidTrie.build(codes2, sizes)
    model2 = FakeStepModel(layout)
    res2 = BeamSearch(model2, layout, trie2, codes2).search(
        batch_of([[7]]), [SearchOptions(beam_width=len(codes2), k=len(codes2))]
    )[0]
    assert model2.calls[-1] == (1, 1)
    exact2 = brute_force(model2, trie2, codes2, (7,), np.arange(len(codes2)))
    assert res2.items.tolist() == sorted(exact2, key=lambda r: -exact2[r])
    np.testing.assert_allclose(res2.scores, sorted(exact2.values(), reverse=True), atol=1e-4)


def test_beams_with_a_forced_remaining_path_skip_the_decoder() -> None:
    sizes = (3, 4, 4, 4)
    layout = TokenLayout(sizes, n_words=2)
    rows = []
    for a in range(3):
        for b in range(4):
            if (a + b) % 2 == 0:  # one item under (a, b): its last two tokens are forced
                rows.append([a, b, (a * b) % 4, (a + 2 * b) % 4])
            else:  # four items under (a, b): the decoder must keep choosing
                rows += [[a, b, c, d] for c in (1, 3) for d in (0, 2)]
    codes = np.asarray(rows, np.int64)
    trie = SidTrie.build(codes, sizes)
    model = FakeStepModel(layout)
    wide = SearchOptions(beam_width=len(codes), k=len(codes))
    res = BeamSearch(model, layout, trie, codes).search(batch_of([[7]]), [wide])[0]
    exact = brute_force(model, trie, codes, (7,), np.arange(len(codes)))
    assert res.items.tolist() == sorted(exact, key=lambda r: -exact[r])
    np.testing.assert_allclose(res.scores, sorted(exact.values(), reverse=True), atol=1e-4)
    # levels 2 and 3 decode only the beams under the 6 prefixes that still branch
    assert model.calls[2] == (1, 6) and model.calls[3] == (1, 12)
    # two queries with different beam widths in one batch answer as they do alone
    narrow = SearchOptions(beam_width=5, k=5)
    together = BeamSearch(FakeStepModel(layout), layout, trie, codes).search(
        batch_of([[7], [9, 4]]), [wide, narrow]
    )
    alone = BeamSearch(FakeStepModel(layout), layout, trie, codes).search(
        batch_of([[9, 4]]), [narrow]
    )[0]
    assert together[0].items.tolist() == res.items.tolist()
    assert together[1].items.tolist() == alone.items.tolist()
    np.testing.assert_allclose(together[1].scores, alone.scores, atol=1e-5)


def test_forced_paths_in_a_batch_of_several_tries_answer_as_alone() -> None:
    """A category sub-trie and the full trie in one batch: the forced-path skip follows
    each query's own trie (a beam forced at one level but branching later must still be
    decoded, or its cached K/V would miss a step)."""
    sizes = (3, 4, 4, 4)
    layout = TokenLayout(sizes, n_words=2)
    rows = []
    for a in range(3):
        for b in range(4):
            rows.append([a, b, (a * b) % 4, (a + 2 * b) % 4])
            if b % 2:  # branches again below (a, b, 0)
                rows += [[a, b, 0, d] for d in (1, 3)]
    codes = np.unique(np.asarray(rows, np.int64), axis=0)
    trie = SidTrie.build(codes, sizes)
    # the sub-trie: under a = 0 a single child per level until the last level branches
    sub = trie.subset(np.flatnonzero((codes[:, 0] != 0) | (codes[:, 1] == 1)))
    wide = SearchOptions(beam_width=len(codes), k=len(codes))
    options = [wide, SearchOptions(beam_width=len(codes), k=len(codes), trie=sub)]
    together = BeamSearch(FakeStepModel(layout), layout, trie, codes).search(
        batch_of([[7], [9, 4]]), options
    )
    for query, o, res in zip(([7], [9, 4]), options, together, strict=True):
        alone = BeamSearch(FakeStepModel(layout), layout, trie, codes).search(
            batch_of([query]), [o]
        )[0]
        assert res.items.tolist() == alone.items.tolist()
        np.testing.assert_allclose(res.scores, alone.scores, atol=1e-5)
        allowed = np.arange(len(codes)) if o.trie is None else np.asarray(o.trie._all_rows())
        exact = brute_force(FakeStepModel(layout), o.trie or trie, codes, tuple(query), allowed)
        assert res.items.tolist() == sorted(exact, key=lambda r: -exact[r])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 80),
    widths=st.lists(st.integers(1, 16), min_size=1, max_size=4),
    ks=st.lists(st.integers(1, 16), min_size=4, max_size=4),
    exclude_share=st.sampled_from([0.0, 0.1, 0.5]),
    collisions=st.booleans(),
    subset=st.booleans(),
    bonus=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_compiled_levels_match_the_general_path(
    n: int,
    widths: list[int],
    ks: list[int],
    exclude_share: float,
    collisions: bool,
    subset: bool,
    bonus: bool,
    seed: int,
) -> None:
    """The compiled per-level loops (one trie, no delta) give the general numpy path's
    items, scores and decoder calls, with exclusions, collisions, forced paths, a category
    sub-trie, node bonuses on some queries and several beam widths in one batch."""
    sizes = (5, 3, 4, 2)
    layout = TokenLayout(sizes, n_words=4)
    rng = np.random.default_rng(seed)
    codes = make_catalog(n, sizes, seed=seed, unique=not collisions)
    trie = SidTrie.build(codes, sizes)
    if subset:
        trie = trie.subset(np.flatnonzero(codes[:, 0] % 2 == 0))
    queries = [[int(x) for x in rng.integers(1, 50, 1 + i)] for i in range(len(widths))]
    options = []
    for i, w in enumerate(widths):
        drop = np.flatnonzero(rng.random(len(codes)) < exclude_share)
        extra = rng.normal(0, 2, trie.num_nodes).astype(np.float32) if bonus and i % 2 else None
        options.append(
            SearchOptions(
                beam_width=w,
                k=ks[i],
                trie=trie,
                exclude=drop if drop.size else None,
                node_bonus=extra,
            )
        )
    out = {}
    for compiled in (True, False):
        model = FakeStepModel(layout, scale=3.0)
        search = BeamSearch(model, layout, trie, codes, compiled=compiled)
        out[compiled] = (search.search(batch_of(queries), options), model.calls)
    (fast, fast_calls), (general, general_calls) = out[True], out[False]
    assert fast_calls == general_calls
    for a, b in zip(fast, general, strict=True):
        assert a.items.tolist() == b.items.tolist()
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
        assert a.invalid_sids == b.invalid_sids == 0


def brute_force_fused(
    model: FakeStepModel,
    trie: SidTrie,
    codes: np.ndarray,
    query: tuple[int, ...],
    bonus: np.ndarray,
) -> dict[int, float]:
    """Exact score of every item when each step renormalises logit + bonus of the child."""
    layout = model.layout
    out: dict[int, float] = {}
    for r in range(len(codes)):
        total, node = 0.0, np.zeros(1, np.int64)
        prefix: tuple[int, ...] = ()
        for level in range(layout.depth):
            valid = np.flatnonzero(trie.next_mask(level, node)[0])
            children = trie.advance(level, np.repeat(node, len(valid)), valid)
            logits = model.logits_for(query, prefix)[layout.level_slice(level)][valid]
            lp = log_softmax(logits + bonus[children])
            pick = valid.tolist().index(codes[r, level])
            total += float(lp[pick])
            node = children[pick : pick + 1]
            prefix = (*prefix, int(codes[r, level]) + layout.level_offsets[level])
        out[r] = total
    return out


@pytest.mark.parametrize("compiled", [True, False])
def test_node_bonus_is_fused_into_every_step_before_renormalising(
    setup: tuple, compiled: bool
) -> None:
    layout, codes, trie, model = setup
    rng = np.random.default_rng(7)
    bonus = rng.normal(0, 3, trie.num_nodes).astype(np.float32)
    search = BeamSearch(model, layout, trie, codes, compiled=compiled)
    wide = SearchOptions(beam_width=len(codes), k=len(codes), node_bonus=bonus)
    fused = search.search(batch_of([[4, 2]]), [wide])[0]
    exact = brute_force_fused(model, trie, codes, (4, 2), bonus)
    assert fused.items.tolist() == sorted(exact, key=lambda r: -exact[r])
    np.testing.assert_allclose(fused.scores, [exact[r] for r in fused.items], atol=1e-4)
    # still a distribution over the valid SIDs, and different from the unfused search
    assert np.exp(fused.scores.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-4)
    plain = search.search(batch_of([[4, 2]]), [SearchOptions(beam_width=len(codes), k=10)])[0]
    assert plain.items.tolist() != fused.items.tolist()[:10]


def test_a_dominant_bonus_decides_the_result(setup: tuple) -> None:
    layout, codes, trie, model = setup
    target = 17
    mass = np.full(len(codes), 1e-6)
    mass[target] = 1.0
    bonus = (50.0 * np.log(trie.subtree_sums(mass)[0])).astype(np.float32)
    search = BeamSearch(model, layout, trie, codes)
    res = search.search(batch_of([[1]]), [SearchOptions(beam_width=2, k=3, node_bonus=bonus)])
    assert res[0].items[0] == target


def test_node_bonus_of_the_wrong_size_is_rejected(setup: tuple) -> None:
    layout, codes, trie, model = setup
    search = BeamSearch(model, layout, trie, codes)
    bad = SearchOptions(node_bonus=np.zeros(trie.num_nodes + 1, np.float32))
    with pytest.raises(InvalidInputError, match="node_bonus"):
        search.search(batch_of([[1]]), [bad])
    loose = BeamSearch(model, layout, trie, codes, constrained=False)
    with pytest.raises(InvalidInputError, match="constrained"):
        loose.search(batch_of([[1]]), [SearchOptions(node_bonus=np.zeros(trie.num_nodes))])
    short = np.zeros(trie.num_nodes - 1, np.float32)
    sparse = SparseNodeBonus(short, np.zeros(0, np.int64), np.zeros(0, np.float32))
    with pytest.raises(InvalidInputError, match="node_bonus"):
        search.search(batch_of([[1]]), [SearchOptions(node_bonus=sparse)])


def random_sparse_bonus(rng: np.random.Generator, num_nodes: int) -> SparseNodeBonus:
    nodes = np.unique(rng.integers(0, num_nodes, rng.integers(0, num_nodes // 2 + 1)))
    return SparseNodeBonus(
        rng.normal(0, 2, num_nodes).astype(np.float32),
        nodes.astype(np.int64),
        rng.normal(0, 2, len(nodes)).astype(np.float32),
    )


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 80),
    widths=st.lists(st.integers(1, 16), min_size=1, max_size=4),
    subset=st.booleans(),
    exclude=st.booleans(),
    compiled=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_a_sparse_node_bonus_decodes_as_its_dense_form(
    n: int, widths: list[int], subset: bool, exclude: bool, compiled: bool, seed: int
) -> None:
    """A batch mixing queries without a bonus, with a sparse one and with a dense one gives
    the same items, scores and decoder calls when every sparse bonus is made dense."""
    sizes = (5, 3, 4, 2)
    layout = TokenLayout(sizes, n_words=4)
    rng = np.random.default_rng(seed)
    codes = make_catalog(n, sizes, seed=seed, unique=False)
    trie = SidTrie.build(codes, sizes)
    if subset:
        trie = trie.subset(np.flatnonzero(codes[:, 0] % 2 == 0))
    queries = [[int(x) for x in rng.integers(1, 50, 1 + i)] for i in range(len(widths))]
    sparse_opts, dense_opts = [], []
    for i, w in enumerate(widths):
        bonus = None if i % 3 == 2 else random_sparse_bonus(rng, trie.num_nodes)
        drop = rng.integers(0, n, 3) if exclude else None
        sparse = bonus if i % 3 == 0 else (bonus.dense() if bonus is not None else None)
        sparse_opts.append(SearchOptions(w, 2 * w, trie, drop, sparse))
        dense = bonus.dense() if bonus is not None else None
        dense_opts.append(SearchOptions(w, 2 * w, trie, drop, dense))
    out = []
    for options in (sparse_opts, dense_opts):
        model = FakeStepModel(layout, scale=3.0)
        search = BeamSearch(model, layout, trie, codes, compiled=compiled)
        out.append((search.search(batch_of(queries), options), model.calls))
    (from_sparse, sparse_calls), (from_dense, dense_calls) = out
    assert sparse_calls == dense_calls
    for a, b in zip(from_sparse, from_dense, strict=True):
        assert a.items.tolist() == b.items.tolist()
        assert a.scores.tolist() == b.scores.tolist()


@pytest.mark.parametrize("compiled", [True, False])
def test_the_covisit_prior_decodes_the_same_sparse_or_dense(setup: tuple, compiled: bool) -> None:
    """The prior's sparse bonus (what the service sends) and its dense reference give the
    same items and scores, on the full trie and on a category sub-trie."""
    layout, codes, trie, model = setup
    rng = np.random.default_rng(11)
    histories = [rng.integers(0, len(codes), rng.integers(2, 8)) for _ in range(200)]
    prior = CovisitPrior(CovisitTable.from_histories(histories, len(codes)), weight=1.5)
    search = BeamSearch(model, layout, trie, codes, compiled=compiled)
    sub = trie.subset(np.flatnonzero(codes[:, 0] < 4))
    changed = 0
    for i, history in enumerate(histories[:12]):
        query_trie = sub if i % 2 else trie
        sparse = prior.node_bonus(query_trie, history.tolist(), len(codes))
        dense = prior.dense_node_bonus(query_trie, history.tolist(), len(codes))
        assert sparse is not None and dense is not None
        runs = [
            search.search(batch_of([[1, i]]), [SearchOptions(8, 10, query_trie, None, b)])[0]
            for b in (sparse, dense, None)
        ]
        assert runs[0].items.tolist() == runs[1].items.tolist()
        np.testing.assert_allclose(runs[0].scores, runs[1].scores, rtol=1e-6, atol=1e-6)
        changed += runs[0].items.tolist() != runs[2].items.tolist()
    assert changed >= 6  # the prior does steer these searches


def test_a_cold_start_delta_takes_the_general_path() -> None:
    sizes = (4, 4, 4)
    layout = TokenLayout(sizes, n_words=2)
    codes = make_catalog(30, sizes, seed=3)
    trie = SidTrie.build(codes[:25], sizes)
    assert trie.flat_csr() is not None
    trie.add_items(codes[25:])
    assert trie.flat_csr() is None
    wide = SearchOptions(beam_width=len(codes), k=len(codes))
    model = FakeStepModel(layout)
    res = BeamSearch(model, layout, trie, codes).search(batch_of([[5]]), [wide])[0]
    exact = brute_force(model, trie, codes, (5,), np.arange(len(codes)))
    assert res.items.tolist() == sorted(exact, key=lambda r: -exact[r])
