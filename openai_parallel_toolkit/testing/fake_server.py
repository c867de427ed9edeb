"""A fake OpenAI-compatible HTTP server for offline tests, benchmarks and pipeline dry runs.

`FakeOpenAIServer` serves chat completions (plain and streamed), completions, embeddings,
models and a minimal responses endpoint on 127.0.0.1, from a background thread. Replies are
deterministic echoes of the input, so tests can check order. It enforces OpenAI-style rate
limits (a request bucket and a token bucket per key or per group of keys), sends the
``x-ratelimit-*`` headers, and can inject faults (quota, bad key, 500, 429 with or without
``retry-after``, slow, dropped connection) per key.

Chat replies report ``prompt_tokens_details.cached_tokens`` as OpenAI's prompt caching does
for a repeated prefix: the leading system (or developer) messages of a request count as cached
when an earlier request began with the same ones (whatever their length, unlike OpenAI's 1,024
token minimum, so that small tests see cache hits).

The Batch API (``/v1/files``, ``/v1/batches``) is served by `fake_batches.FakeBatches`
(``server.batches``): batches advance with the server's clock, and their lines get the same echo
answers as the online endpoints. A project there is a key's limit group (else the key itself).

Markers inside a prompt trigger permanent errors: ``[[context_length_exceeded]]`` gives a 400,
``[[server_error]]`` a 500.

Run it from the command line with ``python -m openai_parallel_toolkit.testing``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import itertools
import json
import logging
import math
import random
import signal
import struct
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from starlette.routing import Route, Router
from starlette.types import Message, Receive, Scope, Send

from ..asgi import BackgroundServer
from ..clock import Clock, SystemClock
from .fake_batches import BatchSettings, FakeBatches

__all__ = [
    "FAULTS",
    "FakeOpenAIServer",
    "KeyCounters",
    "build_parser",
    "format_duration",
    "main",
]

FAULTS: frozenset[str] = frozenset(
    {
        "insufficient_quota",
        "invalid_api_key",
        "server_error",
        "rate_limit",
        "rate_limit_bare",
        "slow",
        "drop",
    }
)
"""The fault names accepted by `FakeOpenAIServer.set_fault`.

``rate_limit`` is a 429 ``rate_limit_exceeded`` with ``retry-after: 1``; ``rate_limit_bare`` the
same 429 with no ``retry-after`` and no ``x-ratelimit-*`` headers at all. Neither is charged to
the limits: they are 429s that do not mean the limit is used up.
"""

CONTEXT_LENGTH_MARKER = "[[context_length_exceeded]]"
SERVER_ERROR_MARKER = "[[server_error]]"

_DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
)
_DEFAULT_MAX_TOKENS = 16
_DEFAULT_EMBEDDING_DIMS = 8
_MAX_EMBEDDING_DIMS = 8192
_LOG_SIZE = 10_000
_MODEL_CREATED = 1_700_000_000

_JSON_HEADERS = (b"content-type", b"application/json")
_SSE_HEADERS = (b"content-type", b"text/event-stream; charset=utf-8")

_Headers = list[tuple[bytes, bytes]]
_BATCH_KINDS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}


@dataclass(frozen=True, slots=True)
class KeyCounters:
    """What the server saw for one key (or in total): a snapshot, safe to keep.

    ``rate_limited`` counts 429s caused by the rate limits; every other non-2xx reply
    (auth failures, injected faults including the ``rate_limit`` fault, 400s, dropped
    connections) counts in ``errors``. Token counts are those billed on successful replies.
    """

    requests: int = 0
    successes: int = 0
    rate_limited: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    charged_tokens: int = 0  # what admitted requests cost the token limit (prompt + max_tokens)
    cached_tokens: int = 0  # of prompt_tokens, those reported as cached (a repeated prefix)


class _Counts:
    __slots__ = (
        "cached_tokens",
        "charged_tokens",
        "completion_tokens",
        "errors",
        "prompt_tokens",
        "rate_limited",
        "requests",
        "successes",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.successes = 0
        self.rate_limited = 0
        self.errors = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.charged_tokens = 0
        self.cached_tokens = 0

    def snapshot(self) -> KeyCounters:
        return KeyCounters(
            requests=self.requests,
            successes=self.successes,
            rate_limited=self.rate_limited,
            errors=self.errors,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            charged_tokens=self.charged_tokens,
            cached_tokens=self.cached_tokens,
        )


class _Fault:
    __slots__ = ("kind", "probability", "remaining")

    def __init__(self, kind: str, remaining: int | None, probability: float) -> None:
        self.kind = kind
        self.remaining = remaining
        self.probability = probability


class _ApiError(Exception):
    """An OpenAI-style error reply, raised while validating a request."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = _error_body(message, type_, param, code)


class _ConnectionDropped(Exception):
    """Raised from the app to make uvicorn cut the connection; its log record is filtered."""


class _DropFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _ConnectionDropped)


_DROP_FILTER = _DropFilter()


class _Plan:
    """A validated request: what it costs and how to render its successful reply."""

    __slots__ = (
        "cached_tokens",
        "completion_tokens",
        "cost",
        "marker",
        "model",
        "param",
        "prompt_tokens",
        "render",
    )

    def __init__(
        self,
        model: str,
        cost: int,
        prompt_tokens: int,
        completion_tokens: int,
        marker: str | None,
        param: str,
        render: Callable[[str], bytes | list[bytes]],
    ) -> None:
        self.model = model
        self.cost = cost
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.marker = marker
        self.param = param
        self.render = render
        self.cached_tokens = 0


class _Bucket:
    """The request and token buckets of one limit group; used only on the server loop."""

    __slots__ = (
        "req",
        "req_cap",
        "req_rate",
        "rpm",
        "shown",
        "tok",
        "tok_cap",
        "tok_rate",
        "tpm",
        "updated",
    )

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        burst_seconds: float,
        now: float,
        reported_burst_seconds: float | None = None,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.req_rate = rpm / 60.0 if rpm is not None else 0.0
        self.tok_rate = tpm / 60.0 if tpm is not None else 0.0
        self.req_cap = max(1.0, self.req_rate * burst_seconds)
        self.tok_cap = max(1.0, self.tok_rate * burst_seconds)
        self.req = self.req_cap
        self.tok = self.tok_cap
        self.updated = now
        # What the headers report: this bucket itself, or a shadow with another capacity that
        # is charged alongside but enforces nothing.
        self.shown: _Bucket = self
        if reported_burst_seconds is not None and reported_burst_seconds != burst_seconds:
            self.shown = _Bucket(rpm, tpm, reported_burst_seconds, now)

    def _refill(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            self.updated = now
            if self.rpm is not None:
                self.req = min(self.req_cap, self.req + elapsed * self.req_rate)
            if self.tpm is not None:
                self.tok = min(self.tok_cap, self.tok + elapsed * self.tok_rate)

    def admit(self, cost: int, now: float, charge_rejected: bool) -> tuple[str, float] | None:
        """Take one request and `cost` tokens, or return (limit type, seconds to wait)."""
        rejected = self._admit(cost, now, charge_rejected)
        shown = self.shown
        if shown is not self:
            shown._refill(now)
            if shown.rpm is not None and (rejected is None or charge_rejected):
                shown.req -= 1.0
            if shown.tpm is not None and rejected is None:
                shown.tok -= cost
        return rejected

    def _admit(self, cost: int, now: float, charge_rejected: bool) -> tuple[str, float] | None:
        self._refill(now)
        # A request larger than the whole token bucket still passes once the bucket is full.
        need = min(float(cost), self.tok_cap)
        req_short = self.rpm is not None and self.req < 1.0
        tok_short = self.tpm is not None and self.tok < need
        if not req_short and not tok_short:
            if self.rpm is not None:
                self.req -= 1.0
            if self.tpm is not None:
                self.tok -= cost
            return None
        if charge_rejected and self.rpm is not None:
            self.req -= 1.0
        wait = 0.0
        if self.rpm is not None and self.req < 1.0:
            wait = (1.0 - self.req) / self.req_rate
        if tok_short:
            wait = max(wait, (need - self.tok) / self.tok_rate)
        return ("requests" if req_short else "tokens"), wait

    def headers(self) -> _Headers:
        """The ``x-ratelimit-*`` headers for the current levels (call right after `admit`)."""
        shown = self.shown
        out: _Headers = []
        if shown.rpm is not None:
            out.append((b"x-ratelimit-limit-requests", _num(shown.rpm).encode()))
            remaining = max(0, math.floor(shown.req))
            out.append((b"x-ratelimit-remaining-requests", b"%d" % remaining))
            reset = (shown.req_cap - shown.req) / shown.req_rate
            out.append((b"x-ratelimit-reset-requests", format_duration(reset).encode()))
        if shown.tpm is not None:
            out.append((b"x-ratelimit-limit-tokens", _num(shown.tpm).encode()))
            out.append((b"x-ratelimit-remaining-tokens", b"%d" % max(0, math.floor(shown.tok))))
            reset = (shown.tok_cap - shown.tok) / shown.tok_rate
            out.append((b"x-ratelimit-reset-tokens", format_duration(reset).encode()))
        return out

    def used(self, kind: str) -> int:
        """How much of the per-minute limit counts as used, for the 429 message."""
        if kind == "requests":
            assert self.rpm is not None
            return round(self.rpm * (1.0 - max(0.0, self.req) / self.req_cap))
        assert self.tpm is not None
        return round(self.tpm * (1.0 - max(0.0, self.tok) / self.tok_cap))


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


def format_duration(seconds: float) -> str:
    """Format seconds like OpenAI's reset headers: ``0s``, ``12ms``, ``6m0s``, ``1h2m3.5s``."""
    if seconds <= 0:
        return "0s"
    ms = max(1, math.ceil(seconds * 1000.0 - 1e-6))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _mask(key: str) -> str:
    # Short keys would be revealed whole by their last 4 characters.
    return "sk-..." + (key[-4:] if len(key) > 8 else "")


def _error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    error = {"message": message, "type": type_, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


def _estimate(text: str) -> int:
    return len(text) // 4 + 1


def _marker(text: str) -> str | None:
    if "[[" not in text:
        return None
    if CONTEXT_LENGTH_MARKER in text:
        return CONTEXT_LENGTH_MARKER
    if SERVER_ERROR_MARKER in text:
        return SERVER_ERROR_MARKER
    return None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _positive_int(body: Mapping[str, Any], name: str, default: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _ApiError(400, f"Invalid '{name}': expected a positive integer.", param=name)
    return value


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _ApiError(400, "you must provide a model parameter")
    return model


def _max_tokens(body: Mapping[str, Any], *names: str) -> int:
    for name in names:
        if body.get(name) is not None:
            return _positive_int(body, name, _DEFAULT_MAX_TOKENS)
    return _DEFAULT_MAX_TOKENS


def _prompt_texts(value: Any, param: str) -> list[str]:
    """Normalise a ``prompt``/``input`` value: a string, token list, or list of either."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, int) for item in value):
            return [" ".join(map(str, value))]
        texts: list[str] = []
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list) and all(isinstance(t, int) for t in item):
                texts.append(" ".join(map(str, item)))
            else:
                raise _ApiError(400, f"Invalid '{param}': unsupported item type.", param=param)
        return texts
    raise _ApiError(400, f"Invalid '{param}': expected a string or a list.", param=param)


def _embedding(text: str, dims: int) -> list[float]:
    raw = hashlib.shake_128(text.encode()).digest(2 * dims)
    values = [v / 32767.5 - 1.0 for v in struct.unpack(f"<{dims}H", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _embedding_base64(vector: list[float]) -> str:
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


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


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _pieces(text: str) -> list[str]:
    # Split after spaces so that the streamed deltas join back to the exact text.
    pieces = [word + " " for word in text.split(" ")]
    pieces[-1] = pieces[-1][:-1]
    return [p for p in pieces if p] or [""]


class FakeOpenAIServer:
    """A fake OpenAI API on a local port, served by uvicorn from a background thread.

    Use it as a context manager (``with FakeOpenAIServer(rpm=600) as server:``) and point a
    client at `base_url`. Limits apply per limit group: each key is its own group unless
    `groups` maps it to a shared group name. A grouped key takes its group's limits from
    `group_limits` (else the defaults `rpm`/`tpm`); `limits` applies to ungrouped keys.
    `burst_seconds` is the bucket capacity in seconds of refill (60: a per-minute bucket that
    starts full); `reported_burst_seconds`, when given, makes the headers report a bucket of that
    capacity (charged alike) while `burst_seconds` is what is enforced, as a server that reports
    the minute's remaining quota but enforces a shorter window.
    `latency`/`jitter` delay admitted requests only; auth errors, faults and 429s reply at once.
    `clock` is the time source of the limits (default: the system clock); with a `FakeClock`
    the buckets refill only as the test moves that clock, while delays (`latency`, `jitter`,
    the ``slow`` fault) remain real waits: tests can observe them without the clock through
    `in_flight` and `peak_in_flight` (how many requests are held at once).
    Requests without a bearer key are recorded under the key ``""``. `app` is the ASGI
    application itself (a Starlette router), for serving it some other way.
    """

    slow_seconds: float
    """Extra delay of the ``slow`` fault, in seconds."""

    def __init__(
        self,
        *,
        keys: Iterable[str] | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        limits: Mapping[str, tuple[float | None, float | None]] | None = None,
        groups: Mapping[str, str] | None = None,
        group_limits: Mapping[str, tuple[float | None, float | None]] | None = None,
        burst_seconds: float = 1.0,
        reported_burst_seconds: float | None = None,
        charge_rejected: bool = False,
        send_rate_limit_headers: bool = True,
        latency: float = 0.0,
        jitter: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        clock: Clock | None = None,
        batches: BatchSettings | None = None,
    ) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            _check_limit(name, value)
        for table in (limits or {}, group_limits or {}):
            for key_rpm, key_tpm in table.values():
                _check_limit("rpm", key_rpm)
                _check_limit("tpm", key_tpm)
        if burst_seconds <= 0:
            raise ValueError("burst_seconds must be > 0")
        if reported_burst_seconds is not None and reported_burst_seconds <= 0:
            raise ValueError("reported_burst_seconds must be > 0 or None")
        if latency < 0 or jitter < 0:
            raise ValueError("latency and jitter must be >= 0")
        self._keys = frozenset(keys) if keys is not None else None
        self._rpm = rpm
        self._tpm = tpm
        self._limits = dict(limits or {})
        self._groups = dict(groups or {})
        self._group_limits = dict(group_limits or {})
        self._burst_seconds = burst_seconds
        self._reported_burst_seconds = reported_burst_seconds
        self._charge_rejected = charge_rejected
        self._send_headers = send_rate_limit_headers
        self._latency = latency
        self._jitter = jitter
        self.host = host
        self.port = port
        self.slow_seconds = 5.0

        self._rng = random.Random(seed)
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._counts: dict[str, _Counts] = {}
        # Hashes of the system prefixes seen, for cached_tokens (bounded: a test's few).
        self._prefixes: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._log: collections.deque[dict[str, Any]] = collections.deque(maxlen=_LOG_SIZE)
        # Requests being handled now, and the most at once; per key and in total (key None).
        self._in_flight: collections.Counter[str | None] = collections.Counter()
        self._peak_in_flight: collections.Counter[str | None] = collections.Counter()
        self._faults: dict[str, _Fault] = {}
        # Loop-thread state: no lock needed, the event loop is single-threaded.
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._bucket_of: dict[str, _Bucket | None] = {}
        self._models: dict[str, None] = dict.fromkeys(_DEFAULT_MODELS)
        self._ids = itertools.count(1)
        self._id_prefix = f"{random.getrandbits(40):010x}"

        self._runner: BackgroundServer | None = None
        self._stopping = False
        self._base_url: str | None = None

        self._builders: dict[str, Callable[[dict[str, Any], str], _Plan]] = {
            "chat": self._plan_chat,
            "completions": self._plan_completions,
            "embeddings": self._plan_embeddings,
            "responses": self._plan_responses,
        }
        self.batches = FakeBatches(self._batch_answer, self._clock, batches)
        """The Batch API's files and batches (`fake_batches`); its `settings` may be replaced."""
        self.app = Router(
            routes=[
                Route("/v1/chat/completions", _Endpoint(self._handle, "chat", "POST")),
                Route("/v1/completions", _Endpoint(self._handle, "completions", "POST")),
                Route("/v1/embeddings", _Endpoint(self._handle, "embeddings", "POST")),
                Route("/v1/responses", _Endpoint(self._handle, "responses", "POST")),
                Route("/v1/models", _Endpoint(self._handle, "models", "GET")),
                Route("/v1/models/{model:path}", _Endpoint(self._handle, "model", "GET")),
                Route("/v1/files", _Endpoint(self._handle, "batch_api", None)),
                Route("/v1/files/{rest:path}", _Endpoint(self._handle, "batch_api", None)),
                Route("/v1/batches", _Endpoint(self._handle, "batch_api", None)),
                Route("/v1/batches/{rest:path}", _Endpoint(self._handle, "batch_api", None)),
            ],
            redirect_slashes=False,
            default=_Endpoint(self._handle, "not_found", None),
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://HOST:PORT/v1``; valid after `start`."""
        if self._base_url is None:
            raise RuntimeError("FakeOpenAIServer is not started")
        return self._base_url

    def start(self) -> FakeOpenAIServer:
        """Start serving in a background thread; returns once connections are accepted."""
        if self._runner is not None:
            raise RuntimeError("FakeOpenAIServer is already started")
        logging.getLogger("uvicorn.error").addFilter(_DROP_FILTER)
        self._stopping = False
        runner = BackgroundServer(self.app, self.host, self.port, name="FakeOpenAIServer")
        runner.start()
        self._runner, self.port = runner, runner.port
        self._base_url = f"{runner.url}/v1"
        return self

    def stop(self) -> None:
        """Stop at once, cutting open connections (their clients see them closed); idempotent."""
        if self._runner is None:
            return
        self._stopping = True
        self._runner.stop()
        self._runner = None
        self._base_url = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self._base_url or "stopped"
        return f"FakeOpenAIServer({state})"

    # ------------------------------------------------------------------ delays

    @property
    def latency(self) -> float:
        """Delay of admitted requests, in seconds; may be changed while serving (requests that
        already came in keep the delay they came in with)."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency = seconds

    @property
    def jitter(self) -> float:
        """± uniform jitter added to `latency`, in seconds; may be changed while serving."""
        return self._jitter

    @jitter.setter
    def jitter(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("jitter must be >= 0")
        self._jitter = seconds

    # ------------------------------------------------------------------ faults

    def set_fault(
        self, key: str, fault: str, *, times: int | None = None, probability: float = 1.0
    ) -> None:
        """Inject `fault` into requests of `key` (``"*"``: every key), replacing its previous fault.

        `times` limits how many requests get it (None: forever); `probability` is the chance
        per request. A key's own fault is tried before the ``"*"`` one.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        with self._lock:
            self._faults[key] = _Fault(fault, times, probability)

    def clear_faults(self, key: str | None = None) -> None:
        """Remove the fault of `key` (``"*"`` included), or every fault when `key` is None."""
        with self._lock:
            if key is None:
                self._faults.clear()
            else:
                self._faults.pop(key, None)

    def _pick_fault(self, key: str) -> str | None:
        with self._lock:
            for name in (key, "*"):
                fault = self._faults.get(name)
                if fault is None:
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del self._faults[name]
                return fault.kind
        return None

    # ------------------------------------------------------------------ counters

    def counters(self) -> dict[str, KeyCounters]:
        """A snapshot of the per-key counters, keyed by the raw API key."""
        with self._lock:
            return {key: counts.snapshot() for key, counts in self._counts.items()}

    def total(self) -> KeyCounters:
        """The counters summed over all keys."""
        snapshots = self.counters().values()
        return KeyCounters(
            **{f.name: sum(getattr(s, f.name) for s in snapshots) for f in fields(KeyCounters)}
        )

    def reset_counters(self) -> None:
        """Zero every counter and empty the request log (limits and faults are kept).

        The peaks of `peak_in_flight` start again from the requests in flight now.
        """
        with self._lock:
            self._counts.clear()
            self._log.clear()
            self._peak_in_flight = self._in_flight.copy()

    def in_flight(self, key: str | None = None) -> int:
        """Requests of `key` (None: of every key) being handled right now.

        A request counts from its arrival until its reply is complete (or its connection cut);
        it no longer counts when its client has the whole reply.
        """
        with self._lock:
            return self._in_flight[key]

    def peak_in_flight(self, key: str | None = None) -> int:
        """The most requests of `key` (None: of any keys) handled at the same time, since the
        start or `reset_counters`: how concurrently clients sent, whatever the delays."""
        with self._lock:
            return self._peak_in_flight[key]

    def _enter(self, key: str) -> None:
        with self._lock:
            for name in (key, None):
                self._in_flight[name] += 1
                self._peak_in_flight[name] = max(self._peak_in_flight[name], self._in_flight[name])

    def _leave(self, key: str) -> None:
        with self._lock:
            for name in (key, None):
                self._in_flight[name] -= 1

    def request_log(self) -> list[dict[str, Any]]:
        """The last 10,000 requests, oldest first: dicts of ``key``, ``method``, ``path``, ``body``.

        ``body`` is the parsed JSON body (None when absent or malformed); ``key`` is None
        when no bearer key was sent.
        """
        with self._lock:
            return list(self._log)

    def _finish(
        self, key: str, outcome: str, prompt: int = 0, completion: int = 0, cached: int = 0
    ) -> None:
        with self._lock:
            counts = self._counts[key]
            if outcome == "ok":
                counts.successes += 1
                counts.prompt_tokens += prompt
                counts.completion_tokens += completion
                counts.cached_tokens += cached
            elif outcome == "limited":
                counts.rate_limited += 1
            else:
                counts.errors += 1

    # ------------------------------------------------------------------ limits

    def _bucket(self, key: str) -> _Bucket | None:
        try:
            return self._bucket_of[key]
        except KeyError:
            pass
        group = self._groups.get(key)
        if group is not None:
            ident = ("group", group)
            rpm, tpm = self._group_limits.get(group, (self._rpm, self._tpm))
        else:
            ident = ("key", key)
            rpm, tpm = self._limits.get(key, (self._rpm, self._tpm))
        bucket: _Bucket | None = None
        if rpm is not None or tpm is not None:
            bucket = self._buckets.get(ident)
            if bucket is None:
                bucket = _Bucket(
                    rpm,
                    tpm,
                    self._burst_seconds,
                    self._clock.monotonic(),
                    self._reported_burst_seconds,
                )
                self._buckets[ident] = bucket
        self._bucket_of[key] = bucket
        return bucket

    # ------------------------------------------------------------------ request handling

    async def _handle(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        key = _bearer(scope) or ""
        self._enter(key)
        left = False

        def leave() -> None:
            nonlocal left
            if not left:
                left = True
                self._leave(key)

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                leave()  # before the reply's end: a client never sees its request in flight
            await send(message)

        try:
            await self._handle_request(scope, receive, send_tracked, kind)
        except asyncio.CancelledError:
            if self._stopping:
                # uvicorn logs whatever the app raises; this one is filtered out of the log.
                raise _ConnectionDropped("server stopped") from None
            raise
        finally:
            leave()

    async def _handle_request(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        request_id = f"req_{self._id_prefix}{next(self._ids):022x}"
        # The delay as set when the request came in: a change applies to later requests only.
        latency, jitter = self._latency, self._jitter
        base_headers: _Headers = [(b"x-request-id", request_id.encode())]
        method: str = scope["method"]
        path: str = scope["path"]
        key = _bearer(scope)
        ckey = key or ""
        raw = await _read_body(receive) if method == "POST" else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        with self._lock:
            if ckey not in self._counts:
                self._counts[ckey] = _Counts()
            self._counts[ckey].requests += 1
            self._log.append({"key": key, "method": method, "path": path, "body": body})

        if key is None:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            error = _error_body(message, "invalid_request_error", None, "invalid_api_key")
            self._finish(ckey, "error")
            await self._reply(send, 401, error, base_headers)
            return
        if self._keys is not None and key not in self._keys:
            self._finish(ckey, "error")
            await self._reply(send, 401, _invalid_key_body(key), base_headers)
            return
        if kind == "not_found" or kind == "method_not_allowed":
            status = 404 if kind == "not_found" else 405
            message = f"Invalid URL ({method} {path})"
            error = _error_body(message, "invalid_request_error")
            self._finish(ckey, "error")
            await self._reply(send, status, error, base_headers)
            return

        model = body.get("model") if isinstance(body, dict) else None
        fault = self._pick_fault(ckey) if self._faults else None
        if fault is not None:
            if fault == "slow":
                await asyncio.sleep(self.slow_seconds)
            else:
                self._finish(ckey, "error")
                await self._inject(send, fault, key, model, base_headers)
                return

        if kind == "batch_api":
            status, payload, media = self.batches.handle(
                method,
                path,
                scope["query_string"],
                _header(scope, b"content-type"),
                raw,
                self._project(key),
            )
            self._finish(ckey, "ok" if status == 200 else "error")
            await self._reply(send, status, payload, base_headers, media)
            return

        if kind == "models" or kind == "model":
            status, payload = self._models_reply(kind, path)
            self._finish(ckey, "ok" if status == 200 else "error")
            await self._reply(send, status, payload, base_headers)
            return

        if not isinstance(body, dict):
            message = (
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)"
            )
            error = _error_body(message, "invalid_request_error")
            self._finish(ckey, "error")
            await self._reply(send, 400, error, base_headers)
            return
        try:
            plan = self._builders[kind](body, request_id)
        except _ApiError as exc:
            self._finish(ckey, "error")
            await self._reply(send, exc.status, exc.body, base_headers)
            return
        if plan.model not in self._models:
            self._models[plan.model] = None

        bucket = self._bucket(ckey)
        if bucket is not None:
            rejected = bucket.admit(plan.cost, self._clock.monotonic(), self._charge_rejected)
            if self._send_headers:
                base_headers.extend(bucket.headers())
            if rejected is not None:
                self._finish(ckey, "limited")
                await self._reply_limited(send, bucket, plan, *rejected, base_headers)
                return
        with self._lock:
            self._counts[ckey].charged_tokens += plan.cost

        if plan.marker is not None:
            self._finish(ckey, "error")
            if plan.marker == CONTEXT_LENGTH_MARKER:
                message = (
                    "This model's maximum context length is 128000 tokens. However, your "
                    "messages resulted in 128001 tokens. Please reduce the length of the messages."
                )
                error = _error_body(
                    message, "invalid_request_error", plan.param, "context_length_exceeded"
                )
                await self._reply(send, 400, error, base_headers)
            else:
                await self._reply(send, 500, _SERVER_ERROR_BODY, base_headers)
            return

        delay = latency
        if jitter:
            delay += self._rng.uniform(-jitter, jitter)
        if delay > 0:
            await asyncio.sleep(delay)

        rendered = plan.render(request_id)
        # Counted before replying, so that a client never sees its reply before the count.
        self._finish(ckey, "ok", plan.prompt_tokens, plan.completion_tokens, plan.cached_tokens)
        if isinstance(rendered, bytes):
            await self._reply(send, 200, rendered, base_headers)
        else:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [_SSE_HEADERS, (b"cache-control", b"no-cache"), *base_headers],
                }
            )
            for chunk in rendered:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _reply(
        send: Send, status: int, payload: bytes, headers: _Headers, media: str | None = None
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    _JSON_HEADERS if media is None else (b"content-type", media.encode()),
                    (b"content-length", b"%d" % len(payload)),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _inject(
        self, send: Send, fault: str, key: str, model: Any, headers: _Headers
    ) -> None:
        if fault == "insufficient_quota":
            await self._reply(send, 429, _QUOTA_BODY, headers)
        elif fault == "invalid_api_key":
            await self._reply(send, 401, _invalid_key_body(key), headers)
        elif fault == "server_error":
            await self._reply(send, 500, _SERVER_ERROR_BODY, headers)
        elif fault == "rate_limit":
            message = (
                f"Rate limit reached for {model if isinstance(model, str) else 'the model'} in "
                "organization org-fake on requests per min (RPM): Limit 1, Used 1, Requested 1. "
                "Please try again in 1s."
            )
            error = _error_body(message, "requests", None, "rate_limit_exceeded")
            retry = [(b"retry-after-ms", b"1000"), (b"retry-after", b"1")]
            await self._reply(send, 429, error, headers + retry)
        elif fault == "rate_limit_bare":
            message = "Too many requests. Please slow down and try again later."
            error = _error_body(message, "requests", None, "rate_limit_exceeded")
            await self._reply(send, 429, error, headers)
        else:  # drop
            payload = _SERVER_ERROR_BODY
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        _JSON_HEADERS,
                        (b"content-length", b"%d" % len(payload)),
                        *headers,
                    ],
                }
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": payload[: len(payload) // 2],
                    "more_body": True,
                }
            )
            # uvicorn closes the transport when the app raises after the response started.
            raise _ConnectionDropped("fault: drop")

    async def _reply_limited(
        self,
        send: Send,
        bucket: _Bucket,
        plan: _Plan,
        limit_type: str,
        wait: float,
        headers: _Headers,
    ) -> None:
        if limit_type == "requests":
            assert bucket.rpm is not None
            what, limit, requested = "requests per min (RPM)", bucket.rpm, 1
        else:
            assert bucket.tpm is not None
            what, limit, requested = "tokens per min (TPM)", bucket.tpm, plan.cost
        message = (
            f"Rate limit reached for {plan.model} in organization org-fake on {what}: "
            f"Limit {_num(limit)}, Used {bucket.used(limit_type)}, Requested {requested}. "
            f"Please try again in {format_duration(wait)}. Visit "
            "https://platform.openai.com/account/rate-limits to learn more."
        )
        error = _error_body(message, limit_type, None, "rate_limit_exceeded")
        retry_ms = max(1, math.ceil(wait * 1000.0))
        retry = [
            (b"retry-after-ms", b"%d" % retry_ms),
            (b"retry-after", b"%d" % max(1, math.ceil(retry_ms / 1000.0))),
        ]
        await self._reply(send, 429, error, headers + retry)

    def _models_reply(self, kind: str, path: str) -> tuple[int, bytes]:
        if kind == "models":
            data = [_model_object(name) for name in self._models]
            return 200, json.dumps({"object": "list", "data": data}).encode()
        name = path[len("/v1/models/") :]
        if name in self._models:
            return 200, json.dumps(_model_object(name)).encode()
        message = f"The model '{name}' does not exist or you do not have access to it."
        return 404, _error_body(message, "invalid_request_error", None, "model_not_found")

    # ------------------------------------------------------------------ batch lines

    def _project(self, key: str) -> str:
        """The project a key belongs to: its limit group, else the key itself."""
        return self._groups.get(key, key)

    def _batch_answer(self, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], int]:
        """One batch line answered as the online endpoint answers it (never streamed):
        (status, JSON body, input tokens)."""
        kind = _BATCH_KINDS[url]
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        request_id = f"req_{self._id_prefix}{next(self._ids):022x}"
        try:
            plan = self._builders[kind](body, request_id)
        except _ApiError as exc:
            return exc.status, json.loads(exc.body), 0
        if plan.marker == CONTEXT_LENGTH_MARKER:
            message = "This model's maximum context length is 128000 tokens."
            error = _error_body(
                message, "invalid_request_error", plan.param, "context_length_exceeded"
            )
            return 400, json.loads(error), plan.prompt_tokens
        if plan.marker is not None:
            return 500, json.loads(_SERVER_ERROR_BODY), plan.prompt_tokens
        rendered = plan.render(request_id)
        assert isinstance(rendered, bytes)  # never streamed
        return 200, json.loads(rendered), plan.prompt_tokens

    # ------------------------------------------------------------------ request plans

    def _cached_prefix(self, messages: list[Any]) -> int:
        """Tokens of the leading system/developer messages when an earlier request began with
        the same ones (remembered from now on if not): the prompt cache's hit."""
        prefix: list[str] = []
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ("system", "developer"):
                break
            prefix.append(_text_of(message.get("content")))
        if not prefix:
            return 0
        digest = hashlib.sha256(json.dumps(prefix).encode()).hexdigest()
        with self._lock:
            if digest in self._prefixes:
                self._prefixes.move_to_end(digest)
                return sum(_estimate(text) for text in prefix)
            self._prefixes[digest] = None
            if len(self._prefixes) > 1024:
                self._prefixes.popitem(last=False)
        return 0

    def _plan_chat(self, body: dict[str, Any], request_id: str) -> _Plan:
        model = _model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ApiError(400, "'messages' must be a non-empty array.", param="messages")
        prompt_tokens = 0
        marker: str | None = None
        last_user = ""
        for message in messages:
            if not isinstance(message, dict):
                raise _ApiError(400, "Invalid 'messages': expected objects.", param="messages")
            text = _text_of(message.get("content"))
            prompt_tokens += _estimate(text)
            marker = marker or _marker(text)
            if message.get("role") == "user":
                last_user = text
        n = _positive_int(body, "n", 1)
        max_tokens = _max_tokens(body, "max_completion_tokens", "max_tokens")
        reply = "echo: " + last_user
        completion_tokens = _estimate(reply) * n
        stream = body.get("stream") is True
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        cached_tokens = self._cached_prefix(messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

        def render(rid: str) -> bytes | list[bytes]:
            ident = "chatcmpl-" + rid[4:]
            created = int(time.time())
            if not stream:
                choices = [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": reply, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                    for i in range(n)
                ]
                payload = {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": choices,
                    "usage": usage,
                    "system_fingerprint": "fp_fake",
                }
                return json.dumps(payload).encode()
            head: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
            }
            if include_usage:
                head["usage"] = None

            def chunk(index: int, delta: dict[str, Any], finish: str | None) -> bytes:
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
                return _sse({**head, "choices": [choice]})

            chunks: list[bytes] = []
            for i in range(n):
                chunks.append(chunk(i, {"role": "assistant", "content": ""}, None))
                chunks.extend(chunk(i, {"content": piece}, None) for piece in _pieces(reply))
                chunks.append(chunk(i, {}, "stop"))
            if include_usage:
                chunks.append(_sse({**head, "choices": [], "usage": usage}))
            chunks.append(b"data: [DONE]\n\n")
            return chunks

        plan = _Plan(
            model,
            prompt_tokens + max_tokens * n,
            prompt_tokens,
            completion_tokens,
            marker,
            "messages",
            render,
        )
        plan.cached_tokens = cached_tokens
        return plan

    def _plan_completions(self, body: dict[str, Any], request_id: str) -> _Plan:
        model = _model(body)
        prompts = _prompt_texts(body.get("prompt"), "prompt")
        n = _positive_int(body, "n", 1)
        max_tokens = _max_tokens(body, "max_tokens")
        replies = ["echo: " + prompt for prompt in prompts]
        prompt_tokens = sum(_estimate(prompt) for prompt in prompts)
        completion_tokens = sum(_estimate(reply) for reply in replies) * n
        marker = next((m for m in map(_marker, prompts) if m is not None), None)
        stream = body.get("stream") is True
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

        def render(rid: str) -> bytes | list[bytes]:
            head: dict[str, Any] = {
                "id": "cmpl-" + rid[4:],
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_fake",
            }
            choices = [
                {"text": reply, "index": p * n + j, "logprobs": None, "finish_reason": "stop"}
                for p, reply in enumerate(replies)
                for j in range(n)
            ]
            if not stream:
                return json.dumps({**head, "choices": choices, "usage": usage}).encode()
            if include_usage:
                head["usage"] = None
            chunks = [_sse({**head, "choices": [choice]}) for choice in choices]
            if include_usage:
                chunks.append(_sse({**head, "choices": [], "usage": usage}))
            chunks.append(b"data: [DONE]\n\n")
            return chunks

        return _Plan(
            model,
            prompt_tokens + max_tokens * n * len(prompts),
            prompt_tokens,
            completion_tokens,
            marker,
            "prompt",
            render,
        )

    def _plan_embeddings(self, body: dict[str, Any], request_id: str) -> _Plan:
        model = _model(body)
        inputs = _prompt_texts(body.get("input"), "input")
        dims = _positive_int(body, "dimensions", _DEFAULT_EMBEDDING_DIMS)
        if dims > _MAX_EMBEDDING_DIMS:
            raise _ApiError(
                400, f"Invalid 'dimensions': at most {_MAX_EMBEDDING_DIMS}.", param="dimensions"
            )
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            message = "Invalid 'encoding_format': expected 'float' or 'base64'."
            raise _ApiError(400, message, param="encoding_format")
        prompt_tokens = sum(_estimate(text) for text in inputs)
        marker = next((m for m in map(_marker, inputs) if m is not None), None)

        def render(rid: str) -> bytes:
            data = []
            for index, text in enumerate(inputs):
                vector = _embedding(text, dims)
                value: Any = vector if encoding == "float" else _embedding_base64(vector)
                data.append({"object": "embedding", "index": index, "embedding": value})
            usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
            return json.dumps(
                {"object": "list", "data": data, "model": model, "usage": usage}
            ).encode()

        return _Plan(model, prompt_tokens, prompt_tokens, 0, marker, "input", render)

    def _plan_responses(self, body: dict[str, Any], request_id: str) -> _Plan:
        model = _model(body)
        value = body.get("input")
        texts: list[str] = []
        last_user = ""
        if isinstance(value, str):
            texts.append(value)
            last_user = value
        elif isinstance(value, list):
            for item in value:
                if not isinstance(item, dict):
                    raise _ApiError(400, "Invalid 'input': expected objects.", param="input")
                text = _text_of(item.get("content"))
                texts.append(text)
                if item.get("role", "user") == "user":
                    last_user = text
        else:
            raise _ApiError(400, "Invalid 'input': expected a string or a list.", param="input")
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            texts.append(instructions)
        input_tokens = sum(_estimate(text) for text in texts)
        max_tokens = _max_tokens(body, "max_output_tokens")
        reply = "echo: " + last_user
        output_tokens = _estimate(reply)
        marker = next((m for m in map(_marker, texts) if m is not None), None)

        def render(rid: str) -> bytes:
            payload = {
                "id": "resp_" + rid[4:],
                "object": "response",
                "created_at": int(time.time()),
                "status": "completed",
                "model": model,
                "output": [
                    {
                        "type": "message",
                        "id": "msg_" + rid[4:],
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": reply, "annotations": []}],
                    }
                ],
                "usage": {
                    "input_tokens": input_tokens,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": output_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": input_tokens + output_tokens,
                },
                "error": None,
                "incomplete_details": None,
                "instructions": instructions if isinstance(instructions, str) else None,
                "metadata": {},
                "parallel_tool_calls": True,
                "temperature": 1.0,
                "tool_choice": "auto",
                "tools": [],
                "top_p": 1.0,
            }
            return json.dumps(payload).encode()

        return _Plan(
            model, input_tokens + max_tokens, input_tokens, output_tokens, marker, "input", render
        )


_SERVER_ERROR_BODY = _error_body(
    "The server had an error while processing your request. Sorry about that!", "server_error"
)
_QUOTA_BODY = _error_body(
    "You exceeded your current quota, please check your plan and billing details.",
    "insufficient_quota",
    None,
    "insufficient_quota",
)


def _invalid_key_body(key: str) -> bytes:
    message = (
        f"Incorrect API key provided: {_mask(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return _error_body(message, "invalid_request_error", None, "invalid_api_key")


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _MODEL_CREATED, "owned_by": "system"}


def _check_limit(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0 or None, got {value!r}")


# ---------------------------------------------------------------------- command line


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the fake server command line."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m openai_parallel_toolkit.testing",
        description="Run a fake OpenAI-compatible API server for offline testing.",
        epilog="example: %(prog)s --port 8001 --keys sk-test-1,sk-test-2 --rpm 600 --latency 0.2",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port, 0 for any free one (8001)")
    parser.add_argument(
        "--keys", default=None, help="comma-separated accepted API keys (default: any key)"
    )
    parser.add_argument("--rpm", type=float, default=None, help="requests per minute per key")
    parser.add_argument("--tpm", type=float, default=None, help="tokens per minute per key")
    parser.add_argument("--latency", type=float, default=0.0, help="reply delay in seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="± uniform delay jitter, s")
    parser.add_argument(
        "--burst-seconds", type=float, default=1.0, help="bucket capacity in seconds of rate"
    )
    parser.add_argument(
        "--reported-burst-seconds",
        type=float,
        default=None,
        help="bucket capacity the headers report, in seconds of rate (default: --burst-seconds)",
    )
    parser.add_argument(
        "--charge-rejected", action="store_true", help="429-rejected requests use up a request"
    )
    parser.add_argument(
        "--no-rate-limit-headers", action="store_true", help="omit the x-ratelimit-* headers"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for jitter and faults")
    return parser


def server_from_args(args: argparse.Namespace) -> FakeOpenAIServer:
    """Build a (not started) `FakeOpenAIServer` from parsed `build_parser` arguments."""
    keys = [k.strip() for k in args.keys.split(",") if k.strip()] if args.keys else None
    return FakeOpenAIServer(
        keys=keys,
        rpm=args.rpm,
        tpm=args.tpm,
        burst_seconds=args.burst_seconds,
        reported_burst_seconds=args.reported_burst_seconds,
        charge_rejected=args.charge_rejected,
        send_rate_limit_headers=not args.no_rate_limit_headers,
        latency=args.latency,
        jitter=args.jitter,
        host=args.host,
        port=args.port,
        seed=args.seed,
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the fake server in the foreground until Ctrl-C or SIGTERM; returns the exit code."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        server = server_from_args(args).start()
    except (ValueError, OSError, RuntimeError) as exc:
        parser.exit(2, f"error: {exc}\n")
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    print(f"Fake OpenAI server listening on {server.base_url} (Ctrl-C to stop)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
