"""An OpenAI-compatible reverse proxy over the key pool (Starlette + uvicorn, ``server`` extra).

Point any program that uses the official client at it (``base_url="http://127.0.0.1:8000/v1"``,
``api_key=<the proxy's client key>``): its requests are spread over every key of the pool with
the same rate limiting, retries and key health as the library.

Routes: POST /v1/chat/completions, /v1/completions (a list ``prompt`` is split over the keys
and merged back), /v1/embeddings, /v1/responses; GET /v1/models; GET /health and GET /stats
(the pool's statistics, keys masked). ``stream: true`` responses are relayed chunk by chunk.

Honest answers, never a hang: a missing or wrong client key gets 401; a body over
`max_body_bytes` 413; no key free within `max_wait` seconds 429 with ``retry-after``; a request
that fails for good the upstream status and body (keys masked); upstream timeouts 504. Every
answer carries ``x-ratelimit-*`` headers describing the whole pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hmac
import json
import logging
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any

import openai
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ._core.attempt import Attempts, RetryPolicy
from .errors import NoKeysAvailableError, Verdict, classify, classify_response, redact
from .keys import APIKeyManager, Lease
from .serving import DEFAULT_MAX_BODY_BYTES
from .tokens import estimate_request_tokens

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ProxyServer"]

logger = logging.getLogger(__name__)


DEFAULT_BASE_URL = "https://api.openai.com/v1"
# A list prompt is split into one upstream request per prompt, this many at a time.
MAX_PROMPTS = 2048
MAX_PARTS_IN_FLIGHT = 64


def _error(
    status: int,
    message: str,
    typ: str,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = {"error": {"message": message, "type": typ, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


class ProxyServer:
    """The proxy application over `manager`. `app` is the ASGI app to serve.

    `api_key` is the key clients must present (None: no check, for trusted local use only).
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
    ) -> None:
        self.manager = manager
        self._api_key = api_key.encode() if api_key is not None else None
        self.max_body_bytes = max_body_bytes
        self.max_wait = max_wait
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self._clients: dict[str, Any] = {}
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._post("/chat/completions"), methods=["POST"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
                Route("/v1/embeddings", self._post("/embeddings"), methods=["POST"]),
                Route("/v1/responses", self._post("/responses"), methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/health", self._health, methods=["GET"]),
                Route("/stats", self._stats, methods=["GET"]),
            ]
        )

    # -- routes -------------------------------------------------------------------------------

    def _post(self, path: str) -> Any:
        async def endpoint(request: Request) -> Response:
            body = await self._read(request)
            if isinstance(body, Response):
                return body
            return await self._forward("POST", path, body, stream=bool(body.get("stream")))

        return endpoint

    async def _completions(self, request: Request) -> Response:
        body = await self._read(request)
        if isinstance(body, Response):
            return body
        prompt = body.get("prompt")
        batch = isinstance(prompt, list) and len(prompt) > 1 and not isinstance(prompt[0], int)
        if not batch or body.get("stream"):
            return await self._forward(
                "POST", "/completions", body, stream=bool(body.get("stream"))
            )
        if len(prompt) > MAX_PROMPTS:
            return _error(
                400, f"At most {MAX_PROMPTS} prompts per request.", "invalid_request_error"
            )
        gate = asyncio.Semaphore(MAX_PARTS_IN_FLIGHT)

        async def part(one: Any) -> Response:
            async with gate:
                return await self._forward("POST", "/completions", {**body, "prompt": one})

        parts = await asyncio.gather(*(part(p) for p in prompt))
        for part in parts:
            if part.status_code >= 400:
                return part
        return self._merge_completions(parts, int(body.get("n") or 1))

    async def _models(self, request: Request) -> Response:
        if (denied := self._check_key(request)) is not None:
            return denied
        return await self._forward("GET", "/models", None)

    async def _health(self, request: Request) -> Response:
        capacity = self.manager.capacity()
        status = "ok" if capacity.active_keys else "no usable keys"
        return JSONResponse(
            {"status": status, "active_keys": capacity.active_keys},
            status_code=200 if capacity.active_keys else 503,
        )

    async def _stats(self, request: Request) -> Response:
        if (denied := self._check_key(request)) is not None:
            return denied
        stats = dataclasses.asdict(self.manager.statistics())
        return JSONResponse(json.loads(json.dumps(stats, default=_plain)))

    # -- plumbing -------------------------------------------------------------------------------

    def _check_key(self, request: Request) -> Response | None:
        if self._api_key is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
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

    async def _read(self, request: Request) -> dict[str, Any] | Response:
        if (denied := self._check_key(request)) is not None:
            return denied
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return self._too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                return self._too_large()
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks) or b"{}")
        except (ValueError, RecursionError):
            return _error(400, "The request body is not valid JSON.", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", "invalid_request_error")
        return body

    def _too_large(self) -> Response:
        return _error(
            413,
            f"The request body is larger than this proxy's limit of {self.max_body_bytes} bytes.",
            "invalid_request_error",
            "request_too_large",
        )

    def _client(self, lease: Lease) -> Any:
        config = lease.key_config
        client = self._clients.get(config.api_key)
        if client is None:
            client = openai.DefaultAsyncHttpxClient(proxy=config.proxy, timeout=self.timeout)
            self._clients[config.api_key] = client
        return client

    @staticmethod
    def _upstream_headers(lease: Lease) -> dict[str, str]:
        # Only the pool's key goes upstream; the client's own Authorization never does.
        config = lease.key_config
        headers = {"authorization": f"Bearer {config.api_key}"}
        if config.organization:
            headers["openai-organization"] = config.organization
        if config.project:
            headers["openai-project"] = config.project
        return headers

    def _pool_headers(self) -> dict[str, str]:
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
        """A lease, waiting at most until `deadline` (loop time) in all; else 429 or 503."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                lease = self.manager.try_acquire(tokens)
            except NoKeysAvailableError as exc:
                return _error(503, str(exc), "server_error", "no_keys_available")
            if isinstance(lease, Lease):
                return lease
            if loop.time() + lease > deadline:
                retry = max(1, math.ceil(lease))
                return _error(
                    429,
                    f"Every key of the proxy is at its rate limit; try again in {retry} s.",
                    "requests",
                    "rate_limit_exceeded",
                    {"retry-after": str(retry), **self._pool_headers()},
                )
            await asyncio.sleep(lease)

    async def _forward(
        self, method: str, path: str, body: dict[str, Any] | None, *, stream: bool = False
    ) -> Response:
        tokens = estimate_request_tokens(path, body) if body else 0
        # One budget for all waiting on keys, however many 429s the request meets.
        deadline = asyncio.get_running_loop().time() + self.max_wait
        attempts = Attempts(self.policy)
        last_failure: Response | None = None
        while True:
            lease = await self._acquire(tokens, deadline)
            if isinstance(lease, Response):
                if lease.status_code == 503 and last_failure is not None:
                    return last_failure  # every key died: the last upstream answer says why
                return lease
            try:
                outcome = await self._attempt(lease, method, path, body, stream)
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
                await asyncio.sleep(decision.wait)

    async def _attempt(
        self, lease: Lease, method: str, path: str, body: dict[str, Any] | None, stream: bool
    ) -> Response | tuple[Verdict, Response]:
        """Send once on `lease`: the answer to return, or (verdict, answer) after a failure."""
        client = self._client(lease)
        url = (lease.key_config.api_base or DEFAULT_BASE_URL) + path
        try:
            request = client.build_request(
                method, url, json=body, headers=self._upstream_headers(lease)
            )
        except (TypeError, ValueError) as exc:  # e.g. NaN in the body: the client's fault
            lease.cancel()
            return _error(400, f"The request body cannot be sent: {exc}", "invalid_request_error")
        try:
            response = await client.send(request, stream=True)
            success = response.status_code < 400
            lease.observe_headers(response.headers, success=success)
            if success and stream:
                return StreamingResponse(
                    _relay(response, lease),
                    status_code=response.status_code,
                    media_type=response.headers.get("content-type", "text/event-stream"),
                    headers=self._pool_headers(),
                )
            try:
                content = await response.aread()
            finally:
                await response.aclose()
        except Exception as exc:  # transport failures, before or while reading the answer
            verdict = lease.fail(classify(exc))
            timed_out = "Timeout" in type(exc).__name__
            failure = _error(
                504 if timed_out else 502,
                f"upstream failed: {verdict.reason}",
                "server_error",
                "upstream_timeout" if timed_out else "upstream_unreachable",
            )
            return verdict, failure
        if success:
            lease.succeed(_usage(content), None)
            return self._reply(content, response)
        verdict = lease.fail(
            classify_response(response.status_code, _json(content), response.headers)
        )
        text = redact(content.decode("utf-8", "replace"), [lease.key_config.api_key])
        return verdict, self._reply(text.encode(), response)

    def _reply(self, content: bytes, upstream: Any) -> Response:
        headers = self._pool_headers()
        return Response(
            content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", "application/json"),
            headers=headers,
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
        return JSONResponse(merged, headers=self._pool_headers())

    async def aclose(self) -> None:
        """Close the upstream HTTP clients."""
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


async def _relay(response: Any, lease: Lease) -> AsyncIterator[bytes]:
    """Pass a streamed upstream response through as it arrives, then settle the lease."""
    try:
        # Decoded bytes: the upstream's content-encoding is not passed on to the client.
        async for chunk in response.aiter_bytes():
            yield chunk
    except Exception as exc:  # the upstream broke off: count it against the key
        if not lease.settled:
            lease.fail(classify(exc))
        raise
    finally:
        # Settled before awaiting anything: a cancelled task (client gone) may not resume.
        if not lease.settled:
            lease.succeed(None, None)
        await response.aclose()


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")


def _usage(content: bytes) -> int | None:
    data = _json(content)
    usage = data.get("usage") if isinstance(data, dict) else None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    return total if isinstance(total, int) else None


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"not JSON: {type(value).__name__}")
