"""The ranking service as clients see it (a real process over gRPC on the session's quick
artifact), and the training/serving skew check: the features the service reads from
Redis, written by the gateway's materialise command, equal the ones the offline pipeline
trains on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from loadtest.local_stack import RANKING, start_service
from models_export.ranking.lists import RankList, list_inputs
from services.common.artifacts import ArtifactRepository
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from services.common.histories import USERS_TABLE, serving_histories
from services.common.text_encoder import TextEncoder
from services.gateway.materialize import materialize_into_redis
from services.ranking.config import RankingSettings
from services.ranking.engine import Ranker, user_bucket
from services.ranking.features import FeatureSpec, history_rows
from services.ranking.fusion import OBJECTIVES, blend_scores
from services.ranking.loader import RANKING_FUSION_FILE, load_ranker
from services.ranking.store import RedisFeatures
from tests.conftest import RedisServer
from tests.support import free_port

pytestmark = pytest.mark.integration
SOURCES = [
    [common_pb2.CANDIDATE_SOURCE_GENERATED],
    [common_pb2.CANDIDATE_SOURCE_LEXICAL, common_pb2.CANDIDATE_SOURCE_DENSE],
    [common_pb2.CANDIDATE_SOURCE_DENSE],
]


@dataclass
class Client:
    stub: ranking_pb2_grpc.RankingServiceStub
    version: str
    item_ids: list[str]
    users: list[str]
    weight_log: Path
    fusion: dict[str, object]


@pytest.fixture(scope="module")
def ranking(artifact_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    arts = ArtifactRepository(artifact_root).open()
    spec = FeatureSpec.load(arts.path)
    users = list(serving_histories(arts.path(USERS_TABLE)))[:50]
    logs = tmp_path_factory.mktemp("ranking")
    weight_log = logs / "weights.jsonl"
    env = {"GENSEARCH_RANKING_WEIGHT_LOG_PATH": str(weight_log)}
    with ExitStack() as stack:
        served = start_service(stack, RANKING, artifact_root, logs, env=env)
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{served.port}"))
        yield Client(
            ranking_pb2_grpc.RankingServiceStub(channel),
            arts.version,
            spec.item_ids,
            users,
            weight_log,
            arts.read_json(RANKING_FUSION_FILE),
        )


def _request(ids: list[str], **fields: object) -> ranking_pb2.RankRequest:
    candidates = [
        common_pb2.Candidate(
            item_id=i,
            retrieval_score=1.0 / (n + 1),
            sources=SOURCES[n % 3],
            source=SOURCES[n % 3][0],
        )
        for n, i in enumerate(ids)
    ]
    return ranking_pb2.RankRequest(candidates=candidates, **fields)  # type: ignore[arg-type]


def _rank(client: Client, request: ranking_pb2.RankRequest) -> ranking_pb2.RankResponse:
    reply: ranking_pb2.RankResponse = client.stub.Rank(request, timeout=5)
    return reply


def test_rank_orders_a_hundred_candidates_by_the_blend(ranking: Client) -> None:
    ids = ranking.item_ids[100:200]
    request = _request(
        ids,
        query="digital caliper",
        user=common_pb2.UserContext(user_id=ranking.users[0]),
        meta=common_pb2.RequestMeta(request_id="rank-test-1"),
    )
    reply = _rank(ranking, request)
    assert reply.artifact_version == ranking.version
    out = [c.item_id for c in reply.candidates]
    assert sorted(out) == sorted(ids)  # a permutation: nothing lost, nothing added
    weights = np.array([w.weight for w in reply.fusion_weights])
    assert [w.objective for w in reply.fusion_weights] == list(OBJECTIVES)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0, abs=1e-5)
    scores = np.array([[o.score for o in c.objective_scores] for c in reply.candidates])
    assert scores.shape == (100, len(OBJECTIVES)) and (scores >= 0).all() and (scores <= 1).all()
    assert all(
        [o.objective for o in c.objective_scores] == list(OBJECTIVES) for c in reply.candidates
    )
    # the final score is the artifact's blend of these scores with these weights, and the
    # order follows it within each side of the relevance floor
    blend, floor = str(ranking.fusion["blend"]), float(ranking.fusion["relevance_floor"])  # type: ignore[arg-type]
    final = np.array([c.final_score for c in reply.candidates])
    assert np.allclose(final, blend_scores(scores, weights, blend), atol=1e-3)
    above = scores[:, 1] >= floor
    assert not np.any(np.diff(above.astype(int)) > 0), "nothing under the floor precedes one above"
    for side in (above, ~above):
        assert np.all(np.diff(final[side]) <= 1e-6)
    # retrieval fields travel through
    first = next(c for c in request.candidates if c.item_id == out[0])
    assert list(reply.candidates[0].sources) == list(first.sources)


def test_k_cold_users_unknown_items_and_recent_items(ranking: Client) -> None:
    ids = [*ranking.item_ids[:20], "no-such-item"]
    reply = _rank(ranking, _request(ids, query="gloves", k=5))
    assert len(reply.candidates) == 5
    anon = _rank(ranking, _request(ids, user=common_pb2.UserContext(user_id="never-seen")))
    assert len(anon.candidates) == len(ids)
    session = _rank(
        ranking,
        _request(ids, query="gloves", user=common_pb2.UserContext(recent_item_ids=ids[:3])),
    )
    cold = _rank(ranking, _request(ids, query="gloves"))
    assert [w.weight for w in session.fusion_weights] != [w.weight for w in cold.fusion_weights]


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda ids: _request([]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda ids: _request(ids * 6), grpc.StatusCode.INVALID_ARGUMENT),  # 600 > 500
        (lambda ids: _request(ids[:5], k=-1), grpc.StatusCode.INVALID_ARGUMENT),
        (
            lambda ids: _request(ids[:5], query_embedding=[0.1] * 7),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (lambda ids: _request(["", *ids[:3]]), grpc.StatusCode.INVALID_ARGUMENT),
        (
            lambda ids: _request(ids[:5], meta=common_pb2.RequestMeta(artifact_version="other")),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    ],
)
def test_bad_requests_get_clear_errors(
    ranking: Client, make: object, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _rank(ranking, make(ranking.item_ids[:100]))  # type: ignore[operator]
    assert err.value.code() == code and err.value.details()


def test_served_weights_are_logged_for_off_policy_training(ranking: Client) -> None:
    request = _request(
        ranking.item_ids[:30],
        query="lab beaker",
        user=common_pb2.UserContext(user_id=ranking.users[1]),
        meta=common_pb2.RequestMeta(request_id="weights-log-7"),
    )
    reply = _rank(ranking, request)
    lines = [json.loads(x) for x in ranking.weight_log.read_text().splitlines()]
    mine = [x for x in lines if x.get("request_id") == "weights-log-7"]
    assert len(mine) == 1
    entry = mine[0]
    assert entry["explored"] is False and entry["artifact_version"] == ranking.version
    assert entry["user_bucket"] == user_bucket(ranking.users[1]) and "user_id" not in entry
    served = {w.objective: w.weight for w in reply.fusion_weights}
    assert entry["weights"] == pytest.approx(served, abs=1e-4)


def test_get_info(ranking: Client) -> None:
    info = ranking.stub.GetInfo(ranking_pb2.GetInfoRequest(), timeout=5)
    assert info.version == ranking.version
    assert set(info.models) == {"ranking_mtl", "ranking_policy"}


# ----------------------------------------------------------------------- in process


def _ranker(artifact_root: Path, **settings: object) -> Ranker:
    return load_ranker(RankingSettings(port=0, artifact_dir=artifact_root, **settings))  # type: ignore[arg-type]


async def test_online_features_from_redis_equal_offline_features(
    artifact_root: Path, redis_server: RedisServer
) -> None:
    """The skew test: materialise with the gateway's command, read back through the
    served path, compare with the training path (``models_export.ranking.lists``)."""
    arts = ArtifactRepository(artifact_root).open()
    prefix = "skewtest"
    counts = await materialize_into_redis(redis_server.url, prefix, arts)
    assert counts["ranking_users"] == counts["users"] > 0
    ranker = _ranker(artifact_root, redis_url=redis_server.url, redis_prefix=prefix)
    assert isinstance(ranker.features, RedisFeatures)
    encoder = TextEncoder.load(arts.path)
    spec = ranker.spec
    histories = serving_histories(arts.path(USERS_TABLE))
    rng = np.random.default_rng(0)
    users = [list(histories)[i] for i in rng.choice(len(histories), 25, replace=False)]
    names = ["generated", "lexical", "dense"]
    for n, user_id in enumerate(users):
        rows = rng.choice(spec.num_items, 50, replace=False).tolist()
        src = [sorted(set(rng.choice(names, int(rng.integers(1, 4))).tolist())) for _ in rows]
        query = f"sample query {n}" if n % 5 else ""
        qvec = encoder.encode([query])[0] if query else np.zeros(encoder.dim, np.float32)
        history = np.array(history_rows(spec, histories[user_id]), dtype=np.int64)
        offline = list_inputs(
            spec,
            ranker.item_vectors,
            [RankList(0, "test", "test", "title", query, history, rows, src, -1)],
            qvec[None, :],
        )[0]
        codes = {"generated": 1, "lexical": 3, "dense": 4}
        request = ranking_pb2.RankRequest(
            query=query,
            query_embedding=qvec.tolist() if query else [],
            user=common_pb2.UserContext(user_id=user_id),
            candidates=[
                common_pb2.Candidate(item_id=spec.item_ids[r], sources=[codes[s] for s in ss])
                for r, ss in zip(rows, src, strict=True)
            ],
        )
        _, online = await ranker.request_inputs(request)
        for field in ("dense", "item_row", "item_cat3", "item_brand", "history", "query"):
            assert np.allclose(getattr(online, field), getattr(offline, field), atol=1e-6), field
    await ranker.features.close()


async def test_redis_down_ranks_with_defaults(artifact_root: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    ranker = _ranker(artifact_root, redis_url=dead, redis_timeout_seconds=0.05)
    ids = ranker.spec.item_ids[:40]
    request = _request(ids, query="safety glasses", user=common_pb2.UserContext(user_id="u1"))
    reply = await ranker.rank(request)
    assert sorted(c.item_id for c in reply.candidates) == sorted(ids)
    await ranker.features.close()


async def test_exploration_samples_around_the_policy(artifact_root: Path) -> None:
    always = _ranker(artifact_root, exploration_rate=1.0)
    never = _ranker(artifact_root)
    request = _request(always.spec.item_ids[:30], query="nitrile gloves")
    base = [w.weight for w in (await never.rank(request)).fusion_weights]
    explored = [[w.weight for w in (await always.rank(request)).fusion_weights] for _ in range(20)]
    assert all(sum(w) == pytest.approx(1.0, abs=1e-5) for w in explored)
    assert all(w != base for w in explored)
    assert np.abs(np.mean(explored, axis=0) - np.asarray(base)).max() < 0.15
