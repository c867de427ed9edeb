"""Exceptions raised by the toolkit, and the classification of API errors.

The exception tree::

    ToolkitError
    ├── ConfigError                 a config file, env var or argument is wrong (names file, field)
    ├── TokenizerUnavailableError   no tiktoken encoding could be loaded
    └── RequestFailedError          one logical request failed for good
        └── NoKeysAvailableError    every key of the pool has been removed

`classify(exc)` turns whatever a request raised into a `Verdict`: what the engine does next
(see the error table in the README). Every message built here masks API keys.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .headers import RateLimitHeaders, retry_after_seconds

__all__ = [
    "Action",
    "ConfigError",
    "NoKeysAvailableError",
    "RequestFailedError",
    "TokenizerUnavailableError",
    "ToolkitError",
    "Verdict",
    "classify",
    "classify_response",
    "mask_key",
    "redact",
    "scrub_exception",
]

# OpenAI keys look like sk-..., sk-proj-..., sk-svcacct-...; the tail is what users recognise.
_KEY_PATTERN = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}")


def mask_key(key: str) -> str:
    """Return `key` in the masked form used everywhere in this package: ``sk-...abcd``.

    Short or non-``sk-`` secrets keep at most their last four characters.
    """
    if not key:
        return "<empty key>"
    tail = key[-4:] if len(key) >= 12 else ""
    prefix = "sk-" if key.startswith("sk-") else ""
    return f"{prefix}...{tail}"


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Mask every API key in `text`: the given `secrets` and anything shaped like ``sk-...``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, mask_key(secret))
    return _KEY_PATTERN.sub(lambda m: mask_key(m.group(0)), text)


class ToolkitError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(ToolkitError, ValueError):
    """A configuration is unusable: `source` names the file or "environment", `field` the entry."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.source = source
        self.field = field
        where = ", ".join(part for part in (source, f"field {field!r}" if field else None) if part)
        super().__init__(redact(f"{where}: {message}" if where else message))


class TokenizerUnavailableError(ToolkitError, RuntimeError):
    """tiktoken could not load the encoding (typically: offline with an empty cache)."""


class RequestFailedError(ToolkitError):
    """A request failed for good: a non-retryable error, or its retry budget ran out.

    `status_code` is the last HTTP status seen (None for connection errors), `attempts` how many
    times it was sent, and `__cause__` the last underlying exception.
    """

    def __init__(self, message: str, *, status_code: int | None = None, attempts: int = 0):
        self.status_code = status_code
        self.attempts = attempts
        super().__init__(redact(message))


class NoKeysAvailableError(RequestFailedError):
    """Every key of the pool was removed; `reasons` maps each masked key to why."""

    def __init__(self, reasons: Mapping[str, str], *, attempts: int = 0):
        self.reasons = dict(reasons)
        detail = "; ".join(f"{key}: {why}" for key, why in self.reasons.items()) or "pool is empty"
        super().__init__(f"no usable API key left ({detail})", attempts=attempts)


class Action(enum.Enum):
    """What the request engine does after an error."""

    RATE_LIMITED = "rate_limited"  # cool the key's limit group down, retry at once elsewhere
    KEY_DEAD = "key_dead"  # remove the key for this run, retry on another
    TRANSIENT = "transient"  # back off, retry within the budget
    FATAL = "fatal"  # the request itself is wrong: fail now


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of `classify`: an action, why, and how long the server asked us to wait."""

    action: Action
    reason: str
    status_code: int | None = None
    retry_after: float | None = None
    limit: str | None = None  # for 429s: "requests" or "tokens" when the server says which

    def redacted(self, secrets: Sequence[str]) -> Verdict:
        """This verdict with `secrets` masked in its reason."""
        return dataclasses.replace(self, reason=redact(self.reason, secrets))


_DEAD_CODES = frozenset(
    {
        "insufficient_quota",
        "billing_hard_limit_reached",
        "billing_not_active",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
        "account_deactivated",
        "invalid_api_key",
    }
)


def _error_fields(exc: Any) -> tuple[str, str, str]:
    """(code, type, message) of an openai APIStatusError, tolerant of odd bodies."""
    code = str(getattr(exc, "code", None) or "")
    typ = str(getattr(exc, "type", None) or "")
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            code = code or str(inner.get("code") or "")
            typ = typ or str(inner.get("type") or "")
    return code, typ, str(getattr(exc, "message", "") or exc)


# Transport failures worth a retry, by class name: httpx/httpx2 wrap most, but raw httpcore
# errors and RemoteProtocolError can escape the openai client unwrapped.
_TRANSIENT_TRANSPORT = frozenset(
    {"TransportError", "TimeoutException", "NetworkError", "ProtocolError", "DecodingError"}
)
_HTTP_MODULES = frozenset({"httpx", "httpx2", "httpcore", "httpcore2"})


def _is_transport_error(exc: BaseException) -> bool:
    if type(exc).__name__ == "UnsupportedProtocol":  # a bad base URL: retrying cannot help
        return False
    return any(
        cls.__module__.split(".")[0] in _HTTP_MODULES and cls.__name__ in _TRANSIENT_TRANSPORT
        for cls in type(exc).__mro__
    )


def _rate_limit_wait(headers: Mapping[str, str] | None, typ: str) -> float | None:
    """How long a 429 asks to wait: retry-after, else the reset of the exhausted limit."""
    wait = retry_after_seconds(headers)
    if wait is not None or not headers:
        return wait
    parsed = RateLimitHeaders.from_headers(headers)
    if typ == "tokens" and parsed.reset_tokens is not None:
        return parsed.reset_tokens
    if typ == "requests" and parsed.reset_requests is not None:
        return parsed.reset_requests
    exhausted = [
        reset
        for remaining, reset in (
            (parsed.remaining_requests, parsed.reset_requests),
            (parsed.remaining_tokens, parsed.reset_tokens),
        )
        if reset is not None and (remaining is None or remaining < 1)
    ]
    return max(exhausted) if exhausted else None


def classify(exc: BaseException) -> Verdict:
    """Decide what to do about an exception raised while sending one request."""
    import openai  # local: keeps `errors` importable without touching the client at import

    if isinstance(exc, openai.APIStatusError):
        code, typ, message = _error_fields(exc)
        headers = exc.response.headers if exc.response is not None else None
        return _classify_status(exc.status_code, code, typ, message, headers)
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return Verdict(Action.TRANSIENT, redact(f"{type(exc).__name__}: {exc}"))
    if _is_transport_error(exc):
        return Verdict(Action.TRANSIENT, redact(f"{type(exc).__name__}: {exc}"))
    return Verdict(Action.FATAL, redact(f"{type(exc).__name__}: {exc}"))


def _classify_status(
    status: int, code: str, typ: str, message: str, headers: Mapping[str, str] | None
) -> Verdict:
    reason = redact(f"HTTP {status} {code or typ or ''}: {message}".replace("  ", " "))
    if code in _DEAD_CODES or typ in _DEAD_CODES or status in (401, 403):
        return Verdict(Action.KEY_DEAD, reason, status)
    if status == 429:
        limit = typ if typ in ("requests", "tokens") else None
        return Verdict(Action.RATE_LIMITED, reason, status, _rate_limit_wait(headers, typ), limit)
    if status in (408, 409) or status >= 500:
        return Verdict(Action.TRANSIENT, reason, status, retry_after_seconds(headers))
    return Verdict(Action.FATAL, reason, status)


def classify_response(status: int, body: Any, headers: Mapping[str, str] | None) -> Verdict:
    """`classify` for a raw HTTP error response (`body` parsed JSON, or anything)."""
    error = body.get("error", body) if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        code = str(error.get("code") or "")
        typ = str(error.get("type") or "")
        message = str(error.get("message") or "")
    else:
        code = typ = ""
        message = str(body)[:200]
    return _classify_status(status, code, typ, message, headers)


def scrub_exception(exc: BaseException, secrets: Sequence[str]) -> BaseException:
    """Mask `secrets` (and key-shaped text) in `exc`'s message and error body, in place.

    Some compatible servers echo the key in their error messages; the toolkit chains API
    errors to its own exceptions, so their text must be as clean as the toolkit's.
    """
    exc.args = tuple(redact(a, secrets) if isinstance(a, str) else a for a in exc.args)
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        exc.message = redact(message, secrets)  # type: ignore[attr-defined]
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        exc.body = {  # type: ignore[attr-defined]
            k: redact(v, secrets) if isinstance(v, str) else v for k, v in body.items()
        }
    return exc
