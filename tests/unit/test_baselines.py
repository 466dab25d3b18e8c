"""Baselines and the harness on a tiny synthetic catalog with known answers."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models_export.evaluation.baselines.bm25 import Bm25Retriever, item_text
from models_export.evaluation.baselines.covisit import CovisitRetriever, covisit_matrix
from models_export.evaluation.baselines.dense import DenseHistoryRetriever, DenseRetriever
from models_export.evaluation.baselines.history_mean import HistoryMeanRetriever
from models_export.evaluation.baselines.popularity import PopularityRetriever
from models_export.evaluation.data import EvalData, load_from_dir
from models_export.evaluation.harness import EvalSettings, evaluate_cases, rank_cases, run_suite
from models_export.evaluation.protocol import (
    RECOMMENDATION,
    SEARCH,
    SEARCH_HISTORY,
    EvalCase,
    EvalQuery,
    Retriever,
)
from models_export.ingest import Item, UserSplit, items_table, users_table
from models_export.queries import QUERY_SCHEMA

N_ITEMS = 40
N_USERS = 30
COLORS = ["red", "blue", "green", "amber", "violet", "black", "white", "grey"]
PARTS = ["valve", "sensor", "clamp", "gauge", "relay"]


def _items() -> list[Item]:
    return [
        Item(
            item_id=f"i{i}",
            title=f"{COLORS[i % 8]} {PARTS[i // 8]} gizmo{i}",
            brand=f"Brand{i % 3}",
            description="" if i % 5 == 0 else f"a sturdy {PARTS[i // 8]}",
            categories=["Industrial & Scientific", f"Group {PARTS[i // 8]}"],
        )
        for i in range(N_ITEMS)
    ]


def _users() -> list[UserSplit]:
    rng = np.random.default_rng(0)
    users = []
    for u in range(N_USERS):
        # Item 39 only ever appears as a valid/test target, never in training histories.
        seq = [f"i{x}" for x in rng.choice(N_ITEMS - 1, size=6, replace=False)]
        seq[-1 if u % 2 else -2] = "i39"
        users.append(UserSplit(f"u{u}", seq[:-2], seq[-2], seq[-1]))
    return users


def _write_version(root: Path, queries_override: list[dict[str, object]] | None = None) -> Path:
    items, users = _items(), _users()
    (root / "tables").mkdir(parents=True)
    (root / "embeddings").mkdir()
    pq.write_table(items_table(items), root / "tables/items.parquet")
    pq.write_table(users_table(users), root / "tables/users.parquet")
    by_id = {it.item_id: it for it in items}
    rows: list[dict[str, object]] = []
    for user in users:
        for split, target in (("valid", user.valid_target), ("test", user.test_target)):
            item = by_id[target]
            for kind, text in (
                ("category", f"group {PARTS[int(target[1:]) // 8]}"),
                ("title", item.title),
            ):
                rows.append(
                    {
                        "user_id": user.user_id,
                        "split": split,
                        "target_item_id": target,
                        "kind": kind,
                        "query": text,
                        "derived": True,
                    }
                )
    table = pa.Table.from_pylist(queries_override or rows, schema=QUERY_SCHEMA)
    pq.write_table(table, root / "tables/queries.parquet")
    emb = np.random.default_rng(1).standard_normal((N_ITEMS, 16)).astype(np.float32)
    np.save(root / "embeddings/items.npy", emb / np.linalg.norm(emb, axis=1, keepdims=True))
    return root


@pytest.fixture
def data(tmp_path: Path) -> EvalData:
    return load_from_dir(_write_version(tmp_path / "v1"))


def _bm25(d: EvalData) -> Bm25Retriever:
    fields = ("title", "brand", "categories")
    return Bm25Retriever(
        [
            item_text(d.titles[i], d.brands[i], d.categories[i], d.descriptions[i], fields)
            for i in range(d.num_items)
        ]
    )


def _title_encoder(d: EvalData) -> DenseRetriever:
    """A fake encoder that maps an item's exact title to that item's embedding."""
    assert d.embeddings is not None
    emb = d.embeddings
    row_of_title = {t: i for i, t in enumerate(d.titles)}

    def encode(texts: Sequence[str]) -> np.ndarray:
        return np.stack([emb[row_of_title[t]] for t in texts])

    return DenseRetriever(emb, encode)


def test_loader_maps_ids_to_rows_and_builds_leave_one_out(data: EvalData) -> None:
    assert data.num_items == N_ITEMS and len(data.user_ids) == N_USERS
    users = _users()
    u0 = users[0]
    assert [data.item_ids[r] for r in data.history("valid", 0)] == u0.train_history
    assert [data.item_ids[r] for r in data.history("test", 0)] == [
        *u0.train_history,
        u0.valid_target,
    ]
    assert data.item_ids[data.target("test", 0)] == u0.test_target
    rec = data.recommendation_cases("test")
    assert len(rec) == N_USERS and rec[0].request.query is None
    search = data.search_cases("valid", "title", with_history=False)
    assert len(search) == N_USERS and search[0].request.history == ()
    assert data.search_cases("valid", "title", with_history=True)[0].request.history


def test_loader_rejects_a_query_whose_target_is_not_the_split_target(tmp_path: Path) -> None:
    bad = [
        {
            "user_id": "u0",
            "split": "test",
            "target_item_id": "i0",
            "kind": "title",
            "query": "x",
            "derived": True,
        }
    ]
    if _users()[0].test_target == "i0":
        bad[0]["target_item_id"] = "i1"
    with pytest.raises(ValueError, match="not that user's leave-one-out target"):
        load_from_dir(_write_version(tmp_path / "v", bad))


def test_bm25_finds_the_item_whose_title_is_the_query(data: EvalData) -> None:
    rows = run_suite([_bm25(data)], data, EvalSettings(show_progress=False))
    title_rows = [r for r in rows if r.mode == SEARCH and r.query_kind == "title"]
    assert len(title_rows) == 2  # valid and test
    for r in title_rows:
        assert r.metrics is not None
        assert r.metrics["recall@5"] == 1.0 and r.metrics["ndcg@5"] == 1.0
    # Category queries match 8 items each equally: the target is in the top 10 (R@10 = 1)
    # but not always first.
    cat = next(r for r in rows if r.mode == SEARCH and r.query_kind == "category")
    assert cat.metrics is not None
    assert cat.metrics["recall@10"] == 1.0 and cat.metrics["ndcg@5"] < 1.0


def test_methods_are_not_applicable_outside_their_modes(data: EvalData) -> None:
    pop = PopularityRetriever(data.train_histories, data.num_items)
    rows = run_suite([_bm25(data), pop], data, EvalSettings(splits=["test"], show_progress=False))
    got = {(r.mode, r.query_kind, r.method): r.metrics is not None for r in rows}
    assert got[(RECOMMENDATION, None, "bm25")] is False
    assert got[(SEARCH_HISTORY, "title", "bm25")] is False
    assert got[(SEARCH, "title", "popularity")] is False
    assert got[(RECOMMENDATION, None, "popularity")] is True
    assert all(r.note.startswith("n/a") for r in rows if r.metrics is None)


def test_popularity_counts_training_histories_only(data: EvalData) -> None:
    pop = PopularityRetriever(data.train_histories, data.num_items)
    train_counts = Counter(int(x) for h in data.train_histories for x in h)
    ranked = pop.retrieve([EvalQuery("u0", None, ())], N_ITEMS)[0]
    assert train_counts[ranked[0]] == max(train_counts.values())
    target_only = data.item_ids.index("i39")
    assert pop.counts[target_only] == 0  # every user has it as a target, none in training
    assert ranked.index(target_only) >= len(train_counts)
    # counts never increase down the list
    assert all(pop.counts[a] >= pop.counts[b] for a, b in itertools.pairwise(ranked))


def test_history_items_are_kept_by_default_and_dropped_when_asked(data: EvalData) -> None:
    pop = PopularityRetriever(data.train_histories, data.num_items)
    cases = data.recommendation_cases("test")
    kept = rank_cases(pop, cases, 10)
    dropped = rank_cases(pop, cases, 10, exclude_history=True)
    assert any(set(k) & set(c.request.history) for k, c in zip(kept, cases, strict=True))
    for lst, c in zip(dropped, cases, strict=True):
        assert len(lst) == 10 and not set(lst) & set(c.request.history)


def test_exclude_history_tells_the_retriever_what_to_leave_out(data: EvalData) -> None:
    seen: list[EvalQuery] = []

    class Recording:
        name = "recording"
        modes = frozenset({RECOMMENDATION})

        def retrieve(self, queries: Sequence[EvalQuery], k: int) -> list[list[int]]:
            seen.extend(queries)
            return [list(range(k)) for _ in queries]

    cases = data.recommendation_cases("test")
    rank_cases(Recording(), cases, 10)
    assert all(q.exclude == () for q in seen)
    seen.clear()
    rank_cases(Recording(), cases, 10, exclude_history=True)
    assert [q.exclude for q in seen] == [c.request.history for c in cases]


def test_dense_ranks_the_item_whose_vector_is_the_query_first(data: EvalData) -> None:
    dense = _title_encoder(data)
    metrics, _ = evaluate_cases(dense, data.search_cases("test", "title", False))
    assert metrics["recall@5"] == 1.0 and metrics["ndcg@10"] == 1.0
    # With zero history weight the hybrid ranks exactly like dense.
    cases = data.search_cases("test", "title", True)
    hybrid = DenseHistoryRetriever(dense, history_weight=0.0)
    assert hybrid.retrieve([c.request for c in cases], 10) == dense.retrieve(
        [c.request for c in cases], 10
    )


def test_history_mean_puts_nearest_neighbours_of_the_history_first(data: EvalData) -> None:
    assert data.embeddings is not None
    emb = data.embeddings
    a = 5
    hm = HistoryMeanRetriever(emb, last_n=1)
    ranked = hm.retrieve([EvalQuery("u", None, (17, a))], 3)[0]
    sims = emb @ emb[a]
    expected_second = int(np.argsort(-sims)[1])
    assert ranked[0] == a  # the history item itself is not removed (standard protocol)
    assert ranked[1] == expected_second


def test_every_baseline_satisfies_the_retriever_protocol(data: EvalData) -> None:
    dense = _title_encoder(data)
    assert data.embeddings is not None
    for r in (
        _bm25(data),
        PopularityRetriever(data.train_histories, N_ITEMS),
        dense,
        DenseHistoryRetriever(dense),
        HistoryMeanRetriever(data.embeddings),
        CovisitRetriever(data.train_histories, N_ITEMS),
    ):
        assert isinstance(r, Retriever)
        assert r.modes <= {SEARCH, SEARCH_HISTORY, RECOMMENDATION}


def test_evaluate_command_writes_json_and_markdown(tmp_path: Path) -> None:
    from models_export.cli import main

    version = _write_version(tmp_path / "v1")
    out = tmp_path / "results"
    rc = main(
        [
            "evaluate",
            "--version-dir",
            str(version),
            "--methods",
            "popularity,bm25",
            "--out-dir",
            str(out),
            "--name",
            "b",
            "--no-progress",
            "--quick",
        ]
    )
    assert rc == 0
    doc = json.loads((out / "b.json").read_text())
    assert doc["queries_derived"] is True and "derived" in doc["note"].lower()
    assert doc["protocol"]["history_items_removed_from_ranking"] is False
    methods = {r["method"] for r in doc["results"]}
    assert methods == {"popularity", "bm25"}
    md = (out / "b.md").read_text()
    assert "DERIVED" in md and "n/a" in md and "python -m models_export" in md
    assert "| search / title (derived) | bm25 | 1.0000 |" in md
    # Hand-written notes under the marker survive a regeneration.
    (out / "b.md").write_text(md + "\nMy analysis.\n")
    assert (
        main(
            [
                "evaluate",
                "--version-dir",
                str(version),
                "--methods",
                "popularity",
                "--out-dir",
                str(out),
                "--name",
                "b",
                "--no-progress",
            ]
        )
        == 0
    )
    md2 = (out / "b.md").read_text()
    assert md2.count("My analysis.") == 1 and "| bm25 |" not in md2


def test_covisit_matrix_counts_forward_pairs_by_inverse_distance() -> None:
    m = covisit_matrix([np.array([0, 1, 2]), np.array([0, 1]), np.array([3])], 4).toarray()
    expected = np.zeros((4, 4))
    expected[0, 1] = 1.0 + 1.0  # adjacent in both histories
    expected[1, 2] = 1.0
    expected[0, 2] = 0.5  # two positions apart
    np.testing.assert_allclose(m, expected)  # nothing backwards, nothing for a lone item
    windowed = covisit_matrix([np.array([0, 1, 2])], 4, window=1).toarray()
    assert windowed[0, 2] == 0.0 and windowed[0, 1] == 1.0


def test_covisit_follows_the_most_recent_item_then_backs_off_to_popularity() -> None:
    # 0 -> 1 often; 2 -> 3 once; item 5 is the most bought item overall.
    train = [np.array([0, 1])] * 3 + [np.array([2, 3]), np.array([5, 4]), np.array([5, 6])]
    train += [np.array([5])] * 2
    decay_one = CovisitRetriever(train, 7, decay=1.0)
    recent_only = CovisitRetriever(train, 7, decay=0.0)
    query = EvalQuery("u", None, (0, 2))  # 2 is the most recent item
    # Summed over the history, 0's strong link wins; counting only the last item, 2's does.
    assert decay_one.retrieve([query], 2)[0] == [1, 3]
    ranked = recent_only.retrieve([query], 7)[0]
    assert ranked[0] == 3
    # Items nothing leads to follow, by training popularity: 5 (bought 4 times) first.
    assert ranked[1] == 5
    # No history: popularity order.
    assert recent_only.retrieve([EvalQuery("u", None, ())], 1)[0] == [5]
    with pytest.raises(ValueError, match="decay"):
        CovisitRetriever(train, 7, decay=1.5)


def test_covisit_learns_the_sequential_pattern_popularity_cannot() -> None:
    n_items, rng = 30, np.random.default_rng(0)
    walks = [[(s + t) % n_items for t in range(8)] for s in rng.integers(0, n_items, 300)]
    train = [np.asarray(w[:-2]) for w in walks]
    test = [EvalCase(EvalQuery(f"u{u}", None, tuple(w[:-1])), w[-1]) for u, w in enumerate(walks)]
    m, _ = evaluate_cases(CovisitRetriever(train, n_items, decay=0.0), test)
    assert m["ndcg@10"] == 1.0  # the next item always ranks first


def test_sasrec_learns_a_sequential_pattern_that_popularity_cannot() -> None:
    pytest.importorskip("torch")
    from models_export.evaluation.baselines.sasrec import SasRecConfig, train_sasrec

    n_items, rng = 30, np.random.default_rng(0)
    # Item i is always followed by item i+1 (mod n): each user walks from a random start.
    walks = [[(s + t) % n_items for t in range(8)] for s in rng.integers(0, n_items, 300)]
    train = [np.asarray(w[:-2]) for w in walks]
    valid = [EvalCase(EvalQuery(f"u{u}", None, tuple(w[:-2])), w[-2]) for u, w in enumerate(walks)]
    test = [EvalCase(EvalQuery(f"u{u}", None, tuple(w[:-1])), w[-1]) for u, w in enumerate(walks)]
    # No wall-clock cap: the outcome must not depend on how busy the machine is.
    cfg = SasRecConfig(
        hidden=32, dropout=0.1, lr=5e-3, max_epochs=40, patience=5, seed=0, max_seconds=None
    )
    sasrec = train_sasrec(train, n_items, valid, cfg, show_progress=False)
    pop = PopularityRetriever(train, n_items)
    m_sas, _ = evaluate_cases(sasrec, test)
    m_pop, _ = evaluate_cases(pop, test)
    assert m_sas["recall@5"] > 0.9
    assert m_sas["ndcg@10"] > m_pop["ndcg@10"] + 0.5
    assert sasrec.report.best_epoch >= 1 and sasrec.report.best_valid["ndcg@10"] > 0.8


def test_pipeline_step_writes_eval_baselines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    from models_export import embeddings, pipeline
    from models_export.evaluation.pipeline_step import OUTPUT, step_eval_baselines

    version_dir = _write_version(tmp_path / "v1")
    # Item vectors and the fake query encoder must share a width; MiniLM is not loaded.
    emb = np.random.default_rng(2).standard_normal((N_ITEMS, embeddings.EMBEDDING_DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    np.save(version_dir / "embeddings/items.npy", emb.astype(np.float32))

    def fake_encode(texts: list[str], *_: object) -> np.ndarray:
        rng = np.random.default_rng(len(texts))
        out = rng.standard_normal((len(texts), embeddings.EMBEDDING_DIM))
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    monkeypatch.setattr(embeddings, "_encode", fake_encode)
    monkeypatch.setenv(embeddings.CACHE_ENV, str(tmp_path / "cache"))
    settings = pipeline.BuildSettings.for_mode(quick=True)
    ctx = pipeline.BuildContext(tmp_path, tmp_path, "v1", settings, {})
    summary = step_eval_baselines(ctx)
    doc = json.loads((version_dir / OUTPUT).read_text())
    assert doc["queries_derived"] is True
    evaluated = {(r["split"], r["mode"], r["method"]) for r in doc["results"] if r["metrics"]}
    for method, mode in [
        ("popularity", RECOMMENDATION),
        ("bm25", SEARCH),
        ("dense", SEARCH),
        ("dense+history", SEARCH_HISTORY),
        ("history-mean", RECOMMENDATION),
        ("recent-mean", RECOMMENDATION),
        ("covisit", RECOMMENDATION),
        ("sasrec", RECOMMENDATION),
    ]:
        assert ("test", mode, method) in evaluated and ("valid", mode, method) in evaluated
    title_bm25 = ctx.eval_results["baselines"]["test"]["search/title/bm25"]
    assert title_bm25["recall@10"] == 1.0
    assert "bm25" in summary and ctx.config["eval_baselines"]["methods"]


def test_harness_and_torch_free_baselines_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import models_export.evaluation.suite, models_export.evaluation.cli\n"
        "import models_export.evaluation.pipeline_step\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
