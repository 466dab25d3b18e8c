"""A bare HTTP → gRPC pass-through: the least a Python HTTP front of retrieval costs here.

``python -m loadtest.benchmarks.passthrough --port P --retrieval 127.0.0.1:R``

One ASGI callable under uvicorn (the gateway's server, loop and HTTP parser), no
framework, no validation, no feature store: the client sends the query, the user and
the history; the body is forwarded as one ``Retrieve`` call and the item ids come back.
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
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc

_JSON = [(b"content-type", b"application/json")]


def make_app(retrieval_addr: str) -> Any:
    """The ASGI app: ``POST`` ``{"query", "user_id", "history", "k"}`` → ``{"items": [...]}``."""
    state: dict[str, Any] = {}

    async def lifespan(receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["channel"] = grpc.aio.insecure_channel(retrieval_addr)
                state["stub"] = retrieval_pb2_grpc.RetrievalServiceStub(state["channel"])
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await state["channel"].close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        req = orjson.loads(body)
        request = retrieval_pb2.RetrieveRequest(
            query=req["query"],
            user=common_pb2.UserContext(user_id=req["user_id"], recent_item_ids=req["history"]),
            k=req["k"],
        )
        try:
            reply = await state["stub"].Retrieve(request, timeout=2.0)
            status = 200
            out = orjson.dumps(
                {
                    "items": [c.item_id for c in reply.candidates],
                    "degraded": [d.stage for d in reply.degraded],
                }
            )
        except grpc.RpcError as exc:
            status, out = 503, orjson.dumps({"detail": str(exc.code())})
        await send({"type": "http.response.start", "status": status, "headers": _JSON})
        await send({"type": "http.response.body", "body": out})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--retrieval", required=True, help="host:port of the retrieval service")
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.retrieval),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
