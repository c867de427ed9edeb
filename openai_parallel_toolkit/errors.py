"""Exceptions raised by the toolkit, and the classification of API errors.

The exception tree::

    ToolkitError
    ├── ConfigError                 a config file, env var or argument is wrong (names file, field)
    ├── TokenizerUnavailableError   no tiktoken encoding could be loaded
    ├── ResultsFileError            a JSONL job's output file is not this job's results (unchanged)
    ├── SlotTimeoutError            no key was free within a wait's timeout (also a TimeoutError)
    ├── BudgetReachedError          a request's worst case would pass the run's max_cost: not sent
    └── RequestFailedError          one logical request failed for good
        ├── NoKeysAvailableError    every key of the pool has been removed
        └── CostUnknownError        under a max_cost, a request whose model has no known price

`classify(exc)` turns whatever a request raised into a `Verdict`: what the engine does next
(see the error table in the README). Every message built here masks API keys, and so does what
the toolkit hands on: `scrub_exception` cleans chained errors (bodies, responses, requests) and
`protect_logs` keeps keys out of the HTTP libraries' own debug logs.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import re
import threading
import unicodedata
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .headers import RateLimitHeaders, retry_after_seconds

__all__ = [
    "FLEX_UNAVAILABLE",
    "Action",
    "BudgetReachedError",
    "ConfigError",
    "CostUnknownError",
    "NoKeysAvailableError",
    "RequestFailedError",
    "ResultsFileError",
    "SlotTimeoutError",
    "TokenizerUnavailableError",
    "ToolkitError",
    "Verdict",
    "classify",
    "classify_response",
    "describe_char",
    "is_flex_unavailable",
    "key_label",
    "mask_key",
    "protect_logs",
    "redact",
    "scrub_exception",
]

# OpenAI keys look like sk-..., sk-proj-..., sk-svcacct-...; the tail is what users recognise.
_KEY_PATTERN = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}")
# The credential of an Authorization header, as it shows in logged header lists and reprs.
_BEARER_PATTERN = re.compile(r"(?i)\b(bearer\s+)([^\s'\"\\,;)\]]+)")
# Headers whose whole value is a credential, whatever it looks like.
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key"})


def key_label(key: str) -> str:
    """A short label telling keys apart without revealing them: 4 hex digits of sha256(key).

    Stable across runs and processes; shown after the mask (``sk-...abcd#3f2a``), so keys too
    short to show a tail (``sk-test-1``, ``sk-test-2``) stay distinguishable.
    """
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:4]


def mask_key(key: str) -> str:
    """Return `key` in the masked form used everywhere in this package: ``sk-...abcd#3f2a``.

    The last four characters are shown for keys of 12 characters or more (none for shorter
    ones), then ``#`` and `key_label`. Non-``sk-`` secrets have no ``sk-`` prefix.
    """
    if not key:
        return "<empty key>"
    tail = key[-4:] if len(key) >= 12 else ""
    prefix = "sk-" if key.startswith("sk-") else ""
    return f"{prefix}...{tail}#{key_label(key)}"


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Mask every API key in `text`: the given `secrets` and anything shaped like ``sk-...``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, mask_key(secret))
    return _KEY_PATTERN.sub(lambda m: mask_key(m.group(0)), text)


def describe_char(text: str, index: int) -> str:
    """Where and what the character at `index` of a secret is, without showing the secret."""
    char = text[index]
    name = unicodedata.name(char, "a control character" if ord(char) < 0x20 else "unnamed")
    return f"character {index + 1} of {len(text)} is U+{ord(char):04X} ({name})"


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


class ResultsFileError(ToolkitError, ValueError):
    """A JSONL job's output file cannot be used for this job; nothing in it was changed."""


class SlotTimeoutError(ToolkitError, TimeoutError):
    """No slot of the key pool was free within the time allowed (`acquire_async`'s timeout).

    `retry_after` is the wait the pool expected for the next slot, when it knew one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message)


class RequestFailedError(ToolkitError):
    """A request failed for good: a non-retryable error, or its retry budget ran out.

    `status_code` is the last HTTP status seen (None for connection errors), `attempts` how many
    times it was sent, and `__cause__` the last underlying exception.
    """

    def __init__(self, message: str, *, status_code: int | None = None, attempts: int = 0):
        self.status_code = status_code
        self.attempts = attempts
        super().__init__(redact(message))


class BudgetReachedError(ToolkitError):
    """The run's `max_cost` cannot take this request's worst case; it was not sent.

    Runs stop taking new work on it, finish what is in flight and report; a re-run with a
    higher cap continues.
    """


class CostUnknownError(RequestFailedError):
    """Under a cost cap, a request of a model with no known price (not sent): the cap could
    not be kept. Price the model under ``prices:`` in the config."""


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
    # For 429s: True when the rate-limit headers show a limit used up, False when they show
    # capacity left (an overload or a gateway's 429, not ours), None when there are none.
    exhausted: bool | None = None

    def redacted(self, secrets: Sequence[str]) -> Verdict:
        """This verdict with `secrets` masked in its reason."""
        return dataclasses.replace(self, reason=redact(self.reason, secrets))


FLEX_UNAVAILABLE = "resource_unavailable"
"""The code of the 429 a ``service_tier="flex"`` request gets when flex capacity is short."""

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


def _exhausted(headers: Mapping[str, str] | None, limit: str | None) -> bool | None:
    """Whether a 429's own rate-limit headers show a limit used up (None: no such headers)."""
    parsed = RateLimitHeaders.from_headers(headers or {})
    if parsed.empty:
        return None
    if limit == "tokens":  # what is left may be less than this request needs
        return True
    return any(
        remaining is not None and remaining < 1
        for remaining in (parsed.remaining_requests, parsed.remaining_tokens)
    )


def classify(exc: BaseException, *, proxy: str | None = None) -> Verdict:
    """Decide what to do about an exception raised while sending one request.

    `proxy` is the proxy the request went through (the key's ``proxy``; None: the environment's
    ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY``, if any applies, as the HTTP client uses
    them). A connection that could not be made names what could not be reached: the API's
    ``host:port`` or the proxy's (never its credentials).
    """
    import openai  # local: keeps `errors` importable without touching the client at import

    if isinstance(exc, openai.APIStatusError):
        code, typ, message = _error_fields(exc)
        headers = exc.response.headers if exc.response is not None else None
        return _classify_status(exc.status_code, code, typ, message, headers)
    unsendable = _unsendable_key(exc)
    if unsendable is not None:
        return unsendable
    if isinstance(exc, openai.APIConnectionError) or _is_transport_error(exc):
        # APIConnectionError includes APITimeoutError.
        reason = f"{type(exc).__name__}: {exc}"
        unreachable = _unreachable(exc, proxy)
        if unreachable is not None:
            reason = f"{reason.rstrip('.')}: {unreachable}"
        return Verdict(Action.TRANSIENT, redact(reason))
    return Verdict(Action.FATAL, redact(f"{type(exc).__name__}: {exc}"))


_CONNECT_FAILURES = frozenset({"ConnectError", "ConnectTimeout", "ProxyError"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}


def _host_port(url: str) -> str | None:
    """``host:port`` of `url` (default port by scheme), without any credentials."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    host = parts.hostname
    if not host:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def _environment_proxy(url: str) -> str | None:
    """The proxy the environment gives for `url` (``*_PROXY``, ``NO_PROXY`` honoured)."""
    try:
        parts = urllib.parse.urlsplit(url)
        proxies = urllib.request.getproxies_environment()
        if parts.hostname and urllib.request.proxy_bypass(parts.hostname):  # NO_PROXY
            return None
    except ValueError:
        return None
    return proxies.get(parts.scheme.lower()) or proxies.get("all")


def _unreachable(exc: BaseException, proxy: str | None) -> str | None:
    """What a failed connection could not reach, e.g. ``cannot reach the proxy host:8080``."""
    failure: BaseException | None = None
    target: str | None = None
    for link in _chain(exc):
        module = type(link).__module__.split(".")[0]
        if failure is None and module in _HTTP_MODULES and type(link).__name__ in _CONNECT_FAILURES:
            failure = link
        if target is None:
            try:  # openai's and httpx's errors carry the request; its url the API's address
                request = getattr(link, "request", None)
            except RuntimeError:  # httpx: "the .request property has not been set"
                request = None
            url = getattr(request, "url", None)
            target = str(url) if url is not None else None
    if failure is None or target is None:
        return None
    api = _host_port(target) or "the API"
    detail = str(failure) or type(failure).__name__
    via = proxy if proxy is not None else _environment_proxy(target)
    if via is None:
        return f"cannot reach the API at {api} ({detail})"
    where = _host_port(via) or "the proxy"
    origin = "" if proxy is not None else ", from the environment"
    if type(failure).__name__ == "ProxyError":
        return f"the proxy {where}{origin} could not connect to the API at {api} ({detail})"
    return f"cannot reach the proxy {where}{origin} ({detail}; the API is at {api})"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or during, each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _unsendable_key(exc: BaseException) -> Verdict | None:
    """KEY_DEAD when the HTTP stack could not encode the key's Authorization header.

    Such a key fails every request in a millisecond, before anything is sent; left in the pool
    it would win most grants. Other unencodable headers belong to the request, not the key.
    """
    for link in _chain(exc):
        if (
            isinstance(link, UnicodeEncodeError)
            and link.object[:7].lower() == "bearer "
            and link.start >= 7
        ):
            where = describe_char(link.object[7:], link.start - 7)
            return Verdict(
                Action.KEY_DEAD, f"the API key cannot be sent in an HTTP header: {where}"
            )
    return None


def _classify_status(
    status: int, code: str, typ: str, message: str, headers: Mapping[str, str] | None
) -> Verdict:
    reason = redact(f"HTTP {status} {code or typ or ''}: {message}".replace("  ", " "))
    if code in _DEAD_CODES or typ in _DEAD_CODES or status in (401, 403):
        return Verdict(Action.KEY_DEAD, reason, status)
    if FLEX_UNAVAILABLE in (code, typ):
        # Flex capacity ran short: no limit of ours is used up and the key is fine, so the
        # group is neither cooled nor slowed; the request backs off and tries again later.
        return Verdict(Action.TRANSIENT, reason, status, retry_after_seconds(headers))
    if status == 429:
        limit = typ if typ in ("requests", "tokens") else None
        wait = _rate_limit_wait(headers, typ)
        return Verdict(Action.RATE_LIMITED, reason, status, wait, limit, _exhausted(headers, limit))
    if status in (408, 409) or status >= 500:
        return Verdict(Action.TRANSIENT, reason, status, retry_after_seconds(headers))
    return Verdict(Action.FATAL, reason, status)


def is_flex_unavailable(exc: BaseException) -> bool:
    """True when `exc` (or what it was raised from) is flex processing's capacity 429
    (``resource_unavailable``): the request may go again later, or on the standard tier."""
    import openai

    for link in _chain(exc):
        if isinstance(link, openai.APIStatusError) and link.status_code == 429:
            code, typ, _ = _error_fields(link)
            if FLEX_UNAVAILABLE in (code, typ):
                return True
    return False


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


def _scrub_value(value: Any, secrets: Sequence[str]) -> Any:
    """`value` with secrets masked in every string inside it (dicts, lists, tuples)."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {_scrub_value(k, secrets): _scrub_value(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_value(item, secrets) for item in value)
    return value


def _mask_token(token: str) -> str:
    """`token` masked, unless it already is (masking twice would lose the tail)."""
    return token if "..." in token else mask_key(token)


def _scrub_header(name: bytes, value: bytes, secrets: Sequence[str]) -> bytes:
    # Latin-1 maps bytes to text one to one, so values in any encoding come back unchanged.
    text = value.decode("latin-1")
    if name.decode("latin-1").lower() in _CREDENTIAL_HEADERS:
        scheme, space, token = text.rpartition(" ")
        text = f"{scheme}{space}{_mask_token(token)}"
    return redact(text, secrets).encode("latin-1")


def _scrub_headers(owner: Any, secrets: Sequence[str]) -> None:
    """Replace `owner.headers` (an httpx Headers) by a copy with credentials masked."""
    headers = getattr(owner, "headers", None)
    raw = getattr(headers, "raw", None)
    if headers is None or not isinstance(raw, list):
        return
    clean = [(name, _scrub_header(name, value, secrets)) for name, value in raw]
    if clean != raw:
        # The same Headers class (httpx or httpx2), built through its public constructor.
        owner.headers = type(headers)(clean, encoding=headers.encoding)


def _scrub_response(response: Any, secrets: Sequence[str]) -> None:
    """Mask secrets in a chained httpx response: its headers, body and request's headers."""
    _scrub_headers(response, secrets)
    try:
        request = response.request
    except RuntimeError:  # httpx raises it for a response built without a request
        request = None
    if request is not None:
        _scrub_headers(request, secrets)
    try:
        content = response.content
    except Exception:  # a streamed body never read: nothing of it can be handed on
        return
    if not isinstance(content, bytes):
        return
    text = content.decode("utf-8", errors="surrogateescape")
    clean = redact(text, secrets)
    if clean != text:
        # httpx has no public way to replace a read body; `content` and `text` read these.
        response._content = clean.encode("utf-8", errors="surrogateescape")
        vars(response).pop("_text", None)


def scrub_exception(exc: BaseException, secrets: Sequence[str]) -> BaseException:
    """Mask `secrets` (and key-shaped text) in `exc` and the exceptions chained to it, in place.

    Covers each one's message and args, its error body (nested dicts and lists too), the text
    an encoding error failed on, and its HTTP response and request: headers (Authorization
    included), body and text. Some compatible servers echo the key in error bodies or headers;
    the toolkit chains API errors to its own exceptions, so they must be as clean as its own.
    """
    for link in _chain(exc):
        _scrub_one(link, secrets)
    return exc


def _scrub_one(exc: BaseException, secrets: Sequence[str]) -> None:
    exc.args = tuple(_scrub_value(a, secrets) for a in exc.args)
    # An encoding error holds the whole text it failed on: for a header, "Bearer <key>".
    if isinstance(exc, (UnicodeEncodeError, UnicodeTranslateError)):
        exc.object = redact(exc.object, secrets)
    # `message` and `body` belong to openai's errors, not to BaseException (hence the ignores).
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        exc.message = redact(message, secrets)  # type: ignore[attr-defined]
    body = getattr(exc, "body", None)
    if isinstance(body, (str, Mapping, list, tuple)):
        exc.body = _scrub_value(body, secrets)  # type: ignore[attr-defined]
    # `response` and `request` are properties on some exceptions (httpx raises when unset).
    for name in ("response", "request"):
        try:
            value = getattr(exc, name, None)
        except RuntimeError:
            value = None
        if value is None:
            continue
        if name == "response":
            _scrub_response(value, secrets)
        else:
            _scrub_headers(value, secrets)


# --- third-party logs ----------------------------------------------------------------------

# The loggers of the HTTP stack under the openai client. At DEBUG they log response headers
# (which some servers fill with the key) and, in some versions, request headers.
_THIRD_PARTY_LOGGERS = ("openai", "httpx", "httpx2", "httpcore", "httpcore2")


class _SecretFilter(logging.Filter):
    """Masks known keys, key-shaped text and bearer tokens in the records it sees."""

    def __init__(self) -> None:
        super().__init__("openai_parallel_toolkit.secrets")
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            known = set(self._secrets)
            # Longest first: a key that contains another is masked whole.
            merged = known | {s for s in secrets if s}
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: logging reports it itself, leave it alone
            return True
        clean = _BEARER_PATTERN.sub(
            lambda m: m.group(1) + _mask_token(m.group(2)), redact(message, self._secrets)
        )
        if clean != message:
            record.msg, record.args = clean, None
        return True


_LOG_FILTER = _SecretFilter()


def protect_logs(secrets: Iterable[str]) -> None:
    """Keep `secrets` (and bearer tokens) out of the openai and httpx/httpcore loggers' records.

    A logger's filter applies only to records logged on that very logger, so the filter goes
    on every logger of those libraries that exists now (call again after importing more of
    them; the key pool does so whenever it builds clients). Idempotent; never configures
    handlers or levels.
    """
    _LOG_FILTER.add(secrets)
    manager = logging.Logger.manager
    names = [
        name
        for name in list(manager.loggerDict)
        if any(name == root or name.startswith(root + ".") for root in _THIRD_PARTY_LOGGERS)
    ]
    for name in {*names, *_THIRD_PARTY_LOGGERS}:
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)
