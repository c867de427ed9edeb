"""Shared test setup.

tiktoken: before anything runs, `TIKTOKEN_CACHE_DIR` points at ``<repo>/.tiktoken-cache``
(git-ignored), seeded with the verified cl100k_base and o200k_base files, so every test counts
tokens with the real encodings and never downloads. Seeding failure stops the run: token tests
are never skipped. Every test starts without a default key pool.

In-process commands: the `run_cli` fixture runs ``openai-parallel-toolkit ARGS`` through its
entry point `openai_parallel_toolkit.__main__.main` in the test's own process, as a fresh process
would run it (no OPENAI_* variable, a root logger without handlers, its own stdin, stdout and
stderr), and restores what the command changed. Tests that need a real process (signals, a
terminal, import-time behaviour, the examples as a user runs them) start one themselves.

SIGINT: a run started in the background by a shell (``pytest &``, nohup) inherits SIGINT as
ignored, and so would the subprocesses the Ctrl-C tests interrupt; the run takes SIGINT back.
"""

from __future__ import annotations

import io
import logging
import os
import runpy
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import forked
import openai
import pytest

from openai_parallel_toolkit import reset_default_manager
from openai_parallel_toolkit.__main__ import main
from openai_parallel_toolkit._drivers.clients import tls_context
from openai_parallel_toolkit.prices import Usage, price_of
from openai_parallel_toolkit.testing import FakeOpenAIServer
from openai_parallel_toolkit.tiktoken_cache import seed_cache

TIKTOKEN_CACHE_DIR = Path(__file__).resolve().parent.parent / ".tiktoken-cache"


def pytest_configure(config: pytest.Config) -> None:
    """Point tiktoken at the repo's cache folder and seed it, before any test is collected."""
    os.environ["TIKTOKEN_CACHE_DIR"] = str(TIKTOKEN_CACHE_DIR)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # An ignored signal stays ignored across exec: Python in a child would then never turn
        # Ctrl-C into KeyboardInterrupt. A handled one is reset to the default, as it should be.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        seed_cache(TIKTOKEN_CACHE_DIR)
    except Exception as exc:
        raise pytest.UsageError(
            f"cannot seed the tiktoken cache in {TIKTOKEN_CACHE_DIR}: {exc} "
            "(install the test extras: pip install -e '.[dev]')"
        ) from exc


def pytest_collection_finish(session: pytest.Session) -> None:
    """Where a test to run forks its processes (see `forked`), start the fork server now."""
    modules = {getattr(item, "module", None) for item in session.items}
    if any(getattr(module, "forked", None) is forked for module in modules):
        forked.start_server()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop this worker's fork server (see `forked`), so that its CPU time is the run's."""
    forked.stop_server()


@pytest.fixture(autouse=True)
def _fresh_default_pool() -> Iterator[None]:
    """Every test starts and ends without a process-wide default key pool."""
    reset_default_manager()
    yield
    reset_default_manager()


@dataclass(frozen=True, slots=True)
class CliResult:
    """What a command run by `run_cli` left: its exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True, slots=True)
class _LoggingState:
    handlers: list[logging.Handler]
    levels: dict[str, int]

    @classmethod
    def save(cls, names: tuple[str, ...]) -> _LoggingState:
        root = logging.getLogger()
        return cls(list(root.handlers), {name: logging.getLogger(name).level for name in names})

    def restore(self) -> None:
        root = logging.getLogger()
        for handler in root.handlers:
            if handler not in self.handlers:
                handler.close()
        root.handlers[:] = self.handlers
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


class InProcessCli:
    """``openai-parallel-toolkit ARGS`` run by `main(ARGS)` in this process (see the module)."""

    # The loggers the command line configures (root: "", the package's own).
    LOGGERS = ("", "openai_parallel_toolkit")

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self._capsys = capsys
        self._monkeypatch = monkeypatch

    def __call__(self, *args: str, stdin: str | None = None, cwd: Path | None = None) -> CliResult:
        """Run the command with `stdin` as its standard input, in folder `cwd` if given."""
        return self._run(lambda patch: main(list(args)), stdin=stdin, cwd=cwd)

    def script(self, path: Path, *args: str, cwd: Path | None = None) -> CliResult:
        """Run the script at `path` as ``python PATH ARGS`` would, in folder `cwd` if given."""

        def run(patch: pytest.MonkeyPatch) -> int:
            patch.setattr(sys, "argv", [str(path), *args])
            patch.syspath_prepend(str(path.parent))  # as python does for a script
            runpy.run_path(str(path), run_name="__main__")
            return 0

        return self._run(run, stdin=None, cwd=cwd)

    def _run(
        self, command: Callable[[pytest.MonkeyPatch], int], stdin: str | None, cwd: Path | None
    ) -> CliResult:
        with self._monkeypatch.context() as patch:
            for name in list(os.environ):
                if name.startswith("OPENAI_"):
                    patch.delenv(name)
            if cwd is not None:
                patch.chdir(cwd)
            if stdin is not None:
                stream = io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8")
                patch.setattr(sys, "stdin", stream)
            before = self._capsys.readouterr()  # printed earlier: not the command's output
            logs = _LoggingState.save(self.LOGGERS)
            logging.getLogger().handlers.clear()  # as in a fresh process: no handler yet
            try:
                returncode = _exit_status(lambda: command(patch))
            finally:
                logs.restore()
            printed = self._capsys.readouterr()
        # Printed again, so that a failing test's report shows everything, in order.
        sys.stdout.write(before.out + printed.out)
        sys.stderr.write(before.err + printed.err)
        return CliResult(returncode, printed.out, printed.err)


def _exit_status(command: Callable[[], int]) -> int:
    """What a process running `command` would exit with (as ``sys.exit(command())``)."""
    try:
        return command()
    except SystemExit as exc:  # argparse (usage errors, --help, --version), sys.exit
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> InProcessCli:
    """Run ``openai-parallel-toolkit ARGS`` in this process: ``run_cli("run", ...)``; a script
    with ``run_cli.script(path, ...)``."""
    return InProcessCli(capsys, monkeypatch)


def openai_client(**options: object) -> openai.OpenAI:
    """A plain `openai.OpenAI` client for the local servers, no retries: with the one TLS
    context the package shares, since building one per client costs ~25 ms of CPU."""
    options.setdefault("max_retries", 0)
    return openai.OpenAI(
        http_client=openai.DefaultHttpxClient(verify=tls_context()),
        **options,  # type: ignore[arg-type]
    )


def server_cost(server: FakeOpenAIServer, model: str = "gpt-4o-mini") -> Decimal:
    """What the fake server's own token counts cost at `model`'s price: the reference a run's
    reported cost and its cost cap are checked against."""
    total = server.total()
    price = price_of(model)
    assert price is not None
    return price.cost(Usage(total.prompt_tokens, total.completion_tokens, total.cached_tokens))


def wait_until_quiet(server: FakeOpenAIServer) -> None:
    """Wait until the server has handled what a killed client sent: nothing in flight and no
    new request for 0.1 s. The kernel keeps the requests a process wrote just before its
    SIGKILL, and the server may read them after it: read after `reset_counters`, they would
    be counted as the next run's."""
    deadline = time.monotonic() + 30
    seen = -1
    while True:
        count = server.total().requests
        if count == seen and server.in_flight() == 0:
            return
        seen = count
        assert time.monotonic() < deadline, "the server never went quiet"
        time.sleep(0.1)
