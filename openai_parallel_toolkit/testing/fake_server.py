"""A fake OpenAI-compatible HTTP server for offline tests, benchmarks and pipeline dry runs.

`FakeOpenAIServer` serves chat completions (plain and streamed), completions, embeddings,
models and a minimal responses endpoint on 127.0.0.1, from a background thread. Replies are
deterministic echoes of the input, so tests can check order. It enforces OpenAI-style rate
limits (a request bucket and a token bucket per key or per group of keys, `LimitSettings`),
sends the ``x-ratelimit-*`` headers, and can inject faults (quota, bad key, 500, 429 with or
without ``retry-after``, slow, dropped connection) per key.

Chat replies report ``prompt_tokens_details.cached_tokens`` as OpenAI's prompt caching does
for a repeated prefix (see `fake.plans`).

The Batch API (``/v1/files``, ``/v1/batches``) is served by `fake_batches.FakeBatches`
(``server.batches``): batches advance with the server's clock, and their lines get the same echo
answers as the online endpoints. A project there is a key's limit group (else the key itself).

``service_tier="flex"`` is served by `fake_flex.FakeFlex` (``server.flex``): answers name the
tier, and a share of them (``server.flex.unavailable_share``) gets OpenAI's capacity 429.

Markers inside a prompt trigger permanent errors: ``[[context_length_exceeded]]`` gives a 400,
``[[server_error]]`` a 500.

Run it from the command line with ``python -m openai_parallel_toolkit.testing``. The parts live
in the `fake` package; this module is their public face.
"""

from __future__ import annotations

from .fake.buckets import format_duration
from .fake.cli import build_parser, main, server_from_args
from .fake.counters import KeyCounters
from .fake.errors import CONTEXT_LENGTH_MARKER, SERVER_ERROR_MARKER
from .fake.faults import FAULTS
from .fake.server import FakeOpenAIServer
from .fake.settings import LimitSettings, ServerSettings

__all__ = [
    "CONTEXT_LENGTH_MARKER",
    "FAULTS",
    "SERVER_ERROR_MARKER",
    "FakeOpenAIServer",
    "KeyCounters",
    "LimitSettings",
    "ServerSettings",
    "build_parser",
    "format_duration",
    "main",
    "server_from_args",
]
