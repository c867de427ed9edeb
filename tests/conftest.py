"""Shared test setup.

tiktoken: before anything runs, `TIKTOKEN_CACHE_DIR` points at ``<repo>/.tiktoken-cache``
(git-ignored), seeded with the verified cl100k_base and o200k_base files, so every test counts
tokens with the real encodings and never downloads. Seeding failure stops the run: token tests
are never skipped. Every test starts without a default key pool.

SIGINT: a run started in the background by a shell (``pytest &``, nohup) inherits SIGINT as
ignored, and so would the subprocesses the Ctrl-C tests interrupt; the run takes SIGINT back.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from openai_parallel_toolkit import reset_default_manager
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


@pytest.fixture(autouse=True)
def _fresh_default_pool() -> Iterator[None]:
    """Every test starts and ends without a process-wide default key pool."""
    reset_default_manager()
    yield
    reset_default_manager()
