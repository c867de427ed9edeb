"""The ASGI messages of the fake server's replies: JSON, streamed, injected faults and 429s."""

from __future__ import annotations

import logging
import math

from starlette.types import Send

from .buckets import Bucket, Headers, format_duration, num
from .errors import QUOTA_BODY, SERVER_ERROR_BODY, error_body, invalid_key_body
from .plans import Plan

__all__ = ["DROP_FILTER", "ConnectionDropped", "fault", "limited", "reply", "stream"]

_JSON_HEADERS = (b"content-type", b"application/json")
_SSE_HEADERS = (b"content-type", b"text/event-stream; charset=utf-8")


class ConnectionDropped(Exception):
    """Raised from the app to make uvicorn cut the connection; its log record is filtered."""


class _DropFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionDropped)


DROP_FILTER = _DropFilter()
"""Keeps `ConnectionDropped` out of uvicorn's error log."""


async def reply(
    send: Send, status: int, payload: bytes, headers: Headers, media: str | None = None
) -> None:
    """A whole reply: `payload` as JSON (or as `media`)."""
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


async def stream(send: Send, chunks: list[bytes], headers: Headers) -> None:
    """A 200 of server-sent events, one body message per chunk."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [_SSE_HEADERS, (b"cache-control", b"no-cache"), *headers],
        }
    )
    for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def fault(
    send: Send, kind: str, key: str, model: object, headers: Headers, retry_after: float = 1.0
) -> None:
    """The reply of an injected fault (see `faults.FAULTS`); ``drop`` cuts the connection.
    `retry_after`: the seconds a ``rate_limit`` fault tells the client to wait."""
    if kind == "insufficient_quota":
        await reply(send, 429, QUOTA_BODY, headers)
    elif kind == "invalid_api_key":
        await reply(send, 401, invalid_key_body(key), headers)
    elif kind == "server_error":
        await reply(send, 500, SERVER_ERROR_BODY, headers)
    elif kind == "rate_limit":
        message = (
            f"Rate limit reached for {model if isinstance(model, str) else 'the model'} in "
            "organization org-fake on requests per min (RPM): Limit 1, Used 1, Requested 1. "
            f"Please try again in {retry_after:g}s."
        )
        error = error_body(message, "requests", None, "rate_limit_exceeded")
        retry = [
            (b"retry-after-ms", b"%d" % round(retry_after * 1000)),
            (b"retry-after", b"%d" % max(1, math.ceil(retry_after))),
        ]
        await reply(send, 429, error, headers + retry)
    elif kind == "rate_limit_bare":
        message = "Too many requests. Please slow down and try again later."
        error = error_body(message, "requests", None, "rate_limit_exceeded")
        await reply(send, 429, error, headers)
    else:  # drop
        await _drop(send, headers)


async def _drop(send: Send, headers: Headers) -> None:
    payload = SERVER_ERROR_BODY
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [_JSON_HEADERS, (b"content-length", b"%d" % len(payload)), *headers],
        }
    )
    await send(
        {"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True}
    )
    # uvicorn closes the transport when the app raises after the response started.
    raise ConnectionDropped("fault: drop")


async def limited(
    send: Send, bucket: Bucket, plan: Plan, limit_type: str, wait: float, headers: Headers
) -> None:
    """OpenAI's 429 for a request over `bucket`'s `limit_type` limit, with ``retry-after``."""
    if limit_type == "requests":
        assert bucket.rpm is not None
        what, limit, requested = "requests per min (RPM)", bucket.rpm, 1
    else:
        assert bucket.tpm is not None
        what, limit, requested = "tokens per min (TPM)", bucket.tpm, plan.cost
    message = (
        f"Rate limit reached for {plan.model} in organization org-fake on {what}: "
        f"Limit {num(limit)}, Used {bucket.used(limit_type)}, Requested {requested}. "
        f"Please try again in {format_duration(wait)}. Visit "
        "https://platform.openai.com/account/rate-limits to learn more."
    )
    error = error_body(message, limit_type, None, "rate_limit_exceeded")
    retry_ms = max(1, math.ceil(wait * 1000.0))
    retry = [
        (b"retry-after-ms", b"%d" % retry_ms),
        (b"retry-after", b"%d" % max(1, math.ceil(retry_ms / 1000.0))),
    ]
    await reply(send, 429, error, headers + retry)
