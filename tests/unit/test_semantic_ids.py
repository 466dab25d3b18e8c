"""RQ-OPQ semantic IDs, collision resolution, statistics and the published-index loader."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from models_export.semantic_ids import (
    RqOpqQuantizer,
    SidConfig,
    balanced_assign,
    build_semantic_ids,
    cooccurrence_embedding,
    fuse,
    level_stats,
    load_published_index,
    resolve_collisions,
    save_sids,
    sid_stats,
)

# Plain nearest-centroid RQ-OPQ on text only; tests switch balance/collab on explicitly.
SMALL = SidConfig(
    rq_levels=(16, 8),
    opq_subspaces=2,
    opq_bits=4,
    kmeans_niter=8,
    opq_niter=4,
    threads=1,
    capacity_slack=0.0,
    collab_weight=0.0,
)


def _vectors(n: int = 500, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def with_duplicates() -> np.ndarray:
    x = _vectors()
    x[1:6] = x[0]  # six identical items must collide before resolution
    x[10:12] = x[9]
    return x


def test_rq_opq_codes_within_ranges_and_unique(with_duplicates: np.ndarray) -> None:
    result = build_semantic_ids(with_duplicates, SMALL)
    assert result.codes.shape == (500, 4) and result.codes.dtype == np.int32
    assert result.codebook_sizes == (16, 8, 16, 16)
    for level, size in enumerate(result.codebook_sizes):
        assert result.codes[:, level].min() >= 0
        assert result.codes[:, level].max() < size
    before = result.report["before_resolution"]
    after = result.report["after_resolution"]
    assert before["distinct"] <= 500 - 5 - 1  # the identical vectors collided
    assert after["distinct"] == 500 and after["max_items_per_sid"] == 1
    assert len({tuple(r) for r in result.codes.tolist()}) == 500
    # No counter level: same depth, and only the last token of moved items changed.
    assert result.report["counter_token_appended"] is False
    changed = np.any(result.codes != result.raw_codes, axis=0)
    assert not changed[:-1].any()
    assert result.report["moved_items"] == int(np.any(result.codes != result.raw_codes, 1).sum())
    assert result.report["moved_items"] == 500 - before["distinct"]


def test_depth_is_limited_to_five() -> None:
    with pytest.raises(ValueError, match="depth"):
        SidConfig(rq_levels=(8, 8, 8, 8), opq_subspaces=2)
    assert SidConfig(rq_levels=(8, 8, 8), opq_subspaces=2).depth == 5


def test_quantizer_encode_decode_and_save(tmp_path: Path) -> None:
    x = _vectors(seed=1)
    result = build_semantic_ids(x, SMALL)
    q = result.quantizer
    np.testing.assert_array_equal(q.encode(x), result.raw_codes)
    err = result.report["reconstruction_error_before"]["relative"]
    assert 0.0 < err < 1.0  # better than predicting zero
    assert result.report["reconstruction_error_after"]["mse"] >= (
        result.report["reconstruction_error_before"]["mse"] - 1e-9
    )
    save_sids(result, tmp_path / "sids", source="test")
    loaded = RqOpqQuantizer.load(tmp_path / "sids" / "codebooks.npz")
    np.testing.assert_array_equal(loaded.encode(x), result.raw_codes)
    np.testing.assert_array_equal(np.load(tmp_path / "sids" / "codes.npy"), result.codes)
    meta = json.loads((tmp_path / "sids" / "meta.json").read_text())
    assert meta["codebook_sizes"] == [16, 8, 16, 16] and meta["source"] == "test"
    assert meta["method"] == "rq-opq+zcr"


def test_rq_only_and_odd_dimension() -> None:
    x = _vectors(n=300, dim=31)
    cfg = SidConfig(
        rq_levels=(8, 8, 8), opq_subspaces=0, kmeans_niter=5, threads=1, collab_weight=0.0
    )
    result = build_semantic_ids(x, cfg)
    assert result.codes.shape == (300, 3)
    assert result.report["after_resolution"]["distinct"] == 300
    cfg = dataclasses.replace(cfg, rq_levels=(8,), opq_subspaces=2, opq_bits=5, capacity_slack=0.0)
    result = build_semantic_ids(x, cfg)  # 31 dims padded to 32 for 2 sub-spaces
    assert result.codes.shape == (300, 3)
    np.testing.assert_array_equal(result.quantizer.encode(x), result.raw_codes)


def test_resolution_moves_non_keepers_to_nearest_unused_code() -> None:
    codes = np.array([[0, 1], [0, 1], [0, 1], [0, 2], [1, 1]], dtype=np.int32)
    k = 6
    costs = np.full((5, k), 10.0)
    costs[0, 1], costs[1, 1], costs[2, 1] = 0.5, 0.1, 0.3  # item 1 is nearest: it stays
    costs[0, 2], costs[0, 4] = 0.2, 0.9  # code 2 is taken by item 3 -> next is 4
    costs[2, 5] = 0.6
    costs[3, 2] = 0.0
    out = resolve_collisions(codes, costs)
    assert out.codes.tolist() == [[0, 4], [0, 1], [0, 5], [0, 2], [1, 1]]
    assert out.moved_items == [0, 2]


def test_resolution_solves_movers_jointly() -> None:
    # Both movers like code 3 best; the joint optimum gives it to the one that loses more.
    codes = np.array([[0], [0], [0]], dtype=np.int32)
    costs = np.array([[0.0, 9.0, 9.0, 9.0], [5.0, 9.0, 1.0, 0.5], [5.0, 9.0, 1.0, 0.1]])
    out = resolve_collisions(codes, costs)
    assert out.codes[:, 0].tolist() == [0, 2, 3]
    costs[1, 2] = 8.0
    out = resolve_collisions(codes, costs)
    assert out.codes[:, 0].tolist() == [0, 3, 2]


def test_full_prefix_falls_back_to_two_levels() -> None:
    codes = np.array([[0, 0], [0, 0], [0, 0], [1, 1]], dtype=np.int32)
    last = np.zeros((4, 2))
    prev = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 3.0, 0.5], [1.0, 0.0, 1.0]])
    out = resolve_collisions(codes, last, prev)
    assert len({tuple(r) for r in out.codes.tolist()}) == 4
    assert out.moved_two_levels == [2]
    assert out.codes[2, 0] == 2  # its cheapest other first-level code
    with pytest.raises(ValueError, match="too small"):
        resolve_collisions(codes, last)


def test_level_stats_utilisation_and_entropy() -> None:
    codes = np.array([[0, 0], [1, 0], [2, 0], [3, 1]], dtype=np.int32)
    stats = level_stats(codes, [8, 2])
    assert stats[0]["used"] == 4 and stats[0]["utilisation"] == 0.5
    assert stats[0]["entropy_bits"] == pytest.approx(2.0)
    assert stats[0]["normalised_entropy"] == pytest.approx(2.0 / 3.0, abs=1e-4)
    assert stats[1]["entropy_bits"] == pytest.approx(
        -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)), abs=1e-4
    )
    assert stats[1]["distinct_prefixes"] == 4
    summary = sid_stats(np.array([[0, 0], [0, 0], [1, 0]]), [2, 2])
    assert summary["distinct"] == 2 and summary["colliding_items"] == 2
    assert summary["max_items_per_sid"] == 2 and summary["vocabulary"] == 4


def test_cooccurrence_embedding_uses_only_given_histories() -> None:
    histories = [[0, 1, 2], [0, 1], [1, 0, 2], [3, 4], [4, 3, 5], [3, 5]]
    emb = cooccurrence_embedding(histories, n_items=8, dim=4)
    assert emb.shape == (8, 4)
    assert np.all(emb[6:] == 0)  # never seen in a history
    np.testing.assert_allclose(np.linalg.norm(emb[:6], axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 3] and sim[3, 4] > sim[0, 4]


def test_collab_fusion_changes_input_and_separates_text_twins() -> None:
    x = _vectors(n=400, seed=3)
    x[1] = x[0]
    histories = [[0, 100 + i % 5] for i in range(20)] + [[1, 200 + i % 5] for i in range(20)]
    cfg = SidConfig(
        rq_levels=(16, 8),
        opq_subspaces=2,
        opq_bits=4,
        kmeans_niter=5,
        opq_niter=3,
        collab_weight=0.5,
        collab_dim=8,
        threads=1,
    )
    result = build_semantic_ids(x, cfg, histories)
    assert result.report["input_dim"] == 32 + 8
    assert result.report["items_without_collab_signal"] == 400 - 12
    # Identical texts, different co-occurrence: the fused inputs differ.
    collab = cooccurrence_embedding(histories, 400, 8)
    fused = fuse(x, collab, 0.5)
    assert np.linalg.norm(fused[0] - fused[1]) > 0.5
    np.testing.assert_array_equal(fuse(x, collab, 0.0), x)
    with pytest.raises(ValueError, match="histories"):
        build_semantic_ids(x, cfg)


def test_load_published_index(tmp_path: Path) -> None:
    path = tmp_path / "index.json"
    path.write_text(
        json.dumps(
            {
                "a": ["<a_3>", "<b_0>", "<c_200>"],
                "b": ["<a_1>", "<b_17>", "<c_5>"],
                "extra": ["<a_0>", "<b_0>", "<c_0>"],
            }
        )
    )
    codes, sizes = load_published_index(path, ["b", "a"])
    assert codes.dtype == np.int32
    assert codes.tolist() == [[1, 17, 5], [3, 0, 200]]
    assert sizes == (4, 32, 256)
    _, fixed = load_published_index(path, ["a"], codebook_size=256)
    assert fixed == (256, 256, 256)
    with pytest.raises(ValueError, match="no SID"):
        load_published_index(path, ["a", "zzz"])
    path.write_text(json.dumps({"a": ["<b_3>", "<a_0>"]}))
    with pytest.raises(ValueError, match="bad token"):
        load_published_index(path, ["a"])


def test_balanced_assign_respects_capacity_and_is_stable() -> None:
    rng = np.random.default_rng(5)
    dists = rng.random((200, 12))
    codes = balanced_assign(dists, capacity=17)
    assert codes.shape == (200,) and np.bincount(codes, minlength=12).max() <= 17
    # Stable matching: no item prefers a code that holds a farther item (or has room).
    for i in range(200):
        for c in np.flatnonzero(dists[i] < dists[i, codes[i]]):
            holders = np.flatnonzero(codes == c)
            assert len(holders) == 17 and dists[holders, c].max() <= dists[i, c]
    # A capacity that never binds gives the nearest code.
    np.testing.assert_array_equal(balanced_assign(dists, 200), dists.argmin(1))
    with pytest.raises(ValueError, match="cannot hold"):
        balanced_assign(dists, 16)


def test_capacity_splits_dense_clusters() -> None:
    x = _vectors(n=500, seed=7)
    rng = np.random.default_rng(7)
    blob = x[0] + 1e-3 * rng.standard_normal((100, 32)).astype(np.float32)
    x[:100] = blob / np.linalg.norm(blob, axis=1, keepdims=True)
    plain = build_semantic_ids(x, SMALL)
    balanced = build_semantic_ids(x, dataclasses.replace(SMALL, capacity_slack=1.0))
    cap = math.ceil(500 / 16)
    assert np.bincount(balanced.raw_codes[:, 0], minlength=16).max() <= cap
    # Nearest-centroid puts the near-identical blob under one first token; capacity spreads it.
    assert len(set(plain.raw_codes[:100, 0].tolist())) == 1
    assert len(set(balanced.raw_codes[:100, 0].tolist())) >= math.ceil(100 / cap)
    assert balanced.report["after_resolution"]["distinct"] == 500
    with pytest.raises(ValueError, match="capacity_slack"):
        SidConfig(capacity_slack=0.5)
