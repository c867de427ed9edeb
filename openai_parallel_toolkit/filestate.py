"""What a `ParallelToolkit` run keeps beside its outputs: the done journal and the staging area.

Both live in ``<output>/.openai-parallel-toolkit/``. The journal (SQLite, one commit per file)
says which inputs are finished and which files they produced; the staging area holds each
file's outputs until its hooks have all returned, after which they are moved into place.
The journal also remembers whether the folder's adoption of existing outputs (outputs of the
original toolkit, which kept no state) is still open.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: staging folders are then kept, never shared
    fcntl = None  # type: ignore[assignment]

__all__ = ["Journal", "JournalEntry", "Ledger", "StagingArea"]

_GRACE_SECONDS = 60.0
_PUBLISHING = "publishing"
_DONE = "done"
_ADOPTION = "adoption"  # meta row present while adopting existing outputs is still allowed


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """What the journal knows of one input: its outputs, and whether they are all in place."""

    outputs: tuple[str, ...]
    done: bool


class Ledger(Protocol):
    """Where a worker thread records an input's outputs: `Journal`, or a shared run's record."""

    def publishing(self, relative: str, outputs: list[str]) -> None: ...

    def done(self, relative: str, outputs: list[str]) -> None: ...


class Journal:
    """Inputs finished (by their path below the input root), with the outputs they produced.

    An input is marked "publishing" before its outputs are moved into place and "done" after,
    so a kill between two moves leaves a record that does not count as done.
    """

    def __init__(self, path: Path) -> None:
        self.existed = path.exists()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Commits survive a killed process; a power cut may lose the last few, whose inputs
        # are then simply processed again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS done (input TEXT PRIMARY KEY, outputs TEXT NOT NULL, "
            "state TEXT NOT NULL, finished REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )

    def entry(self, relative: str) -> JournalEntry | None:
        """The record of `relative`, or None if the journal has never seen it."""
        with self._lock:
            row = self._db.execute(
                "SELECT outputs, state FROM done WHERE input = ?", (relative,)
            ).fetchone()
        if row is None:
            return None
        return JournalEntry(tuple(json.loads(row[0])), row[1] == _DONE)

    def finished_outputs(self, relative: str) -> list[str] | None:
        """The outputs of a finished input, or None if it is not recorded as done."""
        entry = self.entry(relative)
        return list(entry.outputs) if entry is not None and entry.done else None

    @property
    def adoption_open(self) -> bool:
        """True while existing outputs may still be adopted as done (see `open_adoption`)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM meta WHERE name = ?", (_ADOPTION,)).fetchone()
        return row is not None

    def open_adoption(self) -> None:
        """Allow adopting existing outputs until `close_adoption` (set on a folder's first run).

        The permission is stored, so a first run cut short (Ctrl-C, ``file_count``) does not
        leave the rest of the folder's old outputs to be overwritten by the next run.
        """
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (_ADOPTION, "open")
            )

    def close_adoption(self) -> None:
        """No more adoption: a run has looked at every input once."""
        with self._lock:
            self._db.execute("DELETE FROM meta WHERE name = ?", (_ADOPTION,))

    def _write(self, relative: str, outputs: list[str], state: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO done (input, outputs, state, finished) VALUES (?, ?, ?, ?)",
                (relative, json.dumps(outputs), state, time.time()),
            )

    def publishing(self, relative: str, outputs: list[str]) -> None:
        """Record that `outputs` are about to be moved into place."""
        self._write(relative, outputs, _PUBLISHING)

    def done(self, relative: str, outputs: list[str]) -> None:
        """Record `relative` as finished, with `outputs` in place."""
        self._write(relative, outputs, _DONE)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


class StagingArea:
    """A private folder per run under `root`, locked while the run lives.

    Folders of runs that are gone (their lock is free) are removed when a new run starts, so
    the leftovers of a killed run never accumulate and a live run's folder is never touched.
    """

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale(root)
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._lock_file: IO[str] | None = _locked(root / f"{name}.lock")
        self.path = root / name
        self.path.mkdir()
        self._serial = 0
        self._serial_lock = threading.Lock()

    def new_folder(self) -> Path:
        """A fresh, empty folder for one input's outputs."""
        with self._serial_lock:
            self._serial += 1
            folder = self.path / str(self._serial)
        folder.mkdir()
        return folder

    def close(self) -> None:
        """Remove this run's folder and release its lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._lock_file.name)
            self._lock_file.close()
            self._lock_file = None


def _locked(path: Path) -> IO[str] | None:
    handle = open(path, "w")  # noqa: SIM115 - held open for the run's lifetime
    if fcntl is not None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def _remove_stale(root: Path) -> None:
    if fcntl is None:
        return
    for entry in os.scandir(root):
        if not entry.name.endswith(".lock"):
            continue
        try:
            with open(entry.path) as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Nobody holds it: that run is gone.
                shutil.rmtree(root / entry.name.removesuffix(".lock"), ignore_errors=True)
                os.unlink(entry.path)
        except OSError:
            continue  # held by a live run
    now = time.time()
    for entry in os.scandir(root):  # folders whose lock file is gone too
        if (
            entry.is_dir()
            and not (root / f"{entry.name}.lock").exists()
            and now - entry.stat().st_mtime > _GRACE_SECONDS  # not one being set up right now
        ):
            shutil.rmtree(entry.path, ignore_errors=True)
