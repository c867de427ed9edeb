"""The key pool: one client per key, limit groups, key health and statistics.

`APIKeyManager.acquire(tokens)` waits, in turn with other threads, until a usable key's limit
group can send now, reserves the cost there and returns a `Lease`; the caller sends at once
with `lease.client` (inside `lease.sending()`, so the answer's headers are read against this
send), then reports back with `lease.succeed` / `lease.fail`. `try_acquire` is the same grant
without waiting, for event loops. The pool's lock is never held while anyone sleeps or does
I/O. The pacing itself (buckets, sharing, 429s) is `limiter.LimitGroup`'s.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import enum
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .clock import Clock, SystemClock
from .config import KeyConfig, ToolkitConfig, config_from_env, config_from_keys, load_config
from .errors import (
    Action,
    ConfigError,
    NoKeysAvailableError,
    Verdict,
    protect_logs,
    scrub_exception,
)
from .headers import RateLimitHeaders
from .knobs import Knobs
from .limiter import LimitGroup

if TYPE_CHECKING:
    import openai

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

# The lease whose request the current thread or task is sending (see `Lease.sending`).
_SENDING: contextvars.ContextVar[Lease | None] = contextvars.ContextVar(
    "openai_parallel_toolkit_sending", default=None
)

# Burst the pool allows itself, in seconds of refill. Kept below the one second servers are
# seen to allow, so that a request that arrives a little late (and so finds the server's bucket
# already full, its refill wasted) does not push the next one over the server's limit.
DEFAULT_BURST_SECONDS = 0.5
# Used when a 429 names no wait at all: long enough to let a per-second window pass.
DEFAULT_COOLDOWN = 1.0
# The longest a 429 cools a group down: a "retry in a day" (daily limit) is retried hourly
# rather than sleeping a day; the request's own retry budget ends the run sooner.
MAX_COOLDOWN = 60.0
# The prompt-size correction (server count / local estimate) learns with this weight.
PROMPT_SCALE_WEIGHT = 0.1
# The response-time average follows a change within a few dozen answers.
LATENCY_WEIGHT = 0.05
# While a group is still probing for its unknown limits, poll this often.
PROBE_POLL_INTERVAL = 0.02


class KeyState(str, enum.Enum):
    """Health of a key in the pool."""

    ACTIVE = "active"
    COOLING_DOWN = "cooling_down"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class KeyStats:
    """A snapshot of one key (masked) and its counters.

    `pace_share` is the share of the group's limit it paces at now (1.0: all of it); it is
    lower after 429s, while a learned limit starts up, and by `others_per_min` /
    `others_tokens_per_min`: the requests and tokens per minute others spend of the limits
    (other keys of the project, other processes, other programs), as the server's
    ``remaining`` counts show. `surplus_requests` is what the server says it holds beyond
    the group's own pace (a per-minute window that starts full), sent before the pace.
    """

    key: str
    group: str
    state: KeyState
    cooldown_remaining: float
    removed_reason: str | None
    requests: int
    successes: int
    rate_limited: int
    errors: int
    tokens: int
    in_flight: int
    requests_per_min: float | None
    tokens_per_min: float | None
    pace_share: float = 1.0
    others_per_min: float = 0.0
    others_tokens_per_min: float = 0.0
    surplus_requests: float = 0.0


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of the whole pool: per-key statistics and totals."""

    keys: tuple[KeyStats, ...]
    requests: int
    successes: int
    rate_limited: int
    errors: int
    tokens: int
    active_keys: int
    in_flight: int
    latency: float | None = None  # seconds from a slot's grant to the answer (moving average)
    waiting: int = 0  # threads waiting for a slot now


@dataclass(frozen=True, slots=True)
class PoolCapacity:
    """Known limits (per minute) and what is left now, summed over the usable groups.

    None where no group knows that limit.
    """

    limit_requests: float | None
    remaining_requests: float | None
    limit_tokens: float | None
    remaining_tokens: float | None
    active_keys: int


def _sum_known(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


class _Key:
    """Mutable per-key state; only touched under the pool's lock."""

    __slots__ = (
        "client",
        "config",
        "errors",
        "group",
        "rate_limited",
        "removed_reason",
        "requests",
        "successes",
        "tokens",
    )

    def __init__(self, config: KeyConfig, group: LimitGroup) -> None:
        self.config = config
        self.group = group
        self.client: openai.OpenAI | None = None
        self.removed_reason: str | None = None
        self.requests = self.successes = self.rate_limited = self.errors = self.tokens = 0

    @property
    def masked(self) -> str:
        return self.config.masked_key


class Lease:
    """The right to send one request on one key, granted at `send_at` (monotonic seconds).

    Exactly one of `succeed`, `fail` or `cancel` must be called once the request is over.
    """

    __slots__ = ("_done", "_group", "_key", "_pool", "_sent", "send_at", "tokens")

    _done: bool

    def __init__(
        self,
        pool: APIKeyManager,
        key: _Key,
        tokens: int,
        send_at: float,
        sent: tuple[float, int, float, float],
    ) -> None:
        self._pool = pool
        self._key = key
        self._group = key.group
        self.tokens = tokens
        self.send_at = send_at
        self._sent = sent  # the group's record of this send, for reading its answer's headers
        self._done = False

    @property
    def client(self) -> openai.OpenAI:
        """The `openai.OpenAI` client of the leased key."""
        assert self._key.client is not None
        return self._key.client

    @property
    def key(self) -> str:
        """The leased key, masked."""
        return self._key.masked

    @property
    def key_config(self) -> KeyConfig:
        """The leased key's configuration (for callers that send with their own client)."""
        return self._key.config

    def delay(self) -> float:
        """Seconds still to wait before sending: 0, since slots are granted only for now."""
        return max(0.0, self.send_at - self._pool.clock.monotonic())

    def still_valid(self) -> bool:
        """False if, since the lease, the key was removed or its group started cooling down."""
        return self._pool._lease_valid(self)

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
        self._pool._on_success(self, tokens_used, charged)

    def fail(self, verdict: Verdict) -> Verdict:
        """The request failed; the pool acts on `verdict` (cool down, remove the key, count).

        Returns the verdict with this key masked in its reason.
        """
        self._finish()
        return self._pool._on_failure(self, verdict)

    def cancel(self) -> None:
        """The request was not sent (or its outcome is unknown); give its reservation back."""
        self._finish()
        self._pool._on_cancel(self)

    def observe_headers(self, headers: Mapping[str, str], *, success: bool) -> None:
        """Feed a response's ``x-ratelimit-*`` headers to the key's group (for callers that
        send with their own HTTP client, such as the proxy server)."""
        self._pool._observe(self._key, RateLimitHeaders.from_headers(headers), success, self)

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Mark this thread's or task's requests on `client` as this lease's, while inside.

        The pool's response hook then knows which send a response answers, which lets the
        server's ``remaining`` counts show what others spend of the limit.
        """
        token = _SENDING.set(self)
        try:
            yield
        finally:
            _SENDING.reset(token)

    def scrub(self, exc: BaseException) -> BaseException:
        """Mask this lease's key in `exc` (in place) before it travels further."""
        return scrub_exception(exc, [self._key.config.api_key])

    def _finish(self) -> None:
        if self._done:
            raise RuntimeError("lease already settled")
        self._done = True

    def __repr__(self) -> str:
        return f"<Lease {self.key} tokens={self.tokens} send_at={self.send_at:.3f}>"


class APIKeyManager:
    """A pool of API keys with per-limit-group rate limiting, key health and statistics.

    Keys come from, in this order: `api_keys` (strings or mappings as in a config file),
    `config_path` (JSON or YAML), `config` (a loaded `ToolkitConfig`), else the environment
    (``OPENAI_API_KEY*``, and a ``.env`` file when `dotenv` asks for it).

    With `make_default=True` (the default, as in the original toolkit) the new pool becomes
    the process-wide default that `request_openai_api`, `multi_process_one` and
    `ParallelToolkit` use when no `manager=` is given; a later call replaces it. Pass
    `make_default=False` for an independent pool and hand it over explicitly.

    `set_api_base` is accepted for compatibility and has no effect: each key's own client
    gets its base URL, and the global ``openai`` module is never modified.

    `knobs` (default: `Knobs.from_env()`, read now) supplies default limits for keys that
    have none in their config, and whether token costs are settled after each reply.
    `timeout` is the seconds one request may take, for keys whose config sets no ``timeout``.
    `api_base` and `proxy` go with `api_keys`: the base URL and proxy of every key whose own
    entry sets none, as a config file's top-level ``api_base`` / ``proxy`` are.
    """

    def __init__(
        self,
        api_keys: Sequence[str | Mapping[str, Any]] | None = None,
        config_path: str | os.PathLike[str] | None = None,
        set_api_base: bool = True,
        *,
        config: ToolkitConfig | None = None,
        dotenv: str | os.PathLike[str] | bool | None = None,
        make_default: bool = True,
        timeout: float = 120.0,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        clock: Clock | None = None,
        client_factory: Callable[[KeyConfig, Callable[[Any], None]], openai.OpenAI] | None = None,
        knobs: Knobs | None = None,
        api_base: str | None = None,
        proxy: str | None = None,
    ) -> None:
        del set_api_base  # compatibility only, see the docstring
        if api_keys is not None:
            config = config_from_keys(api_keys, api_base=api_base, proxy=proxy)
        elif api_base is not None or proxy is not None:
            raise TypeError(
                "api_base= and proxy= apply to api_keys=[...]; for a config file or the "
                "environment set them there (api_base / proxy, OPENAI_BASE_URL / OPENAI_API_PROXY)"
            )
        elif config_path is not None:
            config = load_config(config_path)
        elif config is None:
            config = config_from_env(dotenv=dotenv)
        if not config.keys:
            raise ConfigError("no API keys configured", source=config.source, field="api_keys")
        self.config = config
        self.knobs = knobs if knobs is not None else Knobs.from_env()
        self.clock: Clock = clock or SystemClock()
        self.timeout = timeout
        self.burst_seconds = burst_seconds
        self._client_factory = client_factory or _default_client_factory(timeout)
        self._lock = threading.Lock()
        self._rotation = 0
        self._groups: dict[str, LimitGroup] = {}
        self._keys: list[_Key] = []
        self._waiting: collections.deque[threading.Condition] = collections.deque()
        self.prompt_scale = 1.0
        self._prompt_samples = 0
        self._latency: float | None = None
        self._add(config.keys)
        logger.info(
            "key pool from %s: %d keys in %d limit groups",
            config.source,
            len(self._keys),
            len(self._groups),
        )
        if make_default:
            _set_default(self)

    def _add(self, key_configs: Sequence[KeyConfig]) -> list[_Key]:
        """Build groups and clients for new keys (the knobs' default limits filled in)."""
        now = self.clock.monotonic()
        added: list[_Key] = []
        for key_config in key_configs:
            if key_config.requests_per_min is None and self.knobs.requests_per_min is not None:
                key_config = dataclasses.replace(
                    key_config, requests_per_min=self.knobs.requests_per_min
                )
            if key_config.tokens_per_min is None and self.knobs.tokens_per_min is not None:
                key_config = dataclasses.replace(
                    key_config, tokens_per_min=self.knobs.tokens_per_min
                )
            group = self._groups.get(key_config.group)
            if group is None:
                group = self._groups[key_config.group] = LimitGroup(
                    key_config.group,
                    requests_per_min=key_config.requests_per_min,
                    tokens_per_min=key_config.tokens_per_min,
                    burst_seconds=self.burst_seconds,
                    now=now,
                )
            elif (key_config.requests_per_min, key_config.tokens_per_min) != (
                group.configured_requests_per_min,
                group.configured_tokens_per_min,
            ):
                logger.warning(
                    "keys of limit group %r declare different limits; using the first key's "
                    "(rpm=%s, tpm=%s)",
                    key_config.group,
                    group.configured_requests_per_min,
                    group.configured_tokens_per_min,
                )
            key = _Key(key_config, group)
            key.client = self._client_factory(key_config, self._header_hook(key))
            added.append(key)
        self._keys.extend(added)
        # After the clients: building them imports the HTTP stack whose loggers get the filter.
        protect_logs(key.config.api_key for key in added)
        return added

    def add_keys(self, config: ToolkitConfig) -> int:
        """Add the keys of `config` to this pool; keys it already holds are skipped.

        Returns how many were added. Requests already running are not disturbed.
        """
        with self._lock:
            known = {key.config.api_key for key in self._keys}
            new = [key for key in config.keys if key.api_key not in known]
            added = self._add(new)
            self._wake_first()
        logger.info("added %d keys from %s to %r", len(added), config.source, self)
        return len(added)

    # -- leasing ------------------------------------------------------------------------------

    def try_acquire(self, tokens: int = 0) -> Lease | float:
        """Take a slot on the key that can send now, without waiting.

        Returns a `Lease` to send with at once, or the seconds until a slot is expected (the
        caller waits that long, or less, and asks again). Nothing is reserved in the future,
        so every correction (a 429, a header, a settled cost) applies to the next send.
        Raises `NoKeysAvailableError` when every key has been removed. `acquire` adds
        waiting in turn; use this one where blocking a thread is not an option.
        """
        with self._lock:
            return self._grant(tokens)

    def _grant(self, tokens: int) -> Lease | float:
        now = self.clock.monotonic()
        count = len(self._keys)
        best: _Key | None = None
        best_at = 0.0
        best_index = 0
        usable = probing_busy = False
        for offset in range(count):
            index = (self._rotation + offset) % count
            key = self._keys[index]
            if key.removed_reason is not None:
                continue
            usable = True
            at = key.group.ready_at(tokens, now)
            if at is None:
                probing_busy = True
            elif best is None or at < best_at:
                best, best_at, best_index = key, at, index
                if at <= now:
                    break  # ready now: the first such key in rotation order is the one
        if not usable:
            raise NoKeysAvailableError(
                {key.masked: key.removed_reason or "removed" for key in self._keys}
            )
        if best is None:
            return PROBE_POLL_INTERVAL
        if best_at > now:
            # A probing group frees up within one round trip: look again by then.
            wait = best_at - now
            return min(wait, PROBE_POLL_INTERVAL) if probing_busy else wait
        self._rotation = (best_index + 1) % count
        sent = best.group.reserve(tokens, now)
        best.requests += 1
        return Lease(self, best, tokens, now, sent)

    def acquire(self, tokens: int = 0) -> Lease:
        """Wait (with the pool's clock) for a slot, in turn with other threads; return it.

        Waiting threads form a queue: only the first one watches the clock, the others sleep
        until their turn, so hundreds of waiting threads cost nothing. Anything that frees
        capacity early (a refund, a header, a key back from cooling down) wakes the first.
        """
        with self._lock:
            turn = threading.Condition(self._lock)
            self._waiting.append(turn)
            try:
                while True:
                    if self._waiting[0] is turn:
                        lease = self._grant(tokens)
                        if isinstance(lease, Lease):
                            return lease
                        self.clock.wait(turn, lease)
                    else:
                        turn.wait()
            finally:
                self._waiting.remove(turn)
                self._wake_first()

    def _wake_first(self) -> None:
        """Under the lock: let the first waiting thread look at the pool again."""
        if self._waiting:
            self._waiting[0].notify()

    # -- reports from leases --------------------------------------------------------------------

    def _lease_valid(self, lease: Lease) -> bool:
        key = lease._key
        with self._lock:
            group = key.group
            return (
                key.removed_reason is None
                and group is lease._group
                and group.cooldown_until <= lease.send_at
            )

    def _observe_latency(self, lease: Lease) -> None:
        """Under the lock: fold one answered request's time into the moving average."""
        sample = self.clock.monotonic() - lease.send_at
        previous = self._latency
        self._latency = (
            sample if previous is None else previous + LATENCY_WEIGHT * (sample - previous)
        )

    def _on_success(self, lease: Lease, tokens_used: int | None, charged: int | None) -> None:
        key = lease._key
        with self._lock:
            self._observe_latency(lease)
            key.successes += 1
            key.group.responses_seen += 1
            if tokens_used is not None:
                key.tokens += tokens_used
            if not self.knobs.ratelimit_after_submission:
                settle = 0  # RATELIMIT_AFTER_SUBMISSION=false: the reservation stands as made
            elif charged is not None:
                settle = lease.tokens - charged
            elif tokens_used is not None:
                settle = -max(0, tokens_used - lease.tokens)
            else:
                settle = 0
            key.group.release(self.clock.monotonic(), tokens=settle, number=lease._sent[1])
            self._wake_first()

    def _on_cancel(self, lease: Lease) -> None:
        key = lease._key
        with self._lock:
            key.requests -= 1
            key.group.release(
                self.clock.monotonic(),
                refund_request=True,
                tokens=lease.tokens,
                number=lease._sent[1],
            )
            self._wake_first()

    def _on_failure(self, lease: Lease, verdict: Verdict) -> Verdict:
        key = lease._key
        verdict = verdict.redacted([key.config.api_key])
        with self._lock:
            now = self.clock.monotonic()
            group = key.group
            if verdict.status_code is not None:
                group.responses_seen += 1
                self._observe_latency(lease)
            # A rejected request still counts against the server's request limit; its tokens
            # were not spent.
            group.release(now, tokens=lease.tokens, number=lease._sent[1])
            wait = 0.0
            short_window_found = False
            if verdict.action is Action.RATE_LIMITED:
                key.rate_limited += 1
                if verdict.exhausted is None:
                    # No rate-limit headers: from a server that sends them on other answers,
                    # an overload's or a gateway's 429; from one that never does, ours.
                    verdict = dataclasses.replace(verdict, exhausted=not group.headers_seen)
                elif verdict.exhausted is False:
                    # Headers that show capacity left: a shorter window than they report?
                    known = group.surplus.short_window
                    if group.surplus.blame(now):
                        verdict = dataclasses.replace(verdict, exhausted=True)
                        short_window_found = not known
                if verdict.exhausted:
                    retry_after = verdict.retry_after
                    wait = min(
                        DEFAULT_COOLDOWN if retry_after is None else retry_after, MAX_COOLDOWN
                    )
                    group.cool_down(now + wait)
                    # Only request counts are exact on both sides: a token 429 may just mean
                    # the prompt estimate was low, which settling and the learned scale correct.
                    if verdict.limit != "tokens":
                        group.on_rate_limited(now)
            else:
                key.errors += 1
            newly_removed = verdict.action is Action.KEY_DEAD and key.removed_reason is None
            if newly_removed:
                key.removed_reason = verdict.reason
            self._wake_first()
        if verdict.action is Action.RATE_LIMITED:
            if short_window_found:
                logger.warning(
                    "the server of %s enforces a shorter window than its remaining counts "
                    "say: pacing its limit group by the limit alone from now on",
                    key.masked,
                )
            if verdict.exhausted:
                logger.info("rate limited on %s: cooling its group down %.2fs", key.masked, wait)
            else:
                logger.info("429 on %s without an exhausted limit: retrying elsewhere", key.masked)
        elif newly_removed:
            logger.warning("removing key %s for this run: %s", key.masked, verdict.reason)
        return verdict

    def observe_prompt_ratio(self, estimated: int, counted: int) -> None:
        """Learn how the server's prompt counts compare with local estimates."""
        if estimated <= 0 or counted <= 0:
            return
        ratio = min(4.0, max(0.25, counted / estimated))
        with self._lock:
            # A plain mean over the first samples, then a moving average: right from the first
            # few replies, and still following a change of model or text later.
            self._prompt_samples += 1
            weight = max(PROMPT_SCALE_WEIGHT, 1.0 / self._prompt_samples)
            self.prompt_scale += weight * (ratio - self.prompt_scale)

    def _header_hook(self, key: _Key) -> Callable[[Any], None]:
        def on_response(response: Any) -> None:
            headers = RateLimitHeaders.from_headers(response.headers)
            lease = _SENDING.get()
            self._observe(key, headers, response.status_code < 400, lease)

        return on_response

    def _observe(
        self, key: _Key, headers: RateLimitHeaders, success: bool, lease: Lease | None
    ) -> None:
        with self._lock:
            group = key.group
            sent = None
            if lease is not None and lease._key is key and lease._group is group:
                sent = lease._sent
            group.observe(headers, self.clock.monotonic(), success=success, sent=sent)
            if success:
                self._wake_first()

    def capacity(self) -> PoolCapacity:
        """The pool's known limits and what is left of them now, summed over usable groups."""
        with self._lock:
            now = self.clock.monotonic()
            groups = {id(k.group): k.group for k in self._keys if k.removed_reason is None}
            return PoolCapacity(
                limit_requests=_sum_known(g.requests_per_min for g in groups.values()),
                remaining_requests=_sum_known(
                    max(0.0, g.requests.level_now(now)) if g.requests else None
                    for g in groups.values()
                ),
                limit_tokens=_sum_known(g.tokens_per_min for g in groups.values()),
                remaining_tokens=_sum_known(
                    max(0.0, g.tokens.level_now(now)) if g.tokens else None for g in groups.values()
                ),
                active_keys=sum(k.removed_reason is None for k in self._keys),
            )

    # -- management and introspection ----------------------------------------------------------

    def remove_key(self, key: str, reason: str = "removed by the user") -> None:
        """Take a key (full or masked form) out of the pool for this run."""
        with self._lock:
            for entry in self._keys:
                if key in (entry.config.api_key, entry.masked):
                    entry.removed_reason = entry.removed_reason or reason
                    self._wake_first()
                    return
        raise KeyError("no such key in the pool")

    @property
    def key_count(self) -> int:
        """How many keys the pool holds, removed ones included."""
        return len(self._keys)

    def statistics(self) -> PoolStats:
        """A frozen snapshot of every key (masked) and the totals."""
        with self._lock:
            now = self.clock.monotonic()
            stats = tuple(self._key_stats(key, now) for key in self._keys)
            in_flight = sum(group.in_flight for group in self._groups.values())
            latency = self._latency
            waiting = len(self._waiting)
        return PoolStats(
            keys=stats,
            requests=sum(s.requests for s in stats),
            successes=sum(s.successes for s in stats),
            rate_limited=sum(s.rate_limited for s in stats),
            errors=sum(s.errors for s in stats),
            tokens=sum(s.tokens for s in stats),
            active_keys=sum(s.state is not KeyState.REMOVED for s in stats),
            in_flight=in_flight,
            latency=latency,
            waiting=waiting,
        )

    @staticmethod
    def _key_stats(key: _Key, now: float) -> KeyStats:
        group = key.group
        cooldown = max(0.0, group.cooldown_until - now)
        if key.removed_reason is not None:
            state = KeyState.REMOVED
        elif cooldown > 0:
            state = KeyState.COOLING_DOWN
        else:
            state = KeyState.ACTIVE
        return KeyStats(
            key=key.masked,
            group=group.name,
            state=state,
            cooldown_remaining=cooldown,
            removed_reason=key.removed_reason,
            requests=key.requests,
            successes=key.successes,
            rate_limited=key.rate_limited,
            errors=key.errors,
            tokens=key.tokens,
            in_flight=group.in_flight,
            requests_per_min=group.requests_per_min,
            tokens_per_min=group.tokens_per_min,
            pace_share=group.pace_share(),
            others_per_min=group.shared_requests.rate(now) * 60.0,
            others_tokens_per_min=group.shared_tokens.rate(now) * 60.0,
            surplus_requests=group.surplus.requests if group.surplus.allowed else 0.0,
        )

    def close(self) -> None:
        """Close every key's HTTP client."""
        for key in self._keys:
            if key.client is not None:
                key.client.close()

    def __enter__(self) -> APIKeyManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        keys = ", ".join(key.masked for key in self._keys)
        return f"<APIKeyManager {len(self._keys)} keys from {self.config.source}: {keys}>"


def _default_client_factory(timeout: float) -> Callable[[KeyConfig, Callable[[Any], None]], Any]:
    def build(config: KeyConfig, on_response: Callable[[Any], None]) -> Any:
        import openai

        # Our own HTTP client per key: it carries the key's proxy, and its response hook feeds
        # the x-ratelimit-* headers of every response (errors included) to the limiter.
        http_client = openai.DefaultHttpxClient(
            proxy=config.proxy, event_hooks={"response": [on_response]}
        )
        return openai.OpenAI(
            api_key=config.api_key,
            base_url=config.api_base,
            organization=config.organization,
            project=config.project,
            max_retries=0,  # the pool decides about retries, with better knowledge
            timeout=config.timeout if config.timeout is not None else timeout,
            http_client=http_client,
        )

    return build


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
