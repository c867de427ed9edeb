"""The key pool: one client per key, limit groups, key health and statistics.

`APIKeyManager.acquire(tokens)` waits, in turn with other threads and tasks, until a usable
key's limit group can send now, reserves the cost there and returns a `Lease`; the caller sends
at once with `lease.client` (inside `lease.sending()`, so the answer's headers are read against
this send), then reports back with `lease.succeed` / `lease.fail`. `await acquire_async(tokens)`
is the same from an event loop, in the same queue (so one pool serves threads and loops at
once, fairly, within one set of limits), and sends with `lease.async_client`. `try_acquire` is
the grant without waiting. The decisions are `_core.pool.KeyPool`'s (which key, what a 429
changes), the pacing `limiter.LimitGroup`'s; this module adds the lock, the clients and, through
`_drivers`, the waiting. The lock is never held while anyone sleeps or does I/O.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from ._core.pool import Failure, Grant, KeyPool, PoolKey
from ._drivers.aio import wait_turn
from ._drivers.clients import AsyncClients, default_async_client_factory, default_client_factory
from ._drivers.turns import Turns
from ._store import LimiterStore, MemoryStore, RedisStore
from .clock import Clock, SystemClock
from .config import (
    SHARED_STATE_VARIABLE,
    KeyConfig,
    ToolkitConfig,
    check_shared_state,
    config_from_env,
    config_from_keys,
    load_config,
)
from .costs import UsageLedger
from .errors import ConfigError, Verdict, protect_logs, scrub_exception
from .headers import RateLimitHeaders
from .knobs import Knobs
from .options import PoolOptions, moved_to_options
from .prices import PriceTable
from .stats import KeyState, KeyStats, PoolCapacity, PoolStats

if TYPE_CHECKING:
    import openai
    from typing_extensions import Unpack

__all__ = [
    "APIKeyManager",
    "KeyState",
    "KeyStats",
    "Lease",
    "PoolCapacity",
    "PoolStats",
    "current_default",
    "get_default_manager",
    "reset_default_manager",
    "resolve_manager",
    "use_manager",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# The lease whose request the current thread or task is sending (see `Lease.sending`).
_SENDING: contextvars.ContextVar[Lease | None] = contextvars.ContextVar(
    "openai_parallel_toolkit_sending", default=None
)


class Lease:
    """The right to send one request on one key, granted at `send_at` (monotonic seconds).

    Exactly one of `succeed`, `fail` or `cancel` must be called once the request is over.
    """

    __slots__ = ("_done", "_grant", "_pool")

    _done: bool

    def __init__(self, pool: APIKeyManager, grant: Grant) -> None:
        self._pool = pool
        self._grant = grant
        self._done = False

    @property
    def tokens(self) -> int:
        """The tokens reserved for this request."""
        return self._grant.tokens

    @property
    def send_at(self) -> float:
        """When the slot was granted (the pool clock's monotonic seconds)."""
        return self._grant.at

    @property
    def client(self) -> openai.OpenAI:
        """The `openai.OpenAI` client of the leased key."""
        return self._pool._client(self._grant.key)

    @property
    def async_client(self) -> openai.AsyncOpenAI:
        """The `openai.AsyncOpenAI` client of the leased key, for the running event loop."""
        return self._pool._async_clients.get(self._grant.key)

    @property
    def key(self) -> str:
        """The leased key, masked."""
        return self._grant.key.masked

    @property
    def key_config(self) -> KeyConfig:
        """The leased key's configuration (for callers that send with their own client)."""
        return self._grant.key.config

    def still_valid(self) -> bool:
        """False if, since the lease, the key was removed or its group started cooling down."""
        return self._pool._run(lambda pool, now: pool.valid(self._grant))

    @property
    def settled(self) -> bool:
        """True once `succeed`, `fail` or `cancel` was called."""
        return self._done

    def succeed(self, tokens_used: int | None = None, charged: int | None = None) -> None:
        """The request succeeded: count `tokens_used` (prompt + completion), settle the cost.

        With `charged` (what the server charged the token limit, e.g. the prompt's real count
        plus ``max_tokens``) the reservation is corrected to it, up or down. Without it, usage
        above the reservation is charged and the rest is not given back, because the API
        charges ``max_tokens`` when the request starts.
        """
        self._finish()
        self._pool._run(
            lambda pool, now: pool.succeeded(self._grant, tokens_used, charged, now), wake=True
        )

    def fail(self, verdict: Verdict) -> Verdict:
        """The request failed; the pool acts on `verdict` (cool down, remove the key, count).

        Returns the verdict with this key masked in its reason.
        """
        self._finish()
        return self._pool._on_failure(self._grant, verdict)

    def cancel(self) -> None:
        """The request was not sent (or its outcome is unknown); give its reservation back."""
        self._finish()
        self._pool._run(lambda pool, now: pool.cancelled(self._grant, now), wake=True)

    def observe_headers(self, headers: Mapping[str, str], *, success: bool) -> None:
        """Feed a response's ``x-ratelimit-*`` headers to the key's group (for callers that
        send with their own HTTP client, such as the proxy server)."""
        self._pool._observe(self._grant.key, RateLimitHeaders.from_headers(headers), success, self)

    def sending(self) -> contextlib.AbstractContextManager[None]:
        """Mark this thread's or task's requests on `client` as this lease's, while inside.

        The pool's response hook then knows which send a response answers, which lets the
        server's ``remaining`` counts show what others spend of the limit.
        """
        return _Sending(self)

    def scrub(self, exc: BaseException) -> BaseException:
        """Mask this lease's key in `exc` (in place) before it travels further."""
        return scrub_exception(exc, [self._grant.key.config.api_key])

    def _finish(self) -> None:
        if self._done:
            raise RuntimeError("lease already settled")
        self._done = True

    def __repr__(self) -> str:
        return f"<Lease {self.key} tokens={self.tokens} send_at={self.send_at:.3f}>"


class _Sending:
    """`Lease.sending`'s context manager (a class: entered for every request)."""

    __slots__ = ("_lease", "_token")

    def __init__(self, lease: Lease) -> None:
        self._lease = lease

    def __enter__(self) -> None:
        self._token = _SENDING.set(self._lease)

    def __exit__(self, *exc_info: object) -> None:
        _SENDING.reset(self._token)


class APIKeyManager:
    """A pool of API keys with per-limit-group rate limiting, key health and statistics.

    Keys come from, in this order: `api_keys` (strings or mappings as in a config file),
    `config_path` (JSON or YAML), `config` (a loaded `ToolkitConfig`), else the environment
    (``OPENAI_API_KEY*``, and a ``.env`` file when `dotenv` asks for it). `api_base` and
    `proxy` go with `api_keys`: the base URL and proxy of every key whose own entry sets none,
    as a config file's top-level ``api_base`` / ``proxy`` are.

    With `make_default=True` (the default, as in the original toolkit) the new pool becomes
    the process-wide default that `request_openai_api`, `multi_process_one` and
    `ParallelToolkit` use when no `manager=` is given; a later call replaces it. Pass
    `make_default=False` for an independent pool and hand it over explicitly.

    `set_api_base` (the original toolkit's third parameter, positional or keyword) is accepted
    for compatibility and has no effect: each key's own client gets its base URL, and the
    global ``openai`` module is never modified.

    `options` (a `PoolOptions`) sets the request timeout, burst, environment knobs, clock,
    client factory and state store; its defaults suit production. Those settings were
    once keywords of this class (``timeout=``, ``clock=``, ...): passing one raises a
    `TypeError` that names its `PoolOptions` replacement.
    """

    def __init__(
        self,
        api_keys: Sequence[str | Mapping[str, Any]] | None = None,
        config_path: str | os.PathLike[str] | None = None,
        *compat: bool,  # set_api_base, positional: compatibility only (see the docstring)
        config: ToolkitConfig | None = None,
        dotenv: str | os.PathLike[str] | bool | None = None,
        make_default: bool = True,
        api_base: str | None = None,
        proxy: str | None = None,
        options: PoolOptions | None = None,
        # `set_api_base=`, and the settings that moved into PoolOptions: accepted here only
        # to name the replacement in the error; the type keeps type checkers refusing them.
        **legacy: Unpack[_Legacy],
    ) -> None:
        _check_legacy(type(self).__name__, compat, legacy)
        config = _pool_config(api_keys, config_path, config, dotenv, api_base, proxy)
        if not config.keys:
            raise ConfigError("no API keys configured", source=config.source, field="api_keys")
        self.config = config
        self.prices = PriceTable(config.prices)  # the config's overrides, then the library
        self.usage = UsageLedger()  # tokens and cost of every answer, per key and model
        self.options = options = options or PoolOptions()
        self.knobs = options.knobs if options.knobs is not None else Knobs.from_env()
        self.clock: Clock = options.clock or SystemClock()
        self._client_factory = options.client_factory or default_client_factory(options.timeout)
        async_factory = options.async_client_factory or default_async_client_factory(
            options.timeout, transport=options.async_transport
        )
        self._turns = Turns()  # threads and tasks waiting for a slot, in arrival order
        self._lock = self._turns.lock
        self._async_clients: AsyncClients[PoolKey] = AsyncClients(
            lambda key: async_factory(key.config, _async_hook(self._header_hook(key)))
        )
        store, self._owns_store = _store_for(config, options)
        self._pool = KeyPool(store, self.knobs, options.burst_seconds)
        store.subscribe(self._wake)
        self._clients: dict[int, openai.OpenAI] = {}
        self._add(config.keys)
        logger.info(
            "key pool from %s: %d keys in %d limit groups",
            config.source,
            len(self._pool.keys),
            len(self._pool.groups()),
        )
        if make_default:
            _set_default(self)

    @property
    def timeout(self) -> float:
        """Seconds one request may take, for keys whose config sets no ``timeout``."""
        return self.options.timeout

    @property
    def store(self) -> LimiterStore:
        """Where the pool's limit groups and key health live (`MemoryStore`, `RedisStore`)."""
        return self._pool.store

    @property
    def counts_tokens(self) -> bool:
        """True when some key's group paces tokens (a token limit configured, or learned from
        the headers): requests are then counted with tiktoken before they are sent."""
        return self._pool.counts_tokens

    @property
    def prompt_scale(self) -> float:
        """Server prompt counts / local estimates, as learned so far (1.0 before any)."""
        return self._pool.prompt_scale

    def _add(self, key_configs: Sequence[KeyConfig]) -> list[PoolKey]:
        """Under the lock (or before sharing): add keys and build their clients."""
        added = self._pool.add(key_configs, self.clock.monotonic())
        for key in added:
            self._clients[id(key)] = self._client_factory(key.config, self._header_hook(key))
        # After the clients: building them imports the HTTP stack whose loggers get the filter.
        protect_logs(key.config.api_key for key in added)
        return added

    def _client(self, key: PoolKey) -> openai.OpenAI:
        return self._clients[id(key)]

    def add_keys(self, config: ToolkitConfig) -> int:
        """Add the keys of `config` to this pool; keys it already holds are skipped.

        Returns how many were added. Requests already running are not disturbed.
        """
        with self._lock:
            known = {key.config.api_key for key in self._pool.keys}
            added = self._add([key for key in config.keys if key.api_key not in known])
            self._wake_first()
        logger.info("added %d keys from %s to %r", len(added), config.source, self)
        return len(added)

    # -- leasing ------------------------------------------------------------------------------

    def try_acquire(self, tokens: int = 0) -> Lease | float:
        """Take a slot on the key that can send now, without waiting.

        Returns a `Lease` to send with at once, or the seconds until a slot is expected (the
        caller waits that long, or less, and asks again). Nothing is reserved in the future,
        so every correction (a 429, a header, a settled cost) applies to the next send.
        Raises `NoKeysAvailableError` when every key has been removed. `acquire` (threads)
        and `acquire_async` (event loops) add waiting in turn with everyone else.
        """
        with self._lock:
            return self._grant(tokens)

    def _grant(self, tokens: int) -> Lease | float:
        grant = self._pool.grant(tokens, self.clock.monotonic())
        return Lease(self, grant) if isinstance(grant, Grant) else grant

    def acquire(self, tokens: int = 0) -> Lease:
        """Wait (with the pool's clock) for a slot, in turn with other threads and tasks.

        Waiters form one queue: only the first one watches the clock, the others sleep until
        their turn, so hundreds of waiting threads cost nothing. Anything that frees capacity
        (an answer, a refund, a header, a key back from cooling down) serves the waiters at
        the front where they stand, in order, as far as there are slots, and wakes the first
        one left.
        """
        return self._turns.wait(lambda: self._grant(tokens), self.clock, release=Lease.cancel)

    def acquire_async(
        self, tokens: int = 0, *, timeout: float | None = None
    ) -> Coroutine[Any, Any, Lease]:
        """``await pool.acquire_async(tokens)``: `acquire` for a task of an event loop.

        The task waits in the same queue as threads (and tasks of other loops), without
        polling and without blocking its loop. With `timeout` (seconds) it raises
        `SlotTimeoutError` (a `TimeoutError`, with the expected wait as `retry_after`) when no
        slot is free in time, at once if the pool already expects none in time. Cancelling
        the task takes it out of the queue; a lease it got must be settled or cancelled by
        the caller (`arequest_openai_api` does).
        """
        return wait_turn(
            self._turns, lambda: self._grant(tokens), self.clock, timeout, release=Lease.cancel
        )

    def _wake_first(self) -> None:
        """Under the lock: let the first waiter look at the pool again."""
        self._turns.wake_first()

    def _wake(self) -> None:
        """From any thread: capacity arrived from elsewhere (the store)."""
        with self._lock:
            self._wake_first()

    def _run(self, step: Callable[[KeyPool, float], _T], *, wake: bool = False) -> _T:
        """Run one core step under the lock at the clock's now; wake the first waiter after."""
        with self._lock:
            result = step(self._pool, self.clock.monotonic())
            if wake:
                self._wake_first()
            return result

    # -- reports from leases --------------------------------------------------------------------

    def _on_failure(self, grant: Grant, verdict: Verdict) -> Verdict:
        failure = self._run(lambda pool, now: pool.failed(grant, verdict, now), wake=True)
        _log_failure(failure, grant.key.masked)
        return failure.verdict

    def observe_prompt_ratio(self, estimated: int, counted: int) -> None:
        """Learn how the server's prompt counts compare with local estimates."""
        with self._lock:
            self._pool.observe_prompt_ratio(estimated, counted)

    def _header_hook(self, key: PoolKey) -> Callable[[Any], None]:
        def on_response(response: Any) -> None:
            headers = RateLimitHeaders.from_response_headers(response.headers)
            self._observe(key, headers, response.status_code < 400, _SENDING.get())

        return on_response

    def _observe(
        self, key: PoolKey, headers: RateLimitHeaders, success: bool, lease: Lease | None
    ) -> None:
        grant = lease._grant if lease is not None else None
        self._run(lambda pool, now: pool.observe(key, headers, success, grant, now), wake=success)

    def capacity(self) -> PoolCapacity:
        """The pool's known limits and what is left of them now, summed over usable groups."""
        return self._run(lambda pool, now: pool.capacity(now))

    # -- management and introspection ----------------------------------------------------------

    def remove_key(self, key: str, reason: str = "removed by the user") -> None:
        """Take a key (full or masked form) out of the pool for this run."""
        if not self._run(lambda pool, now: pool.remove(key, reason), wake=True):
            raise KeyError("no such key in the pool")

    @property
    def key_count(self) -> int:
        """How many keys the pool holds, removed ones included."""
        return len(self._pool.keys)

    def statistics(self) -> PoolStats:
        """A frozen snapshot of every key (masked) and the totals, with the tokens and cost
        of the answers (per key, and in `PoolStats.usage` per model)."""
        with self._lock:
            now = self.clock.monotonic()
            stats = self._pool.key_stats(now)
            in_flight = self._pool.in_flight()
            latency = self._pool.latency
            oldest = self._pool.oldest_in_flight(now)
            waiting = len(self._turns)
        return PoolStats.of(
            [_with_usage(s, self.usage) for s in stats],
            in_flight=in_flight,
            latency=latency,
            oldest_in_flight=oldest,
            waiting=waiting,
            usage=self.usage.report(),
        )

    def close(self) -> None:
        """Close every key's HTTP client (the async ones: see `aclose`), and the shared-state
        store the pool opened itself."""
        for client in self._clients.values():
            if client is not None:
                client.close()
        if self._owns_store:
            self._pool.store.close()

    async def aclose(self) -> None:
        """Close the async clients the running event loop used (those of closed loops are
        dropped when another loop asks for one)."""
        await self._async_clients.aclose()

    def __enter__(self) -> APIKeyManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        keys = ", ".join(key.masked for key in self._pool.keys)
        return f"<APIKeyManager {len(self._pool.keys)} keys from {self.config.source}: {keys}>"


class _Legacy(TypedDict, total=False):
    """The keywords `APIKeyManager` accepts for compatibility only."""

    set_api_base: bool


def _check_legacy(owner: str, positional: tuple[bool, ...], keywords: Mapping[str, object]) -> None:
    """Accept the original toolkit's `set_api_base` (a third positional or a keyword); name
    `PoolOptions` for the keywords that moved there."""
    if len(positional) > 1:
        given = 2 + len(positional)
        raise TypeError(f"{owner}() takes from 0 to 3 positional arguments but {given} were given")
    moved = {name: value for name, value in keywords.items() if name != "set_api_base"}
    if moved:
        raise moved_to_options(owner, moved)


def _pool_config(
    api_keys: Sequence[str | Mapping[str, Any]] | None,
    config_path: str | os.PathLike[str] | None,
    config: ToolkitConfig | None,
    dotenv: str | os.PathLike[str] | bool | None,
    api_base: str | None,
    proxy: str | None,
) -> ToolkitConfig:
    """The pool's config from the first source given (see `APIKeyManager`)."""
    if api_keys is not None:
        return config_from_keys(api_keys, api_base=api_base, proxy=proxy)
    if api_base is not None or proxy is not None:
        raise TypeError(
            "api_base= and proxy= apply to api_keys=[...]; for a config file or the "
            "environment set them there (api_base / proxy, OPENAI_BASE_URL / OPENAI_API_PROXY)"
        )
    if config_path is not None:
        return load_config(config_path)
    if config is None:
        return config_from_env(dotenv=dotenv)
    return config


def _with_usage(stats: KeyStats, usage: UsageLedger) -> KeyStats:
    """A key's statistics with the tokens and cost of its answers."""
    row = usage.key_row(stats.key)
    return dataclasses.replace(
        stats,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cached_tokens=row.cached_tokens,
        cost=row.cost,
    )


def _log_failure(failure: Failure, masked: str) -> None:
    """Log what the pool did about a failed send on the key `masked`."""
    if failure.short_window_found:
        logger.warning(
            "the server of %s enforces a shorter window than its remaining counts "
            "say: pacing its limit group by the limit alone from now on",
            masked,
        )
    if failure.cooldown > 0:
        logger.info("rate limited on %s: cooling its group down %.2fs", masked, failure.cooldown)
    elif failure.verdict.exhausted is False:
        logger.info("429 on %s without an exhausted limit: retrying elsewhere", masked)
    if failure.key_removed:
        logger.warning("removing key %s for this run: %s", masked, failure.verdict.reason)


def _store_for(config: ToolkitConfig, options: PoolOptions) -> tuple[LimiterStore, bool]:
    """The pool's store, and whether the pool opened it (and so closes it): the options',
    else Redis at the config's ``shared_state`` or ``OPENAI_PARALLEL_TOOLKIT_REDIS_URL``, else
    one in memory."""
    if options.store is not None:
        return options.store, False
    url = config.shared_state or os.environ.get(SHARED_STATE_VARIABLE) or None
    if url is None:
        return MemoryStore(), True
    check_shared_state(
        url,
        config.source if config.shared_state else "environment",
        "shared_state" if config.shared_state else SHARED_STATE_VARIABLE,
    )
    store = RedisStore(url)
    logger.info("limits shared through Redis at %s", store.url)
    return store, True


def _async_hook(hook: Callable[[Any], None]) -> Callable[[Any], Coroutine[Any, Any, None]]:
    """The response hook as the coroutine function an async HTTP client calls."""

    async def on_response(response: Any) -> None:
        hook(response)

    return on_response


_default_lock = threading.Lock()
_default: APIKeyManager | None = None
_active: contextvars.ContextVar[APIKeyManager | None] = contextvars.ContextVar(
    "openai_parallel_toolkit_manager", default=None
)


@contextlib.contextmanager
def use_manager(manager: APIKeyManager | None) -> Iterator[APIKeyManager | None]:
    """Within this block (and the worker threads `multi_process_one` starts from it), calls
    without `manager=` use `manager` instead of the default pool."""
    token = _active.set(manager)
    try:
        yield manager
    finally:
        _active.reset(token)


def _set_default(manager: APIKeyManager) -> None:
    global _default
    with _default_lock:
        previous, _default = _default, manager
    if previous is not None and previous is not manager:
        logger.info("default key pool replaced: %r -> %r", previous, manager)


def reset_default_manager() -> None:
    """Forget the default pool and the pools built for `keys=` / `config_path=` arguments.

    For tests and long-running programs that reload their configuration; pools already handed
    out keep working.
    """
    global _default
    with _default_lock:
        _default = None
    with _pools_lock:
        _pools_by_source.clear()


def current_default() -> APIKeyManager | None:
    """The default pool if one was set up, without building one."""
    with _default_lock:
        return _default


def get_default_manager() -> APIKeyManager:
    """The process-wide default pool; built from the environment on first use if none was set.

    Raises `ConfigError` when no pool was set up and the environment holds no key.
    """
    with _default_lock:
        current = _default
    if current is not None:
        return current
    try:
        return APIKeyManager()
    except ConfigError as exc:
        raise ConfigError(
            "no key pool set up: call APIKeyManager(config_path=...) first, pass manager=..., "
            "or set OPENAI_API_KEY",
            source=exc.source,
            field=exc.field,
        ) from exc


_pools_lock = threading.Lock()
_pools_by_source: dict[tuple[str, ...], APIKeyManager] = {}


def resolve_manager(
    manager: APIKeyManager | None = None,
    *,
    keys: Sequence[str | Mapping[str, Any]] | None = None,
    config_path: str | os.PathLike[str] | None = None,
) -> APIKeyManager:
    """The pool a call should use: `manager`, else one for `keys` / `config_path`, else the one
    made active by `use_manager`, else the default.

    Pools built for `keys` or `config_path` are kept and reused by later calls with the same
    argument, so a loop of calls does not rebuild clients or forget key health.
    """
    if manager is not None:
        return manager
    ident: tuple[str, ...]
    if keys is not None:
        ident = tuple(str(k) for k in keys)
    elif config_path is not None:
        path = os.fspath(config_path)
        default = current_default()
        if default is not None and default.config.source == path:
            return default
        ident = ("path", path)
    else:
        return _active.get() or get_default_manager()
    with _pools_lock:
        pool = _pools_by_source.get(ident)
        if pool is None:
            # Like the original toolkit: a config named here becomes the default pool.
            pool = APIKeyManager(api_keys=keys, config_path=config_path)
            _pools_by_source[ident] = pool
        return pool
