"""The retrieval service as clients see it: a real process, called over gRPC.

Serves the session's quick artifact build (``artifact_root``): a tiny generator,
the real catalog, SIDs, trie and ANN index.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtest.local_stack import start_retrieval
from services.common.artifacts import ArtifactRepository
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.catalog import CATEGORY_SEP
from services.retrieval.covisit import SETTINGS_FILE, TABLE_FILE, CovisitPrior

pytestmark = pytest.mark.integration

GENERATED = common_pb2.CANDIDATE_SOURCE_GENERATED
ANN = common_pb2.CANDIDATE_SOURCE_ANN
LEXICAL = common_pb2.CANDIDATE_SOURCE_LEXICAL
DENSE = common_pb2.CANDIDATE_SOURCE_DENSE


@dataclass
class RetrievalClient:
    stub: retrieval_pb2_grpc.RetrievalServiceStub
    metrics_port: int
    version: str
    item_ids: list[str]
    categories: list[str]
    codes: np.ndarray

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in (labels or {}).items()
                ):
                    total += sample.value
        return total


@contextmanager
def _serve(
    artifact_root: Path, logs: Path, extra_env: dict[str, str] | None = None
) -> Iterator[RetrievalClient]:
    arts = ArtifactRepository(artifact_root).open()
    table = pq.read_table(arts.path("tables/items.parquet"), columns=["item_id", "categories"])
    rows = table.to_pydict()
    codes = np.load(arts.path("generator/sid_codes.npy"), allow_pickle=False)
    with ExitStack() as stack:
        served = start_retrieval(stack, artifact_root, logs, extra_env, ready_timeout=120)
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{served.port}"))
        yield RetrievalClient(
            retrieval_pb2_grpc.RetrievalServiceStub(channel),
            served.metrics_port,
            arts.version,
            [str(i) for i in rows["item_id"]],
            [CATEGORY_SEP.join(p or []) for p in rows["categories"]],
            codes,
        )


@pytest.fixture(scope="module")
def retrieval(
    artifact_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RetrievalClient]:
    # A generous queue delay so that concurrent calls reliably meet in one batch.
    env = {"GENSEARCH_RETRIEVAL_MAX_QUEUE_DELAY_MS": "20"}
    with _serve(artifact_root, tmp_path_factory.mktemp("retrieval"), env) as served:
        yield served


def _request(**fields: object) -> retrieval_pb2.RetrieveRequest:
    fields.setdefault("k", 10)
    return retrieval_pb2.RetrieveRequest(**fields)  # type: ignore[arg-type]


def _history(r: RetrievalClient, n: int = 5, start: int = 100) -> common_pb2.UserContext:
    return common_pb2.UserContext(user_id="u1", recent_item_ids=r.item_ids[start : start + n])


def test_get_info_reports_the_served_version(retrieval: RetrievalClient) -> None:
    info = retrieval.stub.GetInfo(retrieval_pb2.GetInfoRequest(), timeout=5)
    assert info.version == retrieval.version
    assert len(info.manifest_sha256) == 64
    assert {"generator_encoder", "generator_decoder"} <= set(info.models)
    # where each ONNX model runs (GENSEARCH_ONNX_PROVIDERS; the CPU by default)
    assert info.execution_providers["generator_decoder"] == "CPUExecutionProvider"
    assert info.execution_providers["generator_encoder"] == "CPUExecutionProvider"


def test_retrieve_returns_k_distinct_real_items(retrieval: RetrievalClient) -> None:
    reply = retrieval.stub.Retrieve(
        _request(query="digital caliper", user=_history(retrieval), k=20), timeout=5
    )
    ids = [c.item_id for c in reply.candidates]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert reply.artifact_version == retrieval.version
    assert reply.decode_steps == retrieval.codes.shape[1]
    row_of = {item_id: row for row, item_id in enumerate(retrieval.item_ids)}
    for c in reply.candidates:
        if c.source == GENERATED:
            # The generated SID is the item's own: nothing invalid can come out of decoding.
            assert list(c.sid.codes) == retrieval.codes[row_of[c.item_id]].tolist()
    assert retrieval.metric("gensearch_retrieval_invalid_sids_total") == 0


def test_exclude_list_removes_items_and_still_fills_k(retrieval: RetrievalClient) -> None:
    base = _request(query="nitrile gloves", user=_history(retrieval), k=10)
    first = retrieval.stub.Retrieve(base, timeout=5)
    banned = [c.item_id for c in first.candidates[:5]] + retrieval.item_ids[100:105]
    second = retrieval.stub.Retrieve(
        _request(query="nitrile gloves", user=_history(retrieval), k=10, exclude_item_ids=banned),
        timeout=5,
    )
    ids = [c.item_id for c in second.candidates]
    assert len(ids) == 10
    assert not set(ids) & set(banned)


def test_category_filter_is_a_decoding_constraint(retrieval: RetrievalClient) -> None:
    counts = Counter(
        c.split(CATEGORY_SEP)[0] + CATEGORY_SEP + c.split(CATEGORY_SEP)[1]
        for c in retrieval.categories
        if c.count(CATEGORY_SEP) >= 1
    )
    # A mid-sized category: large enough for k, far from the whole catalog.
    prefix = next(p for p, n in counts.most_common() if n < len(retrieval.item_ids) // 4)
    reply = retrieval.stub.Retrieve(
        _request(
            query=prefix.split(CATEGORY_SEP)[-1].lower(),
            user=_history(retrieval),
            k=10,
            category_prefixes=[prefix],
            disable_ann_fill=True,
        ),
        timeout=5,
    )
    row_of = {item_id: row for row, item_id in enumerate(retrieval.item_ids)}
    assert len(reply.candidates) == 10, "a constraint, not a post-filter returning fewer"
    # every source honours the filter: the generator inside decoding, BM25 and dense
    # search by restricting the rows they score
    assert {LEXICAL, DENSE} <= {s for c in reply.candidates for s in c.sources}
    for c in reply.candidates:
        path = retrieval.categories[row_of[c.item_id]]
        assert path == prefix or path.startswith(prefix + CATEGORY_SEP)
    # the generator alone (a history-only request): k items, all inside the filter
    feed = retrieval.stub.Retrieve(
        _request(user=_history(retrieval), k=10, category_prefixes=[prefix], disable_ann_fill=True),
        timeout=5,
    )
    assert len(feed.candidates) == 10
    for c in feed.candidates:
        assert c.source == GENERATED
        path = retrieval.categories[row_of[c.item_id]]
        assert path == prefix or path.startswith(prefix + CATEGORY_SEP)


def test_concurrent_calls_are_batched_and_answered_alike(retrieval: RetrievalClient) -> None:
    queries = ["digital caliper", "lab beaker", "safety glasses", "nitrile gloves"] * 4
    requests = [
        _request(query=q, user=_history(retrieval, start=10 * i), k=10)
        for i, q in enumerate(queries)
    ]
    alone = [retrieval.stub.Retrieve(r, timeout=10) for r in requests[:4]]
    batches_before = retrieval.metric("gensearch_retrieval_batch_size_count")
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: retrieval.stub.Retrieve(r, timeout=10), requests))
    batches = retrieval.metric("gensearch_retrieval_batch_size_count") - batches_before
    assert all(len(r.candidates) == 10 for r in together)
    assert batches < len(requests), f"{len(requests)} concurrent calls ran in {batches} batches"
    for single, batched in zip(alone, together[:4], strict=True):
        assert [c.item_id for c in single.candidates] == [c.item_id for c in batched.candidates]


def test_batch_retrieve_keeps_order(retrieval: RetrievalClient) -> None:
    queries = ["digital caliper", "", "lab beaker"]
    reply = retrieval.stub.BatchRetrieve(
        retrieval_pb2.BatchRetrieveRequest(
            requests=[_request(query=q, user=_history(retrieval), k=5) for q in queries]
        ),
        timeout=10,
    )
    assert len(reply.responses) == 3
    for q, resp in zip(queries, reply.responses, strict=True):
        single = retrieval.stub.Retrieve(
            _request(query=q, user=_history(retrieval), k=5), timeout=5
        )
        assert [c.item_id for c in resp.candidates] == [c.item_id for c in single.candidates]


def test_unaffordable_beam_is_shrunk_and_said(artifact_root: Path, tmp_path: Path) -> None:
    # Decoding may plan to use a tiny share of the caller's remaining deadline, so no
    # beam above 1 is affordable on any machine: the service must decode with a
    # smaller beam, say so, and still answer k items (ANN fill makes up the rest).
    env = {"GENSEARCH_RETRIEVAL_DECODE_BUDGET_FRACTION": "0.000001"}
    with _serve(artifact_root, tmp_path, env) as served:
        reply = served.stub.Retrieve(
            _request(query="digital caliper", user=_history(served), k=10, beam_width=128),
            timeout=2.0,
        )
        assert reply.beam_width_used == 1
        [note] = [d for d in reply.degraded if d.stage == "retrieval.beam"]
        assert "beam 128 -> 1" in note.reason
        assert len(reply.candidates) == 10
        assert {c.source for c in reply.candidates} == {GENERATED, ANN}
        # the side sources got the same sliver of budget: dropped, and the answer says so
        dropped = {d.stage: d.reason for d in reply.degraded}
        assert "dropped" in dropped["retrieval.lexical"]
        assert "dropped" in dropped["retrieval.dense"]
        assert served.metric("gensearch_retrieval_beam_reduced_total") == 1
        assert served.metric("gensearch_retrieval_ann_fill_total") == 1


def test_history_only_requests_fuse_the_covisitation_prior(
    artifact_root: Path, tmp_path: Path
) -> None:
    # With an overwhelming prior weight, decoding follows the prior's mass: the first item
    # is the one the co-visitation table ranks first for this history. Requests with
    # query text decode without the prior.
    arts = ArtifactRepository(artifact_root).open()
    prior = CovisitPrior.from_files(arts.path(TABLE_FILE), arts.path(SETTINGS_FILE))
    env = {"GENSEARCH_RETRIEVAL_COVISIT_PRIOR_WEIGHT": "1000"}
    with _serve(artifact_root, tmp_path, env) as served:
        m = prior.table.matrix
        # an item that leads somewhere, with one clear favourite
        start = next(
            r
            for r in range(m.shape[0])
            if m.indptr[r + 1] > m.indptr[r]
            and np.sum(m.data[m.indptr[r] : m.indptr[r + 1]] == m[r].max()) == 1
        )
        user = common_pb2.UserContext(user_id="u1", recent_item_ids=[served.item_ids[start]])
        dist = prior.distribution([start], len(served.item_ids))
        assert dist is not None
        reply = served.stub.Retrieve(_request(user=user, k=5, beam_width=128), timeout=10)
        assert reply.candidates[0].item_id == served.item_ids[int(np.argmax(dist))]
        assert reply.candidates[0].source == GENERATED
        assert served.metric("gensearch_retrieval_prior_total", {"outcome": "fused"}) == 1
        served.stub.Retrieve(_request(query="digital caliper", user=user, k=5), timeout=10)
        assert served.metric("gensearch_retrieval_prior_total") == 1


def test_deadline_already_too_short_is_deadline_exceeded(retrieval: RetrievalClient) -> None:
    with pytest.raises(grpc.RpcError) as err:
        retrieval.stub.Retrieve(
            _request(query="digital caliper", user=_history(retrieval), k=10), timeout=0.0005
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The service is unharmed: the next call is answered.
    ok = retrieval.stub.Retrieve(_request(query="digital caliper", k=5), timeout=5)
    assert len(ok.candidates) == 5


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"k": 0}, "k must be in"),
        ({"k": 10, "beam_width": 100_000}, "beam_width must be in"),
        ({"k": 10, "query": "x" * 300}, "query longer than"),
        ({"k": 10, "query_embedding": [0.1, 0.2]}, "query_embedding must have"),
    ],
)
def test_bad_requests_are_invalid_argument(
    retrieval: RetrievalClient, fields: dict[str, object], needle: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        retrieval.stub.Retrieve(retrieval_pb2.RetrieveRequest(**fields), timeout=5)  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (err.value.details() or "")


def test_pinned_to_another_version_is_refused(retrieval: RetrievalClient) -> None:
    meta = common_pb2.RequestMeta(artifact_version="some-other-version")
    with pytest.raises(grpc.RpcError) as err:
        retrieval.stub.Retrieve(_request(meta=meta, query="caliper"), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "some-other-version" in (err.value.details() or "")
