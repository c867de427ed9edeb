"""How a key pool runs: timeouts, bucket size, time, clients and where its state lives."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal

from ._drivers.clients import AsyncClientFactory, ClientFactory
from ._store import LimiterStore
from .clock import Clock
from .errors import ConfigError
from .knobs import Knobs

__all__ = ["DEFAULT_BURST_SECONDS", "PoolOptions", "moved_to_options"]

# Burst the pool allows itself, in seconds of refill. Kept below the one second servers are
# seen to allow, so that a request that arrives a little late (and so finds the server's bucket
# already full, its refill wasted) does not push the next one over the server's limit.
DEFAULT_BURST_SECONDS = 0.5


@dataclass(frozen=True, kw_only=True, slots=True)
class PoolOptions:
    """Settings of an `APIKeyManager` beyond its keys; every field has a production default.

    - `timeout`: seconds one request may take, for keys whose config sets no ``timeout``.
    - `burst_seconds`: how much a limit group may send at once, in seconds of its refill.
    - `knobs`: openai-manager's environment knobs (default limits, settling); None reads
      them from the environment when the pool is built.
    - `clock`: the time source (a `FakeClock` in tests); None is the system clock.
    - `client_factory`: builds each key's client from its `KeyConfig` and a response hook
      that must see every HTTP response; None builds `openai.OpenAI` clients.
    - `async_client_factory`: the same for the `openai.AsyncOpenAI` clients the asyncio API
      uses (built per key and event loop, on first use); None builds the official ones.
    - `async_transport`: what those official async clients send with: ``"httpx"`` (as
      `openai.AsyncOpenAI` does) or ``"aiohttp"`` (openai's aiohttp transport, the ``aiohttp``
      extra: about half the CPU per request; keys with a proxy stay on httpx). Close the
      clients with ``await pool.aclose()`` before the loop ends, or aiohttp warns about them.
    - `store`: where limit-group budgets and key health live; None keeps them in this pool.
    """

    timeout: float = 120.0
    burst_seconds: float = DEFAULT_BURST_SECONDS
    knobs: Knobs | None = None
    clock: Clock | None = None
    client_factory: ClientFactory | None = None
    async_client_factory: AsyncClientFactory | None = None
    async_transport: Literal["httpx", "aiohttp"] = "httpx"
    store: LimiterStore | None = None

    def __post_init__(self) -> None:
        if self.async_transport not in ("httpx", "aiohttp"):
            raise ValueError(
                f"async_transport must be 'httpx' or 'aiohttp', not {self.async_transport!r}"
            )
        if self.async_transport == "aiohttp" and importlib.util.find_spec("aiohttp") is None:
            raise ConfigError(
                'async_transport="aiohttp" needs the aiohttp extra: pip install -e ".[aiohttp]" '
                "in the project folder"
            )
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {self.timeout!r}")
        if not self.burst_seconds > 0:
            raise ValueError(f"burst_seconds must be > 0, not {self.burst_seconds!r}")


def moved_to_options(owner: str, given: Mapping[str, object]) -> TypeError:
    """The error for keywords `given` to `owner` that are no longer its own.

    The pool's settings were once keywords of `APIKeyManager` (``timeout=``, ``clock=``, ...);
    they now live in `PoolOptions`. Python's own "unexpected keyword argument" would leave a
    caller of the old form guessing, so the error names the replacement. A keyword that never
    was a setting gets Python's usual wording.
    """
    settings = {field.name for field in fields(PoolOptions)}
    unknown = sorted(name for name in given if name not in settings)
    if unknown:
        return TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
    names = sorted(given)
    replacement = ", ".join(f"{name}=..." for name in names)
    return TypeError(
        f"{owner}({replacement}) is no longer accepted: "
        f"pass options=PoolOptions({replacement}) "
        "(from openai_parallel_toolkit import PoolOptions)"
    )
