"""`ParallelToolkit`: every input file through your three hooks, in parallel, resumable.

Subclass it and override `process_input(file)`, `process_data(data)` and
`process_output(data, output_file_without_ext)`; `run()` does the rest.

Done means complete: `process_output` writes into a private staging folder, and only after
all three hooks returned without error are its files moved into the output folder (one
`os.replace` each, atomic on one file system) and the input recorded as done. A crash or a
kill never leaves a half-written output where the next run would take it for finished; the
staging leftovers of dead runs are removed at the next start.

Beside the outputs, the folder ``.openai-parallel-toolkit/`` holds the run's state:
``done.sqlite`` (the inputs finished, and their outputs), ``cache.sqlite`` (every successful
API response, so a re-run never pays twice; ``cache=False`` turns it off, deleting the file
clears it) and ``staging/``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from .cache import RequestCache, use_cache
from .errors import redact
from .keys import APIKeyManager, PoolStats, resolve_manager, use_manager
from .parallel import _nested, completed, default_concurrency

__all__ = ["FileFailure", "ParallelToolkit", "RunSummary"]

logger = logging.getLogger(__name__)

STATE_DIR = ".openai-parallel-toolkit"
_PROGRESS_REFRESH_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class FileFailure:
    """An input file that failed in this run (it has no output and is retried next run)."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What `ParallelToolkit.run` did."""

    processed: int
    skipped: int
    failed: tuple[FileFailure, ...]
    interrupted: bool
    elapsed: float

    @property
    def ok(self) -> bool:
        """True when nothing failed and the run was not interrupted."""
        return not self.failed and not self.interrupted

    def __str__(self) -> str:
        head = (
            f"processed {self.processed}, skipped {self.skipped} (already done), "
            f"failed {len(self.failed)} in {self.elapsed:.1f} s"
        )
        if self.interrupted:
            head += " (interrupted: run again to continue)"
        lines = [head] + [f"  failed: {f.path}: {f.reason}" for f in self.failed]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Task:
    source: Path  # the input file
    relative: str  # its path below the input root, the journal's key
    out_dir: Path  # where its outputs go
    out_name: str  # output_file_without_ext's last component


class _Journal:
    """Inputs finished, with the outputs they produced (SQLite, committed per file)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Commits survive a killed process; only a power cut may lose the last few, and
        # those files are then redone (their outputs, already in place, count as done).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS done "
            "(input TEXT PRIMARY KEY, outputs TEXT NOT NULL, finished REAL NOT NULL)"
        )

    def outputs(self, relative: str) -> list[str] | None:
        with self._lock:
            row = self._db.execute("SELECT outputs FROM done WHERE input = ?", (relative,))
            found = row.fetchone()
        return None if found is None else list(json.loads(found[0]))

    def record(self, relative: str, outputs: list[str]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO done (input, outputs, finished) VALUES (?, ?, ?)",
                (relative, json.dumps(outputs), time.time()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
    text = str(exc) or repr(exc)
    return redact(f"{type(exc).__name__}: {text}")


class ParallelToolkit:
    """Process every input file in parallel through three hooks, skipping finished ones.

    `input_path` is a file or a folder (walked recursively unless `recursive=False`, hidden
    files and folders skipped, sub-folders mirrored under `output_path`). For an input
    ``sub/a.json``, `process_output` gets ``output_file_without_ext`` naming ``a`` in (a
    staging copy of) ``output_path/sub``; inputs of one folder that share a stem (``a.json``,
    ``a.txt``) get their full names (``a.json``, ``a.txt``) instead, so they never collide.

    The keys come from `manager`, else `config_path` (which, as in the original toolkit, sets
    up the default pool), else the default pool. Inside the hooks, `request_openai_api` and
    `multi_process_one` use that pool and the run's response cache without being told.

    `num_threads` defaults to `default_concurrency(pool)`: the pool's request rate times a
    typical 2 s response time (8 per key whose limits are unknown), between 8 and 128 —
    the work waits on the network, so the CPU count says nothing about it. `file_count` caps
    how many not-yet-done files this run processes.
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str] | None = None,
        input_path: str | os.PathLike[str] | None = None,
        output_path: str | os.PathLike[str] | None = None,
        file_count: int | None = None,
        num_threads: int | None = None,
        name: str = "ParallelToolkit Progress",
        *,
        manager: APIKeyManager | None = None,
        recursive: bool = True,
        cache: bool | RequestCache | str | os.PathLike[str] = True,
        progress: bool = True,
    ) -> None:
        if input_path is None or output_path is None:
            raise TypeError("ParallelToolkit needs input_path and output_path")
        if file_count is not None and file_count < 0:
            raise ValueError("file_count must be >= 0")
        if num_threads is not None and num_threads < 1:
            raise ValueError("num_threads must be >= 1")
        self.input_path = Path(input_path)
        self.output_path = Path(output_path)
        self.file_count = file_count
        self.name = name
        self.recursive = recursive
        self.progress = progress
        self._cache_option = cache
        self.manager = manager if manager is not None else resolve_manager(config_path=config_path)
        self.num_threads = num_threads or default_concurrency(self.manager)
        self._abandon = threading.Event()

    # -- the hooks ------------------------------------------------------------------------------

    def process_input(self, file: IO[str]) -> Any:
        """Read one input file (open, UTF-8 text); the result goes to `process_data`."""
        raise NotImplementedError("override process_input(file) in your subclass")

    def process_data(self, data: Any) -> Any:
        """Process one file's data (call the API here); the result goes to `process_output`."""
        raise NotImplementedError("override process_data(data) in your subclass")

    def process_output(self, data: Any, output_file_without_ext: str) -> None:
        """Write the result: to ``output_file_without_ext`` plus an extension of your choice."""
        raise NotImplementedError("override process_output(data, output_file_without_ext)")

    # -- running --------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Process every input that is not done yet; returns (and logs) the summary.

        A file whose hook raises, whose request fails or that is not UTF-8 text gets no output
        and is listed in the summary; the others go on. Ctrl-C stops taking new files, lets
        the ones in progress finish and returns the summary (a second Ctrl-C abandons them).
        """
        if not self.input_path.exists():
            raise FileNotFoundError(f"input path does not exist: {self.input_path}")
        state = self.output_path / STATE_DIR
        staging_root = state / "staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        _clean_stale_staging(staging_root)
        run_staging = staging_root / f"{os.getpid()}-{secrets.token_hex(4)}"
        run_staging.mkdir()
        journal = _Journal(state / "done.sqlite")
        cache, own_cache = self._open_cache(state)
        counts: Counter[str] = Counter()
        failures: list[FileFailure] = []
        lock = threading.Lock()
        started = time.monotonic()
        baseline = self.manager.statistics()
        interrupted = False
        bar = tqdm(
            total=sum(1 for _ in self._inputs()),
            desc=self.name,
            unit="file",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        serial = iter(range(1 << 62))

        def work(task: _Task) -> None:
            staging = run_staging / str(next(serial))
            try:
                outputs = self._process(task, staging)
                if self._abandon.is_set():
                    return
                journal.record(task.relative, outputs)
                with lock:
                    counts["processed"] += 1
            except Exception as exc:
                reason = _failure_reason(exc)
                logger.warning("failed: %s: %s", task.relative, reason)
                logger.debug("failure details for %s", task.relative, exc_info=True)
                with lock:
                    failures.append(FileFailure(task.relative, reason))
            finally:
                shutil.rmtree(staging, ignore_errors=True)

        def skipped() -> None:
            counts["skipped"] += 1
            bar.update(1)

        last_refresh = 0.0
        try:
            with (
                use_manager(self.manager),
                use_cache(cache),
                ThreadPoolExecutor(self.num_threads, thread_name_prefix="toolkit") as executor,
            ):
                token = _nested.set(True)  # inner multi_process_one calls: no bars of their own
                try:
                    tasks = self._pending(journal, skipped)
                    for _ in completed(executor, work, tasks, self.num_threads * 2):
                        bar.update(1)
                        now = time.monotonic()
                        if now - last_refresh >= _PROGRESS_REFRESH_SECONDS:
                            last_refresh = now
                            self._refresh_bar(bar, counts, failures, started, baseline)
                except KeyboardInterrupt:
                    interrupted = True
                    logger.warning(
                        "interrupted: finishing the files in progress (Ctrl-C again to abandon)"
                    )
                    try:
                        executor.shutdown(wait=True, cancel_futures=True)
                    except KeyboardInterrupt:
                        self._abandon.set()
                        raise
                finally:
                    _nested.reset(token)
        finally:
            self._refresh_bar(bar, counts, failures, started, baseline)
            bar.close()
            journal.close()
            if own_cache and cache is not None:
                cache.close()
            shutil.rmtree(run_staging, ignore_errors=True)
        summary = RunSummary(
            processed=counts["processed"],
            skipped=counts["skipped"],
            failed=tuple(failures),
            interrupted=interrupted,
            elapsed=time.monotonic() - started,
        )
        logger.info("%s: %s", self.name, summary)
        if self.progress:
            tqdm.write(f"{self.name}: {summary}", file=sys.stderr)
        return summary

    def _process(self, task: _Task, staging: Path) -> list[str]:
        """Run the three hooks on one input; publish its outputs; return their names."""
        with open(task.source, encoding="utf-8") as file:
            data = self.process_input(file)
        result = self.process_data(data)
        staging.mkdir(parents=True)
        self.process_output(result, str(staging / task.out_name))
        task.out_dir.mkdir(parents=True, exist_ok=True)
        produced = sorted(entry.name for entry in os.scandir(staging))
        for name in produced:
            os.replace(staging / name, task.out_dir / name)
        return produced

    def _refresh_bar(
        self,
        bar: tqdm[Any],
        counts: Counter[str],
        failures: list[FileFailure],
        started: float,
        baseline: PoolStats,
    ) -> None:
        stats = self.manager.statistics()
        elapsed = max(1e-9, time.monotonic() - started)
        bar.n = counts["processed"] + counts["skipped"] + len(failures)
        bar.set_postfix(
            done=counts["processed"],
            skipped=counts["skipped"],
            failed=len(failures),
            req_s=f"{(stats.requests - baseline.requests) / elapsed:.1f}",
            r429=stats.rate_limited - baseline.rate_limited,
            refresh=False,
        )

    def _open_cache(self, state: Path) -> tuple[RequestCache | None, bool]:
        option = self._cache_option
        if option is False:
            return None, False
        if option is True:
            return RequestCache(state / "cache.sqlite"), True
        if isinstance(option, RequestCache):
            return option, False
        return RequestCache(option), True

    # -- listing --------------------------------------------------------------------------------

    def _inputs(self) -> Iterator[_Task]:
        """Every input file, lazily, one folder listing at a time (sorted within a folder)."""
        if self.input_path.is_file():
            source = self.input_path
            yield _Task(source, source.name, self.output_path, source.stem)
            return
        output = self.output_path.resolve()
        folders: list[tuple[Path, str]] = [(self.input_path, "")]
        while folders:
            folder, relative = folders.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                logger.warning("cannot list %s: %s", folder, exc)
                continue
            files = [e for e in entries if not e.name.startswith(".") and e.is_file()]
            stems = Counter(Path(e.name).stem for e in files)
            out_dir = self.output_path / relative
            for entry in files:
                stem = Path(entry.name).stem
                out_name = stem if stems[stem] == 1 else entry.name
                rel = f"{relative}/{entry.name}" if relative else entry.name
                yield _Task(Path(entry.path), rel, out_dir, out_name)
            if self.recursive:
                subfolders = [
                    e
                    for e in entries
                    if not e.name.startswith(".")
                    and e.is_dir()
                    and Path(e.path).resolve() != output  # outputs inside the input folder
                ]
                for entry in reversed(subfolders):  # popped in sorted order
                    sub = f"{relative}/{entry.name}" if relative else entry.name
                    folders.append((Path(entry.path), sub))

    def _pending(self, journal: _Journal, on_skip: Any) -> Iterator[_Task]:
        """Inputs not done yet, at most `file_count` of them; calls `on_skip` for done ones."""
        taken = 0
        listing: dict[Path, set[str]] = {}
        for task in self._inputs():
            if self.file_count is not None and taken >= self.file_count:
                return
            if self._is_done(task, journal, listing):
                on_skip()
                continue
            taken += 1
            yield task

    @staticmethod
    def _is_done(task: _Task, journal: _Journal, listing: dict[Path, set[str]]) -> bool:
        recorded = journal.outputs(task.relative)
        if recorded is not None:
            return all((task.out_dir / name).exists() for name in recorded)
        # Not in the journal: outputs of a run killed between publishing and recording, or of
        # the original toolkit. Only complete files are ever moved there, so they count.
        names = listing.get(task.out_dir)
        if names is None:
            listing.clear()  # one folder at a time: memory stays bounded
            try:
                names = {e.name for e in os.scandir(task.out_dir) if not e.name.startswith(".")}
            except OSError:
                names = set()
            listing[task.out_dir] = names
        prefix = task.out_name + "."
        return any(
            name == task.out_name or (name.startswith(prefix) and "." not in name[len(prefix) :])
            for name in names
        )


def _clean_stale_staging(staging_root: Path) -> None:
    """Remove the staging folders of runs whose process is gone (killed, crashed)."""
    for entry in os.scandir(staging_root):
        pid_text = entry.name.split("-", 1)[0]
        if pid_text.isdigit() and _alive(int(pid_text)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a stale folder of an earlier run that had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True
