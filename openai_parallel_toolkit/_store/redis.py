"""Limiter state shared through Redis by every process (and machine) that uses the same keys.

Each limit group's budget lives in Redis as two token buckets (requests, tokens) refilling at
the limit, with Redis's own clock; a worker takes a slice of it at a time (`lua/take.lua`, one
round trip) and spends that locally, so requests never wait on Redis. A background thread keeps
each busy group's slice topped up, passes cool-downs and removed keys on, and gives unused
budget back when a group goes idle or the store closes. Slices are sized from the rate and the
number of live workers, so what all workers hold at once stays within a fraction of a second
of the limit; a worker killed with its slice loses at most that, and the buckets refill
regardless.

When Redis cannot be reached the workers go on alone at a safe share of each limit (the limit
divided by the workers last seen), say so once at WARNING, and rejoin when it answers again.
Redis keys name groups and keys by hashes, never by the API key.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import masked_url
from ..limiter import LimitGroup
from .base import GroupSpec, KeyHealth
from .connection import connect, lua_script, worker_name

__all__ = ["RedisStore", "RedisStoreStats"]

logger = logging.getLogger("openai_parallel_toolkit.shared")

# What all workers hold at once, in seconds of the limit. What they send in any window is at
# most that, plus the shared bucket's burst, plus the refill: with the pool's half-second burst,
# under the one second of burst servers allow.
SLICE_SECONDS = 0.25
# A slice is topped up when it falls below this share of its size.
LOW_WATER = 0.5
# Busy groups are looked at this often even without demand (cool-downs, learned limits).
REFRESH_SECONDS = 0.5
# A group with no send for this long gives its slice back.
IDLE_SECONDS = 1.0
# Calls to Redis are at least this far apart: under a binding limit every worker is short of
# budget all the time, and this bounds what each costs Redis (20 calls a second at most).
MIN_INTERVAL = 0.05
# Groups served by one script call (its arguments grow with them).
GROUPS_PER_CALL = 200
# Removed keys are exchanged this often.
HEALTH_SECONDS = 1.0
# While Redis is unreachable, try it again this often.
RECONNECT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class RedisStoreStats:
    """What a `RedisStore` did: round trips to Redis, budget taken, whether it is connected."""

    online: bool
    workers: int  # live workers on the busiest group, as last seen
    commands: int  # round trips to Redis (script calls and key-health exchanges)
    takes: int  # slices taken
    disconnects: int


class _SharedBudget:
    """One group's slice of the shared budget (see `limiter.Budget`); thread-safe."""

    __slots__ = (
        "_lock",
        "_store",
        "cool_ms",
        "cooldown_until",
        "group",
        "key",
        "last_spend",
        "next_at",
        "offline_at",
        "requests",
        "rpm",
        "tokens",
        "tpm",
        "workers",
    )

    def __init__(self, store: RedisStore, key: str) -> None:
        self._lock = threading.Lock()
        self._store = store
        self.key = key
        self.group: LimitGroup | None = None
        self.requests = 0.0  # allowance held by this worker
        self.tokens = 0.0
        self.next_at = 0.0  # local monotonic time the shared buckets expect to hold more
        self.cooldown_until = 0.0  # local monotonic, from other workers' 429s
        self.cool_ms = 0.0  # our own cool-down, still to be published
        self.rpm = 0.0  # limits the store knows (configured or learned by any worker)
        self.tpm = 0.0
        self.workers = 1
        self.last_spend = -1e9  # the store's clock (time.monotonic), last send or want
        self.offline_at = 0.0

    # -- limiter.Budget -----------------------------------------------------------------------

    def ready_at(self, group: LimitGroup, tokens: float, now: float) -> float:
        with self._lock:
            if self.cooldown_until > group.cooldown_until:
                group.cool_down(self.cooldown_until)
            online = self._store.online
            if not online:
                self._refill_alone(group, now)
            rpm = group.limit_requests_per_min or self.rpm
            tpm = group.limit_tokens_per_min or self.tpm
            enough = (not rpm or self.requests >= 1.0) and (
                not tpm or tokens <= 0 or self.tokens >= min(tokens, self._slice(tpm))
            )
            if enough:
                return now
            if not online:
                share = rpm / 60.0 / self.workers if rpm else 0.0
                return now + (1.0 - self.requests) / share if share > 0 else now + 0.05
            self.last_spend = time.monotonic()  # wanting counts as busy: not to be given back
        self._store.poke()
        return max(now + 0.002, self.next_at)

    def spend(self, tokens: float) -> None:
        with self._lock:
            self.requests -= 1.0
            self.tokens -= tokens  # may go below zero: the debt is paid by the next slices
            self.last_spend = time.monotonic()
            low = self.requests < LOW_WATER * self._slice(self.rpm)
        if low:
            self._store.poke()

    def refund(self, requests: float, tokens: float) -> None:
        with self._lock:
            self.requests += requests
            self.tokens += tokens

    def idle(self) -> None:
        """Count as idle from now: the next sync gives the allowance back."""
        with self._lock:
            self.last_spend = -1e9

    def cooled(self, seconds: float) -> None:
        with self._lock:
            self.cool_ms = max(self.cool_ms, seconds * 1000.0)
        self._store.poke()

    # -- for the store's thread ----------------------------------------------------------------

    def _slice(self, per_min: float) -> float:
        return max(1.0, per_min / 60.0 * SLICE_SECONDS / max(1, self.workers))

    def wants(self, now: float) -> tuple[float, float, float] | None:
        """What to ask of Redis now (requests, tokens, cool-down ms), or None: nothing."""
        group = self.group
        with self._lock:
            rpm = (group.limit_requests_per_min if group else None) or self.rpm
            tpm = (group.limit_tokens_per_min if group else None) or self.tpm
            cool, self.cool_ms = self.cool_ms, 0.0
            if now - self.last_spend > IDLE_SECONDS:
                # Idle: give the allowance back for the others (debts stay to be paid).
                give_r, give_t = max(0.0, self.requests), max(0.0, self.tokens)
                self.requests -= give_r
                self.tokens -= give_t
                if give_r or give_t or cool:
                    return -give_r, -give_t, cool
                return None
            want_r = self._slice(rpm) - self.requests if rpm else 0.0
            want_t = self._slice(tpm) - self.tokens if tpm else 0.0
            low = (rpm and self.requests < LOW_WATER * self._slice(rpm)) or (
                tpm and self.tokens < LOW_WATER * self._slice(tpm)
            )
            if cool:
                pass  # a cool-down to pass on goes at once
            elif now < self.next_at:
                return None  # the shared buckets said when they hold more: not before
            elif not (low or now >= self.next_at + REFRESH_SECONDS):
                return None
            return max(0.0, float(int(want_r))), max(0.0, want_t), cool

    def limits(self) -> tuple[float, float]:
        group = self.group
        if group is None:
            return 0.0, 0.0
        return group.limit_requests_per_min or 0.0, group.limit_tokens_per_min or 0.0

    def took(self, workers: int, answer: list[Any], now: float) -> bool:
        """Apply this group's part of a `take` answer; True if it brought budget a waiting
        sender may use."""
        granted_r, granted_t, wait_ms, cool_ms, rpm, tpm = (float(x) for x in answer)
        burst_seconds = self.group.burst_seconds if self.group is not None else 1.0
        with self._lock:
            self.requests += granted_r
            self.tokens += granted_t
            self.next_at = now + wait_ms / 1000.0
            if wait_ms > 0 and workers > 1 and rpm > 0 and not (granted_r or granted_t):
                # Left empty-handed with others wanting the budget too: they would all come back
                # at the same moment for the same refill, and all but one would leave so again.
                # Spread the returns over the time the bucket takes to serve the others; but the
                # first of them should come back well before the bucket is full again (a full
                # bucket wastes its refill): spread over at most a quarter of the time it
                # takes to fill, per worker.
                spread = (workers - 1) * self._slice(rpm) / (rpm / 60.0)
                filled = max(1.0, rpm / 60.0 * burst_seconds) / (rpm / 60.0)
                self.next_at += random.uniform(0.0, min(spread, workers * filled / 4))
            if cool_ms > 0:
                self.cooldown_until = max(self.cooldown_until, now + cool_ms / 1000.0)
            self.workers = max(1, int(workers))
            self.rpm, self.tpm = rpm, tpm
            return granted_r > 0 or granted_t > 0 or cool_ms > 0

    def went_offline(self, now: float) -> None:
        with self._lock:
            self.requests = min(self.requests, 1.0)
            self.tokens = min(self.tokens, 0.0)
            self.offline_at = now

    def came_back(self) -> None:
        with self._lock:
            # What was refilled alone is not the shared budget's: start again from a slice.
            self.requests = min(self.requests, 0.0)
            self.tokens = min(self.tokens, 0.0)

    def _refill_alone(self, group: LimitGroup, now: float) -> None:
        """Offline: refill at this worker's share of the limits (under the lock)."""
        elapsed = max(0.0, now - self.offline_at)
        self.offline_at = now
        for attr, per_min in (
            ("requests", group.limit_requests_per_min or self.rpm),
            ("tokens", group.limit_tokens_per_min or self.tpm),
        ):
            if per_min:
                rate = per_min / 60.0 / self.workers
                cap = max(1.0, rate * group.burst_seconds)
                setattr(self, attr, min(cap, getattr(self, attr) + rate * elapsed))


class _SharedKeyHealth(KeyHealth):
    """A key's health whose removal is passed on to every worker."""

    __slots__ = ("_key_id", "_store")

    def __init__(self, store: RedisStore, key_id: str) -> None:
        super().__init__()
        self._store = store
        self._key_id = key_id

    def remove(self, reason: str) -> bool:
        removed = super().remove(reason)
        if removed:
            self._store.publish_removal(self._key_id, reason)
        return removed


class RedisStore:
    """A `LimiterStore` shared through Redis at `url` (``redis://host:6379/0``).

    Every pool (in any process or machine) built with a store on the same Redis and
    `namespace` shares, per limit group: the request and token budget, the limits learned from
    headers, cool-downs after 429s; and per key: its removal, with the reason.
    `lease_seconds` is how long a worker that stopped answering (killed) still counts as live.
    Needs the ``redis`` extra (``pip install -e ".[redis]"``); Redis is asked once when the
    store is made, and a ConfigError says so in one line when it does not answer.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "openai-parallel-toolkit",
        lease_seconds: float = 10.0,
    ) -> None:
        # Whatever Redis answers instead of doing its part (a lost connection, a wrong
        # password or database, a script error) leaves this process on its own, never stuck.
        self._redis, self._errors = connect(
            url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=5
        )
        self.url = masked_url(url) or url
        self._take = self._redis.register_script(lua_script("take"))
        self._prefix = f"{namespace}:"
        self._lease_ms = int(lease_seconds * 1000)
        self._worker = worker_name()
        self._lock = threading.Lock()
        self._groups: dict[str, LimitGroup] = {}
        self._budgets: dict[str, _SharedBudget] = {}
        self._health: dict[str, _SharedKeyHealth] = {}
        self._removals: list[tuple[str, str]] = []
        self._wakers: list[Callable[[], None]] = []
        self._event = threading.Event()
        self._closed = threading.Event()
        self.online = True
        self._commands = self._takes = self._disconnects = 0
        self._thread: threading.Thread | None = None

    # -- LimiterStore ------------------------------------------------------------------------

    def group(self, spec: GroupSpec, now: float) -> LimitGroup:
        """The group `spec.name`, its budget shared through Redis (made on first request)."""
        with self._lock:
            group = self._groups.get(spec.name)
            if group is None:
                digest = hashlib.sha256(spec.name.encode("utf-8")).hexdigest()[:16]
                budget = _SharedBudget(self, f"{self._prefix}group:{digest}")
                group = LimitGroup(
                    spec.name,
                    requests_per_min=spec.requests_per_min,
                    tokens_per_min=spec.tokens_per_min,
                    burst_seconds=spec.burst_seconds,
                    now=now,
                    budget=budget,
                )
                budget.group = group
                self._groups[spec.name] = group
                self._budgets[spec.name] = budget
            self._start()
            return group

    def health(self, key_id: str) -> KeyHealth:
        """The key's health; a removal is passed on to every worker."""
        with self._lock:
            health = self._health.get(key_id)
            if health is None:
                health = self._health[key_id] = _SharedKeyHealth(self, key_id)
            return health

    def groups(self) -> list[LimitGroup]:
        """Every group handed out so far."""
        with self._lock:
            return list(self._groups.values())

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call `wake` from the background thread when budget arrives."""
        with self._lock:
            self._wakers.append(wake)

    def close(self) -> None:
        """Give unused budget back, leave the live workers, stop the background thread."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._event.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self.online:
            try:
                budgets = self._budget_list()
                for budget in budgets:
                    budget.idle()
                self._sync(budgets, time.monotonic())
                self._redis.zrem(self._workers_key, self._worker)
            except self._errors:
                pass
        self._redis.close()

    # -- introspection -----------------------------------------------------------------------

    def statistics(self) -> RedisStoreStats:
        """Round trips and slices so far, the live workers seen, whether Redis answers."""
        budgets = self._budget_list()
        return RedisStoreStats(
            online=self.online,
            workers=max((b.workers for b in budgets), default=1),
            commands=self._commands,
            takes=self._takes,
            disconnects=self._disconnects,
        )

    def __repr__(self) -> str:
        state = "online" if self.online else "offline"
        return f"<RedisStore {self.url} {state}, {len(self._groups)} groups>"

    # -- called from the pool's threads ------------------------------------------------------

    def poke(self) -> None:
        """A budget runs low or a cool-down is to be passed on: sync soon."""
        self._event.set()

    def publish_removal(self, key_id: str, reason: str) -> None:
        """Tell the other workers that the key `key_id` was removed, and why (soon, from the
        background thread)."""
        with self._lock:
            self._removals.append((key_id, reason))
        self._event.set()

    # -- the background thread ---------------------------------------------------------------

    @property
    def _workers_key(self) -> str:
        return f"{self._prefix}workers"

    def _budget_list(self) -> list[_SharedBudget]:
        with self._lock:
            return list(self._budgets.values())

    def _start(self) -> None:
        """Under the lock: start the background thread on first use."""
        if self._thread is None and not self._closed.is_set():
            self._thread = threading.Thread(
                target=self._run, name="openai-parallel-toolkit-redis", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        health_due = 0.0
        timeout = REFRESH_SECONDS / 2
        while not self._closed.is_set():
            self._event.wait(timeout)
            self._event.clear()
            if self._closed.is_set():
                return
            now = time.monotonic()
            try:
                if not self.online:
                    self._redis.ping()
                    self._commands += 1
                    self._rejoin()
                woke = self._sync(self._budget_list(), now)
                if now >= health_due:
                    self._exchange_health()
                    health_due = now + HEALTH_SECONDS
            except self._errors as exc:
                self._lost(exc, now)
                self._closed.wait(RECONNECT_SECONDS)
                continue
            except Exception:  # a defect here must not leave every sender waiting for budget
                logger.exception("shared state: unexpected error; going on alone")
                self._lost(RuntimeError("unexpected error"), now)
                self._closed.wait(RECONNECT_SECONDS)
                continue
            if woke:
                self._wake()
            # Back when the first bucket that was short expects to hold more, but not before
            # MIN_INTERVAL: under a binding limit every worker is short all the time.
            later = [b.next_at - now for b in self._budget_list() if b.next_at > now]
            timeout = min([REFRESH_SECONDS / 2, *later])
            self._closed.wait(MIN_INTERVAL)

    def _sync(self, budgets: list[_SharedBudget], now: float) -> bool:
        """One script call per `GROUPS_PER_CALL` groups that want something; True if budget
        arrived that a waiting sender may use."""
        asks = [(b, w) for b in budgets if (w := b.wants(now)) is not None]
        woke = False
        for first in range(0, len(asks), GROUPS_PER_CALL):
            chunk = asks[first : first + GROUPS_PER_CALL]
            args: list[str | float | int] = [self._worker, self._lease_ms]
            for budget, (want_r, want_t, cool_ms) in chunk:
                rpm, tpm = budget.limits()
                burst = budget.group.burst_seconds if budget.group else 1.0
                args += [want_r, want_t, rpm, tpm, burst, int(cool_ms)]
            answer = self._take(keys=[self._workers_key, *(b.key for b, _ in chunk)], args=args)
            self._commands += 1
            self._takes += sum(w[0] > 0 or w[1] > 0 for _, w in chunk)
            workers = int(answer[0])
            arrived = time.monotonic()
            for index, (budget, _) in enumerate(chunk):
                values = answer[1 + 6 * index : 7 + 6 * index]
                woke = budget.took(workers, values, arrived) or woke
        return woke

    def _exchange_health(self) -> None:
        with self._lock:
            removals, self._removals = self._removals, []
            known = dict(self._health)
        key = f"{self._prefix}removed"
        if removals:
            self._redis.hset(key, mapping=dict(removals))
            self._commands += 1
        if not known:
            return
        reasons = self._redis.hmget(key, list(known))
        self._commands += 1
        for health, reason in zip(known.values(), reasons, strict=True):
            if reason is not None and health.removed_reason is None:
                text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else reason
                # Not `remove`: that would publish the removal back.
                health.removed_reason = f"removed by another worker: {text}"
                self._wake()

    def _lost(self, exc: BaseException, now: float) -> None:
        if self.online:
            self.online = False
            self._disconnects += 1
            for budget in self._budget_list():
                budget.went_offline(now)
            logger.warning(
                "shared state at %s does not answer (%s): going on alone at 1/%d of each "
                "limit until it does again",
                self.url,
                type(exc).__name__,
                max((b.workers for b in self._budget_list()), default=1),
            )
            self._wake()

    def _rejoin(self) -> None:
        for budget in self._budget_list():
            budget.came_back()
        self.online = True
        logger.warning("shared state at %s answers again: sharing the limits again", self.url)

    def _wake(self) -> None:
        with self._lock:
            wakers = list(self._wakers)
        for wake in wakers:
            wake()
