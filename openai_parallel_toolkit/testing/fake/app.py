"""The fake server's ASGI application: one request from its arrival to its reply.

`FakeApp.serve` takes a request through the steps every request takes (count and log it, check
its key and path, inject a fault); `FakeApp.answer` answers an endpoint request: `FakeApp.plan`
is where its answer is planned, then the limits admit it (or a 429), then the latency, then the
reply.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import Callable, Iterable
from typing import Any

from starlette.routing import Route, Router
from starlette.types import Message, Receive, Scope, Send

from ...clock import Clock
from ..fake_batches import BatchSettings, FakeBatches
from ..fake_flex import FakeFlex
from . import answers, replies
from .buckets import Headers, LimitBook
from .counters import Traffic
from .errors import (
    CONTEXT_LENGTH_MARKER,
    SERVER_ERROR_BODY,
    ApiError,
    context_length_body,
    error_body,
    invalid_key_body,
)
from .faults import Faults
from .plans import Plan, Planner

__all__ = ["FakeApp"]

_DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
)
_BATCH_KINDS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an "
    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means "
    "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
    "payload, but what was sent was not valid JSON.)"
)
_TOO_LONG = (
    " However, your messages resulted in 128001 tokens. Please reduce the length of the messages."
)


class _Endpoint:
    """An ASGI callable, so that Starlette routes to it without a Request/Response wrapper."""

    __slots__ = ("handler", "kind", "method")

    def __init__(
        self,
        handler: Callable[[Scope, Receive, Send, str], Any],
        kind: str,
        method: str | None,
    ) -> None:
        self.handler = handler
        self.kind = kind
        self.method = method

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = self.kind
        if self.method is not None and scope["method"] != self.method:
            kind = "method_not_allowed"
        await self.handler(scope, receive, send, kind)


class FakeApp:
    """The request handling of one fake server; `router` is the ASGI application.

    `keys` are the accepted keys (None: any), `book` the limits, `rng` the seeded generator of
    jitter and faults. `latency`, `jitter`, `slow_seconds` and `fault_retry_after` are read as each
    request comes in.
    """

    def __init__(
        self,
        keys: Iterable[str] | None,
        book: LimitBook,
        clock: Clock,
        rng: random.Random,
        batches: BatchSettings,
    ) -> None:
        self.keys = frozenset(keys) if keys is not None else None
        self.book = book
        self.traffic = Traffic()
        self.faults = Faults(rng)
        self.planner = Planner()
        self.batches = FakeBatches(self.batch_answer, clock, batches)
        self.flex = FakeFlex(rng=rng)
        self.latency = 0.0
        self.jitter = 0.0
        self.slow_seconds = 5.0
        self.fault_retry_after = 1.0
        self.stopping = False  # set while stopping: a cancelled request then drops quietly
        self._rng = rng
        self._models: dict[str, None] = dict.fromkeys(_DEFAULT_MODELS)
        self._ids = itertools.count(1)
        self._id_prefix = f"{random.getrandbits(40):010x}"
        self.router = self._routes()

    def _routes(self) -> Router:
        def route(path: str, kind: str, method: str | None) -> Route:
            return Route(path, _Endpoint(self.handle, kind, method))

        return Router(
            routes=[
                route("/v1/chat/completions", "chat", "POST"),
                route("/v1/completions", "completions", "POST"),
                route("/v1/embeddings", "embeddings", "POST"),
                route("/v1/responses", "responses", "POST"),
                route("/v1/models", "models", "GET"),
                route("/v1/models/{model:path}", "model", "GET"),
                route("/v1/files", "batch_api", None),
                route("/v1/files/{rest:path}", "batch_api", None),
                route("/v1/batches", "batch_api", None),
                route("/v1/batches/{rest:path}", "batch_api", None),
            ],
            redirect_slashes=False,
            default=_Endpoint(self.handle, "not_found", None),
        )

    def _new_request_id(self) -> str:
        return f"req_{self._id_prefix}{next(self._ids):022x}"

    async def handle(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        """Serve one request, counted in flight until its reply is complete."""
        key = _bearer(scope) or ""
        self.traffic.enter(key)
        left = False

        def leave() -> None:
            nonlocal left
            if not left:
                left = True
                self.traffic.leave(key)

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                leave()  # before the reply's end: a client never sees its request in flight
            await send(message)

        try:
            await self.serve(scope, receive, send_tracked, kind)
        except asyncio.CancelledError:
            if self.stopping:
                # uvicorn logs whatever the app raises; this one is filtered out of the log.
                raise replies.ConnectionDropped("server stopped") from None
            raise
        finally:
            leave()

    async def serve(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        """The steps of every request, then the reply of its `kind` of endpoint."""
        request_id = self._new_request_id()
        # The delay as set when the request came in: a change applies to later requests only.
        delay = (self.latency, self.jitter)
        headers: Headers = [(b"x-request-id", request_id.encode())]
        method: str = scope["method"]
        path: str = scope["path"]
        key = _bearer(scope)
        ckey = key or ""
        raw = await _read_body(receive) if method == "POST" else b""
        body = _json_or_none(raw)
        self.traffic.arrived(key, method, path, body)
        refusal = self._refusal(key, kind, method, path)
        if refusal is not None:
            self.traffic.finish(ckey, "error")
            await replies.reply(send, *refusal, headers)
            return
        fault = self.faults.pick(ckey) if self.faults else None
        if fault == "slow":
            await asyncio.sleep(self.slow_seconds)
        elif fault is not None:
            self.traffic.finish(ckey, "error")
            model = body.get("model") if isinstance(body, dict) else None
            await replies.fault(send, fault, ckey, model, headers, self.fault_retry_after)
            return
        if kind == "batch_api":
            status, payload, media = self.batches.handle(
                method,
                path,
                scope["query_string"],
                _header(scope, b"content-type"),
                raw,
                self.book.settings.project(ckey),
            )
            self.traffic.finish(ckey, "ok" if status == 200 else "error")
            await replies.reply(send, status, payload, headers, media)
        elif kind == "models" or kind == "model":
            status, payload = self._models_reply(kind, path)
            self.traffic.finish(ckey, "ok" if status == 200 else "error")
            await replies.reply(send, status, payload, headers)
        else:
            await self.answer(send, ckey, kind, body, request_id, headers, delay)

    def _refusal(
        self, key: str | None, kind: str, method: str, path: str
    ) -> tuple[int, bytes] | None:
        """The error reply of a request refused before anything else is looked at."""
        if key is None:
            return 401, error_body(_NO_KEY, "invalid_request_error", None, "invalid_api_key")
        if self.keys is not None and key not in self.keys:
            return 401, invalid_key_body(key)
        if kind == "not_found" or kind == "method_not_allowed":
            status = 404 if kind == "not_found" else 405
            return status, error_body(f"Invalid URL ({method} {path})", "invalid_request_error")
        return None

    def plan(self, kind: str, body: dict[str, Any]) -> Plan:
        """Where a request's answer is planned (online and in batches); `ApiError` for a 400."""
        return self.planner.plan(kind, body)

    async def answer(
        self,
        send: Send,
        key: str,
        kind: str,
        body: Any,
        request_id: str,
        headers: Headers,
        delay: tuple[float, float],
    ) -> None:
        """Answer an endpoint request: plan, admit (or 429), error markers, delay, reply."""
        try:
            if not isinstance(body, dict):
                raise ApiError(400, _BAD_JSON)
            plan = self.plan(kind, body)
        except ApiError as exc:
            self.traffic.finish(key, "error")
            await replies.reply(send, exc.status, exc.body, headers)
            return
        if plan.model not in self._models:  # /v1/models lists the models requests named
            self._models[plan.model] = None
        unavailable = self.flex.refusal(kind, body)  # before any limit: it is not billed
        if unavailable is not None:
            self.traffic.finish(key, "error")
            await replies.reply(send, 429, unavailable, headers)
            return
        plan.render = self.flex.render(kind, body, plan.render)
        if not await self._admit(send, key, plan, headers):
            return
        if plan.marker is not None:
            self.traffic.finish(key, "error")
            if plan.marker == CONTEXT_LENGTH_MARKER:
                error = context_length_body(plan.param, _TOO_LONG)
                await replies.reply(send, 400, error, headers)
            else:
                await replies.reply(send, 500, SERVER_ERROR_BODY, headers)
            return
        latency, jitter = delay
        if jitter:
            latency += self._rng.uniform(-jitter, jitter)
        if latency > 0:
            await asyncio.sleep(latency)
        rendered = plan.render(request_id)
        # Counted before replying, so that a client never sees its reply before the count.
        tokens = (plan.prompt_tokens, plan.completion_tokens, plan.cached_tokens)
        self.traffic.finish(key, "ok", *tokens)
        if isinstance(rendered, bytes):
            await replies.reply(send, 200, rendered, headers)
        else:
            await replies.stream(send, rendered, headers)

    async def _admit(self, send: Send, key: str, plan: Plan, headers: Headers) -> bool:
        """Charge `plan` to `key`'s limits (adding their headers); False after a 429 reply."""
        bucket = self.book.bucket(key)
        if bucket is not None:
            rejected = self.book.admit(bucket, plan.cost)
            if self.book.settings.send_headers:
                headers.extend(bucket.headers())
            if rejected is not None:
                self.traffic.finish(key, "limited")
                await replies.limited(send, bucket, plan, *rejected, headers)
                return False
        self.traffic.charged(key, plan.cost)
        return True

    def _models_reply(self, kind: str, path: str) -> tuple[int, bytes]:
        if kind == "models":
            return 200, answers.models(list(self._models))
        name = path[len("/v1/models/") :]
        if name in self._models:
            return 200, answers.model(name)
        message = f"The model '{name}' does not exist or you do not have access to it."
        return 404, error_body(message, "invalid_request_error", None, "model_not_found")

    def batch_answer(self, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], int]:
        """One batch line answered as the online endpoint answers it (never streamed):
        (status, JSON body, input tokens)."""
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        request_id = self._new_request_id()
        try:
            plan = self.plan(_BATCH_KINDS[url], body)
        except ApiError as exc:
            return exc.status, json.loads(exc.body), 0
        if plan.marker == CONTEXT_LENGTH_MARKER:
            return 400, json.loads(context_length_body(plan.param)), plan.prompt_tokens
        if plan.marker is not None:
            return 500, json.loads(SERVER_ERROR_BODY), plan.prompt_tokens
        rendered = plan.render(request_id)
        assert isinstance(rendered, bytes)  # never streamed
        return 200, json.loads(rendered), plan.prompt_tokens


def _json_or_none(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            if value[:7].lower() == b"bearer ":
                key = value[7:].strip().decode("latin-1")
                return key or None
            return None
    return None


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""
