"""The journal of a batch job: a SQLite file beside the output that survives any crash.

It holds the job's plan (which input lines go into which chunk, each chunk becoming one batch
input file) and every id the API gave: the uploaded file of each chunk and every batch ever
created for it. Each step is written *before* the job relies on it, and the step about to be
taken is written before it is taken (``uploading``, ``creating``), so a re-run knows where a
crash left each chunk and looks the file or batch up by its name instead of making another.

A chunk moves through these states::

    planned → uploading → uploaded → creating → submitted → collected
                              ↑__________________________|  (batch failed on the queue limit)
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["STATES", "BatchJournal", "ChunkRow", "journal_path"]

STATES = ("planned", "uploading", "uploaded", "creating", "submitted", "collected")
"""The states of a chunk, in order."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    chunk INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    lines TEXT NOT NULL,
    requests INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    state TEXT NOT NULL,
    key_id TEXT,
    queue TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    file_id TEXT,
    batch_id TEXT,
    batch_status TEXT,
    output_file_id TEXT,
    error_file_id TEXT
);
CREATE TABLE IF NOT EXISTS items (item TEXT PRIMARY KEY, chunk INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tries (item TEXT PRIMARY KEY, retries INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY, chunk INTEGER NOT NULL, attempt INTEGER NOT NULL,
    key_id TEXT NOT NULL
);
"""


def journal_path(output: Path) -> Path:
    """Where the journal of the job writing `output` lives: beside it."""
    return output.with_name(output.name + ".batches.sqlite")


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """One chunk as the journal holds it (a snapshot)."""

    chunk: int
    endpoint: str
    model: str
    lines: tuple[int, ...]
    requests: int
    tokens: int
    state: str
    key_id: str | None
    queue: str | None
    attempt: int
    file_id: str | None
    batch_id: str | None
    batch_status: str | None
    output_file_id: str | None
    error_file_id: str | None

    @property
    def filename(self) -> str:
        """The name its input file is uploaded under (the job's token is added by the job)."""
        return f"chunk-{self.chunk}.jsonl"


class BatchJournal:
    """The SQLite journal of one batch job; every write is committed before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: each statement commits at once, unless in an explicit block.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self.token = self._meta_default("token", uuid.uuid4().hex[:16])
        """A random name of this job, in the names of its files and the metadata of its
        batches: how a re-run finds what a crash left unrecorded."""

    def __repr__(self) -> str:
        return f"BatchJournal({str(self.path)!r})"

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- meta

    def _meta_default(self, name: str, value: str) -> str:
        self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (name, value))
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0])

    def get(self, name: str) -> str | None:
        """A job setting recorded earlier, or None."""
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, name: str, value: str) -> None:
        """Record a job setting (replacing an older value)."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    # -- chunks

    def add_chunk(
        self,
        endpoint: str,
        model: str,
        entries: list[tuple[int, str]],
        tokens: int,
    ) -> int:
        """Record a planned chunk of (line number, custom id) entries; returns its number."""
        lines = json.dumps([line for line, _ in entries])
        with self._db:
            self._db.execute("BEGIN")
            cursor = self._db.execute(
                "INSERT INTO chunks (endpoint, model, lines, requests, tokens, state) "
                "VALUES (?, ?, ?, ?, ?, 'planned')",
                (endpoint, model, lines, len(entries), tokens),
            )
            chunk = int(cursor.lastrowid or 0)
            self._db.executemany(
                "INSERT INTO items VALUES (?, ?)", [(cid, chunk) for _, cid in entries]
            )
        return chunk

    def planned_ids(self) -> set[str]:
        """The custom ids already in some chunk."""
        return {str(row[0]) for row in self._db.execute("SELECT item FROM items")}

    def chunks(self, *states: str) -> list[ChunkRow]:
        """The chunks in any of `states` (all when none given), in order."""
        query = "SELECT * FROM chunks"
        if states:
            query += f" WHERE state IN ({','.join('?' * len(states))})"
        return [_row(r) for r in self._db.execute(query + " ORDER BY chunk", states)]

    def chunk(self, number: int) -> ChunkRow:
        """One chunk by number."""
        row = self._db.execute("SELECT * FROM chunks WHERE chunk = ?", (number,)).fetchone()
        if row is None:
            raise KeyError(number)
        return _row(row)

    def update(self, number: int, **values: Any) -> ChunkRow:
        """Change a chunk's columns; returns the chunk as it now is."""
        names = ", ".join(f"{name} = ?" for name in values)
        self._db.execute(f"UPDATE chunks SET {names} WHERE chunk = ?", (*values.values(), number))
        return self.chunk(number)

    def record_batch(self, number: int, batch_id: str, attempt: int, key_id: str) -> ChunkRow:
        """Record a created batch (in the history too) and mark its chunk submitted."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR IGNORE INTO batches VALUES (?, ?, ?, ?)",
                (batch_id, number, attempt, key_id),
            )
            self._db.execute(
                "UPDATE chunks SET batch_id = ?, state = 'submitted', batch_status = NULL "
                "WHERE chunk = ?",
                (batch_id, number),
            )
        return self.chunk(number)

    def batch_history(self) -> list[tuple[str, int, int]]:
        """Every batch ever created by this job: (batch id, chunk, attempt)."""
        rows = self._db.execute("SELECT batch_id, chunk, attempt FROM batches ORDER BY rowid")
        return [(str(b), int(c), int(a)) for b, c, a in rows]

    def retries(self, item: str) -> int:
        """How many times an id was planned again after its answer failed."""
        row = self._db.execute("SELECT retries FROM tries WHERE item = ?", (item,)).fetchone()
        return 0 if row is None else int(row[0])

    def forget(self, item: str) -> None:
        """Free an id to be planned again (its chunk keeps it in its lines), counting a retry."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM items WHERE item = ?", (item,))
            self._db.execute(
                "INSERT INTO tries VALUES (?, 1) "
                "ON CONFLICT(item) DO UPDATE SET retries = retries + 1",
                (item,),
            )

    def iter_items(self, number: int) -> Iterator[str]:
        """The custom ids of one chunk."""
        for (item,) in self._db.execute("SELECT item FROM items WHERE chunk = ?", (number,)):
            yield str(item)


def _row(row: tuple[Any, ...]) -> ChunkRow:
    values = list(row)
    values[3] = tuple(json.loads(values[3]))
    return ChunkRow(*values)
