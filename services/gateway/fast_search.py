"""``POST /v1/search`` served straight from ASGI, FastAPI's route as its fallback.

FastAPI's request machinery (routing, body reading, dependency solving, the body model
built through a wrapper model) costs about 0.3 ms per search on the 2-core development
machine, as much as everything else the gateway adds to a retrieval call. A well-formed
JSON request is therefore validated here with the same ``SearchRequest`` model
(pydantic-core parses the JSON itself) and answered by the same handler as the route. A
request that is not JSON or does not validate is replayed, body and all, to the FastAPI
route, so clients get FastAPI's standard 422 document and the OpenAPI schema describes
exactly what is served. Bodies larger than any valid search are refused with 413 before
they are read into memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from pydantic import ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import ApiError
from services.gateway.schemas import SearchRequest

PATH = "/v1/search"
# A search is small: a query of at most 1,024 characters, up to 1,000 excluded ids of at
# most 64 characters, a category prefix. Bodies past this are refused with 413 unread.
MAX_BODY_BYTES = 256 * 1024
AnswerSearch = Callable[[SearchRequest, str], Awaitable[Response]]
Authorize = Callable[[Mapping[str, str]], Awaitable[None]]


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    """Exactly ``application/json`` (parameters aside); other JSON media types that FastAPI
    accepts (``application/*+json``) take its route."""
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


class FastSearchMiddleware:
    """Answers well-formed ``POST /v1/search`` requests; passes everything else on."""

    def __init__(
        self, app: ASGIApp, answer: AnswerSearch, authorize: Authorize | None, route: object
    ) -> None:
        self.app = app
        self.answer = answer
        self.authorize = authorize
        self.route = route  # what the metrics middleware reads the route label from

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        try:
            body = await _read_body(scope, receive)
        except _TooLargeError:
            await _error(413, f"request body larger than {MAX_BODY_BYTES} bytes")(
                scope, receive, send
            )
            return
        except _DisconnectedError:
            return
        if not _is_json(scope["headers"]):
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            request = SearchRequest.model_validate_json(body)
        except ValidationError:
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            if self.authorize is not None:
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                await self.authorize(headers)
            response = await self.answer(request, scope.get("state", {}).get("request_id", ""))
        except ApiError as exc:
            response = _error(exc.status, exc.detail, exc.headers)
        await response(scope, receive, send)


class _TooLargeError(Exception):
    pass


class _DisconnectedError(Exception):
    pass


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    """The whole request body, refused past :data:`MAX_BODY_BYTES` (declared or sent)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
            raise _TooLargeError
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            raise _DisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _TooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the already-read body once, then the client's messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
