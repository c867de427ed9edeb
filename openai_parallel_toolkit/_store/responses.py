"""The response cache kept in Redis, for every process and machine that shares a job.

Entries are ``<namespace>:response:<sha256 of the request>`` strings with an expiry. The cache
is never what stops or slows a run: when Redis does not answer, a read is a miss and a write
is skipped, it says so once at WARNING, and Redis is asked again after `RETRY_SECONDS`.
"""

from __future__ import annotations

import logging
import threading
import time

from ..config import masked_url
from .connection import connect

__all__ = ["RETRY_SECONDS", "RedisResponses"]

logger = logging.getLogger("openai_parallel_toolkit.shared")

# While Redis does not answer, it is asked again this often (each try may cost a timeout).
RETRY_SECONDS = 5.0


class RedisResponses:
    """A `ResponseStore` in the Redis at `url`; entries expire `ttl_seconds` after they were
    stored (None: never)."""

    def __init__(self, url: str, *, namespace: str, ttl_seconds: float | None) -> None:
        if ttl_seconds is not None and not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be > 0 or None, not {ttl_seconds!r}")
        self._redis, self._errors = connect(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.url = masked_url(url) or url
        self._prefix = f"{namespace}:response:"
        self._ttl_ms = None if ttl_seconds is None else max(1, round(ttl_seconds * 1000))
        self._lock = threading.Lock()
        self._down_until = 0.0  # monotonic time before which Redis is not asked
        self._offline = False

    def load(self, key: str) -> str | None:
        """The text stored under `key`; None when there is none or Redis does not answer."""
        if not self._up():
            return None
        try:
            value = self._redis.get(self._prefix + key)
        except self._errors as exc:
            self._lost(exc)
            return None
        self._answered()
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def save(self, key: str, text: str) -> None:
        """Store `text` under `key` with the expiry; skipped while Redis does not answer."""
        if not self._up():
            return
        try:
            self._redis.set(self._prefix + key, text.encode(), px=self._ttl_ms)
        except self._errors as exc:
            self._lost(exc)
            return
        self._answered()

    def clear(self) -> None:
        """Forget every entry of this namespace (raises if Redis does not answer)."""
        batch: list[bytes] = []
        for name in self._redis.scan_iter(match=self._prefix + "*", count=1000):
            batch.append(name)
            if len(batch) >= 1000:
                self._redis.delete(*batch)
                batch.clear()
        if batch:
            self._redis.delete(*batch)

    def count(self) -> int:
        """How many entries this namespace holds (raises if Redis does not answer)."""
        return sum(1 for _ in self._redis.scan_iter(match=self._prefix + "*", count=1000))

    def close(self) -> None:
        """Close the connection."""
        self._redis.close()

    def _up(self) -> bool:
        with self._lock:
            return time.monotonic() >= self._down_until

    def _lost(self, exc: BaseException) -> None:
        with self._lock:
            first, self._offline = not self._offline, True
            self._down_until = time.monotonic() + RETRY_SECONDS
        if first:
            logger.warning(
                "the shared response cache at %s does not answer (%s): going on without it, "
                "asking again every %.0f s",
                self.url,
                type(exc).__name__,
                RETRY_SECONDS,
            )

    def _answered(self) -> None:
        with self._lock:
            back, self._offline = self._offline, False
        if back:
            logger.info("the shared response cache at %s answers again", self.url)

    def __repr__(self) -> str:
        return f"<RedisResponses {self.url} {self._prefix}*>"
