"""The ``POST /v1/search`` fast path: what it answers itself and what it hands to FastAPI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from services.gateway.errors import ApiError
from services.gateway.fast_search import MAX_BODY_BYTES, FastSearchMiddleware
from services.gateway.schemas import SearchRequest

ROUTE = object()


class Recorder:
    """The inner (FastAPI) app: records what reached it and the body it could read."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        self.bodies.append(message.get("body", b""))
        await Response(b"inner", status_code=299)(scope, receive, send)


def _scope(path: str = "/v1/search", method: str = "POST", ctype: bytes = b"application/json"):
    headers = [(b"content-type", ctype), (b"x-api-key", b"secret")] if ctype else []
    return {
        "type": "http",
        "path": path,
        "method": method,
        "headers": headers,
        "state": {"request_id": "rid-1"},
    }


async def _run(app: FastSearchMiddleware, scope: dict[str, Any], chunks: list[bytes]):
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def _app(inner: Recorder, calls: list[tuple[SearchRequest, str]], **kw: Any):
    async def answer(req: SearchRequest, rid: str) -> Response:
        calls.append((req, rid))
        if req.query == "fail":
            raise ApiError(503, "retrieval unavailable", {"Retry-After": "1"})
        return Response(orjson.dumps({"query": req.query, "k": req.k}))

    return FastSearchMiddleware(inner, answer=answer, route=ROUTE, authorize=kw.get("auth"))


async def test_valid_request_is_answered_without_the_inner_app() -> None:
    inner, calls = Recorder(), []
    app = _app(inner, calls)
    scope = _scope()
    # the body arrives in two chunks
    status, body = await _run(app, scope, [b'{"query": "Digital ', b'Caliper", "k": 3}'])
    assert status == 200
    assert orjson.loads(body) == {"query": "digital caliper", "k": 3}
    assert calls[0][1] == "rid-1"
    assert scope["route"] is ROUTE  # the metrics label of the route
    assert inner.bodies == []


async def test_invalid_request_is_replayed_to_the_inner_app_with_its_body() -> None:
    inner, calls = Recorder(), []
    app = _app(inner, calls)
    for raw in (b'{"query": "x", "colour": "red"}', b"{not json", b'{"k": 0}'):
        status, body = await _run(app, _scope(), [raw])
        assert (status, body) == (299, b"inner")
        assert inner.bodies[-1] == raw
    assert calls == []


async def test_other_paths_methods_and_content_types_pass_through() -> None:
    inner, calls = Recorder(), []
    app = _app(inner, calls)
    ok = b'{"query": "x"}'
    for scope in (_scope(path="/v1/items/1"), _scope(method="GET"), _scope(ctype=b"text/plain")):
        assert await _run(app, scope, [ok]) == (299, b"inner")
    # a charset parameter is still JSON
    status, _ = await _run(app, _scope(ctype=b"application/json; charset=utf-8"), [ok])
    assert status == 200
    assert len(calls) == 1


async def test_api_errors_become_json_with_their_status_and_headers() -> None:
    inner, calls = Recorder(), []
    seen: list[Mapping[str, str]] = []

    async def auth(headers: Mapping[str, str]) -> None:
        seen.append(headers)
        if headers.get("x-api-key") != "secret":
            raise ApiError(401, "missing or invalid API key")

    app = _app(inner, calls, auth=auth)
    status, body = await _run(app, _scope(), [b'{"query": "fail"}'])
    assert status == 503
    assert orjson.loads(body) == {"detail": "retrieval unavailable"}
    assert seen[0]["x-api-key"] == "secret"

    scope = _scope()
    scope["headers"] = [(b"content-type", b"application/json")]
    status, body = await _run(app, scope, [b'{"query": "x"}'])
    assert status == 401
    assert len(calls) == 1  # refused before the search ran


async def test_oversized_bodies_are_refused_with_413() -> None:
    inner, calls = Recorder(), []
    app = _app(inner, calls)
    big = b'{"query": "' + b"x" * MAX_BODY_BYTES + b'"}'
    # sent in pieces, without a declared length
    pieces = [big[i : i + 65536] for i in range(0, len(big), 65536)]
    status, body = await _run(app, _scope(), pieces)
    assert status == 413 and b"larger than" in body
    # declared too large: refused before reading
    scope = _scope()
    scope["headers"].append((b"content-length", str(len(big)).encode()))
    assert (await _run(app, scope, [b"{}"]))[0] == 413
    # the limit applies whatever the content type, and nothing reached the search
    assert (await _run(app, _scope(ctype=b"text/plain"), pieces))[0] == 413
    assert calls == [] and inner.bodies == []
