"""Locust users for the gateway's HTTP API and, optionally, the retrieval service's gRPC API.

``pip install -e ".[loadtest]"``, start the stack (``make run``), then::

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 16 -r 4 -t 60s

or let ``python -m loadtest.run`` (``make loadtest``) start the stack, run Locust headless
and check the SLO in ``loadtest/slo.yaml``.

The request mix is :mod:`loadtest.workload_mix`: REAL WANDS query strings and DERIVED
catalog queries (with the real user ids of the artifact the gateway serves) repeating
with a Zipf-like skew, anonymous and filtered searches, feeds, item lookups and about 2 %
deliberately bad requests. A request fails when its status is not one the mix accepts for
it (a bad request answered 4xx is a success, a 5xx a failure) or when a search answers 200
without items.

Environment:

* ``GENSEARCH_ARTIFACT_DIR`` (default ``./artifacts``): the artifact repository the derived
  queries, users and categories come from; ``GENSEARCH_DATA_DIR``: where ``wands/query.csv``
  lies.
* ``GENSEARCH_LOCUST_QUERIES`` (2000): derived queries read; ``GENSEARCH_LOCUST_SEED``:
  seeds the mix; ``GENSEARCH_LOCUST_SHARE_<FIELD>``: overrides a share of
  :class:`~loadtest.workload_mix.MixShares`.
* ``GENSEARCH_LOCUST_API_KEY``: sent as ``X-API-Key`` when set.
* ``GENSEARCH_LOCUST_RETRIEVAL_ADDR`` (``host:port``): also spawn :class:`RetrievalUser`,
  which calls ``Retrieve`` directly (request type ``grpc``); without it only HTTP users run.
* ``GENSEARCH_LOCUST_SHAPE`` (``step`` or ``spike``): drive the user count with a load shape
  from :mod:`loadtest.shapes` instead of ``-u``/``-r``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import grpc
from locust import FastHttpUser, User, between, task

from loadtest.workload_mix import MixShares, build_mix
from services.common.config import artifact_root, data_dir
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc

_seed = os.environ.get("GENSEARCH_LOCUST_SEED", "")
MIX = build_mix(
    artifact_root(),
    data_dir(),
    int(os.environ.get("GENSEARCH_LOCUST_QUERIES", "2000")),
    MixShares.from_env(),
    int(_seed) if _seed else None,
)
API_KEY = os.environ.get("GENSEARCH_LOCUST_API_KEY", "")
RETRIEVAL_ADDR = os.environ.get("GENSEARCH_LOCUST_RETRIEVAL_ADDR", "")
GRPC_TIMEOUT_S = 5.0

# Locust uses any LoadTestShape class found in this module: import only the chosen one.
_shape = os.environ.get("GENSEARCH_LOCUST_SHAPE", "")
if _shape == "step":
    from loadtest.shapes import StepShape as StepShape
elif _shape == "spike":
    from loadtest.shapes import SpikeShape as SpikeShape
elif _shape:
    raise ValueError(f"GENSEARCH_LOCUST_SHAPE={_shape!r}: expected 'step' or 'spike'")

if RETRIEVAL_ADDR:
    # grpc's blocking calls would stall every greenlet without gevent integration.
    import grpc.experimental.gevent as grpc_gevent

    grpc_gevent.init_gevent()


class GatewayUser(FastHttpUser):
    """A shopper sending the planned mix to the gateway."""

    wait_time = between(0.05, 0.5)
    weight = 4

    def on_start(self) -> None:
        self.headers = {"X-API-Key": API_KEY} if API_KEY else {}

    @task
    def planned(self) -> None:
        req = MIX.next()
        with self.client.request(
            req.method,
            req.path,
            json=req.body,
            headers=self.headers,
            name=req.name,
            catch_response=True,
        ) as r:
            problem = req.failure(r.status_code or 0, r.json)
            if problem is None:
                r.success()
            else:
                r.failure(f"{problem}: {(r.text or '')[:200]}")


class RetrievalUser(User):
    """Calls the retrieval service's ``Retrieve`` directly, with the mix's queries and
    users; spawned only when ``GENSEARCH_LOCUST_RETRIEVAL_ADDR`` is set."""

    abstract = not RETRIEVAL_ADDR
    wait_time = between(0.05, 0.5)
    weight = 1

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(RETRIEVAL_ADDR)
        self.stub = retrieval_pb2_grpc.RetrievalServiceStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def retrieve(self) -> None:
        query, issuer = MIX.query()
        user, history = MIX.user() if issuer is None else (issuer, MIX.users[issuer])
        request = retrieval_pb2.RetrieveRequest(
            query=query,
            user=common_pb2.UserContext(user_id=user, recent_item_ids=history),
            k=MIX.shares.k,
        )
        start = time.perf_counter()
        length = 0
        error: Exception | None = None
        try:
            reply: Any = self.stub.Retrieve(request, timeout=GRPC_TIMEOUT_S)
            length = reply.ByteSize()
            if not reply.candidates:
                error = RuntimeError("no candidates")
        except grpc.RpcError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name="Retrieve",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=error,
            context={},
        )
