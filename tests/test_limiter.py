"""The limiter's pacing, header parsing and learning, under a fake clock (no sleeping)."""

from __future__ import annotations

import pytest

from openai_parallel_toolkit import (
    APIKeyManager,
    LimitGroup,
    PoolOptions,
    RateLimitHeaders,
    parse_reset,
)
from openai_parallel_toolkit.limiter import (
    DECREASE_IN_SLOW_START,
    FULL_BUCKET_MARGIN_SECONDS,
    RECOVERY_HALF_LIFE_SECONDS,
    SLOW_START_DOUBLING_SECONDS,
    SLOW_START_FACTOR,
)
from openai_parallel_toolkit.testing import FakeClock


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("2.5", 2.5),
        ("59.9s", 59.9),
        ("1m30s", 90.0),
        ("", None),
        ("soon", None),
        ("-1", None),
        ("1x", None),
        ("s1", None),
        (None, None),
    ],
)
def test_parse_reset(value: str | None, seconds: float | None) -> None:
    result = parse_reset(value)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


def test_headers_parse_and_ignore_meaningless_values() -> None:
    headers = RateLimitHeaders.from_headers(
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-limit-tokens": "-1",
            "x-ratelimit-remaining-requests": "599",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-requests": "100ms",
            "x-ratelimit-reset-tokens": "bogus",
        }
    )
    assert headers.limit_requests == 600
    assert headers.limit_tokens is None  # "-1" means no limit on compatible servers
    assert headers.remaining_requests == 599
    assert headers.remaining_tokens == 0
    assert headers.reset_requests == pytest.approx(0.1)
    assert headers.reset_tokens is None
    assert not headers.empty
    assert RateLimitHeaders.from_headers({}).empty
    assert RateLimitHeaders.from_headers({"x-ratelimit-limit-requests": "0"}).empty


def test_response_headers_read_in_one_pass_as_by_name() -> None:
    try:  # openai >= 3 speaks httpx2; older releases httpx
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - depends on the installed openai
        import httpx  # type: ignore[no-redef]

    cases = [
        [("date", "Tue"), ("content-type", "application/json")],
        [
            ("X-RateLimit-Limit-Requests", "600"),
            ("x-ratelimit-remaining-tokens", "12"),
            ("x-ratelimit-reset-tokens", "1m2.5s"),
            ("server", "x"),
        ],
        [("x-ratelimit-limit-tokens", "5"), ("X-RATELIMIT-LIMIT-TOKENS", "5")],  # repeated
    ]
    for pairs in cases:
        headers = httpx.Headers(pairs)
        expected = RateLimitHeaders.from_headers(headers)
        assert RateLimitHeaders.from_response_headers(headers) == expected
        assert RateLimitHeaders.from_response_headers(dict(pairs)) == RateLimitHeaders.from_headers(
            dict(pairs)
        )
    one_pass = RateLimitHeaders.from_response_headers(httpx.Headers(cases[1]))
    assert (one_pass.limit_requests, one_pass.remaining_tokens) == (600, 12)
    assert one_pass.reset_tokens == pytest.approx(62.5)


def _max_in_window(times: list[float], window: float) -> int:
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _schedule(group: LimitGroup, clock: FakeClock, count: int, tokens: int = 0) -> list[float]:
    times = []
    for _ in range(count):
        at = group.ready_at(tokens, clock.monotonic())
        assert at is not None
        group.reserve(tokens, at)
        times.append(at)
    return times


def test_group_never_schedules_above_its_rate() -> None:
    clock = FakeClock()
    group = LimitGroup("g", requests_per_min=600, burst_seconds=1.0, now=clock.monotonic())
    times = _schedule(group, clock, 1000)
    # 600 RPM = 10/s with one second of burst: any window of w seconds holds <= 10 + 10 w.
    for window in (0.1, 1.0, 5.0, 60.0):
        assert _max_in_window(times, window) <= 10 + 10 * window + 1e-9
    assert times == sorted(times)
    duration = times[-1] - times[0]
    assert duration == pytest.approx((1000 - 10) / 10, rel=1e-6)  # exactly the refill rate


def test_token_bucket_paces_and_oversized_request_still_goes() -> None:
    clock = FakeClock()
    group = LimitGroup("g", tokens_per_min=6000, now=clock.monotonic())  # 100 tokens/s
    times = _schedule(group, clock, 20, tokens=50)
    assert times[-1] - times[0] == pytest.approx((20 * 50 - 100) / 100, rel=1e-6)
    # A request larger than the whole bucket waits for a full bucket, not forever.
    at = group.ready_at(10_000, clock.monotonic())
    assert at is not None and at - times[-1] <= 1.0 + FULL_BUCKET_MARGIN_SECONDS + 1e-9


def test_learned_limits_converge_to_headers() -> None:
    clock = FakeClock()
    group = LimitGroup("g", now=clock.monotonic())
    assert group.probing
    assert group.requests_per_min is None
    group.observe(
        RateLimitHeaders.from_headers(
            {
                "x-ratelimit-limit-requests": "1200",
                "x-ratelimit-limit-tokens": "90000",
                "x-ratelimit-remaining-requests": "1199",
                "x-ratelimit-remaining-tokens": "89000",
            }
        ),
        clock.monotonic(),
    )
    assert not group.probing
    assert group.requests_per_min == 1200
    assert group.tokens_per_min == 90000
    # A configured limit above what the server reports gives way to the server's figure.
    configured = LimitGroup("c", requests_per_min=5000, now=clock.monotonic())
    configured.observe(RateLimitHeaders(limit_requests=3000), clock.monotonic())
    assert configured.requests_per_min == 3000


def test_remaining_header_lowers_the_level() -> None:
    clock = FakeClock()
    group = LimitGroup("g", requests_per_min=600, now=clock.monotonic())  # burst of 10
    assert group.ready_at(0, clock.monotonic()) == clock.monotonic()
    # Someone else used this project's budget: the server says nothing is left.
    group.observe(RateLimitHeaders(remaining_requests=0), clock.monotonic())
    at = group.ready_at(0, clock.monotonic())
    assert at is not None and at == pytest.approx(clock.monotonic() + 0.1)


def test_corrections_hold_after_an_idle_bucket_refilled() -> None:
    clock = FakeClock()
    group = LimitGroup("g", requests_per_min=600, tokens_per_min=6000, now=clock.monotonic())
    clock.advance(10.0)  # idle: both buckets are full, their levels dated 10 s ago
    now = clock.monotonic()
    group.observe(RateLimitHeaders(remaining_requests=0), now)
    assert group.ready_at(0, now) == pytest.approx(now + 0.1)
    # Usage beyond the reservation is charged, and stays charged.
    group.reserve(0, now + 0.1)
    group.release(now, tokens=-600)  # 600 tokens over: 100 tokens/s -> 5 s of debt
    at = group.ready_at(100, now)
    assert at is not None and at == pytest.approx(now + 6.0)


def test_probing_allows_one_request_in_flight() -> None:
    clock = FakeClock()
    group = LimitGroup("g", now=clock.monotonic())
    at = group.ready_at(0, clock.monotonic())
    assert at is not None
    group.reserve(0, at)
    assert group.ready_at(0, clock.monotonic()) is None
    group.observe(RateLimitHeaders(), clock.monotonic())  # a response without headers
    group.release(clock.monotonic())
    assert group.ready_at(0, clock.monotonic()) == clock.monotonic()


def test_cooldown_delays_the_group() -> None:
    clock = FakeClock()
    group = LimitGroup("g", requests_per_min=6000, now=clock.monotonic())
    group.cool_down(clock.monotonic() + 2.5)
    assert group.ready_at(0, clock.monotonic()) == pytest.approx(clock.monotonic() + 2.5)


def test_a_cooldown_refused_again_without_a_success_doubles() -> None:
    clock = FakeClock()
    group = LimitGroup("g", requests_per_min=6000, now=clock.monotonic())
    sent = clock.monotonic()
    assert group.refused(0.5, sent, clock.monotonic(), 60.0) == 0.5  # the server's hint
    assert group.refused(0.5, sent, clock.monotonic(), 60.0) == 0.5  # the same overshoot
    waits = []
    for _ in range(5):  # each request sent once the cool-down ended is refused again
        clock.advance(group.cooldown_until - clock.monotonic())
        waits.append(group.refused(0.5, clock.monotonic(), clock.monotonic(), 4.0))
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]  # doubled each round, up to the cap
    assert group.ready_at(0, clock.monotonic()) == pytest.approx(clock.monotonic() + 4.0)
    clock.advance(4.0)
    group.note_response(success=True)  # a success ends the run
    assert group.refused(0.5, clock.monotonic(), clock.monotonic(), 60.0) == 0.5


def test_a_429_cuts_the_pace_in_force_when_others_use_holds_it_down() -> None:
    clock = FakeClock()
    group = LimitGroup("g", requests_per_min=600, now=clock.monotonic())  # 10/s
    # The server's count falls 6/s faster than our own 4/s of sends: others spend 6/s.
    for i in range(40):
        group.observe(
            RateLimitHeaders(limit_requests=600, remaining_requests=3),
            clock.monotonic(),
            sent=(clock.monotonic(), 2 * i + 1, 0.0, 0.0),
        )
        group.reserve(0, clock.monotonic())
        group.reserve(0, clock.monotonic())
        clock.advance(0.5)
    share = group.pace_share(clock.monotonic())
    assert share < 0.5 < group.factor  # others' use binds, not the factor
    group.on_rate_limited(clock.monotonic())
    assert group.pace_share(clock.monotonic()) == pytest.approx(share * 0.8, rel=0.02)


def _manager(keys: list[object], clock: FakeClock) -> APIKeyManager:
    return APIKeyManager(
        api_keys=keys,  # type: ignore[arg-type]
        make_default=False,
        options=PoolOptions(
            burst_seconds=1.0, clock=clock, client_factory=lambda config, hook: object()
        ),
    )


def _drive(pool: APIKeyManager, clock: FakeClock, count: int) -> list[tuple[float, str]]:
    sends = []
    for _ in range(count):
        lease = pool.acquire()
        sends.append((clock.monotonic(), lease.key))
        lease.succeed(None)
    return sends


def test_pool_spreads_over_keys_and_respects_each_rate() -> None:
    clock = FakeClock()
    keys = [f"sk-test-abcdefghijklmnop-{i:04d}" for i in range(4)]
    pool = _manager([{"api_key": k, "requests_per_min": 600} for k in keys], clock)
    sends = _drive(pool, clock, 800)
    by_key: dict[str, list[float]] = {}
    for t, key in sends:
        by_key.setdefault(key, []).append(t)
    assert len(by_key) == 4
    assert all(abs(len(times) - 200) <= 1 for times in by_key.values())
    for times in by_key.values():
        assert _max_in_window(times, 1.0) <= 20
        assert _max_in_window(times, 10.0) <= 110
    all_times = sorted(t for t, _ in sends)
    assert _max_in_window(all_times, 10.0) <= 4 * 110
    stats = pool.statistics()
    assert stats.requests == stats.successes == 800
    assert {s.state.value for s in stats.keys} == {"active"}


def test_shared_limit_group_is_one_budget() -> None:
    clock = FakeClock()
    keys = [
        {"api_key": f"sk-shared-abcdefghijklmnop-{i:04d}", "limit_group": "project-a"}
        for i in range(4)
    ]
    for entry in keys:
        entry["requests_per_min"] = 1200
    pool = _manager(keys, clock)
    sends = _drive(pool, clock, 600)
    times = [t for t, _ in sends]
    assert len({key for _, key in sends}) == 4  # still rotated over every key
    # One 1,200 RPM budget (20/s, 20 burst) for all four keys together.
    assert _max_in_window(times, 5.0) <= 20 + 20 * 5
    assert times[-1] - times[0] == pytest.approx((600 - 20) / 20, rel=1e-6)


def _rate_now(group: LimitGroup, clock: FakeClock) -> float:
    """Requests per second the group grants right now (reserving 20 in a row)."""
    start = group.ready_at(0, clock.monotonic())
    assert start is not None
    group.reserve(0, start)
    times = _schedule(group, clock, 20)
    return 20 / (times[-1] - start)


def test_learned_limits_start_slowly_then_reach_the_limit() -> None:
    clock = FakeClock()
    group = LimitGroup("g", burst_seconds=0.1, now=clock.monotonic())
    group.observe(RateLimitHeaders(limit_requests=600), clock.monotonic())  # 10/s
    assert group.factor == pytest.approx(SLOW_START_FACTOR)
    assert _rate_now(group, clock) == pytest.approx(10 * SLOW_START_FACTOR, rel=0.2)
    clock.advance(10.0)  # doubling every half second: full pace well before this
    group.ready_at(0, clock.monotonic())
    assert group.factor == 1.0
    assert group.requests_per_min == 600  # the limit itself is unchanged


def test_429s_slow_a_group_down_once_per_overshoot_and_it_recovers() -> None:
    clock = FakeClock()
    group = LimitGroup("g", requests_per_min=600, now=clock.monotonic())
    assert group.factor == 1.0  # configured limits start at full pace
    group.on_rate_limited(clock.monotonic())
    assert group.factor == pytest.approx(0.8)
    group.on_rate_limited(clock.monotonic() + 0.2)  # the same overshoot: ignored
    assert group.factor == pytest.approx(0.8)
    clock.advance(1.5)
    group.on_rate_limited(clock.monotonic())
    recovered = 1.0 - 0.2 * 0.5 ** (1.5 / RECOVERY_HALF_LIFE_SECONDS)
    assert group.factor == pytest.approx(recovered * 0.8)
    clock.advance(100.0)  # no 429 for a long time: back to the full limit, never above
    group.ready_at(0, clock.monotonic())
    assert group.factor == 1.0
    times = _schedule(group, clock, 200)
    assert _max_in_window(times, 5.0) <= 10 + 10 * 5.0 + 1e-9


def test_a_429_in_slow_start_halves_the_pace() -> None:
    clock = FakeClock()
    group = LimitGroup("g", now=clock.monotonic())
    group.observe(RateLimitHeaders(limit_requests=1200), clock.monotonic())
    clock.advance(SLOW_START_DOUBLING_SECONDS / 2)
    group.on_rate_limited(clock.monotonic())  # halfway to the first doubling
    start = SLOW_START_FACTOR * 2**0.5 * DECREASE_IN_SLOW_START
    assert group.factor == pytest.approx(start)
    clock.advance(1.0)
    group.ready_at(0, clock.monotonic())
    # From now on the gap to the full limit halves every few seconds; no more doubling.
    gap = (1.0 - start) * 0.5 ** (1.0 / RECOVERY_HALF_LIFE_SECONDS)
    assert group.factor == pytest.approx(1.0 - gap)
