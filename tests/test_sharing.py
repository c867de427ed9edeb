"""Shared limits from evidence, under a fake clock: pools against a simulated server."""

from __future__ import annotations

from typing import Any

import pytest

from openai_parallel_toolkit import APIKeyManager, PoolOptions
from openai_parallel_toolkit._core.sharing import SharedUse
from openai_parallel_toolkit.testing import FakeClock
from openai_parallel_toolkit.testing.simulation import Project, SimulatedServer, simulate

KEYS = [f"sk-sim-{'s' * 20}{i:04d}" for i in range(8)]


def pool(clock: FakeClock, keys: list[str], **entry: Any) -> APIKeyManager:
    return APIKeyManager(
        api_keys=[{"api_key": key, **entry} for key in keys],
        make_default=False,
        options=PoolOptions(clock=clock, client_factory=lambda config, hook: None),
    )


def lone_keys(keys: list[str], rpm: float, **project: Any) -> SimulatedServer:
    return SimulatedServer(
        {key: Project(rpm, **project) for key in keys}, {key: key for key in keys}
    )


def test_the_estimate_follows_others_use_and_fades_without_evidence() -> None:
    shared = SharedUse()

    def ours(first: int, last: int) -> float:  # every send charged one
        return float(last - first)

    shared.observe(0.0, 0, 10.0, 10.0, 1, ours)  # a 600 RPM (10/s) bucket of one second, full
    # We send 4/s; others spend 6/s: the server's count stays where it is.
    now, sends = 0.0, 0
    for _ in range(40):
        now += 0.5
        sends += 2
        shared.observe(now, sends, 3.0, 10.0, 1, ours)
    assert shared.rate(now) == pytest.approx(6.0, rel=0.05)
    # Late, out-of-order answers do not count twice; a full bucket is no evidence.
    shared.observe(now - 0.3, sends - 1, 0.0, 10.0, 1, ours)
    assert shared.rate(now) == pytest.approx(6.0, rel=0.05)
    shared.observe(now + 0.5, sends + 2, 10.0, 10.0, 1, ours)  # full again: no sample
    assert shared.rate(now + 0.5) == pytest.approx(6.0, rel=0.05)
    # No evidence for a while: the conclusion is undone.
    assert shared.rate(now + 30.0) < 0.1


def test_coincidental_429s_never_pace_separate_keys_as_shared() -> None:
    clock = FakeClock()
    keys = KEYS[:4]
    manager = pool(clock, keys, requests_per_min=600)
    server = lone_keys(keys, 600)
    simulate(clock, server, [(manager, 40)], 5.0)
    for _ in range(5):  # the same overshoot on every key at once, five times in a few seconds
        for key in keys:
            server.projects[key].requests.level = -2.0
        simulate(clock, server, [(manager, 40)], 1.0)
    before = dict(server.admitted)
    stats = simulate(clock, server, [(manager, 40)], 30.0)
    rates = [(server.admitted[key] - before[key]) / 30.0 for key in keys]
    assert all(rate >= 0.9 * 10.0 for rate in rates), rates
    assert stats[0].rate_limited <= 0.03 * stats[0].successes
    for key in manager.statistics().keys:
        assert key.pace_share > 0.9 and key.others_per_min < 60  # under 10% of 600


def test_keys_of_one_project_found_from_headers_and_undone_when_alone() -> None:
    clock = FakeClock()
    keys = KEYS[:4]
    manager = pool(clock, keys)  # limits not configured: learned from headers
    server = SimulatedServer({"p": Project(1200)}, dict.fromkeys(keys, "p"))
    stats = simulate(clock, server, [(manager, 40)], 40.0)
    assert server.admitted["p"] >= 0.9 * 20.0 * 40.0
    assert stats[0].rate_limited <= 0.03 * (stats[0].successes + stats[0].rate_limited)
    assert all(key.others_per_min > 300 for key in manager.statistics().keys)
    # Three of the four keys go away: the last one is alone and takes the whole limit again.
    for key in keys[1:]:
        manager.remove_key(key)
    admitted = server.admitted["p"]
    simulate(clock, server, [(manager, 40)], 40.0)
    assert server.admitted["p"] - admitted >= 0.9 * 20.0 * 40.0
    (alone,) = [key for key in manager.statistics().keys if key.removed_reason is None]
    assert alone.others_per_min < 60 and alone.pace_share > 0.9


def test_two_pools_on_the_same_keys_converge_on_sharing_the_limits() -> None:
    clock = FakeClock()
    keys = KEYS[:3]
    first, second = pool(clock, keys), pool(clock, keys)
    server = lone_keys(keys, 600)
    stats = simulate(clock, server, [(first, 30), (second, 30)], 60.0)
    ceiling = 3 * 10.0 * 60.0
    assert sum(server.admitted.values()) >= 0.85 * ceiling
    sent = sum(s.successes + s.rate_limited for s in stats)
    assert sum(s.rate_limited for s in stats) <= 0.05 * sent
    assert all(s.successes > 0.2 * ceiling for s in stats)  # neither starves the other


def test_429s_without_evidence_of_exhaustion_do_not_slow_the_group() -> None:
    clock = FakeClock()
    keys = KEYS[:4]
    manager = pool(clock, keys, requests_per_min=600)
    server = lone_keys(keys, 600)
    server.chaos_429 = 0.05
    stats = simulate(clock, server, [(manager, 40)], 30.0)
    assert server.chaos > 0
    assert sum(server.admitted.values()) >= 0.8 * 4 * 10.0 * 30.0
    assert stats[0].successes >= 0.8 * 4 * 10.0 * 30.0
    assert all(key.pace_share > 0.95 for key in manager.statistics().keys)


def test_a_per_minute_window_that_starts_full_is_used() -> None:
    clock = FakeClock()
    keys = KEYS[:4]
    manager = pool(clock, keys, requests_per_min=600)
    server = lone_keys(keys, 600, capacity_seconds=60.0)  # the whole minute, full at start
    stats = simulate(clock, server, [(manager, 40)], 60.0)
    ceiling = 4 * (600 + 10.0 * 60.0)  # initial capacity + refill over the run
    assert sum(server.admitted.values()) >= 0.9 * ceiling
    assert stats[0].rate_limited <= 0.03 * stats[0].successes


def test_a_server_that_reports_a_minute_but_enforces_a_second_stops_the_surplus() -> None:
    clock = FakeClock()
    keys = KEYS[:4]
    manager = pool(clock, keys, requests_per_min=600)
    server = lone_keys(keys, 600, capacity_seconds=1.0, report_seconds=60.0)
    stats = simulate(clock, server, [(manager, 40)], 60.0)
    assert sum(server.admitted.values()) >= 0.9 * 4 * 10.0 * 60.0
    assert stats[0].rate_limited <= 0.03 * stats[0].successes
    assert not any(key.surplus_allowed for key in manager.statistics().keys)


def test_two_pools_converge_on_a_token_limit_too() -> None:
    clock = FakeClock()
    keys = KEYS[:2]
    first, second = pool(clock, keys), pool(clock, keys)
    server = SimulatedServer(
        {key: Project(6000, tokens_per_min=60_000) for key in keys}, {key: key for key in keys}
    )
    # 100 tokens a request: 10 requests/s per key, far below the request limit (100/s).
    stats = simulate(clock, server, [(first, 20), (second, 20)], 60.0, cost=100)
    ceiling = 2 * 1000.0 * 60.0  # tokens
    assert sum(server.tokens.values()) >= 0.85 * ceiling
    sent = sum(s.successes + s.rate_limited for s in stats)
    assert sum(s.rate_limited for s in stats) <= 0.05 * sent
    assert all(key.others_tokens_per_min > 5000 for key in first.statistics().keys)


def test_headerless_429s_are_not_taken_for_a_shorter_window() -> None:
    clock = FakeClock()
    keys = KEYS[:4]
    manager = pool(clock, keys, requests_per_min=600)
    server = lone_keys(keys, 600, capacity_seconds=60.0)
    server.chaos_429 = 0.05
    simulate(clock, server, [(manager, 40)], 60.0)
    assert server.chaos > 0
    assert sum(server.admitted.values()) >= 0.8 * 4 * (600 + 10.0 * 60.0)
    assert all(key.surplus_allowed for key in manager.statistics().keys)


def test_a_deep_overshoot_on_undeclared_keys_of_one_project_does_not_become_a_storm() -> None:
    # Refused requests are charged, so four keys that each retry on the server's hint can hold
    # the project's count in debt for good; the pool must pull out of it.
    clock = FakeClock()
    keys = KEYS[:4]
    manager = pool(clock, keys)
    server = SimulatedServer({"p": Project(3000)}, dict.fromkeys(keys, "p"))
    fast = {"latency": lambda rng: rng.uniform(0.01, 0.03)}
    simulate(clock, server, [(manager, 32)], 10.0, **fast)
    server.projects["p"].requests.level = -40.0  # a burst of retries left this much debt
    admitted = server.admitted["p"]
    (stats,) = simulate(clock, server, [(manager, 32)], 20.0, **fast)
    assert server.admitted["p"] - admitted >= 0.8 * 50.0 * 20.0
    assert stats.rate_limited <= 0.15 * (stats.successes + stats.rate_limited)
