"""A bare HTTP → gRPC pass-through: the least a Python HTTP front of retrieval costs here.

``python -m loadtest.benchmarks.passthrough --port P --retrieval 127.0.0.1:R
[--query-understanding 127.0.0.1:Q] [--ranking 127.0.0.1:K]``

One ASGI callable under uvicorn (the gateway's server, loop and HTTP parser), no
framework, no validation, no feature store, no cache: the client sends the query, the
user and the history; the body is forwarded as one ``Retrieve`` call and the item ids
come back. With the optional addresses it makes the same calls the gateway makes for a
search, in the same order: ``Understand`` (with the embedding), ``Retrieve`` of the
corrected query (50 candidates when ranking), ``Rank``.
The gateway benchmark runs it beside the gateway so that the cost of the extra hop itself
(one more process, one more HTTP exchange, wake-ups on this VM) is measured apart from
the gateway's own work. It is a measuring device, not a service.
"""

from __future__ import annotations

import argparse
from typing import Any

import grpc
import orjson
import uvicorn

from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.query_understanding.v1 import (
    query_understanding_pb2 as qu_pb2,
)
from services.common.generated.gensearch.query_understanding.v1 import (
    query_understanding_pb2_grpc as qu_grpc,
)
from services.common.generated.gensearch.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.common.limits import RANK_POOL

_JSON = [(b"content-type", b"application/json")]


def make_app(retrieval_addr: str, qu_addr: str = "", ranking_addr: str = "") -> Any:
    """The ASGI app: ``POST`` ``{"query", "user_id", "history", "k"}`` → ``{"items": [...]}``."""
    state: dict[str, Any] = {}

    async def lifespan(receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["channels"] = [grpc.aio.insecure_channel(retrieval_addr)]
                state["stub"] = retrieval_pb2_grpc.RetrievalServiceStub(state["channels"][0])
                if qu_addr:
                    state["channels"].append(grpc.aio.insecure_channel(qu_addr))
                    state["qu"] = qu_grpc.QueryUnderstandingServiceStub(state["channels"][-1])
                if ranking_addr:
                    state["channels"].append(grpc.aio.insecure_channel(ranking_addr))
                    state["ranking"] = ranking_pb2_grpc.RankingServiceStub(state["channels"][-1])
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for channel in state["channels"]:
                    await channel.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def search(req: dict[str, Any]) -> list[str]:
        user = common_pb2.UserContext(user_id=req["user_id"], recent_item_ids=req["history"])
        query, embedding = req["query"], []
        if "qu" in state:
            understood = await state["qu"].Understand(
                qu_pb2.UnderstandRequest(query=query, want_embedding=True), timeout=2.0
            )
            query, embedding = understood.corrected_query, list(understood.embedding)
        k = max(req["k"], RANK_POOL) if "ranking" in state else req["k"]
        request = retrieval_pb2.RetrieveRequest(
            query=query, user=user, k=k, query_embedding=embedding
        )
        reply = await state["stub"].Retrieve(request, timeout=2.0)
        candidates = list(reply.candidates)
        if "ranking" in state:
            ranked = await state["ranking"].Rank(
                ranking_pb2.RankRequest(
                    user=user,
                    query=req["query"],
                    query_embedding=embedding,
                    candidates=candidates,
                    k=req["k"],
                ),
                timeout=2.0,
            )
            candidates = list(ranked.candidates)
        return [c.item_id for c in candidates[: req["k"]]]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            items = await search(orjson.loads(body))
            status, out = 200, orjson.dumps({"items": items, "degraded": []})
        except grpc.RpcError as exc:
            status, out = 503, orjson.dumps({"detail": str(exc.code())})
        await send({"type": "http.response.start", "status": status, "headers": _JSON})
        await send({"type": "http.response.body", "body": out})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--retrieval", required=True, help="host:port of the retrieval service")
    parser.add_argument("--query-understanding", default="", help="host:port (optional)")
    parser.add_argument("--ranking", default="", help="host:port (optional)")
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.retrieval, args.query_understanding, args.ranking),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
