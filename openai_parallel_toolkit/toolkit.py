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
deleting the file clears it) and ``staging/``. The state is closed only once no worker uses
it any more: after a second Ctrl-C, by a helper thread when the last file in progress ends.

The listing of inputs is in `filelisting`; the counters, summary and progress display in
`runstate`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypedDict

from tqdm.auto import tqdm

from .cache import RequestCache, use_cache
from .config import SHARED_STATE_VARIABLE
from .costs import counting_into
from .filelisting import ExistingOutputs, InputFile, list_inputs
from .filestate import Journal, Ledger, StagingArea
from .keys import APIKeyManager, resolve_manager, use_manager
from .parallel import _nested, _shared_executor, completed, default_concurrency
from .runstate import FileFailure, RunState, RunSummary, logs_above
from .sharedfiles import SharedInputs

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["FileFailure", "ParallelToolkit", "RunSummary", "ToolkitOptions"]

logger = logging.getLogger(__name__)

STATE_DIR = ".openai-parallel-toolkit"


class ToolkitOptions(TypedDict, total=False):
    """The keyword options of `ParallelToolkit` beyond `manager` (see its docstring)."""

    recursive: bool  # walk sub-folders (default True)
    cache: bool | RequestCache | str | os.PathLike[str]  # the response cache (default True)
    progress: bool  # show the progress bar and print the summary (default True)
    adopt_existing_outputs: bool  # take the original toolkit's outputs for done (default False)
    shared_state: str | None  # a Redis URL: share the inputs with other workers


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
    typical 2 s response time (8 per key whose limits are unknown), between 8 and 1,024 —
    the work waits on the network, so the CPU count says nothing about it. `file_count` caps
    how many not-yet-done files this run processes.

    `adopt_existing_outputs=True` is for an output folder the original toolkit (which kept no
    record) already wrote into: on the folder's first run, an input for which a file named
    like it plus one extension is already there (``a.json`` for ``a.txt``) counts as done,
    is recorded as such, and is counted in `RunSummary.adopted`. Off by default: any other
    file in the output folder is never taken for an output.

    The keyword options after `manager` (`recursive`, `cache`, `progress`,
    `adopt_existing_outputs`, `shared_state`) are typed by `ToolkitOptions`.
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
        **options: Unpack[ToolkitOptions],
    ) -> None:
        unknown = sorted(set(options) - set(ToolkitOptions.__annotations__))
        if unknown:
            raise TypeError(f"ParallelToolkit() got an unexpected keyword argument {unknown[0]!r}")
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
        self.recursive = options.get("recursive", True)
        self.progress = options.get("progress", True)
        self.adopt_existing_outputs = options.get("adopt_existing_outputs", False)
        self._cache_option = options.get("cache", True)
        self.manager = manager if manager is not None else resolve_manager(config_path=config_path)
        self.num_threads = num_threads or default_concurrency(self.manager)
        self.shared_state = (
            options.get("shared_state")
            or self.manager.config.shared_state
            or os.environ.get(SHARED_STATE_VARIABLE)
            or None
        )

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
        (`run` raises KeyboardInterrupt): the files still in progress publish nothing and are
        not reported; their requests already sent still end and are cached, and the run's
        state is closed when the last of them has.
        """
        if not self.input_path.exists():
            raise FileNotFoundError(f"input path does not exist: {self.input_path}")
        if self.input_path.is_dir() and self.input_path.resolve() == self.output_path.resolve():
            raise ValueError("output_path must differ from input_path (outputs would be inputs)")
        total = sum(1 for _ in self._inputs())
        state = self.output_path / STATE_DIR
        state.mkdir(parents=True, exist_ok=True)
        opened = self._open_state(state)
        run = RunState(self.manager, total)
        # One pool for every multi_process_one call inside the hooks (see parallel.py).
        inner = ThreadPoolExecutor(default_concurrency(self.manager), thread_name_prefix="items")
        executor = ThreadPoolExecutor(self.num_threads, thread_name_prefix="files")
        bar = tqdm(
            total=total, desc=self.name, unit="file", disable=not self.progress, dynamic_ncols=True
        )
        interrupted = False
        try:
            counting = counting_into(run.ledger)
            with logs_above(bar), use_manager(self.manager), use_cache(opened.cache), counting:
                try:
                    with _quiet_inner_bars(inner):
                        self._process(executor, opened, run, bar)
                except KeyboardInterrupt:
                    interrupted = True
                    _drain(executor, run)
                finally:
                    run.show(bar, force=True)
                    bar.close()
        finally:
            _release((executor, inner), opened.closers, abandoned=run.abandoned)
        summary = run.summary(interrupted, self.manager.statistics())
        logger.info("%s: %s", self.name, summary)
        if self.progress:
            tqdm.write(f"{self.name}: {summary}", file=sys.stderr)
        return summary

    def _open_state(self, state: Path) -> _OpenState:
        """Open the run's state under `state` (all of it, or none: a failure closes the rest)."""
        closers: list[Callable[[], None]] = []
        try:
            shared = journal = None
            if self.shared_state:
                shared = SharedInputs(self.shared_state, self.input_path, self.output_path, state)
                closers.append(shared.close)
            else:  # shared: opened only by the worker that plans, and the one that finishes
                journal = Journal(state / "done.sqlite")
                closers.append(journal.close)
            staging = StagingArea(state / "staging")
            closers.append(staging.close)
            cache, own_cache = _open_cache(self._cache_option, state, shared is not None)
        except BaseException:
            _close_all(closers)
            raise
        if own_cache and cache is not None:
            closers.append(cache.close)
        return _OpenState(shared, journal, staging, cache, closers)

    def _process(
        self, executor: ThreadPoolExecutor, opened: _OpenState, run: RunState, bar: tqdm[Any]
    ) -> None:
        """Run the inputs not done yet through the hooks, `num_threads` at a time."""
        journal, shared, staging = opened.journal, opened.shared, opened.staging
        tasks: Iterator[InputFile]
        work: Callable[[InputFile], None]
        if journal is not None:
            adopt = self._adopting(journal)
            tasks = self._pending(journal, adopt=adopt, run=run, bar=bar)
            work = functools.partial(self._work, journal, staging, run)
        elif shared is not None:
            tasks, work = self._shared_work(shared, staging, run, bar)
        for task, future in completed(executor, work, tasks, self.num_threads * 2):
            failure = future.exception()
            if failure is not None:  # SystemExit and the like escaped the hooks
                run.fail(task.relative, failure)
            run.show(bar)
        if shared is not None:
            shared.finish()

    def _shared_work(
        self, shared: SharedInputs, staging: StagingArea, run: RunState, bar: tqdm[Any]
    ) -> tuple[Iterator[InputFile], Callable[[InputFile], None]]:
        """The inputs this worker claims, and the work on each (see `sharedfiles`)."""

        def pending(journal: Journal) -> Iterator[InputFile]:
            return self._pending(journal, adopt=self._adopting(journal), run=run, bar=bar)

        def work(task: InputFile) -> None:
            try:
                self._work(shared, staging, run, task)
            finally:
                shared.settle(task)

        return shared.tasks(pending), work

    def _work(self, journal: Ledger, staging: StagingArea, run: RunState, task: InputFile) -> None:
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
            if run.abandoned:
                return
            task.out_dir.mkdir(parents=True, exist_ok=True)
            journal.publishing(task.relative, produced)
            for name in produced:
                os.replace(folder / name, task.out_dir / name)
            journal.done(task.relative, produced)
            run.succeed()
        except Exception as exc:
            run.fail(task.relative, exc)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _adopting(self, journal: Journal) -> bool:
        """Whether this run takes existing outputs for done (see `adopt_existing_outputs`)."""
        if not self.adopt_existing_outputs:
            return False
        if not journal.existed:
            journal.open_adoption()  # kept until one run has looked at every input
        elif not journal.adoption_open:
            logger.warning(
                "adopt_existing_outputs ignored: %s already holds this toolkit's state "
                "(existing outputs are adopted on a folder's first run only)",
                self.output_path,
            )
            return False
        return True

    # -- listing --------------------------------------------------------------------------------

    def _inputs(self) -> Iterator[InputFile]:
        return list_inputs(self.input_path, self.output_path, recursive=self.recursive)

    def _pending(
        self, journal: Journal, *, adopt: bool, run: RunState, bar: tqdm[Any]
    ) -> Iterator[InputFile]:
        """Inputs not done yet, at most `file_count` of them; the done ones count as skipped.

        With `adopt`, an input the journal has never seen whose output folder holds a file
        named like it plus one extension is recorded as done: an output of the original
        toolkit. Once every input was looked at, the folder's adoption is over.
        """
        taken = 0
        existing = ExistingOutputs()
        for task in self._inputs():
            if self.file_count is not None and taken >= self.file_count:
                return
            entry = journal.entry(task.relative)
            if entry is None:
                found = existing.of(task) if adopt else []
                if found:
                    journal.done(task.relative, found)
                    run.skip(adopted=True)
                    run.show(bar)
                    continue
            elif entry.done and all((task.out_dir / name).is_file() for name in entry.outputs):
                run.skip()
                run.show(bar)
                continue
            taken += 1
            yield task
        if adopt:
            journal.close_adoption()


def _drain(executor: ThreadPoolExecutor, run: RunState) -> None:
    """After a Ctrl-C: let the files in progress finish; a second Ctrl-C abandons them."""
    try:
        logger.warning("interrupted: finishing the files in progress (Ctrl-C again to abandon)")
        executor.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:
        run.abandon()
        logger.warning("abandoned: the files in progress publish nothing (run again to continue)")
        raise


def _open_cache(
    option: bool | RequestCache | str | os.PathLike[str], state: Path, shared: bool
) -> tuple[RequestCache | None, bool]:
    """The run's response cache for the `cache` option, and whether the run opened it."""
    if option is False:
        return None, False
    if option is True:
        # Shared: one file per machine, as SQLite cannot be shared over a network file system.
        name = f"cache-{socket.gethostname()}.sqlite" if shared else "cache.sqlite"
        return RequestCache(state / name), True
    if isinstance(option, RequestCache):
        return option, False
    return RequestCache(option), True


@dataclass
class _OpenState:
    """The state a run opened: the shared inputs or the journal, staging, the cache, and what
    closes them."""

    shared: SharedInputs | None
    journal: Journal | None
    staging: StagingArea
    cache: RequestCache | None
    closers: list[Callable[[], None]]


def _close_all(closers: list[Callable[[], None]]) -> None:
    """Call every closer, last opened first, even when one of them raises."""
    with contextlib.ExitStack() as stack:
        for closer in closers:
            stack.callback(closer)


def _release(
    executors: tuple[ThreadPoolExecutor, ...],
    closers: list[Callable[[], None]],
    *,
    abandoned: bool,
) -> None:
    """Close the run's state once no worker uses it any more.

    Normally every worker has ended by now, or ends soon: wait, then close. After an abandon
    some may still be finishing: nothing new starts, queued items are cancelled, and a helper
    thread closes the state after the last worker, so none ever writes to a closed database
    (the interpreter waits for it at exit, as it waits for the workers).
    """
    if not abandoned:
        for executor in executors:
            executor.shutdown(wait=True, cancel_futures=True)
        _close_all(closers)
        return
    for executor in executors:
        executor.shutdown(wait=False, cancel_futures=True)

    def close_when_idle() -> None:
        for executor in executors:
            executor.shutdown(wait=True)
        _close_all(closers)

    threading.Thread(target=close_when_idle, name="openai-parallel-toolkit-close").start()


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
