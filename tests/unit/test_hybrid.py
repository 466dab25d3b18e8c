"""Hybrid candidates' parts: RRF fusion, the BM25 index, noisy query variants."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models_export.evaluation.hybrid import choose_weights, method_lists, weight_grid
from models_export.noisy_queries import NOISE_KINDS, build_synonyms, noisy_variant
from services.retrieval.fusion import FusionPolicy, FusionWeights, fuse
from services.retrieval.lexical import LexicalConfig, LexicalIndex

TEXTS = [
    "Digital Calipers 6 inch stainless\niGaging\nIndustrial Scientific Test Measure Calipers",
    "Nitrile exam gloves powder free\nDynarex\nLab Safety Gloves",
    "Vernier caliper metric\nMitutoyo\nTest Measure Calipers",
    "Digital multimeter true RMS\nFluke\nTest Measure Multimeters",
    "Latex gloves\nMedline\nLab Safety Gloves",
]


# --------------------------------------------------------------------------- fusion


def test_rrf_scores_sum_weighted_reciprocal_ranks() -> None:
    w = FusionWeights({"generated": 1.0, "lexical": 2.0, "dense": 0.5}, k0=10)
    out = fuse({"generated": [7, 3], "lexical": [3, 9], "dense": [9]}, w)
    scores = {f.row: f.score for f in out}
    assert scores[3] == pytest.approx(1 / 12 + 2 / 11)
    assert scores[7] == pytest.approx(1 / 11)
    assert scores[9] == pytest.approx(2 / 12 + 0.5 / 11)
    assert [f.row for f in out] == [3, 9, 7]
    # sources, the largest contribution first
    by_row = {f.row: f.sources for f in out}
    assert by_row[3] == ["lexical", "generated"]
    assert by_row[9] == ["lexical", "dense"]


def test_zero_weight_tags_but_does_not_score() -> None:
    w = FusionWeights({"generated": 1.0, "lexical": 1.0, "dense": 0.0}, k0=60)
    out = fuse({"generated": [1], "lexical": [2], "dense": [1, 2, 3]}, w)
    by_row = {f.row: f for f in out}
    assert by_row[3].score == 0.0 and by_row[3].sources == ["dense"]
    assert "dense" in by_row[1].sources and by_row[1].score == pytest.approx(1 / 61)
    assert out[-1].row == 3


@given(
    st.dictionaries(
        st.sampled_from(["generated", "lexical", "dense"]),
        st.lists(st.integers(0, 30), max_size=25),
    ),
    st.integers(1, 40),
)
def test_fusion_is_deterministic_distinct_and_cut_at_k(
    ranked: dict[str, list[int]], k: int
) -> None:
    w = FusionWeights({"generated": 1.0, "lexical": 0.5, "dense": 2.0}, k0=5)
    first = fuse(ranked, w, k)
    again = fuse(dict(reversed(list(ranked.items()))), w, k)
    rows = [f.row for f in first]
    assert rows == [f.row for f in again]
    assert len(rows) == len(set(rows)) == min(k, len({r for v in ranked.values() for r in v}))
    assert all(a.score >= b.score for a, b in itertools.pairwise(first))
    for f in first:
        assert set(f.sources) == {s for s, v in ranked.items() if f.row in v}


def test_fusion_weights_round_trip_and_refuse_bad_input() -> None:
    w = FusionWeights({"generated": 1.0, "lexical": 4.0}, k0=20)
    assert FusionWeights.from_dict(w.to_dict()) == w
    with pytest.raises(ValueError, match="unknown fusion sources"):
        FusionWeights.from_dict({"weights": {"bm42": 1.0}})
    with pytest.raises(ValueError, match="k0"):
        FusionWeights.from_dict({"weights": {}, "k0": -1})


def test_weights_are_chosen_by_validation_score_per_query_condition() -> None:
    # Queries with every term known: the generator finds each target first, BM25 third.
    # Queries with an unknown term: BM25 finds it first, the generator never does. Each
    # condition must get the weights that serve it.
    from models_export.evaluation.hybrid import ClassRun, QueryClass
    from models_export.evaluation.protocol import EvalCase, EvalQuery

    targets = list(range(20))
    cases = [EvalCase(EvalQuery("u", "q", ()), t) for t in targets]
    known = [t < 10 for t in targets]
    pairs = list(zip(targets, known, strict=True))
    lists = {
        "generated": [[t] if k else [(t + 1) % 20, (t + 2) % 20] for t, k in pairs],
        "lexical": [[(t + 1) % 20, (t + 2) % 20, t] if k else [t] for t, k in pairs],
    }
    run = ClassRun(QueryClass("category", "clean", False, cases), lists, known)
    policy, grid = choose_weights([run])
    assert len(grid) == len(weight_grid(["generated", "lexical"]))
    hybrid = method_lists(lists, policy, 10, known)["hybrid"]
    assert [h[0] for h in hybrid] == targets  # every target first, in both conditions
    assert policy.known.weight("lexical") < policy.unknown.weight("lexical")
    assert min(g["valid_ndcg@10_unknown"] for g in grid) < 1.0  # the choice mattered


def test_policy_round_trips_and_reads_a_single_weight_set() -> None:
    policy = FusionPolicy(FusionWeights({"generated": 2.0}, 5), FusionWeights({"lexical": 1.0}))
    assert FusionPolicy.from_dict(policy.to_dict()) == policy
    single = FusionWeights({"generated": 1.0, "lexical": 4.0}, k0=20)
    assert FusionPolicy.from_dict(single.to_dict()) == FusionPolicy(single, single)
    with pytest.raises(ValueError, match="unknown"):
        FusionPolicy.from_dict({"known": single.to_dict()})


# --------------------------------------------------------------------------- BM25


def test_stemming_matches_plurals_and_ranks_the_closest_text() -> None:
    index = LexicalIndex.build(TEXTS)
    hits = index.search("digital caliper", 5)
    assert [r for r, _ in hits][:1] == [0]
    assert {r for r, _ in hits} == {0, 2, 3}  # every text with a query word, nothing else
    assert all(s > 0 for _, s in hits)
    assert index.all_terms_known("the digital calipers") and not index.all_terms_known("calipr")
    no_stem = LexicalIndex.build(TEXTS, LexicalConfig(stemmer=None))
    assert {r for r, _ in no_stem.search("caliper", 5)} == {2}  # "Calipers" is missed


def test_lexical_search_honours_exclusions_filters_and_k() -> None:
    index = LexicalIndex.build(TEXTS)
    assert [r for r, _ in index.search("gloves", 5, exclude={1})] == [4]
    allowed = np.asarray([3, 4], dtype=np.int64)
    assert sorted(r for r, _ in index.search("digital gloves", 5, allowed=allowed)) == [3, 4]
    assert len(index.search("test measure", 1)) == 1
    assert index.search("zzzz unknownword", 5) == []


def test_lexical_index_saves_and_loads_the_same_scores(tmp_path: Path) -> None:
    index = LexicalIndex.build(TEXTS)
    index.save(tmp_path / "lexical")
    loaded = LexicalIndex.load(lambda rel: tmp_path / rel)
    assert loaded.config == index.config and loaded.num_items == len(TEXTS)
    for q in ("digital caliper", "gloves lab", "fluke multimeters"):
        assert np.allclose(loaded.scores(q), index.scores(q))


# --------------------------------------------------------------------------- noisy queries


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noisy_variants_are_reproducible(kind: str) -> None:
    syn = {"caliper": "micrometer"}
    a = noisy_variant("digital caliper stainless steel", kind, 3, 7, syn)
    assert a == noisy_variant("digital caliper stainless steel", kind, 3, 7, syn)


def test_each_noise_kind_does_what_it_says() -> None:
    text = "digital caliper stainless steel"
    words = text.split()
    typo = noisy_variant(text, "typo", 0, 1).split()
    assert len(typo) == len(words) and typo != words
    changed = [(a, b) for a, b in zip(words, typo, strict=True) if a != b]
    assert 1 <= len(changed) <= 2
    dropped = noisy_variant(text, "drop", 0, 1).split()
    assert len(dropped) == 3 and set(dropped) < set(words)
    shuffled = noisy_variant(text, "shuffle", 0, 1).split()
    assert sorted(shuffled) == sorted(words) and shuffled != words
    syn = noisy_variant(text, "synonym", 0, 1, {"caliper": "micrometer"})
    assert syn == "digital micrometer stainless steel"
    assert noisy_variant("gloves", "drop", 0, 1) == "gloves"


def test_synonyms_come_from_the_vocabulary_and_skip_inflections() -> None:
    vocab = ["calipers", "micrometer", "gloves", "beaker"]
    table = {"caliper": [1.0, 0.0], "calipers": [1.0, 0.0], "micrometer": [0.9, 0.436]}

    def encode(words: list[str]) -> np.ndarray:
        vecs = np.array([table.get(w, [0.0, 1.0]) for w in words], dtype=np.float32)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    syn = build_synonyms(["caliper"], vocab, encode)  # type: ignore[arg-type]
    assert syn == {"caliper": "micrometer"}
