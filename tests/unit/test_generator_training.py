"""Generator: input encoding, a tiny end-to-end training run, ONNX export parity with
Hugging Face, and our ONNX beam search agreeing with HF ``generate`` on the same weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from models_export import ingest
from models_export.evaluation.data import EvalData
from models_export.evaluation.protocol import RECOMMENDATION, EvalQuery
from models_export.generator.dataset import (
    MixSettings,
    augment_history,
    load_training_data,
    sample_epoch,
)
from models_export.generator.export_onnx import check_against_hf
from models_export.generator.model import PRESETS, build_model
from models_export.generator.prior import fit_prior
from models_export.generator.retriever import GenerativeRetriever, open_onnx_retriever
from models_export.generator.train import TrainSettings, load_sids, train
from models_export.generator.vocab import train_wordpiece
from services.common.errors import ArtifactIntegrityError, InvalidInputError
from services.retrieval.beam_search import BeamSearch, SearchOptions
from services.retrieval.covisit import SETTINGS_FILE, TABLE_FILE, CovisitPrior
from services.retrieval.encoding import (
    CONFIG_FILE,
    EOS_ID,
    N_SPECIAL,
    PAD_ID,
    SEP_ID,
    EncodingConfig,
    InputEncoder,
    TokenLayout,
)
from services.retrieval.onnx_generator import OnnxSidGenerator, OnnxStepModel
from services.retrieval.trie import SidTrie

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
]
SIZES = (4, 4, 3)


def tiny_catalog(
    n_items: int = 24, n_users: int = 40, seed: int = 0
) -> tuple[list[ingest.Item], list[ingest.UserSplit], np.ndarray]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n_items):
        a, b = WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)]
        cat = ["Industrial & Scientific", f"Group {WORDS[i % 4]}"]
        items.append(ingest.Item(str(i), f"{a} {b} widget {i}", "", "", cat))
    codes = np.unique(np.stack([rng.integers(0, k, 200) for k in SIZES], 1), axis=0)
    codes = codes[rng.permutation(len(codes))][:n_items]
    users = []
    for u in range(n_users):
        start = int(rng.integers(0, n_items))
        hist = [str((start + 3 * j) % n_items) for j in range(6)]  # a learnable pattern
        users.append(ingest.UserSplit(f"u{u}", hist[:-2], hist[-2], hist[-1]))
    return items, users, codes.astype(np.int64)


def write_tables(folder: Path, items: list[ingest.Item], users: list[ingest.UserSplit]) -> Path:
    tables = folder / "tables"
    tables.mkdir(parents=True)
    pq.write_table(ingest.items_table(items), tables / "items.parquet")
    pq.write_table(ingest.users_table(users), tables / "users.parquet")
    return tables


# --------------------------------------------------------------------------- encoding


def make_encoder(codes: np.ndarray, max_history: int = 3) -> InputEncoder:
    tok = train_wordpiece(["alpha bravo widget", "charlie delta widget"] * 5, vocab_size=60)
    config = EncodingConfig(
        SIZES, tok.get_vocab_size(), max_query_tokens=4, max_history=max_history
    )
    return InputEncoder(config, tok, codes)


def test_layout_gives_each_level_its_own_token_range() -> None:
    layout = TokenLayout((4, 4, 3), n_words=10)
    assert layout.level_offsets == (N_SPECIAL, N_SPECIAL + 4, N_SPECIAL + 8)
    assert layout.decoder_vocab_size == N_SPECIAL + 11
    assert layout.vocab_size == N_SPECIAL + 21
    tokens = layout.sid_tokens(np.array([[3, 0, 2]]))
    assert tokens.tolist() == [[N_SPECIAL + 3, N_SPECIAL + 4, N_SPECIAL + 10]]
    assert layout.codes_from_tokens(tokens).tolist() == [[3, 0, 2]]


def test_encoder_input_is_query_sep_recent_history_eos() -> None:
    codes = np.array([[0, 1, 2], [1, 1, 1], [2, 0, 0], [3, 3, 2]])
    enc = make_encoder(codes, max_history=2)
    batch = enc.encode(["alpha bravo", None, ""], [[0, 1, 2], [3], []])
    ids, mask = batch.input_ids, batch.attention_mask
    layout = enc.layout
    assert ids.shape[0] == 3 and ids.shape[2] == layout.depth
    # query 0: one position per word piece (slot 0), sep, the LAST two items, eos
    n_words = int(np.sum(ids[0, :, 0] >= layout.word_offset))
    assert n_words >= 2
    assert np.all(ids[0, :n_words, 1:] == PAD_ID)
    assert ids[0, n_words].tolist() == [SEP_ID, PAD_ID, PAD_ID]
    assert ids[0, n_words + 1 : n_words + 3].tolist() == layout.sid_tokens(codes[[1, 2]]).tolist()
    assert ids[0, n_words + 3].tolist() == [EOS_ID, PAD_ID, PAD_ID]
    # query 1: no text: sep, one item, eos
    assert ids[1, :3].tolist() == [
        [SEP_ID, PAD_ID, PAD_ID],
        layout.sid_tokens(codes[3]).tolist(),
        [EOS_ID, PAD_ID, PAD_ID],
    ]
    # query 2: nothing at all
    assert ids[2, :2, 0].tolist() == [SEP_ID, EOS_ID] and mask[2].sum() == 2
    assert np.all(ids[mask == 0] == PAD_ID)
    assert mask.sum(axis=1).tolist() == [n_words + 4, 3, 2]


def test_encoder_truncates_queries_and_rejects_unknown_items() -> None:
    codes = np.array([[0, 1, 2], [1, 1, 1]])
    enc = make_encoder(codes)
    long = enc.encode(["alpha bravo widget charlie delta widget alpha"], [[]])
    assert int(np.sum(long.input_ids[..., 0] >= enc.layout.word_offset)) == 4
    with pytest.raises(InvalidInputError):
        enc.encode([None], [[5]])
    enc.add_items(np.array([[2, 2, 2]]))
    assert enc.encode([None], [[2]]).input_ids.shape == (1, 3, 3)


def test_saved_encoder_round_trips(tmp_path: Path) -> None:
    codes = np.array([[0, 1, 2], [1, 1, 1]])
    enc = make_encoder(codes)
    enc.save(tmp_path)
    again = InputEncoder.load(tmp_path, codes)
    a = enc.encode(["alpha widget"], [[1, 0]])
    b = again.encode(["alpha widget"], [[1, 0]])
    assert np.array_equal(a.input_ids, b.input_ids)


# --------------------------------------------------------------------------- data


def test_training_examples_come_from_training_histories_only(tmp_path: Path) -> None:
    items, users, codes = tiny_catalog()
    data = load_training_data(write_tables(tmp_path, items, users), codes, SIZES)
    held_out = set(data.valid_targets.tolist()) | set(data.test_targets.tolist())
    ex = sample_epoch(data, MixSettings(index_repeats=0), np.random.default_rng(0))
    train_pairs = {
        (int(h[-1]) if len(h) else -1, int(t))
        for h, t in zip(ex.histories, ex.targets, strict=True)
    }
    per_user_targets = [set(h.tolist()) for h in data.train_histories]
    for t in ex.targets.tolist():
        assert any(t in s for s in per_user_targets)
    assert train_pairs
    # no example predicts a user's validation/test target from that user's history
    for u, h in enumerate(data.train_histories):
        for hist, t in zip(ex.histories, ex.targets, strict=True):
            if len(hist) == len(h) and np.array_equal(hist, h):
                assert t not in (data.valid_targets[u], data.test_targets[u]) or t in set(
                    h.tolist()
                )
    assert held_out  # sanity
    kinds = {(q is None, len(h) == 0) for q, h in zip(ex.queries, ex.histories, strict=True)}
    assert kinds == {(True, False), (False, False), (False, True)}
    with_index = sample_epoch(data, MixSettings(index_repeats=1), np.random.default_rng(0))
    assert len(with_index) == len(ex) + 2 * len(items)  # title and category text per item


@given(
    n=st.integers(0, 25),
    crop=st.sampled_from([0.0, 0.5, 1.0]),
    dropout=st.sampled_from([0.0, 0.3, 0.9]),
    seed=st.integers(0, 1000),
)
def test_history_augmentation_keeps_an_ordered_subsequence_ending_in_the_last_item(
    n: int, crop: float, dropout: float, seed: int
) -> None:
    prefix = np.arange(100, 100 + n, dtype=np.int64)
    mix = MixSettings(p_history_crop=crop, history_item_dropout=dropout)
    out = augment_history(prefix, mix, np.random.default_rng(seed))
    if n == 0:
        assert out.size == 0
        return
    assert out[-1] == prefix[-1]  # the most recent item always stays
    assert np.all(np.diff(out) > 0) and set(out.tolist()) <= set(prefix.tolist())
    if crop == 0.0 and dropout == 0.0:
        assert np.array_equal(out, prefix)


def test_history_augmentation_changes_contexts_but_not_targets(tmp_path: Path) -> None:
    items, users, codes = tiny_catalog()
    data = load_training_data(write_tables(tmp_path, items, users), codes, SIZES)
    plain = sample_epoch(data, MixSettings(index_repeats=0), np.random.default_rng(0))
    mix = MixSettings(index_repeats=0, p_history_crop=1.0, history_item_dropout=0.5)
    augmented = sample_epoch(data, mix, np.random.default_rng(0))
    assert np.array_equal(plain.targets, augmented.targets)
    assert sum(len(h) for h in augmented.histories) < sum(len(h) for h in plain.histories)


def test_published_index_is_a_sid_source(tmp_path: Path) -> None:
    index = {"0": ["<a_1>", "<b_2>"], "1": ["<a_3>", "<b_0>"]}
    path = tmp_path / "Scientific.index.json"
    path.write_text(json.dumps(index))
    codes, sizes = load_sids(str(path), tmp_path, ["1", "0"])
    assert codes.tolist() == [[3, 0], [1, 2]]
    assert len(sizes) == 2


# --------------------------------------------------------------------------- model


def test_export_matches_hugging_face_and_onnx_search_matches_generate(tmp_path: Path) -> None:
    from loadtest.benchmarks.generative_bench import PrefixAllowed, agreement, hf_decode
    from models_export.generator.export_onnx import export_onnx

    torch.set_num_threads(1)
    _, _, codes = tiny_catalog()
    layout = TokenLayout(SIZES, n_words=30)
    model = build_model(layout, PRESETS["tiny"], seed=3).eval()
    report = export_onnx(model, layout, tmp_path / "models")
    assert report.max_abs_diff_logits_onnx < 1e-4
    assert report.max_abs_diff_cross_kv < 1e-4
    assert report.max_abs_diff_step < 1e-4  # logits + extended cache, reordered beam rows
    assert (tmp_path / "models" / "generator_decoder" / "config.pbtxt").is_file()
    onnx = OnnxStepModel.from_artifact(lambda rel: tmp_path / rel, 1)
    assert check_against_hf(model, layout, onnx, seed=9) < 1e-4
    trie = SidTrie.build(codes, SIZES)
    rng = np.random.default_rng(0)
    ids = rng.integers(N_SPECIAL, layout.vocab_size, (6, 9, layout.depth))
    ids[:, :4, 1:] = PAD_ID  # word-like positions
    mask = np.ones(ids.shape[:2], dtype=np.int64)
    mask[2, 5:] = 0
    ids[2, 5:] = PAD_ID
    from services.retrieval.encoding import EncoderBatch

    batch = EncoderBatch(ids.astype(np.int64), mask.astype(np.int64))
    ours = BeamSearch(onnx, layout, trie, codes).search(
        batch, [SearchOptions(beam_width=8, k=5)] * 6
    )
    ref = hf_decode(model, layout, trie, PrefixAllowed(trie, layout, codes), batch, 8)
    for mine, theirs in zip(ours, ref, strict=True):
        assert agreement((mine.items.tolist(), mine.scores.tolist()), theirs, k=5) != "diff"
        np.testing.assert_allclose(mine.scores[:5], theirs[1][:5], atol=1e-4)


@pytest.mark.slow
def test_tiny_training_learns_the_catalog_and_exports(tmp_path: Path) -> None:
    items, users, codes = tiny_catalog()
    data = load_training_data(write_tables(tmp_path, items, users), codes, SIZES)
    settings = TrainSettings(
        preset="tiny",
        epochs=60,
        batch_size=32,
        lr=1e-2,
        warmup_steps=10,
        patience=100,
        max_minutes=30.0,  # never the limit: keeps the LR schedule step-based
        valid_users=20,
        valid_beam=5,
        threads=1,
        vocab_size=120,
        mix=MixSettings(index_repeats=3),
        restore_best=False,
    )
    result = train(data, settings, tmp_path / "run", "test", progress=False)
    meta = json.loads((tmp_path / "run" / "generator" / "meta.json").read_text())
    assert meta["onnx"]["max_abs_diff_step_logits_onnx_vs_hf"] < 1e-4
    history = meta["history"]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    retriever = open_onnx_retriever(tmp_path / "run", codes, beam_width=5, threads=1)
    queries = [EvalQuery("x", item.title, ()) for item in items]
    ranked = retriever.retrieve(queries, 1)
    hits = sum(r[:1] == [i] for i, r in enumerate(ranked))
    assert hits >= 0.8 * len(items), f"item text -> own SID for only {hits}/{len(items)}"
    assert result.meta["text"] is True

    # a query's exclude list is applied inside decoding: a beam of 5 still yields 5 items
    q = EvalQuery("x", None, (1, 4))
    top = retriever.retrieve([q], 5)[0]
    rest = retriever.retrieve([dataclasses.replace(q, exclude=tuple(top[:3]))], 5)[0]
    assert len(top) == len(rest) == 5 and not set(rest) & set(top[:3])

    # the service-facing batch API over the same files
    trie = SidTrie.build(codes, SIZES)
    generator = OnnxSidGenerator.from_artifact(lambda rel: tmp_path / "run" / rel, trie, codes)
    # graphs and an encoding of another vocabulary (a SID token more) are refused at load
    encoding = json.loads((tmp_path / "run" / "generator" / CONFIG_FILE).read_text())
    encoding["codebook_sizes"][-1] += 1
    other = tmp_path / CONFIG_FILE
    other.write_text(json.dumps(encoding))
    with pytest.raises(ArtifactIntegrityError, match="do not match"):
        OnnxSidGenerator.from_artifact(
            lambda rel: other if rel.endswith(CONFIG_FILE) else tmp_path / "run" / rel, trie, codes
        )
    allowed = np.arange(0, len(items), 2)
    jobs = [
        SimpleNamespace(
            query=items[0].title,
            history_rows=np.array([1, 2]),
            trie=trie,
            beam_width=5,
            n_results=5,
        ),
        SimpleNamespace(
            query="",
            history_rows=np.array([3]),
            trie=trie.subset(allowed),
            beam_width=6,
            n_results=5,
            exclude_rows=np.array([0, 2]),
        ),
    ]
    first, second = generator.decode(jobs)
    same = retriever.retrieve([EvalQuery("x", items[0].title, (1, 2))], 5)[0]
    assert [r for r, _ in first] == same  # the service API and the harness adapter agree
    assert [s for _, s in first] == sorted((s for _, s in first), reverse=True)
    assert len(second) == 5
    assert all(r in set(allowed.tolist()) - {0, 2} for r, _ in second)

    # the co-visitation prior: counted on training histories, weight chosen on validation,
    # fused into history-only decoding (here every history steps by 3 items)
    eval_data = EvalData(
        item_ids=[i.item_id for i in items],
        titles=[i.title for i in items],
        brands=[""] * len(items),
        descriptions=[""] * len(items),
        categories=[i.categories for i in items],
        user_ids=[u.user_id for u in users],
        train_histories=[np.array([int(x) for x in u.train_history]) for u in users],
        valid_targets=np.array([int(u.valid_target) for u in users]),
        test_targets=np.array([int(u.test_target) for u in users]),
        queries=[],
    )
    fitted = fit_prior(tmp_path / "run", eval_data, codes, grid=(0.0, 4.0), beam_width=5)
    assert set(fitted["valid_grid"]) == {"0", "4"} and fitted["weight"] in (0.0, 4.0)
    prior = CovisitPrior.from_files(tmp_path / "run" / TABLE_FILE, tmp_path / "run" / SETTINGS_FILE)
    assert prior.weight == fitted["weight"]
    fused = GenerativeRetriever(
        "fused",
        retriever.encoder,
        retriever.search,
        5,
        prior=dataclasses.replace(prior, weight=50.0),
    )
    assert fused.modes == frozenset({RECOMMENDATION})
    assert fused.retrieve([EvalQuery("u", None, (0, 3))], 1)[0] == [6]


def test_log_without_text_trains_in_recommendation_mode(tmp_path: Path) -> None:
    items, users, codes = tiny_catalog(n_users=10)
    bare = [ingest.Item(i.item_id, "", "", "", []) for i in items]
    data = load_training_data(write_tables(tmp_path, bare, users), codes, SIZES)
    assert not data.has_text
    ex = sample_epoch(data, MixSettings(), np.random.default_rng(0))
    assert all(q is None for q in ex.queries) and all(len(h) for h in ex.histories)
    settings = TrainSettings(
        preset="tiny",
        epochs=1,
        batch_size=16,
        valid_users=5,
        valid_beam=3,
        threads=1,
        vocab_size=50,
        export=True,
    )
    train(data, settings, tmp_path / "run", "test", progress=False)
    retriever = open_onnx_retriever(tmp_path / "run", codes, beam_width=3, threads=1, text=False)
    assert retriever.modes == frozenset({RECOMMENDATION})
    out = retriever.retrieve([EvalQuery("u", None, (1, 2))], 3)
    assert len(out[0]) == 3 and all(0 <= r < len(items) for r in out[0])
