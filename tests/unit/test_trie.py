"""Behaviour of the flat-array SID trie, checked against a plain dict-of-dicts trie."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.config import data_dir
from services.common.errors import ArtifactIntegrityError, InvalidInputError
from services.retrieval import trie as trie_module
from services.retrieval.trie import SidTrie, TrieLayout

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# every level on CSR + search / packed bits + rank / packed bits + child tables (small tries)
ALL_LAYOUTS = [
    TrieLayout(dense_max_bytes=0, bits_max_bytes_per_edge=0),
    TrieLayout(walk_max_fill=0),
    TrieLayout(),
]
LAYOUTS = st.sampled_from(ALL_LAYOUTS)


@st.composite
def sid_sets(draw: st.DrawFn, max_items: int = 40) -> tuple[np.ndarray, tuple[int, ...]]:
    """Small codebooks so that shared prefixes and duplicate SIDs are common."""
    depth = draw(st.integers(1, 4))
    sizes = tuple(draw(st.lists(st.integers(1, 5), min_size=depth, max_size=depth)))
    n = draw(st.integers(0, max_items))
    rows = [[draw(st.integers(0, size - 1)) for size in sizes] for _ in range(n)]
    codes = np.array(rows, dtype=np.int64).reshape(n, depth)
    return codes, sizes


def dict_trie(codes: np.ndarray, rows: np.ndarray | None = None) -> dict[int, Any]:
    """Reference: nested dicts, the last level maps token -> list of item rows."""
    labels = range(len(codes)) if rows is None else rows.tolist()
    root: dict[int, Any] = {}
    for row, sid in zip(labels, codes.tolist(), strict=True):
        node = root
        for tok in sid[:-1]:
            node = node.setdefault(tok, {})
        node.setdefault(sid[-1], []).append(row)
    return root


def ref_mask(root: dict[int, Any], prefix: tuple[int, ...], size: int) -> np.ndarray:
    node: Any = root
    for tok in prefix:
        if not isinstance(node, dict) or tok not in node:
            return np.zeros(size, dtype=bool)
        node = node[tok]
    mask = np.zeros(size, dtype=bool)
    mask[list(node)] = True
    return mask


def all_prefixes(sizes: tuple[int, ...], length: int) -> np.ndarray:
    """Every prefix of ``length`` tokens inside the codebooks (plus one past each edge)."""
    ranges = [range(-1, size + 1) for size in sizes[:length]]
    combos = list(itertools.product(*ranges))
    return np.array(combos, dtype=np.int64).reshape(len(combos), length)


def assert_same_trie(trie: SidTrie, codes: np.ndarray, rows: np.ndarray | None = None) -> None:
    """Masks for every prefix, and leaf items for every SID, match the reference."""
    ref = dict_trie(codes, rows)
    sizes = trie.codebook_sizes
    for length in range(trie.depth):
        prefixes = all_prefixes(sizes, length)
        got = trie.valid_next_mask(prefixes)
        want = np.stack([ref_mask(ref, tuple(p), sizes[length]) for p in prefixes.tolist()])
        np.testing.assert_array_equal(got, want, err_msg=f"prefix length {length}")
    assert_leaves_match(trie, codes, rows)


def assert_leaves_match(trie: SidTrie, codes: np.ndarray, rows: np.ndarray | None = None) -> None:
    """Walking every distinct SID reaches a leaf holding exactly its items."""
    labels = np.arange(len(codes)) if rows is None else rows
    assert len(trie) == len(codes)
    if len(codes):
        sids, inverse = np.unique(codes, axis=0, return_inverse=True)
        leaves = walk(trie, sids)
        assert np.all(leaves >= 0)
        for i, items in enumerate(trie.leaf_items(leaves)):
            np.testing.assert_array_equal(items, np.sort(labels[inverse.ravel() == i]))


def walk(trie: SidTrie, sids: np.ndarray) -> np.ndarray:
    nodes = trie.root(len(sids))
    for level in range(trie.depth):
        nodes = trie.advance(level, nodes, sids[:, level])
    return nodes


# ---------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(sid_sets(), LAYOUTS, st.data())
def test_random_walk_through_masks_ends_at_a_real_sid(
    case: tuple[np.ndarray, tuple[int, ...]], layout: TrieLayout, data: st.DataObject
) -> None:
    codes, sizes = case
    trie = SidTrie.build(codes, sizes, layout=layout)
    node = trie.root(1)
    path: list[int] = []
    for level in range(trie.depth):
        allowed = np.flatnonzero(trie.next_mask(level, node)[0])
        if not len(codes):
            assert not len(allowed)
            return
        assert len(allowed), "a live node must have a continuation"
        tok = data.draw(st.sampled_from(allowed.tolist()))
        path.append(tok)
        node = trie.advance(level, node, np.array([tok]))
        assert node[0] >= 0
    (items,) = trie.leaf_items(node)
    want = np.flatnonzero((codes == np.array(path)).all(axis=1))
    assert len(want), "the walk ended on a SID that no item has"
    np.testing.assert_array_equal(items, want)


@PROPERTY_SETTINGS
@given(sid_sets(), LAYOUTS)
def test_every_sid_is_reachable_and_masks_match_a_dict_trie(
    case: tuple[np.ndarray, tuple[int, ...]], layout: TrieLayout
) -> None:
    codes, sizes = case
    trie = SidTrie.build(codes, sizes, layout=layout)
    assert_same_trie(trie, codes)


@PROPERTY_SETTINGS
@given(sid_sets(), LAYOUTS, st.data())
def test_next_mask_from_nodes_equals_valid_next_mask(
    case: tuple[np.ndarray, tuple[int, ...]], layout: TrieLayout, data: st.DataObject
) -> None:
    codes, sizes = case
    trie = SidTrie.build(codes, sizes, layout=layout)
    length = data.draw(st.integers(0, trie.depth - 1))
    prefixes = all_prefixes(sizes, length)
    nodes = trie.root(len(prefixes))
    for level in range(length):
        nodes = trie.advance(level, nodes, prefixes[:, level])
    np.testing.assert_array_equal(trie.next_mask(length, nodes), trie.valid_next_mask(prefixes))


@PROPERTY_SETTINGS
@given(sid_sets(), LAYOUTS, st.integers(0, 5), st.data())
def test_edges_equal_the_mask_nonzero_and_advance(
    case: tuple[np.ndarray, tuple[int, ...]], layout: TrieLayout, n_new: int, data: st.DataObject
) -> None:
    """``edges`` lists the same (node, token, child) triples, in the same order, as the
    dense mask + ``advance`` path, dead nodes and cold-start (delta) items included."""
    codes, sizes = case
    trie = SidTrie.build(codes, sizes, layout=layout)
    if n_new:
        new = [[data.draw(st.integers(0, v - 1)) for v in sizes] for _ in range(n_new)]
        trie.add_items(np.asarray(new, dtype=np.int64))
    length = data.draw(st.integers(0, trie.depth - 1))
    prefixes = all_prefixes(sizes, length)  # real prefixes and ones off the trie (-1)
    nodes = trie.root(len(prefixes))
    for level in range(length):
        nodes = trie.advance(level, nodes, prefixes[:, level])
    index, token, child = trie.edges(length, nodes)
    want_index, want_token = np.nonzero(trie.next_mask(length, nodes))
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_array_equal(token, want_token)
    np.testing.assert_array_equal(child, trie.advance(length, nodes[want_index], want_token))
    assert index.dtype == token.dtype == child.dtype == np.int64


@PROPERTY_SETTINGS
@given(sid_sets(), st.lists(st.integers(0, 12), min_size=1, max_size=4), LAYOUTS, st.data())
def test_add_items_equals_a_fresh_build(
    case: tuple[np.ndarray, tuple[int, ...]],
    batch_sizes: list[int],
    layout: TrieLayout,
    data: st.DataObject,
) -> None:
    codes, sizes = case
    trie = SidTrie.build(codes, sizes, layout=layout)
    all_codes = codes
    for k in batch_sizes:
        new = np.array(
            [[data.draw(st.integers(0, s - 1)) for s in sizes] for _ in range(k)], dtype=np.int64
        ).reshape(k, len(sizes))
        rows = trie.add_items(new)
        np.testing.assert_array_equal(rows, np.arange(len(all_codes), len(all_codes) + k))
        all_codes = np.concatenate([all_codes, new])
        assert_same_trie(trie, all_codes)
    fresh = SidTrie.build(all_codes, sizes)
    assert trie.num_nodes == fresh.num_nodes


def test_add_items_past_the_threshold_compacts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trie_module, "COMPACT_MIN_ITEMS", 3)
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 4, size=(20, 3))
    trie = SidTrie.build(codes, [4, 4, 4])
    trie.add_items(rng.integers(0, 4, size=(2, 3)))
    assert trie._delta is not None
    trie.add_items(rng.integers(0, 4, size=(2, 3)))  # 4 delta items > 3: merged
    assert trie._delta is None
    assert len(trie) == 24


@PROPERTY_SETTINGS
@given(sid_sets(), LAYOUTS, st.data())
def test_subset_equals_a_fresh_build_with_original_rows(
    case: tuple[np.ndarray, tuple[int, ...]], layout: TrieLayout, data: st.DataObject
) -> None:
    codes, sizes = case
    trie = SidTrie.build(codes, sizes, layout=layout)
    chosen = data.draw(st.lists(st.integers(0, max(len(codes) - 1, 0)), max_size=len(codes)))
    rows = np.unique(np.array(chosen, dtype=np.int64)) if len(codes) else np.zeros(0, np.int64)
    sub = trie.subset(rows)
    assert_same_trie(sub, codes[rows], rows)
    # a subset of a subset keeps the numbering too
    inner = rows[::2]
    assert_same_trie(sub.subset(inner), codes[inner], inner)


@PROPERTY_SETTINGS
@given(sid_sets(), st.integers(0, 6), LAYOUTS)
def test_subset_of_a_trie_with_cold_start_items(
    case: tuple[np.ndarray, tuple[int, ...]], extra: int, layout: TrieLayout
) -> None:
    codes, sizes = case
    trie = SidTrie.build(codes, sizes, layout=layout)
    new = np.zeros((extra, len(sizes)), dtype=np.int64)
    trie.add_items(new)
    all_codes = np.concatenate([codes, new])
    rows = np.arange(len(all_codes))[1::2]
    assert_same_trie(trie.subset(rows), all_codes[rows], rows)


@PROPERTY_SETTINGS
@given(sid_sets(), st.integers(0, 5), LAYOUTS)
def test_save_load_round_trip(
    case: tuple[np.ndarray, tuple[int, ...]], extra: int, layout: TrieLayout
) -> None:
    codes, sizes = case
    trie = SidTrie.build(codes, sizes, version="v-test", layout=layout)
    new = np.zeros((extra, len(sizes)), dtype=np.int64)
    trie.add_items(new)  # a pending delta is merged into the file
    all_codes = np.concatenate([codes, new])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trie.npz"
        trie.save(path)
        loaded = SidTrie.load(path)
        sub_path = Path(tmp) / "sub.npz"
        rows = np.arange(len(all_codes))[::3]
        trie.subset(rows).save(sub_path)
        loaded_sub = SidTrie.load(sub_path)
    assert loaded.version == "v-test"
    assert loaded.codebook_sizes == sizes
    assert loaded.depth == len(sizes)
    assert_same_trie(loaded, all_codes)
    assert_same_trie(loaded_sub, all_codes[rows], rows)
    # new rows continue after the saved trie's rows
    assert loaded.add_items(np.zeros((1, len(sizes)), dtype=np.int64)).tolist() == [len(all_codes)]


# ---------------------------------------------------------------- examples


def test_small_example() -> None:
    codes = np.array([[0, 1], [0, 2], [1, 0], [0, 1]])
    trie = SidTrie.build(codes, [2, 3], version="v1")
    assert len(trie) == 4 and trie.depth == 2 and trie.codebook_sizes == (2, 3)
    np.testing.assert_array_equal(trie.next_mask(0, trie.root(2)), [[True, True]] * 2)
    first = trie.advance(0, trie.root(3), np.array([0, 1, 5]))
    assert first[2] == -1  # out-of-codebook token: no such edge
    np.testing.assert_array_equal(
        trie.next_mask(1, first), [[False, True, True], [True, False, False], [False] * 3]
    )
    leaves = trie.advance(1, first, np.array([1, 0, 0]))
    assert leaves[2] == -1
    items = trie.leaf_items(leaves)
    assert [x.tolist() for x in items] == [[0, 3], [2], []]
    assert items[0].dtype == np.int64
    assert trie.advance(1, first, np.array([0, 1, 0])).tolist() == [-1, -1, -1]
    np.testing.assert_array_equal(
        trie.valid_next_mask(np.array([[0], [1], [2]])),
        [[False, True, True], [True, False, False], [False] * 3],
    )
    assert trie.valid_next_mask(np.zeros((2, 0), dtype=np.int64)).tolist() == [[True, True]] * 2


def test_each_layout_uses_its_tables() -> None:
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 64, size=(2000, 3))
    seen = {
        tuple(
            SidTrie.build(codes, [64] * 3, layout=layout)._core.representation(t) for t in range(3)
        )
        for layout in ALL_LAYOUTS
    }
    assert seen == {
        ("csr/search",) * 3,
        ("bits/rank",) * 3,
        ("bits/walk", "bits/walk", "bits/rank"),  # level 2 is too sparse for a child table
    }


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_wide_codebooks_match_a_dict_trie(layout: TrieLayout) -> None:
    """Codebooks of 64/256 (whole words of bits) and 100 (a partial word)."""
    rng = np.random.default_rng(5)
    sizes = (64, 256, 100, 3)
    codes = np.stack([rng.integers(0, v // 8 + 1, size=3000) * 7 % v for v in sizes], axis=1)
    trie = SidTrie.build(codes, sizes, layout=layout)
    ref = dict_trie(codes)
    for length in range(4):
        real = codes[rng.integers(0, len(codes), size=200), :length]
        noise = rng.integers(0, np.array(sizes[:length], dtype=np.int64), size=(100, length))
        prefixes = np.concatenate([real, noise])
        want = np.stack([ref_mask(ref, tuple(p), sizes[length]) for p in prefixes.tolist()])
        np.testing.assert_array_equal(trie.valid_next_mask(prefixes), want)
    assert_leaves_match(trie, codes)


def test_any_integer_dtype_and_strided_inputs_are_accepted() -> None:
    codes = np.array([[0, 1, 2], [1, 1, 1], [1, 2, 0]])
    trie = SidTrie.build(codes.astype(np.uint8), [3, 3, 3])
    wide = np.concatenate([codes, codes], axis=1)[:, :2]  # a strided (non-contiguous) view
    want = trie.valid_next_mask(np.ascontiguousarray(wide))
    for prefixes in (wide, wide.astype(np.int32), wide.astype(np.uint64)):
        np.testing.assert_array_equal(trie.valid_next_mask(prefixes), want)
    nodes = trie.root(3)
    for tokens in (codes[:, 0].astype(np.uint64), codes[:, 0].astype(np.int16), codes[::1, 0]):
        np.testing.assert_array_equal(
            trie.advance(0, nodes, tokens), trie.advance(0, nodes, codes[:, 0])
        )
    huge = np.array([2**63 + 1, 0, 1], dtype=np.uint64)  # wraps negative: no such edge
    assert trie.advance(0, nodes, huge)[0] == -1


def test_codebook_sizes_are_inferred() -> None:
    trie = SidTrie.build(np.array([[3, 0], [1, 7]]))
    assert trie.codebook_sizes == (4, 8)


def test_empty_trie_has_no_continuations() -> None:
    trie = SidTrie.build(np.zeros((0, 3), dtype=np.int64), [4, 4, 4])
    assert len(trie) == 0
    assert not trie.next_mask(0, trie.root(2)).any()
    assert trie.advance(0, trie.root(2), np.array([0, 1])).tolist() == [-1, -1]
    assert trie.subset(np.array([], dtype=np.int64)).next_mask(0, trie.root(1)).shape == (1, 4)


def test_dead_nodes_give_empty_rows_in_a_mixed_batch() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=(300, 3))
    for layout in ALL_LAYOUTS:
        trie = SidTrie.build(codes, [16, 16, 16], layout=layout)
        nodes = trie.advance(0, trie.root(3), np.array([codes[0, 0], codes[1, 0], 99]))
        mask = trie.next_mask(1, nodes)
        assert not mask[2].any()
        assert mask[0, codes[0, 1]] and mask[1, codes[1, 1]]


def test_cold_start_items_are_reachable_from_old_and_new_prefixes() -> None:
    codes = np.array([[0, 0, 0], [0, 1, 1], [2, 2, 2]])
    trie = SidTrie.build(codes, [4, 4, 4])
    rows = trie.add_items(np.array([[0, 1, 3], [3, 3, 3], [0, 0, 0]]))
    assert rows.tolist() == [3, 4, 5]
    leaves = walk(trie, np.array([[0, 1, 3], [3, 3, 3], [0, 0, 0], [0, 1, 1]]))
    assert [x.tolist() for x in trie.leaf_items(leaves)] == [[3], [4], [0, 5], [1]]
    assert trie.valid_next_mask(np.array([[0, 1]])).tolist() == [[False, True, False, True]]
    assert len(trie) == 6


def test_subset_is_fast_enough_for_filters() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, size=(50_000, 4))
    trie = SidTrie.build(codes, [256] * 4)
    rows = rng.choice(50_000, size=3_000, replace=False)
    sub = trie.subset(rows)
    assert len(sub) == 3_000
    leaves = walk(sub, codes[rows])
    assert all(row in items for row, items in zip(rows, sub.leaf_items(leaves), strict=True))
    assert walk(sub, codes[np.setdiff1d(np.arange(50_000), rows)[:50]]).max() == -1


# ---------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    ("codes", "sizes"),
    [
        (np.array([[0, 4]]), [4, 4]),  # token == codebook size
        (np.array([[-1, 0]]), [4, 4]),  # negative token
        (np.array([0, 1, 2]), None),  # 1-D
        (np.zeros((2, 2, 2), dtype=np.int64), None),  # 3-D
        (np.zeros((2, 0), dtype=np.int64), []),  # zero levels
        (np.array([[0.5, 1.0]]), [4, 4]),  # not integers
        (np.array([[0, 1]]), [4]),  # sizes for the wrong number of levels
        (np.array([[0, 1]]), [4, 0]),  # empty codebook
        (np.zeros((0, 2), dtype=np.int64), None),  # nothing to infer sizes from
    ],
)
def test_build_rejects_bad_codes(codes: np.ndarray, sizes: list[int] | None) -> None:
    with pytest.raises(InvalidInputError):
        SidTrie.build(codes, sizes)


@PROPERTY_SETTINGS
@given(sid_sets(), st.data())
def test_any_out_of_range_code_is_rejected(
    case: tuple[np.ndarray, tuple[int, ...]], data: st.DataObject
) -> None:
    codes, sizes = case
    if not len(codes):
        codes = np.zeros((1, len(sizes)), dtype=np.int64)
    row = data.draw(st.integers(0, len(codes) - 1))
    level = data.draw(st.integers(0, len(sizes) - 1))
    bad = codes.copy()
    bad[row, level] = data.draw(st.one_of(st.integers(-50, -1), st.integers(sizes[level], 99)))
    with pytest.raises(InvalidInputError):
        SidTrie.build(bad, sizes)
    trie = SidTrie.build(codes, sizes)
    with pytest.raises(InvalidInputError):
        trie.add_items(bad)
    assert len(trie) == len(codes)  # a rejected batch leaves the trie as it was


def test_bad_queries_are_rejected() -> None:
    trie = SidTrie.build(np.array([[0, 1, 2], [1, 1, 1]]), [3, 3, 3])
    with pytest.raises(InvalidInputError):
        trie.next_mask(3, trie.root(1))  # level out of range
    with pytest.raises(InvalidInputError):
        trie.next_mask(1, trie.root(1))  # root is not a depth-1 node
    with pytest.raises(InvalidInputError):
        trie.next_mask(0, np.zeros((1, 1), dtype=np.int64))  # 2-D nodes
    with pytest.raises(InvalidInputError):
        trie.advance(0, trie.root(2), np.array([0]))  # shape mismatch
    with pytest.raises(InvalidInputError):
        trie.advance(0, trie.root(1), np.array([0.0]))  # float tokens
    with pytest.raises(InvalidInputError):
        trie.valid_next_mask(np.zeros((1, 3), dtype=np.int64))  # a full SID is no prefix
    with pytest.raises(InvalidInputError):
        trie.leaf_items(trie.root(1))  # root is no leaf
    with pytest.raises(InvalidInputError):
        trie.add_items(np.array([[0, 1]]))  # wrong depth
    with pytest.raises(InvalidInputError):
        trie.add_items(np.array([[0, 1, 3]]))  # out of range
    with pytest.raises(InvalidInputError):
        trie.subset(np.array([2]))  # no such item
    with pytest.raises(InvalidInputError):
        trie.subset(np.array([0])).subset(np.array([1]))  # not in the subset


def test_load_refuses_unknown_format_version(tmp_path: Path) -> None:
    trie = SidTrie.build(np.array([[0, 1], [1, 0]]), [2, 2], version="v1")
    path = tmp_path / "trie.npz"
    trie.save(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(bytes(arrays["meta_json"]).decode())
    meta["format_version"] = trie_module.FORMAT_VERSION + 1
    arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    future = tmp_path / "future.npz"
    np.savez(future, **arrays)
    with pytest.raises(ArtifactIntegrityError, match="format version"):
        SidTrie.load(future)


def test_load_refuses_foreign_and_tampered_files(tmp_path: Path) -> None:
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ArtifactIntegrityError):
        SidTrie.load(other)
    with pytest.raises(ArtifactIntegrityError):
        SidTrie.load(tmp_path / "missing.npz")
    trie = SidTrie.build(np.array([[0, 1], [1, 0], [1, 1]]), [2, 2])
    path = tmp_path / "trie.npz"
    trie.save(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["sid_order"] = arrays["sid_order"][::-1].copy()  # a permutation, but not sorted
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ArtifactIntegrityError, match="sorted"):
        SidTrie.load(bad)


# ---------------------------------------------------------------- real catalog, published SIDs


def test_published_rkmeans_sids_of_the_real_catalog() -> None:
    """The residual k-means SIDs published for the catalog: 4,344 items, 3,469 distinct SIDs."""
    path = data_dir() / "amazon_scientific" / "indexes" / "rkmeans_native" / "Scientific.index.json"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    index = json.loads(path.read_text())
    codes = np.array(
        [
            [int(tok.strip("<>").split("_")[1]) for tok in index[key]]
            for key in sorted(index, key=int)
        ]
    )
    trie = SidTrie.build(codes, [256] * 4, version="rkmeans_native")
    assert len(trie) == 4344
    assert trie._core.level_count(4) == 3469
    leaves = walk(trie, codes)
    items = trie.leaf_items(leaves)
    assert all(row in rows for row, rows in enumerate(items))
    assert sum(len(rows) for rows in trie.leaf_items(np.unique(leaves))) == 4344
    assert_same_trie_on_samples(trie, codes)


def assert_same_trie_on_samples(trie: SidTrie, codes: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    ref = dict_trie(codes)
    for length in range(trie.depth):
        real = codes[rng.integers(0, len(codes), size=300), :length]
        noise = rng.integers(0, 256, size=(100, length))
        prefixes = np.concatenate([real, noise])
        want = np.stack([ref_mask(ref, tuple(p), 256) for p in prefixes.tolist()])
        np.testing.assert_array_equal(trie.valid_next_mask(prefixes), want)


def test_subtree_sums_add_up_the_items_under_every_node() -> None:
    sizes = (3, 4, 2)
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 2, (40, 3))  # many collisions: leaves with several items
    trie = SidTrie.build(codes, sizes)
    values = rng.random((2, len(codes)))
    sums = trie.subtree_sums(values)
    assert sums is not None and sums.shape == (2, trie.num_nodes)
    np.testing.assert_allclose(sums[:, 0], values.sum(axis=1))  # the root
    for row in range(len(codes)):  # each prefix node: the items that share that prefix
        node = np.zeros(1, np.int64)
        for level in range(len(sizes)):
            node = trie.advance(level, node, codes[row : row + 1, level])
            same = np.all(codes[:, : level + 1] == codes[row, : level + 1], axis=1)
            np.testing.assert_allclose(sums[:, node[0]], values[:, same].sum(axis=1))
    sub = trie.subset(np.arange(0, 40, 3))
    sub_sums = sub.subtree_sums(values[0])
    assert sub_sums is not None
    assert sub_sums[0, 0] == pytest.approx(values[0, ::3].sum())
    with pytest.raises(InvalidInputError):
        trie.subtree_sums(np.ones((1, 5)))
    trie.add_items(np.array([[2, 3, 1]]))
    assert trie.subtree_sums(np.ones((1, 41))) is None


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    picks=st.integers(0, 12),
    subset=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_path_sums_are_the_subtree_sums_of_a_few_items(
    n: int, picks: int, subset: bool, seed: int
) -> None:
    """Values on a few items (some repeated, some not in a sub-trie, some not items at
    all): ``path_sums`` names exactly the nodes where ``subtree_sums`` is non-zero."""
    rng = np.random.default_rng(seed)
    sizes = (3, 4, 2)
    trie = SidTrie.build(rng.integers(0, 2, (n, 3)), sizes)  # collisions: shared leaves
    if subset:
        trie = trie.subset(np.flatnonzero(rng.random(n) < 0.6))
    rows = rng.integers(-2, n + 2, picks)
    values = rng.random(picks) + 0.1
    dense = np.zeros(n + 2)
    inside = (rows >= 0) & (rows < n)
    np.add.at(dense, rows[inside], values[inside])
    got = trie.path_sums(rows, values)
    want = trie.subtree_sums(dense)
    assert got is not None and want is not None
    nodes, sums = got
    assert nodes.tolist() == np.flatnonzero(want[0]).tolist()
    np.testing.assert_allclose(sums, want[0, nodes], rtol=1e-12)
    with pytest.raises(InvalidInputError):
        trie.path_sums(rows, values[:-1] if picks else [1.0])
    trie.add_items(np.array([[1, 3, 1]]))
    assert trie.path_sums(rows, values) is None
