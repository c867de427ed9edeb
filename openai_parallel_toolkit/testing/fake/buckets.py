"""Limit accounting per limit group: the request and token buckets, and which key uses which."""

from __future__ import annotations

import math

from ...clock import Clock
from .settings import LimitSettings

__all__ = ["Bucket", "Headers", "LimitBook", "format_duration", "num"]

Headers = list[tuple[bytes, bytes]]


class Bucket:
    """The request and token buckets of one limit group; used only on the server loop."""

    __slots__ = (
        "req",
        "req_cap",
        "req_rate",
        "rpm",
        "shown",
        "tok",
        "tok_cap",
        "tok_rate",
        "tpm",
        "updated",
    )

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        burst_seconds: float,
        now: float,
        reported_burst_seconds: float | None = None,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.req_rate = rpm / 60.0 if rpm is not None else 0.0
        self.tok_rate = tpm / 60.0 if tpm is not None else 0.0
        self.req_cap = max(1.0, self.req_rate * burst_seconds)
        self.tok_cap = max(1.0, self.tok_rate * burst_seconds)
        self.req = self.req_cap
        self.tok = self.tok_cap
        self.updated = now
        # What the headers report: this bucket itself, or a shadow with another capacity that
        # is charged alongside but enforces nothing.
        self.shown: Bucket = self
        if reported_burst_seconds is not None and reported_burst_seconds != burst_seconds:
            self.shown = Bucket(rpm, tpm, reported_burst_seconds, now)

    def _refill(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            self.updated = now
            if self.rpm is not None:
                self.req = min(self.req_cap, self.req + elapsed * self.req_rate)
            if self.tpm is not None:
                self.tok = min(self.tok_cap, self.tok + elapsed * self.tok_rate)

    def admit(self, cost: int, now: float, charge_rejected: bool) -> tuple[str, float] | None:
        """Take one request and `cost` tokens, or return (limit type, seconds to wait)."""
        rejected = self._admit(cost, now, charge_rejected)
        shown = self.shown
        if shown is not self:
            shown._refill(now)
            if shown.rpm is not None and (rejected is None or charge_rejected):
                shown.req -= 1.0
            if shown.tpm is not None and rejected is None:
                shown.tok -= cost
        return rejected

    def _admit(self, cost: int, now: float, charge_rejected: bool) -> tuple[str, float] | None:
        self._refill(now)
        # A request larger than the whole token bucket still passes once the bucket is full.
        need = min(float(cost), self.tok_cap)
        req_short = self.rpm is not None and self.req < 1.0
        tok_short = self.tpm is not None and self.tok < need
        if not req_short and not tok_short:
            if self.rpm is not None:
                self.req -= 1.0
            if self.tpm is not None:
                self.tok -= cost
            return None
        if charge_rejected and self.rpm is not None:
            self.req -= 1.0
        wait = 0.0
        if self.rpm is not None and self.req < 1.0:
            wait = (1.0 - self.req) / self.req_rate
        if tok_short:
            wait = max(wait, (need - self.tok) / self.tok_rate)
        return ("requests" if req_short else "tokens"), wait

    def headers(self) -> Headers:
        """The ``x-ratelimit-*`` headers for the current levels (call right after `admit`)."""
        shown = self.shown
        out: Headers = []
        if shown.rpm is not None:
            out.append((b"x-ratelimit-limit-requests", num(shown.rpm).encode()))
            remaining = max(0, math.floor(shown.req))
            out.append((b"x-ratelimit-remaining-requests", b"%d" % remaining))
            reset = (shown.req_cap - shown.req) / shown.req_rate
            out.append((b"x-ratelimit-reset-requests", format_duration(reset).encode()))
        if shown.tpm is not None:
            out.append((b"x-ratelimit-limit-tokens", num(shown.tpm).encode()))
            out.append((b"x-ratelimit-remaining-tokens", b"%d" % max(0, math.floor(shown.tok))))
            reset = (shown.tok_cap - shown.tok) / shown.tok_rate
            out.append((b"x-ratelimit-reset-tokens", format_duration(reset).encode()))
        return out

    def used(self, kind: str) -> int:
        """How much of the per-minute limit counts as used, for the 429 message."""
        if kind == "requests":
            assert self.rpm is not None
            return round(self.rpm * (1.0 - max(0.0, self.req) / self.req_cap))
        assert self.tpm is not None
        return round(self.tpm * (1.0 - max(0.0, self.tok) / self.tok_cap))


class LimitBook:
    """Which bucket each key counts against (None: no limit); used only on the server loop.

    `rpm`/`tpm` are the limits of keys and groups that `settings` does not name.
    """

    def __init__(
        self, rpm: float | None, tpm: float | None, settings: LimitSettings, clock: Clock
    ) -> None:
        self._rpm = rpm
        self._tpm = tpm
        self.settings = settings
        self._clock = clock
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._bucket_of: dict[str, Bucket | None] = {}

    def bucket(self, key: str) -> Bucket | None:
        """The bucket of `key`'s limit group, made on first use."""
        try:
            return self._bucket_of[key]
        except KeyError:
            pass
        settings = self.settings
        group = settings.groups.get(key)
        if group is not None:
            ident = ("group", group)
            rpm, tpm = settings.group_limits.get(group, (self._rpm, self._tpm))
        else:
            ident = ("key", key)
            rpm, tpm = settings.key_limits.get(key, (self._rpm, self._tpm))
        bucket: Bucket | None = None
        if rpm is not None or tpm is not None:
            bucket = self._buckets.get(ident)
            if bucket is None:
                bucket = Bucket(
                    rpm,
                    tpm,
                    settings.burst_seconds,
                    self._clock.monotonic(),
                    settings.reported_burst_seconds,
                )
                self._buckets[ident] = bucket
        self._bucket_of[key] = bucket
        return bucket

    def admit(self, bucket: Bucket, cost: int) -> tuple[str, float] | None:
        """Charge one request of `cost` tokens to `bucket` now (see `Bucket.admit`)."""
        return bucket.admit(cost, self._clock.monotonic(), self.settings.charge_rejected)


def format_duration(seconds: float) -> str:
    """Format seconds like OpenAI's reset headers: ``0s``, ``12ms``, ``6m0s``, ``1h2m3.5s``."""
    if seconds <= 0:
        return "0s"
    ms = max(1, math.ceil(seconds * 1000.0 - 1e-6))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def num(value: float) -> str:
    """A limit as the headers write it: ``600``, not ``600.0``."""
    return str(int(value)) if float(value).is_integer() else str(value)
