"""A persistent cache of successful responses, so that a re-run never pays for a request twice.

Entries are keyed by a hash of the full request (endpoint, model, messages or input and every
parameter), as described by `OpenAIModel.describe()`. The store is one SQLite file in WAL mode:
each response is committed as soon as it arrives, so a crash or a kill loses at most the
requests still in flight, and many threads may read and write at once.

`request_openai_api` uses the cache given as `cache=`, else the one made active with
`use_cache` (`ParallelToolkit` activates one beside its outputs for the whole run).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

__all__ = ["RequestCache", "ResponseStore", "SqliteResponses", "active_cache", "use_cache"]

logger = logging.getLogger(__name__)

_active: contextvars.ContextVar[RequestCache | None] = contextvars.ContextVar(
    "openai_parallel_toolkit_cache", default=None
)


# How long a shared cache keeps an answer by default: a week of re-runs, then Redis's memory back.
SHARED_TTL_SECONDS = 7 * 24 * 3600.0

# Request options that shape the HTTP exchange, not the answer.
_TRANSPORT_OPTIONS = frozenset({"timeout"})


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _encode(response: Any) -> str | None:
    """JSON text for a response object, or None when it cannot be stored faithfully."""
    dump = getattr(response, "model_dump", None)
    cls = type(response)
    if callable(dump) and cls.__module__.split(".")[0] == "openai":
        return _dumps({"type": f"{cls.__module__}:{cls.__qualname__}", "data": dump(mode="json")})
    try:
        return _dumps({"type": "json", "data": response})
    except (TypeError, ValueError):
        return None


def _decode(text: str) -> Any:
    record = json.loads(text)
    kind, data = record["type"], record["data"]
    if kind == "json":
        return data
    module_name, _, name = kind.partition(":")
    # Only the openai package's own response types are rebuilt: a cache file is data, and must
    # not be able to make us import or instantiate anything else.
    if module_name.split(".")[0] != "openai":
        raise ValueError(f"refusing to rebuild cached type {kind!r}")
    cls: Any = importlib.import_module(module_name)
    for part in name.split("."):
        cls = getattr(cls, part)
    # Built like the client builds its responses: leniently, so whatever it accepted from a
    # compatible server (odd enum values, extra fields) comes back the same way.
    return cls.construct(**data)


class ResponseStore(Protocol):
    """Where a `RequestCache` keeps its entries: response texts by cache key; thread-safe."""

    def load(self, key: str) -> str | None:
        """The text stored under `key`, or None."""
        ...

    def save(self, key: str, text: str) -> None:
        """Store `text` under `key`, replacing what was there."""
        ...

    def clear(self) -> None:
        """Forget every entry."""
        ...

    def count(self) -> int:
        """How many entries there are."""
        ...

    def close(self) -> None:
        """Let go of the file or connection."""
        ...


class SqliteResponses:
    """Response texts in the SQLite file at `path` (WAL: many threads read and write at once,
    each entry committed as it arrives)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses "
            "(key TEXT PRIMARY KEY, response TEXT NOT NULL, created REAL NOT NULL)"
        )

    def load(self, key: str) -> str | None:
        """The text stored under `key`, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT response FROM responses WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else str(row[0])

    def save(self, key: str, text: str) -> None:
        """Store `text` under `key` (committed at once)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, response, created) VALUES (?, ?, ?)",
                (key, text, time.time()),
            )

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._db.execute("DELETE FROM responses")

    def count(self) -> int:
        """How many entries there are."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()


class RequestCache:
    """Successful responses stored by request: in the SQLite file at `path`, or in `store`.

    ``RequestCache.shared(url)`` keeps them in Redis instead, for every process and machine
    that uses it. Thread-safe; usable as a context manager (closes the file or connection).
    `clear()` forgets everything; deleting the SQLite file does too.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, store: ResponseStore | None = None
    ) -> None:
        if (path is None) == (store is None):
            raise TypeError("RequestCache takes a path or a store=, and not both")
        self.path = None if path is None else Path(path)
        if store is None:
            assert self.path is not None  # checked above: one of the two is given
            store = SqliteResponses(self.path)
        self._store = store
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @classmethod
    def shared(
        cls,
        url: str,
        *,
        namespace: str = "openai-parallel-toolkit",
        ttl_seconds: float | None = SHARED_TTL_SECONDS,
    ) -> RequestCache:
        """A cache kept in the Redis at `url` (``redis://host:6379/0``), shared by every process
        and machine that uses the same Redis and `namespace`: an answer one worker paid for is
        never paid for again by another.

        Entries expire `ttl_seconds` after they were stored (None: never), so that Redis's
        memory is not filled for good. While Redis does not answer, the cache is skipped (a
        miss, nothing stored) and tried again every few seconds: a run never fails or waits
        because of it. Needs the ``redis`` extra; Redis is asked once now, and a ConfigError
        says so in one line when it does not answer.
        """
        from ._store.responses import RedisResponses

        return cls(store=RedisResponses(url, namespace=namespace, ttl_seconds=ttl_seconds))

    @staticmethod
    def key_for(request: Mapping[str, Any]) -> str | None:
        """The cache key of a request description: a SHA-256 of its canonical JSON.

        Transport options (``timeout``) are left out: they do not change the answer. None when
        the description is not JSON data: such a request is simply not cached.
        """
        request = {k: v for k, v in request.items() if k not in _TRANSPORT_OPTIONS}
        try:
            text = _dumps(request)
        except (TypeError, ValueError) as exc:
            logger.debug("request not cacheable: %s", exc)
            return None
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> Any | None:
        """The stored response for `key`, rebuilt as the client's object, or None."""
        text = self._store.load(key)
        with self._lock:
            if text is None:
                self.misses += 1
                return None
            self.hits += 1
        try:
            return _decode(text)
        except (ValueError, KeyError, TypeError, ImportError, AttributeError) as exc:
            logger.warning("ignoring an unreadable cache entry in %s: %s", self._where(), exc)
            return None

    def put(self, key: str, response: Any) -> bool:
        """Store `response` under `key` (committed at once); False if it cannot be stored."""
        text = _encode(response)
        if text is None:
            logger.debug("response of type %s is not cacheable", type(response).__name__)
            return False
        self._store.save(key, text)
        return True

    def clear(self) -> None:
        """Forget every stored response."""
        self._store.clear()

    def __len__(self) -> int:
        return self._store.count()

    def close(self) -> None:
        """Close the database file or connection."""
        self._store.close()

    def __enter__(self) -> RequestCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _where(self) -> str:
        return str(self.path) if self.path is not None else repr(self._store)

    def __repr__(self) -> str:
        return f"RequestCache({self._where()!r}, hits={self.hits}, misses={self.misses})"


def active_cache() -> RequestCache | None:
    """The cache made active by `use_cache` in this context, if any."""
    return _active.get()


@contextlib.contextmanager
def use_cache(cache: RequestCache | None) -> Iterator[RequestCache | None]:
    """Make `cache` the one `request_openai_api` uses within this block (None: no cache).

    The setting follows the context: `multi_process_one` carries it into its worker threads.
    """
    token = _active.set(cache)
    try:
        yield cache
    finally:
        _active.reset(token)
