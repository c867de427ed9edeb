"""An OpenAI-compatible reverse proxy over the key pool (Starlette + uvicorn, ``server`` extra).

Point any program that uses the official client at it (``base_url="http://127.0.0.1:8000/v1"``,
``api_key=<the proxy's client key>``): its requests are spread over every key of the pool with
the same rate limiting, retries and key health as the library.

Routes: POST /v1/chat/completions, /v1/completions (a list ``prompt`` is split over the keys
and merged back), /v1/embeddings, /v1/responses; GET /v1/models; GET /health and GET /stats
(the pool's statistics, keys masked), GET /metrics (Prometheus, see `proxymetrics`; needs
``prometheus-client``, part of the ``server`` extra). ``stream: true`` responses are relayed
chunk by chunk.

Honest answers, never a hang: every request but GET /health needs the client key (401 first,
so unknown routes cannot be probed); unknown routes and methods get 404 / 405, never a
redirect; a body over `max_body_bytes` 413; no key free within `max_wait` seconds 429 with
``retry-after``; a request that fails for good the upstream status and body (keys masked);
upstream timeouts 504. Every error has OpenAI's shape, and every forwarded answer carries
``x-ratelimit-*`` headers describing the whole pool. /health answers 503 with a reason when no
key is usable or the recent upstream attempts all failed to connect (`UpstreamHealth`).

The event loop never does CPU-heavy work: bodies over `INLINE_BYTES` are parsed, estimated and
split in a worker thread, so one huge request does not stall every other client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
import openai
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ._core.attempt import Attempts, RetryPolicy
from ._drivers import aio
from .clock import Clock, SystemClock
from .errors import (
    NoKeysAvailableError,
    SlotTimeoutError,
    Verdict,
    classify,
    classify_response,
    redact,
)
from .keys import APIKeyManager, Lease

if TYPE_CHECKING:
    from .proxymetrics import ProxyMetrics
from .serving import DEFAULT_MAX_BODY_BYTES
from .tokens import DEFAULT_COMPLETION_TOKENS, estimate_request_tokens

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ProxyServer", "UpstreamHealth"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# A list prompt is split into one upstream request per prompt, this many at a time.
MAX_PROMPTS = 2048
MAX_PARTS_IN_FLIGHT = 64
# Bodies up to this size are parsed and estimated on the event loop (well under a millisecond);
# larger ones in a worker thread.
INLINE_BYTES = 64 * 1024
# The only route a client may use without the client key.
PUBLIC_ROUTES = frozenset({("GET", "/health"), ("HEAD", "/health")})


def _error(
    status: int,
    message: str,
    typ: str,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = {"error": {"message": message, "type": typ, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


async def _off_loop(size: int, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``: inline for inputs up to `INLINE_BYTES`, else in a worker thread."""
    if size <= INLINE_BYTES:
        return function(*args)
    return await anyio.to_thread.run_sync(function, *args)


class UpstreamHealth:
    """Recent upstream outcomes, so /health can tell without sending anything (sans-I/O).

    Unhealthy once the last `failures` attempts in a row failed at the transport level
    (connection refused, DNS, TLS, timeout), until an attempt reaches the upstream again (any
    HTTP answer counts) or the last failure is `stale_after` seconds old: with no recent
    traffic there is no evidence either way, and a probe must not keep a proxy out for ever.
    """

    def __init__(
        self, *, failures: int = 3, stale_after: float = 60.0, clock: Clock | None = None
    ) -> None:
        self.failures = failures
        self.stale_after = stale_after
        self._clock = clock or SystemClock()
        self._in_a_row = 0
        self._last_failure: float | None = None
        self._last_reason = ""

    def reached(self) -> None:
        """An attempt got an HTTP answer from the upstream (whatever its status)."""
        self._in_a_row = 0

    def unreachable(self, reason: str) -> None:
        """An attempt failed before or while getting an answer."""
        self._in_a_row += 1
        self._last_failure = self._clock.monotonic()
        self._last_reason = reason

    def problem(self) -> str | None:
        """Why the upstream looks unreachable now, or None."""
        if self._in_a_row < self.failures or self._last_failure is None:
            return None
        if self._clock.monotonic() - self._last_failure >= self.stale_after:
            return None
        return (
            f"the last {self._in_a_row} upstream attempts failed to get an answer "
            f"(latest: {self._last_reason})"
        )

    def __repr__(self) -> str:
        return f"UpstreamHealth(failures_in_a_row={self._in_a_row}, problem={self.problem()!r})"


class _Upstream:
    """Sends requests over the pool's keys: leases, retries, relaying, the pool's headers."""

    def __init__(
        self,
        manager: APIKeyManager,
        *,
        max_wait: float,
        timeout: float,
        policy: RetryPolicy,
        health: UpstreamHealth,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.max_wait = max_wait
        self.timeout = timeout
        self.policy = policy
        self.health = health
        self._clients: dict[str, Any] = {}

    def _client(self, lease: Lease) -> Any:
        config = lease.key_config
        client = self._clients.get(config.api_key)
        if client is None:
            client = openai.DefaultAsyncHttpxClient(proxy=config.proxy, timeout=self.timeout)
            self._clients[config.api_key] = client
        return client

    @staticmethod
    def _headers(lease: Lease, payload: bytes | None) -> dict[str, str]:
        # Only the pool's key goes upstream; the client's own Authorization never does.
        config = lease.key_config
        headers = {"authorization": f"Bearer {config.api_key}"}
        if payload is not None:
            headers["content-type"] = "application/json"
        if config.organization:
            headers["openai-organization"] = config.organization
        if config.project:
            headers["openai-project"] = config.project
        return headers

    def pool_headers(self) -> dict[str, str]:
        """``x-ratelimit-*`` headers describing the whole pool."""
        capacity = self.manager.capacity()
        headers = {}
        for name, value in (
            ("x-ratelimit-limit-requests", capacity.limit_requests),
            ("x-ratelimit-remaining-requests", capacity.remaining_requests),
            ("x-ratelimit-limit-tokens", capacity.limit_tokens),
            ("x-ratelimit-remaining-tokens", capacity.remaining_tokens),
        ):
            if value is not None:
                headers[name] = str(math.floor(value))
        return headers

    async def _acquire(self, tokens: int, deadline: float) -> Lease | Response:
        """A lease, waiting in turn (with every other request and any thread on the pool) at
        most until `deadline` (the pool clock's seconds); else 429, or 503 without keys."""
        left = max(0.0, deadline - self.manager.clock.monotonic())
        started = time.monotonic()
        try:
            lease = await self.manager.acquire_async(tokens, timeout=left)
            if self.metrics is not None:
                self.metrics.waited(time.monotonic() - started)
            return lease
        except NoKeysAvailableError as exc:
            return _error(503, str(exc), "server_error", "no_keys_available")
        except SlotTimeoutError as exc:
            retry = max(1, math.ceil(exc.retry_after or 0.0))
            return _error(
                429,
                f"Every key of the proxy is at its rate limit; try again in {retry} s.",
                "requests",
                "rate_limit_exceeded",
                {"retry-after": str(retry), **self.pool_headers()},
            )

    async def forward(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        tokens: int,
        *,
        stream: bool = False,
        model: str | None = None,
    ) -> Response:
        """Send `payload` (JSON bytes, or None) to `path` until it succeeds or fails for good;
        `model` (the body's) labels the metrics."""
        # One budget for all waiting on keys, however many 429s the request meets.
        deadline = self.manager.clock.monotonic() + self.max_wait
        attempts = Attempts(self.policy)
        last_failure: Response | None = None
        while True:
            lease = await self._acquire(tokens, deadline)
            if isinstance(lease, Response):
                if lease.status_code == 503 and last_failure is not None:
                    return last_failure  # every key died: the last upstream answer says why
                return lease
            try:
                outcome = await self._timed_attempt(lease, method, path, payload, stream, model)
            except BaseException:
                if not lease.settled:  # cancelled (client gone) or a bug: give the slot back
                    lease.cancel()
                raise
            if isinstance(outcome, Response):
                return outcome
            verdict, failure = outcome
            decision = attempts.after(verdict)
            if decision.give_up is not None:
                return failure
            last_failure = failure
            if decision.wait:
                await aio.sleep(self.manager.clock, decision.wait)

    async def _timed_attempt(
        self,
        lease: Lease,
        method: str,
        path: str,
        payload: bytes | None,
        stream: bool,
        model: str | None,
    ) -> Response | tuple[Verdict, Response]:
        """`_attempt`, its latency, tokens and cost counted in the metrics."""
        started = time.monotonic()
        outcome = await self._attempt(lease, method, path, payload, stream, model)
        if self.metrics is not None:
            error = None
            if not isinstance(outcome, Response):
                error = str(outcome[1].status_code)  # the status the client would get
            self.metrics.tried(path, model, time.monotonic() - started, error)
        return outcome

    async def _attempt(
        self,
        lease: Lease,
        method: str,
        path: str,
        payload: bytes | None,
        stream: bool,
        model: str | None,
    ) -> Response | tuple[Verdict, Response]:
        """Send once on `lease`: the answer to return, or (verdict, answer) after a failure."""
        client = self._client(lease)
        url = (lease.key_config.api_base or DEFAULT_BASE_URL) + path
        request = client.build_request(
            method, url, content=payload, headers=self._headers(lease, payload)
        )
        try:
            response = await client.send(request, stream=True)
            self.health.reached()
            success = response.status_code < 400
            lease.observe_headers(response.headers, success=success)
            if success and stream:
                return StreamingResponse(
                    _relay(response, lease),
                    status_code=response.status_code,
                    media_type=response.headers.get("content-type", "text/event-stream"),
                    headers=self.pool_headers(),
                )
            try:
                content = await response.aread()
            finally:
                await response.aclose()
        except Exception as exc:  # transport failures, before or while reading the answer
            verdict = lease.fail(classify(exc, proxy=lease.key_config.proxy))
            self.health.unreachable(verdict.reason)
            timed_out = "Timeout" in type(exc).__name__
            failure = _error(
                504 if timed_out else 502,
                f"upstream failed: {verdict.reason}",
                "server_error",
                "upstream_timeout" if timed_out else "upstream_unreachable",
            )
            return verdict, failure
        if success:
            data = _json(content)
            lease.succeed(_usage(data), None)
            if self.metrics is not None:
                self.metrics.answered(path, model, data)
            return self._reply(content, response)
        verdict = lease.fail(
            classify_response(response.status_code, _json(content), response.headers)
        )
        text = redact(content.decode("utf-8", "replace"), [lease.key_config.api_key])
        return verdict, self._reply(text.encode(), response)

    def _reply(self, content: bytes, upstream: Any) -> Response:
        return Response(
            content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", "application/json"),
            headers=self.pool_headers(),
        )

    async def aclose(self) -> None:
        """Close the upstream HTTP clients."""
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


class _ClientKeyGate:
    """ASGI middleware: every request but `PUBLIC_ROUTES` needs the client key, before routing."""

    def __init__(self, app: ASGIApp, check: Callable[[Headers], Response | None]) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["method"], scope["path"]) not in PUBLIC_ROUTES:
            denied = self.check(Headers(scope=scope))
            if denied is not None:
                await denied(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ProxyServer:
    """The proxy application over `manager`. `app` is the ASGI app to serve.

    `api_key` is the key clients must present (None: no check, for trusted local use only).
    `health` records the upstream outcomes /health reports (default: `UpstreamHealth()`).
    Slow clients and connection counts are the server's business: see `asgi.uvicorn_config`.
    """

    def __init__(
        self,
        manager: APIKeyManager,
        api_key: str | None,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_wait: float = 10.0,
        timeout: float = 120.0,
        policy: RetryPolicy | None = None,
        health: UpstreamHealth | None = None,
    ) -> None:
        self.manager = manager
        self._api_key = api_key.encode() if api_key is not None else None
        self.max_body_bytes = max_body_bytes
        self.health = health or UpstreamHealth()
        self.metrics = _metrics_for(manager)
        self._upstream = _Upstream(
            manager,
            max_wait=max_wait,
            timeout=timeout,
            policy=policy or RetryPolicy(),
            health=self.health,
            metrics=self.metrics,
        )
        middleware = [Middleware(_ClientKeyGate, check=self._check_key)]
        routes = [
            Route("/v1/chat/completions", self._post("/chat/completions"), methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/embeddings", self._post("/embeddings"), methods=["POST"]),
            Route("/v1/responses", self._post("/responses"), methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/stats", self._stats, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
        ]
        if self.metrics is not None:  # outermost: 401s and 404s are counted too
            from .proxymetrics import MeteredApp

            paths = frozenset(route.path for route in routes)
            middleware.insert(0, Middleware(MeteredApp, metrics=self.metrics, routes=paths))
        self.app = Starlette(
            routes=routes,
            middleware=middleware,
            exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        )
        # No redirects: Starlette would answer "/v1/x/" with a 307 to an URL built from the
        # client's Host header, unauthenticated.
        self.app.router.redirect_slashes = False

    @property
    def max_wait(self) -> float:
        """Seconds a request may wait for a free key, in all, before 429."""
        return self._upstream.max_wait

    @property
    def timeout(self) -> float:
        """Upstream timeout, seconds."""
        return self._upstream.timeout

    # -- routes -------------------------------------------------------------------------------

    def _post(self, path: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            read = await self._read(request)
            if isinstance(read, Response):
                return read
            raw, body = read
            tokens = await _off_loop(len(raw), _cost, path, body, len(raw))
            stream = bool(body.get("stream"))
            model = _model_of(body)
            return await self._upstream.forward(
                "POST", path, raw, tokens, stream=stream, model=model
            )

        return endpoint

    async def _completions(self, request: Request) -> Response:
        read = await self._read(request)
        if isinstance(read, Response):
            return read
        raw, body = read
        prompt = body.get("prompt")
        # A list of several prompts (not one prompt's token ids) is split into parts.
        prompts = (
            prompt
            if isinstance(prompt, list) and len(prompt) > 1 and not isinstance(prompt[0], int)
            else None
        )
        if prompts is None or body.get("stream"):
            tokens = await _off_loop(len(raw), _cost, "/completions", body, len(raw))
            stream = bool(body.get("stream"))
            return await self._upstream.forward(
                "POST", "/completions", raw, tokens, stream=stream, model=_model_of(body)
            )
        if len(prompts) > MAX_PROMPTS:
            return _error(
                400, f"At most {MAX_PROMPTS} prompts per request.", "invalid_request_error"
            )
        split = await _off_loop(len(raw), _split_prompts, body, len(raw))
        gate = asyncio.Semaphore(MAX_PARTS_IN_FLIGHT)

        async def part(payload: bytes, tokens: int) -> Response:
            async with gate:
                return await self._upstream.forward(
                    "POST", "/completions", payload, tokens, model=_model_of(body)
                )

        parts = await asyncio.gather(*(part(*one) for one in split))
        for answer in parts:
            if answer.status_code >= 400:
                return answer
        return self._merge_completions(parts, int(body.get("n") or 1))

    async def _models(self, request: Request) -> Response:
        return await self._upstream.forward("GET", "/models", None, 0)

    async def _health(self, request: Request) -> Response:
        active = self.manager.capacity().active_keys
        if not active:
            status, reason = "no usable keys", "every key of the pool is removed or disabled"
        elif (problem := self.health.problem()) is not None:
            status, reason = "upstream unreachable", problem
        else:
            return JSONResponse({"status": "ok", "active_keys": active})
        return JSONResponse(
            {"status": status, "active_keys": active, "reason": reason}, status_code=503
        )

    async def _metrics(self, request: Request) -> Response:
        if self.metrics is None:
            return _error(
                501,
                "Metrics need prometheus-client: pip install 'openai-parallel-toolkit[server]'.",
                "server_error",
            )
        content, media_type = await anyio.to_thread.run_sync(self.metrics.exposition)
        return Response(content, media_type=media_type)

    async def _stats(self, request: Request) -> Response:
        stats = dataclasses.asdict(self.manager.statistics())
        return JSONResponse(json.loads(json.dumps(stats, default=_plain)))

    # -- plumbing -------------------------------------------------------------------------------

    def _check_key(self, headers: Headers) -> Response | None:
        if self._api_key is None:
            return None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return _error(
                401,
                "You didn't provide an API key. Send it in the Authorization header as "
                "'Bearer <key>'.",
                "invalid_request_error",
            )
        if not hmac.compare_digest(given.strip().encode(), self._api_key):
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        return None

    async def _read(self, request: Request) -> tuple[bytes, dict[str, Any]] | Response:
        """The raw body (at most `max_body_bytes`, else 413) and its JSON object (else 400)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return self._too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                return self._too_large()
            chunks.append(chunk)
        raw = b"".join(chunks) or b"{}"
        try:
            body = await _off_loop(len(raw), _loads, raw)
        except (ValueError, RecursionError):
            return _error(400, "The request body is not valid JSON.", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", "invalid_request_error")
        return raw, body

    def _too_large(self) -> Response:
        return _error(
            413,
            f"The request body is larger than this proxy's limit of {self.max_body_bytes} bytes.",
            "invalid_request_error",
            "request_too_large",
        )

    def _merge_completions(self, parts: list[Response], n: int) -> Response:
        merged: dict[str, Any] | None = None
        usage: dict[str, int] = {}
        choices: list[dict[str, Any]] = []
        for position, part in enumerate(parts):
            data = json.loads(bytes(part.body))
            merged = merged or data
            for choice in data.get("choices", []):
                choice["index"] = position * n + int(choice.get("index", 0))
                choices.append(choice)
            for name, value in (data.get("usage") or {}).items():
                if isinstance(value, int):
                    usage[name] = usage.get(name, 0) + value
        assert merged is not None
        merged["choices"] = choices
        if usage:
            merged["usage"] = usage
        return JSONResponse(merged, headers=self._upstream.pool_headers())

    async def aclose(self) -> None:
        """Close the upstream HTTP clients."""
        await self._upstream.aclose()


async def _http_error(request: Request, exc: Exception) -> Response:
    """404 / 405 (and any other `HTTPException`) in OpenAI's error shape."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        message = f"Invalid URL ({where})."
    elif exc.status_code == 405:
        message = f"Method not allowed ({where})."
    else:
        message = exc.detail
    return _error(exc.status_code, message, "invalid_request_error", headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug: OpenAI's error shape rather than plain text (uvicorn logs the traceback)."""
    return _error(500, "The proxy failed to handle the request.", "server_error")


async def _relay(response: Any, lease: Lease) -> AsyncIterator[bytes]:
    """Pass a streamed upstream response through as it arrives, then settle the lease."""
    try:
        # Decoded bytes: the upstream's content-encoding is not passed on to the client.
        async for chunk in response.aiter_bytes():
            yield chunk
    except Exception as exc:  # the upstream broke off: count it against the key
        if not lease.settled:
            lease.fail(classify(exc, proxy=lease.key_config.proxy))
        raise
    finally:
        # Settled before awaiting anything: a cancelled task (client gone) may not resume.
        if not lease.settled:
            lease.succeed(None, None)
        await response.aclose()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(raw: bytes) -> Any:
    """Strict JSON: NaN and Infinity are refused (the body is forwarded as it came)."""
    return json.loads(raw, parse_constant=_reject_constant)


def _cost(path: str, body: dict[str, Any], size: int) -> int:
    """The token estimate of `body`; by its size when it is too deep to walk."""
    try:
        return estimate_request_tokens(path, body)
    except RecursionError:
        return size // 4 + DEFAULT_COMPLETION_TOKENS


def _split_prompts(body: dict[str, Any], size: int) -> list[tuple[bytes, int]]:
    """One (JSON payload, token estimate) per prompt of a list-prompt completion request."""
    parts = []
    for prompt in body["prompt"]:
        part = {**body, "prompt": prompt}
        payload = json.dumps(part, ensure_ascii=False, separators=(",", ":")).encode()
        parts.append((payload, _cost("/completions", part, len(payload))))
    return parts


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")


def _usage(data: Any) -> int | None:
    usage = data.get("usage") if isinstance(data, dict) else None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    return total if isinstance(total, int) else None


def _model_of(body: Mapping[str, Any]) -> str | None:
    model = body.get("model")
    return model if isinstance(model, str) else None


def _metrics_for(manager: APIKeyManager) -> ProxyMetrics | None:
    """The proxy's metrics, or None without prometheus-client (then /metrics says so)."""
    try:
        from .proxymetrics import ProxyMetrics
    except ImportError:
        return None
    return ProxyMetrics(manager)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"not JSON: {type(value).__name__}")
