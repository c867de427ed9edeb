"""The rarer settings of `FakeOpenAIServer`, as frozen records checked when built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..fake_batches import BatchSettings

__all__ = ["LimitSettings", "Rates", "ServerSettings", "check_limit"]

Rates = tuple[float | None, float | None]
"""(requests per minute, tokens per minute); None: that limit is not enforced."""


def check_limit(name: str, value: float | None) -> None:
    """Raise ValueError unless `value` is None or > 0."""
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0 or None, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class LimitSettings:
    """Who shares which limits, how big the buckets are and how a 429 is charged.

    Each key is its own limit group unless `groups` maps it to a shared group name. A grouped
    key takes its group's limits from `group_limits`, an ungrouped one from `key_limits` (else
    both take the server's `rpm`/`tpm`). `burst_seconds` is the bucket capacity in seconds of
    refill (60: a per-minute bucket that starts full); `reported_burst_seconds`, when given,
    makes the headers report a bucket of that capacity (charged alike) while `burst_seconds` is
    what is enforced, as a server that reports the minute's remaining quota but enforces a
    shorter window. `charge_rejected`: a request refused with a 429 still uses up a request.
    `send_headers`: send the ``x-ratelimit-*`` headers.
    """

    key_limits: Mapping[str, Rates] = field(default_factory=dict)
    groups: Mapping[str, str] = field(default_factory=dict)
    group_limits: Mapping[str, Rates] = field(default_factory=dict)
    burst_seconds: float = 1.0
    reported_burst_seconds: float | None = None
    charge_rejected: bool = False
    send_headers: bool = True

    def __post_init__(self) -> None:
        for table in (self.key_limits, self.group_limits):
            for rpm, tpm in table.values():
                check_limit("rpm", rpm)
                check_limit("tpm", tpm)
        if self.burst_seconds <= 0:
            raise ValueError("burst_seconds must be > 0")
        if self.reported_burst_seconds is not None and self.reported_burst_seconds <= 0:
            raise ValueError("reported_burst_seconds must be > 0 or None")

    def project(self, key: str) -> str:
        """The project a key belongs to: its limit group, else the key itself."""
        return self.groups.get(key, key)


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """What `FakeOpenAIServer` takes beyond its common keywords.

    `limits`: the limit groups and buckets; `batches`: the Batch API's behaviour; `host` and
    `port`: where it listens (port 0: any free one, read `FakeOpenAIServer.port` after start).
    """

    limits: LimitSettings = field(default_factory=LimitSettings)
    batches: BatchSettings = field(default_factory=BatchSettings)
    host: str = "127.0.0.1"
    port: int = 0
