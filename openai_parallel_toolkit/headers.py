"""Parsing of the rate-limit headers OpenAI sends with every response (and with 429s)."""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RateLimitHeaders", "parse_reset", "retry_after_seconds"]

_PREFIX = b"x-ratelimit-"
_RESET_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_reset(value: str | None) -> float | None:
    """Seconds in an ``x-ratelimit-reset-*`` value: ``1s``, ``6m0s``, ``12ms``, ``1h2m3.5s``.

    A bare number is taken as seconds. Returns None for anything unparseable or negative.
    """
    if value is None:
        return None
    text = value.strip().lower()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return number if number >= 0 and math.isfinite(number) else None
    total = 0.0
    position = 0
    for match in _RESET_PART.finditer(text):
        if match.start() != position:
            return None
        amount = float(match.group(1))
        total += amount * {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}[match.group(2)]
        position = match.end()
    return total if position == len(text) else None


def _number(value: str | None, *, zero_ok: bool) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero_ok):
        return None
    return number


def _positive(value: str | None) -> float | None:
    # Compatible servers send "-1" or "0" for "no limit"; treat both as unknown.
    return _number(value, zero_ok=False)


def _non_negative(value: str | None) -> float | None:
    return _number(value, zero_ok=True)


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """The ``x-ratelimit-*`` headers of one response; None where missing or meaningless."""

    limit_requests: float | None = None
    limit_tokens: float | None = None
    remaining_requests: float | None = None
    remaining_tokens: float | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitHeaders:
        """Parse a (case-insensitive, lower-case keyed) header mapping."""
        get = headers.get
        return cls(
            limit_requests=_positive(get("x-ratelimit-limit-requests")),
            limit_tokens=_positive(get("x-ratelimit-limit-tokens")),
            remaining_requests=_non_negative(get("x-ratelimit-remaining-requests")),
            remaining_tokens=_non_negative(get("x-ratelimit-remaining-tokens")),
            reset_requests=parse_reset(get("x-ratelimit-reset-requests")),
            reset_tokens=parse_reset(get("x-ratelimit-reset-tokens")),
        )

    @classmethod
    def from_response_headers(cls, headers: Any) -> RateLimitHeaders:
        """`from_headers` for an HTTP response's headers, read in one pass where they are
        httpx's `Headers` (a lookup by name searches all of them, six times per response)."""
        raw = getattr(headers, "raw", None)
        if not isinstance(raw, list):
            return cls.from_headers(headers)
        encoding: str = headers.encoding
        found: dict[str, str] = {}
        for name, value in raw:
            if name[:12].lower() == _PREFIX:
                key, text = name.decode(encoding).lower(), value.decode(encoding)
                # A repeated header joined as httpx's own lookup does.
                found[key] = f"{found[key]}, {text}" if key in found else text
        return cls.from_headers(found) if found else cls()

    @property
    def empty(self) -> bool:
        """True when the response carried none of the headers."""
        return all(getattr(self, name) is None for name in self.__slots__)


def retry_after_seconds(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """Seconds the server asks to wait: ``retry-after-ms``, else ``retry-after`` (secs or date)."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        return max(0.0, email.utils.mktime_tz(parsed) - (time.time() if now is None else now))
