"""The one place that builds a key's HTTP clients: its base URL, proxy, identity and timeout.

Each key has one `openai.OpenAI` client for threads and, built on first use, one
`openai.AsyncOpenAI` client per running event loop (`AsyncClients`).
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from ..config import KeyConfig

if TYPE_CHECKING:
    import ssl

    import openai

__all__ = [
    "AsyncClientFactory",
    "AsyncClients",
    "ClientFactory",
    "default_async_client_factory",
    "default_client_factory",
    "tls_context",
]

# Builds the client of one key; the callable it is given must see every HTTP response.
ClientFactory = Callable[[KeyConfig, Callable[[Any], None]], "openai.OpenAI"]
# The same for the asyncio client: its response hook is a coroutine function, as httpx wants.
AsyncClientFactory = Callable[[KeyConfig, Callable[[Any], Awaitable[None]]], "openai.AsyncOpenAI"]

_K = TypeVar("_K")


def _client_options(config: KeyConfig, timeout: float) -> dict[str, Any]:
    """What the sync and async clients of a key share."""
    return {
        "api_key": config.api_key,
        "base_url": config.api_base,
        "organization": config.organization,
        "project": config.project,
        "max_retries": 0,  # the pool decides about retries, with better knowledge
        "timeout": config.timeout if config.timeout is not None else timeout,
    }


@functools.cache
def tls_context() -> ssl.SSLContext | bool:
    """One TLS context for the httpx clients of every key, as httpx builds its default.

    Building one (loading the CA bundle) takes about 25 ms of CPU, which a pool of 32 keys
    would otherwise pay 32 times, twice with the async clients; a context is safe to share.
    """
    import openai

    for base in openai.DefaultHttpxClient.__mro__:
        if base.__name__ == "Client":  # httpx.Client, or httpx2.Client for newer openai
            create = sys.modules[base.__module__.partition(".")[0]].create_ssl_context
            context: ssl.SSLContext = create()
            return context
    return True  # the client's own default


def default_client_factory(timeout: float) -> ClientFactory:
    """A factory of `openai.OpenAI` clients: `timeout` for keys whose config sets none."""

    def build(config: KeyConfig, on_response: Callable[[Any], None]) -> openai.OpenAI:
        import openai

        # Our own HTTP client per key: it carries the key's proxy, and its response hook feeds
        # the x-ratelimit-* headers of every response (errors included) to the limiter.
        http_client = openai.DefaultHttpxClient(
            proxy=config.proxy, event_hooks={"response": [on_response]}, verify=tls_context()
        )
        return openai.OpenAI(**_client_options(config, timeout), http_client=http_client)

    return build


def default_async_client_factory(
    timeout: float, *, transport: Literal["httpx", "aiohttp"] = "httpx"
) -> AsyncClientFactory:
    """A factory of `openai.AsyncOpenAI` clients, configured as `default_client_factory`'s.

    ``transport="aiohttp"`` sends with openai's `DefaultAioHttpClient` (the ``aiohttp`` extra:
    ``openai[aiohttp]``), which costs far less CPU per request than httpx's asyncio stack
    (about twice the requests per second on one core). Keys with a proxy keep the httpx
    transport, which this toolkit's proxy support (SOCKS included) is built and tested on.
    """
    use_aiohttp = transport == "aiohttp"

    def build(
        config: KeyConfig, on_response: Callable[[Any], Awaitable[None]]
    ) -> openai.AsyncOpenAI:
        import openai

        hooks = {"response": [on_response]}
        http_client: Any
        if use_aiohttp and config.proxy is None:
            http_client = openai.DefaultAioHttpClient(event_hooks=hooks)
        else:
            http_client = openai.DefaultAsyncHttpxClient(
                proxy=config.proxy, event_hooks=hooks, verify=tls_context()
            )
        return openai.AsyncOpenAI(**_client_options(config, timeout), http_client=http_client)

    return build


class AsyncClients(Generic[_K]):
    """Each key's async client for each event loop, built on first use from that loop.

    An async HTTP client's connections belong to the loop that opened them, so a client is
    never shared between loops (two `asyncio.run` calls in a row, loops in several threads);
    the clients of loops that have closed are dropped when a new loop asks.
    """

    def __init__(self, build: Callable[[_K], openai.AsyncOpenAI]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._by_loop: dict[asyncio.AbstractEventLoop, dict[int, openai.AsyncOpenAI]] = {}

    def get(self, key: _K) -> openai.AsyncOpenAI:
        """`key`'s client for the running loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            clients = self._by_loop.get(loop)
            if clients is None:
                for closed in [other for other in self._by_loop if other.is_closed()]:
                    del self._by_loop[closed]
                clients = self._by_loop[loop] = {}
            client = clients.get(id(key))
            if client is None:
                client = clients[id(key)] = self._build(key)
            return client

    async def aclose(self) -> None:
        """Close the clients of the running loop."""
        with self._lock:
            clients = self._by_loop.pop(asyncio.get_running_loop(), {})
        for client in clients.values():
            await client.close()

    def __repr__(self) -> str:
        with self._lock:
            counts = [len(clients) for clients in self._by_loop.values()]
        return f"<AsyncClients loops={len(counts)} clients={sum(counts)}>"
