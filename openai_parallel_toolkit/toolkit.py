"""`ParallelToolkit`: every input file through your three hooks, in parallel, resumable.

Subclass it and override `process_input(file)`, `process_data(data)` and
`process_output(data, output_file_without_ext)`; `run()` does the rest.

Done means complete: `process_output` writes into a private staging folder, and only after
all three hooks returned without error are its files moved into the output folder (one
`os.replace` each, atomic on one file system) and the input recorded as done. A crash or a
kill never leaves a half-written output where the next run would take it for finished; the
staging leftovers of dead runs are removed at the next start.

Beside the outputs, the folder ``.openai-parallel-toolkit/`` holds the run's state:
``done.sqlite`` (the inputs finished, and their outputs, see `filestate`), ``cache.sqlite``
(every successful API response, so a re-run never pays twice; ``cache=False`` turns it off,
deleting the file clears it) and ``staging/``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
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
from .filestate import Journal, StagingArea
from .keys import APIKeyManager, PoolStats, resolve_manager, use_manager
from .parallel import _nested, _shared_executor, completed, default_concurrency

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
    typical 2 s response time (8 per key whose limits are unknown), between 8 and 512 —
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
        the ones in progress finish and returns the summary. A second Ctrl-C stops waiting
        (`run` raises KeyboardInterrupt): the files still in progress publish nothing.
        """
        if not self.input_path.exists():
            raise FileNotFoundError(f"input path does not exist: {self.input_path}")
        if self.input_path.is_dir() and self.input_path.resolve() == self.output_path.resolve():
            raise ValueError("output_path must differ from input_path (outputs would be inputs)")
        self._abandon.clear()
        state = self.output_path / STATE_DIR
        state.mkdir(parents=True, exist_ok=True)
        journal = Journal(state / "done.sqlite")
        staging = StagingArea(state / "staging")
        cache, own_cache = self._open_cache(state)
        run = _RunState(self.manager.statistics())
        bar = tqdm(desc=self.name, unit="file", disable=not self.progress, dynamic_ncols=True)
        # One pool for every multi_process_one call inside the hooks (see parallel.py).
        inner = ThreadPoolExecutor(default_concurrency(self.manager), thread_name_prefix="items")
        executor = ThreadPoolExecutor(self.num_threads, thread_name_prefix="files")
        interrupted = False
        try:
            bar.total = sum(1 for _ in self._inputs())
            with use_manager(self.manager), use_cache(cache), _quiet_inner_bars(inner):
                try:
                    tasks = self._pending(journal, legacy=not journal.existed, run=run, bar=bar)
                    work = functools.partial(self._work, journal, staging, run)
                    for task, future in completed(executor, work, tasks, self.num_threads * 2):
                        failure = future.exception()
                        if failure is not None:  # SystemExit and the like escaped the hooks
                            run.fail(task, failure)
                        bar.update(1)
                        run.refresh(bar, self.manager)
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
            executor.shutdown(wait=not self._abandon.is_set(), cancel_futures=True)
            inner.shutdown(wait=not self._abandon.is_set(), cancel_futures=True)
            run.refresh(bar, self.manager, force=True)
            bar.close()
            journal.close()
            staging.close()
            if own_cache and cache is not None:
                cache.close()
        summary = run.summary(interrupted)
        logger.info("%s: %s", self.name, summary)
        if self.progress:
            tqdm.write(f"{self.name}: {summary}", file=sys.stderr)
        return summary

    def _work(self, journal: Journal, staging: StagingArea, run: _RunState, task: _Task) -> None:
        """One input, in a worker thread: hooks, then publish and record (or a failure)."""
        folder = staging.new_folder()
        try:
            with open(task.source, encoding="utf-8") as file:
                data = self.process_input(file)
            result = self.process_data(data)
            self.process_output(result, str(folder / task.out_name))
            produced = sorted(entry.name for entry in os.scandir(folder))
            if not produced:
                raise RuntimeError(
                    f"process_output wrote nothing under output_file_without_ext "
                    f"({task.out_name!r} plus an extension)"
                )
            if self._abandon.is_set():
                return
            task.out_dir.mkdir(parents=True, exist_ok=True)
            journal.publishing(task.relative, produced)
            for name in produced:
                os.replace(folder / name, task.out_dir / name)
            journal.done(task.relative, produced)
            run.succeed()
        except Exception as exc:
            run.fail(task, exc)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

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
        seen: set[tuple[int, int]] = set()  # folders visited: a symlink loop ends here
        folders: list[tuple[Path, str]] = [(self.input_path, "")]
        while folders:
            folder, relative = folders.pop()
            try:
                info = folder.stat()
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                logger.warning("cannot list %s: %s", folder, exc)
                continue
            files, subfolders = [], []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_file():
                        files.append(entry)
                    elif self.recursive and entry.is_dir() and Path(entry.path).resolve() != output:
                        subfolders.append(entry)
                except OSError as exc:
                    logger.warning("skipping %s: %s", entry.path, exc)
            out_dir = self.output_path / relative
            names = _output_names([entry.name for entry in files])
            for entry, out_name in zip(files, names, strict=True):
                rel = f"{relative}/{entry.name}" if relative else entry.name
                yield _Task(Path(entry.path), rel, out_dir, out_name)
            for entry in reversed(subfolders):  # popped in sorted order
                sub = f"{relative}/{entry.name}" if relative else entry.name
                folders.append((Path(entry.path), sub))

    def _pending(
        self, journal: Journal, *, legacy: bool, run: _RunState, bar: tqdm[Any]
    ) -> Iterator[_Task]:
        """Inputs not done yet, at most `file_count` of them; the done ones count as skipped.

        With `legacy` (a first run on this output folder), an existing output file named like
        the input plus one extension also counts as done: outputs of the original toolkit.
        """
        taken = 0
        listing: dict[Path, set[str]] = {}
        for task in self._inputs():
            if self.file_count is not None and taken >= self.file_count:
                return
            outputs = journal.finished_outputs(task.relative)
            if outputs is not None:
                done = all((task.out_dir / name).is_file() for name in outputs)
            else:
                done = legacy and _legacy_output(task, listing)
            if done:
                run.skip()
                bar.update(1)
                continue
            taken += 1
            yield task


def _output_names(names: list[str]) -> list[str]:
    """`output_file_without_ext` names for one folder's files: the stem, unless that is shared.

    A stem shared by two files (``a.json``, ``a.txt``), or equal to another file's chosen name,
    gives way to the full file name, which is unique in the folder.
    """
    stems = Counter(Path(name).stem for name in names)
    chosen = [Path(n).stem if stems[Path(n).stem] == 1 else n for n in names]
    while True:
        counts = Counter(chosen)
        clashes = [i for i, name in enumerate(chosen) if counts[name] > 1]
        if not clashes:
            return chosen
        for i in clashes:
            chosen[i] = names[i]


def _legacy_output(task: _Task, listing: dict[Path, set[str]]) -> bool:
    names = listing.get(task.out_dir)
    if names is None:
        listing.clear()  # one folder at a time: memory stays bounded
        try:
            names = {
                e.name
                for e in os.scandir(task.out_dir)
                if not e.name.startswith(".") and e.is_file()
            }
        except OSError:
            names = set()
        listing[task.out_dir] = names
    prefix = task.out_name + "."
    return any(
        name.startswith(prefix) and name[len(prefix) :] and "." not in name[len(prefix) :]
        for name in names
    )


class _RunState:
    """Counters of one run, shared by the worker threads."""

    def __init__(self, baseline: PoolStats) -> None:
        self._lock = threading.Lock()
        self.processed = 0
        self.skipped = 0
        self.failures: list[FileFailure] = []
        self.started = time.monotonic()
        self.baseline = baseline
        self._last_refresh = 0.0

    def succeed(self) -> None:
        with self._lock:
            self.processed += 1

    def skip(self) -> None:
        with self._lock:
            self.skipped += 1

    def fail(self, task: _Task, exc: BaseException) -> None:
        reason = _failure_reason(exc)
        logger.warning("failed: %s: %s", task.relative, reason)
        logger.debug("failure details for %s", task.relative, exc_info=exc)
        with self._lock:
            self.failures.append(FileFailure(task.relative, reason))

    def refresh(self, bar: tqdm[Any], manager: APIKeyManager, *, force: bool = False) -> None:
        """Update the bar's counts and the pool's rate, at most every half second."""
        now = time.monotonic()
        if not force and now - self._last_refresh < _PROGRESS_REFRESH_SECONDS:
            return
        self._last_refresh = now
        stats = manager.statistics()
        elapsed = max(1e-9, now - self.started)
        with self._lock:
            bar.n = self.processed + self.skipped + len(self.failures)
            bar.set_postfix(
                done=self.processed,
                skipped=self.skipped,
                failed=len(self.failures),
                req_s=f"{(stats.requests - self.baseline.requests) / elapsed:.1f}",
                r429=stats.rate_limited - self.baseline.rate_limited,
                refresh=False,
            )

    def summary(self, interrupted: bool) -> RunSummary:
        with self._lock:
            return RunSummary(
                processed=self.processed,
                skipped=self.skipped,
                failed=tuple(self.failures),
                interrupted=interrupted,
                elapsed=time.monotonic() - self.started,
            )


@contextlib.contextmanager
def _quiet_inner_bars(inner: ThreadPoolExecutor) -> Iterator[None]:
    """Inside the hooks: no progress bars of multi_process_one's own, one shared item pool."""
    nested = _nested.set(True)
    shared = _shared_executor.set(inner)
    try:
        yield
    finally:
        _shared_executor.reset(shared)
        _nested.reset(nested)
