"""Ranking core without sockets: features, labels, fusion maths, metrics, GRADE training."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from models_export.ranking.grade import (
    GradeConfig,
    ScoredList,
    choose_global,
    list_ndcg,
    train_policy,
)
from models_export.ranking.lists import RankList, labels, valid_part
from models_export.ranking.metrics import auc, gauc, paired_bootstrap, target_gains
from services.ranking.features import (
    COLD_ITEM,
    COLD_USER,
    DENSE_FEATURES,
    FeatureSpec,
    assemble,
    decode_item,
    decode_user,
    encode_item,
    encode_user,
    item_features,
    stack,
    user_features,
)
from services.ranking.fusion import (
    OBJECTIVES,
    RELEVANCE,
    blend_scores,
    dirichlet_around,
    order,
    simplex_grid,
)
from services.ranking.policy import NUM_CONTEXT, policy_context

F = {name: i for i, name in enumerate(DENSE_FEATURES)}


@pytest.fixture
def spec() -> FeatureSpec:
    categories = [
        ["A", "Tools", "Calipers"],
        ["A", "Tools", "Calipers"],
        ["A", "Tools", "Gloves"],
        ["A", "Lab", "Beakers"],
        ["A", "Lab", "Beakers"],
    ]
    brands = ["Acme", "acme ", "Bolt", "", "Glass"]
    histories = [[0, 1, 2], [0, 3], [0]]
    return FeatureSpec.build([f"i{i}" for i in range(5)], categories, brands, histories)


@pytest.fixture
def vectors() -> np.ndarray:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 8)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_spec_vocabularies_popularity_and_round_trip(spec: FeatureSpec) -> None:
    assert spec.item_brand[0] == spec.item_brand[1] != 0  # brand casefolded and stripped
    assert spec.item_brand[3] == 0  # no brand: the unknown id
    assert spec.item_cat3[0] == spec.item_cat3[1] != spec.item_cat3[2]
    assert spec.item_cat2[0] == spec.item_cat2[2] != spec.item_cat2[3]
    assert spec.item_popularity.tolist() == [3, 1, 1, 1, 0]  # training histories only
    again = FeatureSpec.from_dict(spec.to_dict())
    assert again.item_ids == spec.item_ids and again.row_of["i3"] == 3
    assert np.array_equal(again.item_cat3, spec.item_cat3)
    doc = spec.to_dict()
    doc["dense_features"] = doc["dense_features"][:-1]
    with pytest.raises(ValueError, match="rebuild"):
        FeatureSpec.from_dict(doc)


def test_user_features_count_the_history_and_keep_the_recent_end(spec: FeatureSpec) -> None:
    user = user_features(spec, [0, 1, 2, -1, 99])  # unknown rows skipped
    assert user.length == 3 and user.recent == (0, 1, 2)
    assert user.cat3[int(spec.item_cat3[0])] == 2
    assert user.brand[int(spec.item_brand[0])] == 2
    assert user_features(spec, []) is COLD_USER
    long = user_features(spec, [3] * 500)
    assert long.length == 200 and len(long.recent) == 20
    assert decode_user(encode_user(user)) == user
    assert decode_item(encode_item(item_features(spec, 2))) == item_features(spec, 2)
    with pytest.raises(ValueError):
        decode_item(b"[1, 2]")


def test_assemble_cross_features(spec: FeatureSpec, vectors: np.ndarray) -> None:
    user = user_features(spec, [0, 2])
    items = [item_features(spec, 1), item_features(spec, 2), COLD_ITEM]
    query = vectors[1]
    x = assemble(spec, vectors, user, items, [["generated"], ["lexical", "dense"], []], query)
    d = x.dense
    assert d.shape == (3, len(DENSE_FEATURES))
    assert d[0, F["retrieval_rank_discount"]] == 1.0 > d[1, F["retrieval_rank_discount"]]
    assert d[1, F["source_lexical"]] == d[1, F["source_dense"]] == 1.0
    assert d[1, F["source_count"]] == pytest.approx(2 / 3)
    assert d[0, F["query_item_cosine"]] == pytest.approx(1.0, abs=1e-5)
    assert d[:, F["has_query"]].tolist() == [1.0, 1.0, 1.0]
    # item 1 shares item 0's leaf category and brand; item 2 is in the history itself
    assert d[0, F["history_share_cat3"]] == 0.5 and d[0, F["history_share_brand"]] == 0.5
    assert d[1, F["in_history"]] == 1.0 and d[0, F["in_history"]] == 0.0
    assert d[2].tolist()[F["popularity"]] == 0.0 and x.item_row[2] == -1  # cold item
    assert x.history.tolist()[-2:] == [0, 2] and x.history[0] == -1
    cold = assemble(spec, vectors, COLD_USER, items, [[]] * 3, None)
    assert not cold.dense[:, F["has_query"]].any() and not cold.dense[:, F["in_history"]].any()
    feeds = stack([x, cold], width=4)
    assert feeds["dense"].shape == (2, 4, len(DENSE_FEATURES))
    assert feeds["candidate_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 0]]
    assert feeds["item_row"][0, 3] == -1


def test_labels_from_the_target(spec: FeatureSpec) -> None:
    lst = RankList(0, "valid", "tune", "title", "q", np.array([2]), [1, 0, 2, 3], [[]] * 4, 0)
    y = labels(spec, lst)
    assert y[:, 0].tolist() == [0, 1, 0, 0]  # conversion: the target itself
    assert y[:, 1].tolist() == [1, 1, 0, 0]  # relevance: the target's leaf category
    assert y[:, 2].tolist() == [1, 1, 0, 0]  # affinity: the target's brand
    parts = {valid_part(f"u{i}") for i in range(200)}
    assert parts == {"rank_train", "fusion", "tune"}
    assert valid_part("u7") == valid_part("u7")


def test_additive_blend_is_scale_free_and_multiplicative_is_a_product() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0.01, 0.99, size=(30, len(OBJECTIVES)))
    w = np.array([0.4, 0.3, 0.2, 0.05, 0.05])
    scaled = p.copy()
    scaled[:, 0] *= 0.05  # one objective on a much smaller scale
    a, b = blend_scores(p, w, "additive"), blend_scores(scaled, w, "additive")
    assert np.allclose(a, b, atol=1e-4)
    m = blend_scores(p, w, "multiplicative")
    assert np.allclose(np.exp(m), np.prod(p**w, axis=1))
    with pytest.raises(ValueError):
        blend_scores(p, w, "max")


def test_relevance_floor_cannot_be_overridden_by_any_weights() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0.2, 0.9, size=(12, len(OBJECTIVES)))
    p[3] = [0.99, 0.01, 0.99, 0.99, 0.99]  # the best at everything but relevance
    for w in simplex_grid(len(OBJECTIVES), 0.25):
        for blend in ("additive", "multiplicative"):
            _, ranking = order(p, w, blend, floor=0.05)
            assert ranking[-1] == 3
    _, free = order(p, np.array([1.0, 0, 0, 0, 0]), "additive", floor=0.0)
    assert free[0] == 3


def test_simplex_grid_and_dirichlet_exploration() -> None:
    grid = simplex_grid(4, 0.1)
    assert len(grid) == math.comb(13, 3)
    assert np.allclose(grid.sum(1), 1.0) and (grid >= 0).all()
    mean = np.array([0.7, 0.1, 0.1, 0.1])
    samples = dirichlet_around(mean, 200.0, 2000, np.random.default_rng(0))
    assert np.allclose(samples.sum(1), 1.0)
    assert np.abs(samples.mean(0) - mean).max() < 0.01
    wide = dirichlet_around(mean, 5.0, 2000, np.random.default_rng(0))
    assert wide.std(0)[0] > samples.std(0)[0]


def test_auc_gauc_gains_and_bootstrap() -> None:
    rng = np.random.default_rng(3)
    s, y = rng.normal(size=60), rng.integers(0, 2, size=60)
    pairs = [(a, b) for a, b in itertools.product(s[y == 1], s[y == 0])]
    brute = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert auc(s, y) == pytest.approx(brute)
    assert math.isnan(auc(s, np.zeros(60)))
    perfect = [np.array([3.0, 2.0, 1.0]), np.array([1.0, 2.0])]
    assert gauc(perfect, [np.array([1, 0, 0]), np.array([0, 0])]) == 1.0  # one-class list out
    ndcg, recall = target_gains([[5, 7, 9], [1, 2]], [7, 3], k=10)
    assert ndcg.tolist() == [1 / math.log2(3), 0.0] and recall.tolist() == [1.0, 0.0]
    a = rng.normal(0.1, 1, 500)
    mean, low, high = paired_bootstrap(a, np.zeros(500))
    assert low < mean < high and mean == pytest.approx(a.mean())


def test_list_ndcg_agrees_with_the_served_order() -> None:
    rng = np.random.default_rng(4)
    scores = rng.uniform(0.05, 0.95, size=(20, len(OBJECTIVES)))
    lst = ScoredList(scores, 6, np.zeros(NUM_CONTEXT, np.float32))
    for w in simplex_grid(len(OBJECTIVES), 0.25)[::3]:
        for blend in ("additive", "multiplicative"):
            _, ranking = order(scores, w, blend, floor=0.1)
            rank = ranking.tolist().index(6)
            want = 1 / math.log2(rank + 2) if rank < 10 else 0.0
            assert list_ndcg(lst, w[None, :], blend, 0.1)[0] == pytest.approx(want)
    missed = ScoredList(scores, -1, np.zeros(NUM_CONTEXT, np.float32))
    assert list_ndcg(missed, simplex_grid(len(OBJECTIVES), 0.5), "additive", 0.0).sum() == 0


def _synthetic_lists(n: int, seed: int) -> list[ScoredList]:
    """Half the users convert on objective 1 (relevance), half on objective 2 (affinity);
    the context says which (its first feature)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scores = rng.uniform(0.3, 0.7, size=(20, len(OBJECTIVES)))
        target = int(rng.integers(20))
        kind = i % 2
        scores[target, 1 + kind] = 0.9
        context = np.zeros(NUM_CONTEXT, np.float32)
        context[0] = float(kind)
        out.append(ScoredList(scores, target, context))
    return out


def test_grade_learns_per_user_weights_the_global_weights_cannot_express() -> None:
    train, tune = _synthetic_lists(400, 5), _synthetic_lists(200, 6)
    config = GradeConfig(grid_step=0.25, imitation_steps=50, epochs=4, concentration=10.0)
    choice = choose_global(tune, config)
    assert choice.weights[[0, 3, 4]].sum() == 0.0  # the noise objectives are unused
    policy = train_policy(train, tune, choice, config)
    assert policy.tune_ndcg > policy.reference_tune_ndcg + 0.05
    assert policy.tune_ndcg > choice.tune_ndcg + 0.05


def test_policy_context_describes_user_query_and_list(spec: FeatureSpec) -> None:
    scores = np.full((5, len(OBJECTIVES)), 0.5, dtype=np.float32)
    scores[0, RELEVANCE] = 0.9
    warm = policy_context(user_features(spec, [0, 1, 2]), "digital caliper", scores)
    cold = policy_context(COLD_USER, "", scores)
    assert warm.shape == cold.shape == (NUM_CONTEXT,)
    assert warm[0] == 1.0 and cold[0] == 0.0 and cold[3] == 1.0 and warm[3] == 0.0
    assert max(warm) <= 1.0 and min(warm) >= 0.0
