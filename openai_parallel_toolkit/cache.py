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
from typing import Any

__all__ = ["RequestCache", "active_cache", "use_cache"]

logger = logging.getLogger(__name__)

_active: contextvars.ContextVar[RequestCache | None] = contextvars.ContextVar(
    "openai_parallel_toolkit_cache", default=None
)


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


class RequestCache:
    """Successful responses stored by request, in the SQLite file at `path`.

    Thread-safe; usable as a context manager (closes the file). `clear()` forgets everything;
    deleting the file does too.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses "
            "(key TEXT PRIMARY KEY, response TEXT NOT NULL, created REAL NOT NULL)"
        )
        self.hits = 0
        self.misses = 0

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
        with self._lock:
            row = self._db.execute(
                "SELECT response FROM responses WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        try:
            return _decode(row[0])
        except (ValueError, KeyError, TypeError, ImportError, AttributeError) as exc:
            logger.warning("ignoring an unreadable cache entry in %s: %s", self.path, exc)
            return None

    def put(self, key: str, response: Any) -> bool:
        """Store `response` under `key` (committed at once); False if it cannot be stored."""
        text = _encode(response)
        if text is None:
            logger.debug("response of type %s is not cacheable", type(response).__name__)
            return False
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, response, created) VALUES (?, ?, ?)",
                (key, text, time.time()),
            )
        return True

    def clear(self) -> None:
        """Forget every stored response."""
        with self._lock:
            self._db.execute("DELETE FROM responses")

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> RequestCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RequestCache({str(self.path)!r}, hits={self.hits}, misses={self.misses})"


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
