"""The key pool every example runs on: your keys if you have some, else a local fake server.

    from _setup import key_pool

    with key_pool(config_path) as pool:
        ...

`key_pool` sets up the process-wide default pool, so the code inside can call
`request_openai_api(model)` or `multi_process_one(...)` without naming a pool, as the original
toolkit's README does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from openai_parallel_toolkit import APIKeyManager


def has_env_keys() -> bool:
    """True when an ``OPENAI_API_KEY*`` environment variable holds a key."""
    return any(name.startswith("OPENAI_API_KEY") and value for name, value in os.environ.items())


@contextlib.contextmanager
def key_pool(config_path: str | None = None, *, name: str = "example") -> Iterator[APIKeyManager]:
    """Yield the default key pool, closed on exit.

    The keys come from `config_path` (a JSON or YAML file), else from ``OPENAI_API_KEY*``
    variables; with neither, the bundled fake OpenAI server is started on 127.0.0.1 (and stopped
    on exit) with four fake keys named after `name`.
    """
    with contextlib.ExitStack() as stack:
        if config_path is not None:
            pool = APIKeyManager(config_path=config_path)
        elif has_env_keys():
            pool = APIKeyManager()
        else:
            # Imported here: the fake server needs the "server" extra, real keys do not.
            from openai_parallel_toolkit.testing import FakeOpenAIServer

            # Pools, statistics and logs show keys as sk-...<last 4>: make those differ.
            keys = [f"sk-fake-{name}-000000-key{i}" for i in range(4)]
            server = stack.enter_context(
                FakeOpenAIServer(keys=keys, rpm=600, latency=0.05, jitter=0.03)
            )
            print(f"No key configured: using the bundled fake server at {server.base_url}")
            pool = APIKeyManager(
                api_keys=[{"api_key": k, "api_base": server.base_url} for k in keys]
            )
        stack.callback(pool.close)
        yield pool
