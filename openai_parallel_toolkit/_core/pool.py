"""The key pool's decisions: which key sends next, and what each outcome changes.

`KeyPool` holds the keys in rotation order and reads their limit groups and health from a
`LimiterStore`. It never waits, locks or sends: `grant` answers with a `Grant` to send now or
the seconds until one is expected, and the outcome of each send (success, failure, cancel,
headers) is reported back with the time it happened. `APIKeyManager` runs it under a lock and
makes the threads wait; an event loop can drive it the same way.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .._store import GroupSpec, KeyHealth, LimiterStore
from ..config import KeyConfig
from ..errors import Action, NoKeysAvailableError, Verdict
from ..headers import RateLimitHeaders
from ..knobs import Knobs
from ..limiter import LimitGroup
from ..stats import KeyState, KeyStats, PoolCapacity

__all__ = ["Failure", "Grant", "KeyPool", "PoolKey"]

logger = logging.getLogger("openai_parallel_toolkit.keys")

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


class PoolKey:
    """One key of the pool: its config (and masked key), group and health (from the store) and
    counters."""

    __slots__ = (
        "config",
        "errors",
        "group",
        "health",
        "masked",
        "rate_limited",
        "requests",
        "successes",
        "tokens",
    )

    def __init__(self, config: KeyConfig, group: LimitGroup, health: KeyHealth) -> None:
        self.config = config
        self.group = group
        self.health = health
        # Once: every answer is counted under it, and masking hashes the key.
        self.masked = config.masked_key
        self.requests = self.successes = self.rate_limited = self.errors = self.tokens = 0

    @property
    def usable(self) -> bool:
        return self.health.removed_reason is None


@dataclass(frozen=True, slots=True)
class Grant:
    """One send granted on `key` at `at` for `tokens`; `sent` is the group's record of it."""

    key: PoolKey
    group: LimitGroup
    tokens: int
    at: float
    sent: tuple[float, int, float, float]


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed send changed: the verdict as acted on (key masked) and what happened."""

    verdict: Verdict
    cooldown: float = 0.0  # seconds the group was cooled down for (0: not cooled)
    short_window_found: bool = False  # the server enforces a shorter window than it reports
    key_removed: bool = False  # this failure removed the key


class KeyPool:
    """Keys in rotation, their limit groups and health, and every decision about them.

    `knobs` gives default limits to keys without their own and says whether token costs are
    settled with the server's counts; `burst_seconds` is the groups' bucket size in seconds
    of refill.
    """

    def __init__(self, store: LimiterStore, knobs: Knobs, burst_seconds: float) -> None:
        self.store = store
        self.knobs = knobs
        self.burst_seconds = burst_seconds
        self.keys: list[PoolKey] = []
        self._rotation = 0
        self.prompt_scale = 1.0
        self._prompt_samples = 0
        self.latency: float | None = None
        # Grant times of the sends not yet settled (by grant id), for `oldest_in_flight`.
        self._outstanding: dict[int, float] = {}

    def add(self, configs: Iterable[KeyConfig], now: float) -> list[PoolKey]:
        """Add keys (with the knobs' default limits filled in); returns them."""
        added: list[PoolKey] = []
        for config in configs:
            if config.requests_per_min is None and self.knobs.requests_per_min is not None:
                config = dataclasses.replace(config, requests_per_min=self.knobs.requests_per_min)
            if config.tokens_per_min is None and self.knobs.tokens_per_min is not None:
                config = dataclasses.replace(config, tokens_per_min=self.knobs.tokens_per_min)
            spec = GroupSpec(
                config.group, config.requests_per_min, config.tokens_per_min, self.burst_seconds
            )
            group = self.store.group(spec, now)
            declared = (config.requests_per_min, config.tokens_per_min)
            if declared != (group.configured_requests_per_min, group.configured_tokens_per_min):
                logger.warning(
                    "keys of limit group %r declare different limits; using the first key's "
                    "(rpm=%s, tpm=%s)",
                    config.group,
                    group.configured_requests_per_min,
                    group.configured_tokens_per_min,
                )
            added.append(PoolKey(config, group, self.store.health(config.key_id)))
        self.keys.extend(added)
        return added

    @property
    def counts_tokens(self) -> bool:
        """True when a usable key's group paces tokens (a token limit configured or learned):
        only then is a request's token count worth its cost."""
        return any(key.usable and key.group.tokens is not None for key in self.keys)

    def groups(self) -> list[LimitGroup]:
        """The distinct groups of the pool's keys."""
        return list({id(key.group): key.group for key in self.keys}.values())

    # -- granting ----------------------------------------------------------------------------

    def grant(self, tokens: int, now: float) -> Grant | float:
        """A send on the first key in rotation that can take `tokens` now, or the seconds
        until one is expected. Raises `NoKeysAvailableError` when every key is removed."""
        count = len(self.keys)
        best: PoolKey | None = None
        best_at = 0.0
        best_index = 0
        usable = probing_busy = False
        for offset in range(count):
            index = (self._rotation + offset) % count
            key = self.keys[index]
            if not key.usable:
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
                {key.masked: key.health.removed_reason or "removed" for key in self.keys}
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
        grant = Grant(best, best.group, tokens, now, sent)
        self._outstanding[id(grant)] = now
        return grant

    def valid(self, grant: Grant) -> bool:
        """False once the grant's key was removed or its group started cooling down after it."""
        key = grant.key
        return key.usable and key.group is grant.group and key.group.cooldown_until <= grant.at

    # -- outcomes ------------------------------------------------------------------------------

    def succeeded(
        self, grant: Grant, tokens_used: int | None, charged: int | None, now: float
    ) -> None:
        """Settle a successful send (see `Lease.succeed` for `tokens_used` and `charged`)."""
        key = grant.key
        self._outstanding.pop(id(grant), None)
        self._observe_latency(grant, now)
        key.successes += 1
        key.group.note_response(success=True)
        if tokens_used is not None:
            key.tokens += tokens_used
        if not self.knobs.ratelimit_after_submission:
            settle = 0  # RATELIMIT_AFTER_SUBMISSION=false: the reservation stands as made
        elif charged is not None:
            settle = grant.tokens - charged
        elif tokens_used is not None:
            settle = -max(0, tokens_used - grant.tokens)
        else:
            settle = 0
        key.group.release(now, tokens=settle, number=grant.sent[1])

    def cancelled(self, grant: Grant, now: float) -> None:
        """Give back everything a send that never went out had reserved."""
        self._outstanding.pop(id(grant), None)
        grant.key.requests -= 1
        grant.key.group.release(now, refund_request=True, tokens=grant.tokens, number=grant.sent[1])

    def failed(self, grant: Grant, verdict: Verdict, now: float) -> Failure:
        """Act on a failed send's verdict (the error table): cool, slow, remove or count."""
        key = grant.key
        group = key.group
        self._outstanding.pop(id(grant), None)
        verdict = verdict.redacted([key.config.api_key])
        if verdict.status_code is not None:
            group.note_response()
            self._observe_latency(grant, now)
        # A rejected request still counts against the server's request limit; its tokens
        # were not spent.
        group.release(now, tokens=grant.tokens, number=grant.sent[1])
        if verdict.action is not Action.RATE_LIMITED:
            key.errors += 1
            removed = verdict.action is Action.KEY_DEAD and key.health.remove(verdict.reason)
            return Failure(verdict, key_removed=removed)
        key.rate_limited += 1
        short_window_found = False
        if verdict.exhausted is None:
            # No rate-limit headers: from a server that sends them on other answers, an
            # overload's or a gateway's 429; from one that never does, ours.
            verdict = dataclasses.replace(verdict, exhausted=not group.headers_seen)
        elif verdict.exhausted is False:
            # Headers that show capacity left: a shorter window than they report?
            known = group.surplus.short_window
            if group.surplus.blame(now):
                verdict = dataclasses.replace(verdict, exhausted=True)
                short_window_found = not known
        if not verdict.exhausted:
            return Failure(verdict)
        retry_after = verdict.retry_after
        hint = DEFAULT_COOLDOWN if retry_after is None else retry_after
        wait = group.refused(hint, grant.sent[0], now, MAX_COOLDOWN)
        # Only request counts are exact on both sides: a token 429 may just mean the prompt
        # estimate was low, which settling and the learned scale correct.
        if verdict.limit != "tokens":
            group.on_rate_limited(now)
        return Failure(verdict, cooldown=wait, short_window_found=short_window_found)

    def observe(
        self,
        key: PoolKey,
        headers: RateLimitHeaders,
        success: bool,
        grant: Grant | None,
        now: float,
    ) -> None:
        """Feed one response's rate-limit headers to `key`'s group; `grant` is the send it
        answers when known."""
        group = key.group
        sent = (
            grant.sent if grant is not None and grant.key is key and grant.group is group else None
        )
        group.observe(headers, now, success=success, sent=sent)

    def observe_prompt_ratio(self, estimated: int, counted: int) -> None:
        """Learn how the server's prompt counts compare with local estimates."""
        if estimated <= 0 or counted <= 0:
            return
        ratio = min(4.0, max(0.25, counted / estimated))
        # A plain mean over the first samples, then a moving average: right from the first
        # few replies, and still following a change of model or text later.
        self._prompt_samples += 1
        weight = max(PROMPT_SCALE_WEIGHT, 1.0 / self._prompt_samples)
        self.prompt_scale += weight * (ratio - self.prompt_scale)

    def _observe_latency(self, grant: Grant, now: float) -> None:
        sample = now - grant.at
        previous = self.latency
        self.latency = (
            sample if previous is None else previous + LATENCY_WEIGHT * (sample - previous)
        )

    # -- management and statistics -------------------------------------------------------------

    def remove(self, key: str, reason: str) -> bool:
        """Remove the key given in full or masked form; False if the pool has no such key."""
        for entry in self.keys:
            if key in (entry.config.api_key, entry.masked):
                entry.health.remove(reason)
                return True
        return False

    def capacity(self, now: float) -> PoolCapacity:
        """Known limits and what is left of them now, summed over the usable groups."""
        groups = {id(k.group): k.group for k in self.keys if k.usable}.values()
        return PoolCapacity(
            limit_requests=_sum_known(g.requests_per_min for g in groups),
            remaining_requests=_sum_known(
                max(0.0, g.requests.level_now(now)) if g.requests else None for g in groups
            ),
            limit_tokens=_sum_known(g.tokens_per_min for g in groups),
            remaining_tokens=_sum_known(
                max(0.0, g.tokens.level_now(now)) if g.tokens else None for g in groups
            ),
            active_keys=sum(k.usable for k in self.keys),
        )

    def key_stats(self, now: float) -> Sequence[KeyStats]:
        """A snapshot of every key, in pool order."""
        return tuple(_key_stats(key, now) for key in self.keys)

    def oldest_in_flight(self, now: float) -> float | None:
        """Seconds since the oldest send still unsettled was granted; None with none."""
        if not self._outstanding:
            return None
        return now - min(self._outstanding.values())

    def in_flight(self) -> int:
        """Requests granted and not yet settled, over all groups."""
        return sum(group.in_flight for group in self.groups())


def _sum_known(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _key_stats(key: PoolKey, now: float) -> KeyStats:
    group = key.group
    cooldown = max(0.0, group.cooldown_until - now)
    if not key.usable:
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
        removed_reason=key.health.removed_reason,
        requests=key.requests,
        successes=key.successes,
        rate_limited=key.rate_limited,
        errors=key.errors,
        tokens=key.tokens,
        in_flight=group.in_flight,
        requests_per_min=group.requests_per_min,
        tokens_per_min=group.tokens_per_min,
        pace_share=group.pace_share(now),
        others_per_min=group.shared_requests.rate(now) * 60.0,
        others_tokens_per_min=group.shared_tokens.rate(now) * 60.0,
        surplus_requests=group.surplus.requests if group.surplus.allowed else 0.0,
        surplus_allowed=group.surplus.allowed,
        remaining_requests=max(0.0, group.requests.level_now(now)) if group.requests else None,
        remaining_tokens=max(0.0, group.tokens.level_now(now)) if group.tokens else None,
    )
