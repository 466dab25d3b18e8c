"""Any catalog + log: dataset resolution, a second (synthetic) dataset built and served in
both forms (with an item file; log only), and one-line errors for bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from models_export import cli, dataset_files, embeddings, pipeline
from models_export.dataset_files import DataInputError
from services.common.artifacts import ArtifactRepository, ArtifactSet
from services.common.deadline import Deadline
from services.common.errors import InvalidInputError
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2
from services.gateway.breaker import CircuitBreaker
from services.gateway.config import GatewaySettings
from services.gateway.downstream import Downstream, StageFailedError
from services.gateway.schemas import SearchRequest
from services.gateway.search import SearchRejectedError, SearchService
from services.gateway.store import InMemoryStore
from services.retrieval.config import RetrievalSettings
from services.retrieval.engine import NO_TEXT_MESSAGE, RetrievalEngine
from services.retrieval.loader import load_engine
from tests.synthetic_catalog import TINY, fake_encode, make_items, make_log, write_dataset

DATASET = "toyshop/Toys"
# Everything a served artifact needs; the baselines' evaluation is tested by its owner.
# the rag step labels with a real LM: minutes, and tested through the session's artifact
SERVED_STEPS = [s for s in pipeline.STEPS if s[0] not in ("eval_baselines", "rag")]


# --------------------------------------------------------------------------- resolution


def test_named_dataset_files_and_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_dataset(tmp_path / "data", DATASET)
    monkeypatch.setenv(dataset_files.DATASET_ENV, DATASET)
    files = dataset_files.named(root)
    assert files.name == DATASET and files.has_text
    assert files.items == root / "toyshop" / "Toys.item.json"
    assert files.log == root / "toyshop" / "Toys.inter.json"
    assert files.index_dir == root / "toyshop" / "indexes"
    fingerprint = files.fingerprint()
    assert fingerprint["name"] == DATASET
    assert fingerprint["files"]["log"]["path"] == "toyshop/Toys.inter.json"
    assert len(fingerprint["files"]["items"]["sha256"]) == 64

    (root / "toyshop" / "Toys.item.json").unlink()
    log_only = dataset_files.named(root, DATASET)
    assert log_only.items is None and not log_only.has_text
    assert set(log_only.fingerprint()["files"]) == {"log"}


def test_explicit_files_and_flag_conflicts(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "data", DATASET, log_only=True)
    log = root / "toyshop" / "Toys.inter.json"
    parser = cli.build_parser(["ingest"])
    args = parser.parse_args(["ingest", "--log", str(log), "--out", str(tmp_path / "t")])
    files = dataset_files.from_args(args)
    assert files.name == DATASET and files.items is None and files.log == log
    both = parser.parse_args(["ingest", "--log", str(log), "--dataset", "a/B", "--out", "x"])
    with pytest.raises(DataInputError, match="not both"):
        dataset_files.from_args(both)
    with pytest.raises(DataInputError, match="<folder>/<Stem>"):
        dataset_files.named(root, "Toys")
    with pytest.raises(DataInputError, match="published index 'rq' not found"):
        files.index_file("rq")


# --------------------------------------------------------------------------- one-line errors


def _fails_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == cli.INPUT_ERROR_EXIT == 2
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_missing_data_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    line = _fails_with_one_line(["artifacts", "--data-dir", str(missing), "--quick"], capsys)
    assert line == (
        f"error: data directory not found: {missing} "
        "(set GENSEARCH_DATA_DIR or pass --data-dir; dataset GENSEARCH_DATASET / --dataset)"
    )


def test_missing_log_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_dataset(tmp_path / "data", DATASET)
    (root / "toyshop" / "Toys.inter.json").unlink()
    argv = ["ingest", "--data-dir", str(root), "--dataset", DATASET, "--out", str(tmp_path)]
    line = _fails_with_one_line(argv, capsys)
    expected = root / "toyshop" / "Toys.inter.json"
    assert line.startswith(f"error: data file not found: {expected} (set GENSEARCH_DATA_DIR")
    # explicit files name their own flags
    argv = ["ingest", "--log", str(expected), "--out", str(tmp_path)]
    assert _fails_with_one_line(argv, capsys).endswith("(check --items / --log)")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"u1": [1, 2', "data file is not valid JSON"),
        ('[["u1", [1, 2, 3]]]', "wrong shape"),
    ],
)
def test_malformed_log_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    root = write_dataset(tmp_path / "data", DATASET)
    (root / "toyshop" / "Toys.inter.json").write_text(text)
    argv = ["artifacts", "--data-dir", str(root), "--dataset", DATASET, "--out", str(tmp_path)]
    line = _fails_with_one_line(argv, capsys)
    assert message in line and "Toys.inter.json" in line
    assert not (tmp_path / "CURRENT").exists()


# --------------------------------------------------------------------------- build + serve


def _recommend(engine: RetrievalEngine, history: list[str], k: int) -> list[str]:
    user = common_pb2.UserContext(user_id="u", recent_item_ids=history)
    prepared = engine.prepare(retrieval_pb2.RetrieveRequest(k=k, user=user), Deadline.after(5.0))
    reply = engine.finish(prepared, engine.decode_batch([engine.job(prepared)])[0])
    return [c.item_id for c in reply.candidates]


def _serve(root: Path) -> tuple[ArtifactSet, RetrievalEngine]:
    arts = ArtifactRepository(root).open()
    arts.verify()
    return arts, load_engine(RetrievalSettings(port=0, artifact_dir=root))


def _item_ids(arts: ArtifactSet) -> list[str]:
    table = pq.read_table(arts.path("tables/items.parquet"), columns=["item_id"])
    return [str(i) for i in table.column("item_id").to_pylist()]


@pytest.mark.slow
def test_catalog_with_items_builds_and_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embeddings, "_encode", fake_encode)
    monkeypatch.setenv(embeddings.CACHE_ENV, str(tmp_path / "cache"))
    data = write_dataset(tmp_path / "data", DATASET)
    steps = [s for s in SERVED_STEPS if s[0] != "text_encoder"]  # MiniLM export: too slow here
    ctx = pipeline.build(
        tmp_path / "arts", dataset_files.named(data, DATASET), steps=steps, settings=TINY
    )
    assert ctx.has_text
    arts, engine = _serve(tmp_path / "arts")
    config = arts.manifest.config
    assert config["has_text"] is True and config["data"]["name"] == DATASET
    assert pq.read_table(arts.path("tables/queries.parquet")).num_rows > 0
    assert engine.has_text

    catalog = set(_item_ids(arts))
    history = [str(i) for i in make_log()["u0"]]
    found = _recommend(engine, history, k=5)
    assert len(found) == 5 and set(found) <= catalog


@pytest.mark.slow
def test_log_only_builds_and_serves_recommendations_only(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", DATASET, log_only=True)
    # every step: those that need item text skip themselves
    ctx = pipeline.build(tmp_path / "arts", dataset_files.named(data, DATASET), settings=TINY)
    assert not ctx.has_text
    arts, engine = _serve(tmp_path / "arts")
    config = arts.manifest.config
    assert config["has_text"] is False
    assert config["data"]["name"] == DATASET and set(config["data"]["files"]) == {"log"}

    log = make_log()
    in_log = {str(i) for history in log.values() for i in history}
    item_ids = _item_ids(arts)
    assert set(item_ids) == in_log, "without an item file the items are the log's ids"
    assert pq.read_table(arts.path("tables/queries.parquet")).num_rows == 0
    vectors = np.load(arts.path("embeddings/items.npy"))
    assert vectors.shape == (len(item_ids), TINY.sids.collab_dim)
    assert json.loads(arts.read_bytes("embeddings/meta.json"))["source"].startswith("co-occ")
    assert not any(rel.startswith("models/text_encoder") for rel in arts.manifest.files)
    assert not engine.has_text and engine.embedder is None
    baselines = arts.manifest.eval["baselines"]["test"]
    assert baselines and all(key.startswith("recommendation/") for key in baselines)

    found = _recommend(engine, [str(i) for i in log["u0"]], k=5)
    assert len(found) == 5 and set(found) <= in_log
    anonymous = _recommend(engine, [], k=5)
    assert set(anonymous) <= in_log

    search = retrieval_pb2.RetrieveRequest(k=5, query="steel bolt")
    with pytest.raises(InvalidInputError, match=r"no item text.*without a query"):
        engine.prepare(search, Deadline.after(5.0))


def test_stack_without_artifacts_or_data_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services import stack

    monkeypatch.setenv("GENSEARCH_ARTIFACT_DIR", str(tmp_path / "arts"))
    monkeypatch.setenv("GENSEARCH_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as stopped:
        stack.ensure_artifacts(full=False)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"[stack] error: data directory not found: {tmp_path / 'data'} "
        "(set GENSEARCH_DATA_DIR or pass --data-dir; dataset GENSEARCH_DATASET / --dataset)"
    )


# --------------------------------------------------------------------------- gateway


class _RefusingStub:
    """A retrieval stub that refuses every call the way a log-only catalog refuses a query."""

    def __init__(self, _channel: object) -> None:
        pass

    async def Retrieve(self, _request: object, **_kw: object) -> object:  # noqa: N802 (gRPC)
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details=NO_TEXT_MESSAGE,
        )


async def test_gateway_turns_a_refused_query_into_a_client_error() -> None:
    breaker = CircuitBreaker("retrieval", failures=1, reset_seconds=60.0)
    retrieval = Downstream("retrieval", "127.0.0.1:1", "svc", _RefusingStub, breaker)
    try:
        with pytest.raises(StageFailedError) as failed:
            await retrieval.call("Retrieve", retrieval_pb2.RetrieveRequest(), Deadline.after(1.0))
        assert failed.value.invalid and failed.value.reason == NO_TEXT_MESSAGE
        assert breaker.allow(), "a refused request is not a failing service"

        service = SearchService(GatewaySettings(retrieval_addr="x:1"), InMemoryStore(), retrieval)
        with pytest.raises(SearchRejectedError) as rejected:
            await service.search(SearchRequest(query="steel bolt", k=5), "rid")
        assert rejected.value.status == 400 and rejected.value.reason == NO_TEXT_MESSAGE
    finally:
        await retrieval.close()


def test_query_understanding_is_built_from_the_catalog_in_hand(tmp_path: Path) -> None:
    """Lexicon, spelling and the intent head come from the toy catalog, not fixed lists."""
    from models_export.ingest import Item
    from models_export.query_intent import IntentConfig, build_intent
    from services.query_understanding.intent import IntentClassifier, category_label
    from services.query_understanding.lexicon import mine_lexicon
    from services.query_understanding.spelling import SpellCorrector

    raw = make_items()
    items = [
        Item(i, d["title"], d["brand"], d["description"], d["categories"].split(","))
        for i, d in raw.items()
    ]
    lexicon = mine_lexicon(
        [i.title for i in items],
        [i.brand for i in items],
        [i.categories for i in items],
        [i.description for i in items],
    )
    word = max(
        (w for w in lexicon.word_counts if w.isalpha() and len(w) >= 5),
        key=lambda w: lexicon.word_counts[w],
    )
    typo = word[:2] + word[3:]  # one letter dropped
    assert SpellCorrector(lexicon).correct(typo).text == word

    def encode(texts: list[str]) -> np.ndarray:
        return fake_encode(texts, tmp_path, None)  # type: ignore[arg-type]

    results = build_intent(items, encode, tmp_path, IntentConfig(subsets_per_item=1, epochs=2))
    head = IntentClassifier.load(lambda rel: tmp_path / rel)
    assert set(head.level3) == {category_label(i.categories, 3) for i in items}
    assert results["classes"]["level3"] == len(head.level3)
    (top,) = head.top(encode(["anything"]), 3)
    assert top[0].category in head.level3 and 0.0 <= top[0].probability <= 1.0
