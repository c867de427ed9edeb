"""Tests of the fake OpenAI server, driven through the official `openai` client."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator

import forked
import httpx2
import openai
import pytest
from conftest import openai_client

from openai_parallel_toolkit.testing import FakeClock, FakeOpenAIServer
from openai_parallel_toolkit.testing.fake_server import (
    KeyCounters,
    LimitSettings,
    ServerSettings,
    build_parser,
    format_duration,
    server_from_args,
)

KEY = "sk-test-key-0001"
OTHER = "sk-test-key-0002"
DURATION = re.compile(r"^(\d+h)?(\d+m)?\d+(\.\d+)?(ms|s)$")
USER_HI = [{"role": "user", "content": "hi"}]


def client(server: FakeOpenAIServer, key: str = KEY, timeout: float = 5.0) -> openai.OpenAI:
    return openai_client(api_key=key, base_url=server.base_url, timeout=timeout)


@pytest.fixture(scope="module")
def shared() -> Iterator[FakeOpenAIServer]:
    """One unlimited server for the tests that do not depend on limits, faults or counters."""
    with FakeOpenAIServer(keys=[KEY, OTHER]) as server:
        yield server


# ---------------------------------------------------------------------------- endpoints


def test_chat_echoes_last_user_message_with_usage(shared: FakeOpenAIServer) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "sec"}, {"type": "text", "text": "ond"}],
        },
    ]
    reply = client(shared).chat.completions.create(model="gpt-test", messages=messages, n=2)
    assert reply.object == "chat.completion"
    assert reply.model == "gpt-test"
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.message.content == "echo: second" for c in reply.choices)
    assert all(c.message.role == "assistant" and c.finish_reason == "stop" for c in reply.choices)
    assert reply.usage is not None
    texts = ["be brief", "first", "ok", "second"]
    assert reply.usage.prompt_tokens == sum(len(t) // 4 + 1 for t in texts)
    assert reply.usage.completion_tokens == 2 * (len("echo: second") // 4 + 1)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_chat_with_usage(shared: FakeOpenAIServer) -> None:
    stream = client(shared).chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "stream these words please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream these words please"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text) // 4 + 1
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_chat_without_usage(shared: FakeOpenAIServer) -> None:
    chunks = list(client(shared).chat.completions.create(model="m", messages=USER_HI, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_completions_list_prompt_indexes(shared: FakeOpenAIServer) -> None:
    reply = client(shared).completions.create(model="instruct", prompt=["a", "b", "c"], n=2)
    assert reply.object == "text_completion"
    got = [(c.index, c.text) for c in reply.choices]
    assert got == [(i, "echo: " + "abc"[i // 2]) for i in range(6)]
    single = client(shared).completions.create(model="instruct", prompt="solo")
    assert [(c.index, c.text) for c in single.choices] == [(0, "echo: solo")]


def test_embeddings_order_dims_and_determinism(shared: FakeOpenAIServer) -> None:
    api = client(shared)
    reply = api.embeddings.create(model="text-embedding-3-small", input=["x", "y", "x"])
    assert [d.index for d in reply.data] == [0, 1, 2]
    assert all(len(d.embedding) == 8 for d in reply.data)
    assert reply.data[0].embedding == reply.data[2].embedding != reply.data[1].embedding
    norm = sum(v * v for v in reply.data[1].embedding)
    assert norm == pytest.approx(1.0, rel=1e-5)
    wide = api.embeddings.create(model="e", input="x", dimensions=32, encoding_format="float")
    assert len(wide.data[0].embedding) == 32
    # base64 (the client's default) carries float32, float is double: equal to 1e-6.
    again = api.embeddings.create(model="e", input="x", encoding_format="float")
    assert again.data[0].embedding == pytest.approx(reply.data[0].embedding, abs=1e-6)
    assert reply.usage.prompt_tokens == 3


def test_models_lists_defaults_and_requested(shared: FakeOpenAIServer) -> None:
    api = client(shared)
    api.chat.completions.create(model="my-special-model", messages=USER_HI)
    ids = [m.id for m in api.models.list()]
    assert "gpt-4o-mini" in ids and "my-special-model" in ids
    assert api.models.retrieve("my-special-model").id == "my-special-model"
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("never-used")


def test_responses_endpoint(shared: FakeOpenAIServer) -> None:
    api = client(shared)
    reply = api.responses.create(model="gpt-test", input="hello")
    assert reply.output_text == "echo: hello"
    items = [{"role": "user", "content": [{"type": "input_text", "text": "parts"}]}]
    assert api.responses.create(model="gpt-test", input=items).output_text == "echo: parts"


# ---------------------------------------------------------------------------- errors


def test_unknown_key_is_401_with_masked_key(shared: FakeOpenAIServer) -> None:
    bad = "sk-unknown-secret-9876"
    with pytest.raises(openai.AuthenticationError) as info:
        client(shared, bad).chat.completions.create(model="m", messages=USER_HI)
    assert info.value.code == "invalid_api_key"
    assert "sk-...9876" in info.value.message
    assert bad not in info.value.response.text
    short = "sk-1"
    with pytest.raises(openai.AuthenticationError) as info:
        client(shared, short).chat.completions.create(model="m", messages=USER_HI)
    assert short not in info.value.response.text


def test_missing_key_is_401(shared: FakeOpenAIServer) -> None:
    response = httpx2.post(shared.base_url + "/chat/completions", json={"model": "m"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_markers_give_permanent_errors(shared: FakeOpenAIServer) -> None:
    api = client(shared)
    marked = [{"role": "user", "content": "long [[context_length_exceeded]] text"}]
    with pytest.raises(openai.BadRequestError) as info:
        api.chat.completions.create(model="m", messages=marked)
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "messages"
    with pytest.raises(openai.InternalServerError):
        api.completions.create(model="m", prompt=["fine", "[[server_error]]"])


def test_unknown_route_and_bad_json(shared: FakeOpenAIServer) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    missing = httpx2.post(shared.base_url + "/nope", headers=headers, json={})
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    wrong_method = httpx2.get(shared.base_url + "/chat/completions", headers=headers)
    assert wrong_method.status_code == 405
    bad = httpx2.post(
        shared.base_url + "/chat/completions",
        headers={**headers, "content-type": "application/json"},
        content=b"{not json",
    )
    assert bad.status_code == 400
    assert "parse the JSON body" in bad.json()["error"]["message"]
    no_messages = httpx2.post(
        shared.base_url + "/chat/completions", headers=headers, json={"model": "m"}
    )
    assert no_messages.status_code == 400


# ---------------------------------------------------------------------------- limits


def test_rate_limit_429_with_headers() -> None:
    with FakeOpenAIServer(
        rpm=60, tpm=600_000, clock=FakeClock()
    ) as server:  # one request per second
        api = client(server)
        ok = api.chat.completions.with_raw_response.create(model="gpt-x", messages=USER_HI)
        assert ok.headers["x-ratelimit-limit-requests"] == "60"
        assert ok.headers["x-ratelimit-remaining-requests"] == "0"
        assert DURATION.match(ok.headers["x-ratelimit-reset-requests"])
        assert ok.headers["x-request-id"].startswith("req_")
        with pytest.raises(openai.RateLimitError) as info:
            api.chat.completions.create(model="gpt-x", messages=USER_HI)
        error = info.value
        assert error.code == "rate_limit_exceeded" and error.type == "requests"
        assert "Limit 60" in error.message and "gpt-x" in error.message
        headers = error.response.headers
        retry_ms = float(headers["retry-after-ms"])
        assert 0 < retry_ms <= 1000
        assert int(headers["retry-after"]) == 1
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-limit-tokens"] == "600000"
        assert DURATION.match(headers["x-ratelimit-reset-tokens"])
        assert server.total().rate_limited == 1
        assert server.total().successes == 1


def test_rate_headers_on_success_and_omitted_when_unlimited() -> None:
    with FakeOpenAIServer(tpm=6000, clock=FakeClock()) as server:  # 100 tokens/s, bucket of 100
        raw = client(server).chat.completions.with_raw_response.create(
            model="m", messages=USER_HI, max_tokens=10
        )
        headers = raw.headers
        assert headers["x-ratelimit-limit-tokens"] == "6000"
        assert headers["x-ratelimit-remaining-tokens"] == str(100 - (1 + 10))
        assert headers["x-ratelimit-reset-tokens"] == "110ms"
        assert "x-ratelimit-limit-requests" not in headers
    with FakeOpenAIServer(
        rpm=600, settings=ServerSettings(limits=LimitSettings(send_headers=False))
    ) as quiet:
        raw = client(quiet).chat.completions.with_raw_response.create(model="m", messages=USER_HI)
        assert not any(name.startswith("x-ratelimit") for name in raw.headers)


def test_token_limit_and_oversized_request() -> None:
    with FakeOpenAIServer(tpm=600, clock=FakeClock()) as server:  # 10 tokens/s, bucket of 10
        api = client(server)
        # Costs 1 + 100: larger than the bucket, admitted because the bucket is full.
        api.chat.completions.create(model="m", messages=USER_HI, max_tokens=100)
        with pytest.raises(openai.RateLimitError) as info:
            api.chat.completions.create(model="m", messages=USER_HI, max_tokens=1)
        assert info.value.type == "tokens"
        assert "tokens per min (TPM)" in info.value.message
        assert info.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
        assert float(info.value.response.headers["retry-after-ms"]) > 9000


def test_groups_share_one_bucket_and_keys_are_separate() -> None:
    groups = {KEY: "project", OTHER: "project"}
    limits = {"project": (60.0, None)}
    settings = ServerSettings(limits=LimitSettings(groups=groups, group_limits=limits))
    with FakeOpenAIServer(rpm=60, clock=FakeClock(), settings=settings) as server:
        client(server, KEY).chat.completions.create(model="m", messages=USER_HI)
        with pytest.raises(openai.RateLimitError):
            client(server, OTHER).chat.completions.create(model="m", messages=USER_HI)
        # An ungrouped key has its own bucket.
        client(server, "sk-solo-key-0003").chat.completions.create(model="m", messages=USER_HI)
        counters = server.counters()
        assert counters[OTHER].rate_limited == 1
        assert counters["sk-solo-key-0003"].successes == 1


def test_per_key_limits_override_and_burst() -> None:
    with FakeOpenAIServer(
        rpm=60,
        clock=FakeClock(),
        settings=ServerSettings(
            limits=LimitSettings(key_limits={OTHER: (None, None)}, burst_seconds=3)
        ),
    ) as server:
        for _ in range(3):  # capacity 1/s x 3 s
            client(server, KEY).chat.completions.create(model="m", messages=USER_HI)
        with pytest.raises(openai.RateLimitError):
            client(server, KEY).chat.completions.create(model="m", messages=USER_HI)
        for _ in range(10):
            client(server, OTHER).chat.completions.create(model="m", messages=USER_HI)


def test_charge_rejected_pushes_retry_later() -> None:
    settings = ServerSettings(limits=LimitSettings(charge_rejected=True))
    with FakeOpenAIServer(rpm=60, clock=FakeClock(), settings=settings) as server:
        api = client(server)
        api.chat.completions.create(model="m", messages=USER_HI)
        waits = []
        for _ in range(2):
            with pytest.raises(openai.RateLimitError) as info:
                api.chat.completions.create(model="m", messages=USER_HI)
            waits.append(float(info.value.response.headers["retry-after-ms"]))
        assert waits[0] > 1000 and waits[1] > 2000


def test_refill_admits_again() -> None:
    clock = FakeClock()
    with FakeOpenAIServer(rpm=600, clock=clock) as server:  # 10/s, bucket of 10
        api = client(server)
        for _ in range(10):
            api.chat.completions.create(model="m", messages=USER_HI)
        with pytest.raises(openai.RateLimitError) as info:
            api.chat.completions.create(model="m", messages=USER_HI)
        clock.advance(float(info.value.response.headers["retry-after-ms"]) / 1000)
        api.chat.completions.create(model="m", messages=USER_HI)


def test_reported_burst_seconds_reports_the_minute_but_enforces_one_second() -> None:
    settings = ServerSettings(limits=LimitSettings(reported_burst_seconds=60))
    with FakeOpenAIServer(rpm=600, clock=FakeClock(), settings=settings) as server:  # 10/s
        api = client(server).chat.completions.with_raw_response
        remaining = []
        for _ in range(10):
            raw = api.create(model="m", messages=USER_HI)
            remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        # Reported: a bucket of 600 that started full; enforced: the bucket of 10.
        assert remaining[0] == 599 and remaining[-1] >= 590
        assert raw.headers["x-ratelimit-limit-requests"] == "600"
        with pytest.raises(openai.RateLimitError) as info:
            api.create(model="m", messages=USER_HI)
        assert int(info.value.response.headers["x-ratelimit-remaining-requests"]) >= 590
    with pytest.raises(ValueError):
        FakeOpenAIServer(
            rpm=60, settings=ServerSettings(limits=LimitSettings(reported_burst_seconds=0))
        )
    args = build_parser().parse_args(["--burst-seconds", "60", "--reported-burst-seconds", "5"])
    assert server_from_args(args).limits.reported_burst_seconds == 5.0


# ---------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "error_type", "code"),
    [
        ("insufficient_quota", openai.RateLimitError, "insufficient_quota"),
        ("invalid_api_key", openai.AuthenticationError, "invalid_api_key"),
        ("server_error", openai.InternalServerError, None),
        ("rate_limit", openai.RateLimitError, "rate_limit_exceeded"),
        ("rate_limit_bare", openai.RateLimitError, "rate_limit_exceeded"),
    ],
)
def test_status_faults(
    fault: str, error_type: type[openai.APIStatusError], code: str | None
) -> None:
    with FakeOpenAIServer() as server:
        server.set_fault(KEY, fault, times=1)
        api = client(server)
        with pytest.raises(error_type) as info:
            api.chat.completions.create(model="m", messages=USER_HI)
        assert info.value.code == code
        if fault == "rate_limit":
            assert info.value.response.headers["retry-after-ms"] == "1000"
        if fault == "rate_limit_bare":
            names = {name.lower() for name in info.value.response.headers}
            assert not {n for n in names if n.startswith(("retry-after", "x-ratelimit"))}
        assert KEY not in info.value.response.text
        # times=1: the next request is fine; another key was never affected.
        api.chat.completions.create(model="m", messages=USER_HI)
        client(server, OTHER).chat.completions.create(model="m", messages=USER_HI)
        assert server.counters()[KEY] == KeyCounters(
            requests=2,
            successes=1,
            errors=1,
            prompt_tokens=1,
            completion_tokens=3,
            charged_tokens=1 + 16,  # the prompt and the default max_tokens, at admission
        )


def test_bare_rate_limit_fault_has_no_limit_headers_and_is_not_charged() -> None:
    with FakeOpenAIServer(rpm=600, clock=FakeClock()) as server:
        server.set_fault(KEY, "rate_limit_bare", times=1)
        api = client(server).chat.completions.with_raw_response
        with pytest.raises(openai.RateLimitError) as info:
            api.create(model="m", messages=USER_HI)
        names = {name.lower() for name in info.value.response.headers}
        assert not {n for n in names if n.startswith(("retry-after", "x-ratelimit"))}
        raw = api.create(model="m", messages=USER_HI)
        assert raw.headers["x-ratelimit-remaining-requests"] == "9"  # only this one charged
        assert server.counters()[KEY].rate_limited == 0  # a fault, not the limit


def test_drop_fault_cuts_the_connection() -> None:
    with FakeOpenAIServer() as server:
        server.set_fault("*", "drop")
        with pytest.raises(openai.APIConnectionError) as info:
            client(server).chat.completions.create(model="m", messages=USER_HI)
        # Cut mid-reply by the server, not a client giving up on a reply that never came.
        assert not isinstance(info.value, openai.APITimeoutError)
        assert isinstance(info.value.__cause__, httpx2.RemoteProtocolError)
        assert server.in_flight() == 0
        server.clear_faults()
        client(server).chat.completions.create(model="m", messages=USER_HI)
        assert server.total().errors == 1 and server.total().successes == 1


def _wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Return once `condition()` holds; fail after `seconds` (a bound, not a measurement)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


def _call_in_background(
    server: FakeOpenAIServer, key: str = KEY
) -> tuple[threading.Thread, list[object]]:
    """A chat request sent from a thread; the list gets its reply or its APIError."""
    outcome: list[object] = []

    def call() -> None:
        try:
            api = client(server, key, timeout=60)
            outcome.append(api.chat.completions.create(model="m", messages=USER_HI))
        except openai.APIError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, outcome


def test_slow_fault_and_quick_stop() -> None:
    server = FakeOpenAIServer().start()
    server.slow_seconds = 30
    server.set_fault(KEY, "slow", times=1)
    held, outcome = _call_in_background(server)
    # Counted once its body is read, which is when it takes the fault (in the same step).
    _wait_until(lambda: server.in_flight(KEY) == 1 and server.total().requests == 1)
    # The fault holds that request: one sent after it, the fault used up, overtakes it.
    reply = client(server).chat.completions.create(model="m", messages=USER_HI)
    assert reply.choices[0].message.content == "echo: hi"
    assert server.in_flight(KEY) == 1 and held.is_alive() and outcome == []
    assert server.total().successes == 1 and server.peak_in_flight(KEY) == 2
    # A request still in flight when stopping gets a closed connection, not a hang: stopping
    # does not wait out the 30 s, nor the client its 60 s timeout.
    server.stop()
    held.join(timeout=10)
    assert not held.is_alive()
    assert isinstance(outcome[0], openai.APIConnectionError)
    assert not isinstance(outcome[0], openai.APITimeoutError)
    assert server.total().successes == 1
    server.stop()  # idempotent


def test_fault_probability_and_wildcard() -> None:
    with FakeOpenAIServer(seed=7) as server:
        server.set_fault("*", "server_error", probability=0.5)
        api = client(server)
        failures = 0
        for _ in range(40):
            try:
                api.chat.completions.create(model="m", messages=USER_HI)
            except openai.InternalServerError:
                failures += 1
        assert 8 <= failures <= 32
        server.clear_faults("*")
        api.chat.completions.create(model="m", messages=USER_HI)
    with pytest.raises(ValueError):
        server.set_fault(KEY, "meteor")


def test_latency_and_jitter_change_while_serving() -> None:
    with FakeOpenAIServer(latency=30.0, jitter=1.0) as server:
        held, outcome = _call_in_background(server)
        _wait_until(lambda: server.in_flight() == 1)
        server.latency, server.jitter = 0.0, 0.0
        # Still 30 s of latency, the client would time out.
        reply = client(server, timeout=5).chat.completions.create(model="m", messages=USER_HI)
        assert reply.choices[0].message.content == "echo: hi"
        assert (server.latency, server.jitter) == (0.0, 0.0)
        # The first request, sent under 30 s of latency, is still held: overtaken by the second.
        assert server.in_flight() == 1 and held.is_alive() and outcome == []
        assert server.total().requests == 2 and server.total().successes == 1
        with pytest.raises(ValueError):
            server.latency = -1.0
        with pytest.raises(ValueError):
            server.jitter = -0.1
    held.join(timeout=10)
    assert isinstance(outcome[0], openai.APIConnectionError)  # cut by the stop


def test_peak_in_flight_counts_requests_held_at_once() -> None:
    with FakeOpenAIServer(keys=[KEY, OTHER], latency=30.0) as server:
        calls = [_call_in_background(server, key) for key in (KEY, KEY, OTHER)]
        _wait_until(lambda: server.in_flight() == 3)
        assert (server.in_flight(KEY), server.in_flight(OTHER)) == (2, 1)
        assert server.peak_in_flight() == 3 and server.peak_in_flight(KEY) == 2
        assert server.total().successes == 0
        server.reset_counters()  # the peaks start again from the requests still held
        assert server.peak_in_flight() == 3 and server.peak_in_flight(OTHER) == 1
        assert server.peak_in_flight("sk-never-seen") == 0
    for thread, outcome in calls:
        thread.join(timeout=10)
        assert isinstance(outcome[0], openai.APIConnectionError)  # cut by the stop


# ---------------------------------------------------------------------------- bookkeeping


def test_counters_log_latency_and_reset() -> None:
    with FakeOpenAIServer(keys=[KEY], latency=0.05) as server:
        api = client(server)
        api.chat.completions.create(model="m", messages=[{"role": "user", "content": "12345678"}])
        with pytest.raises(openai.AuthenticationError):
            client(server, "sk-intruder-0000").chat.completions.create(model="m", messages=USER_HI)
        # One after another: never two at once, and none left in flight once answered.
        assert server.in_flight() == 0 and server.peak_in_flight() == 1
        assert server.peak_in_flight(KEY) == server.peak_in_flight("sk-intruder-0000") == 1
        counters = server.counters()
        assert counters[KEY] == KeyCounters(
            requests=1, successes=1, prompt_tokens=3, completion_tokens=4, charged_tokens=3 + 16
        )
        assert counters["sk-intruder-0000"].errors == 1
        assert server.total().requests == 2
        log = server.request_log()
        assert [entry["key"] for entry in log] == [KEY, "sk-intruder-0000"]
        assert log[0]["path"] == "/v1/chat/completions"
        assert log[0]["body"]["messages"][0]["content"] == "12345678"
        server.reset_counters()
        assert server.counters() == {} and server.request_log() == []
        assert server.total() == KeyCounters()
        assert server.peak_in_flight() == 0


def test_format_duration() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(-1) == "0s"
    assert format_duration(0.012) == "12ms"
    assert format_duration(1) == "1s"
    assert format_duration(360) == "6m0s"
    assert format_duration(3723.5) == "1h2m3.5s"


def test_base_url_requires_start() -> None:
    server = FakeOpenAIServer()
    with pytest.raises(RuntimeError):
        _ = server.base_url
    with pytest.raises(ValueError):
        FakeOpenAIServer(rpm=0)


def test_command_line() -> None:
    args = build_parser().parse_args(["--keys", "a,b", "--rpm", "60", "--charge-rejected"])
    assert args.port == 8001
    server = server_from_args(args)
    assert server.keys == frozenset({"a", "b"}) and server.limits.charge_rejected
    process = forked.Popen(  # a process of its own, forked: see `forked`
        [sys.executable, "-m", "openai_parallel_toolkit.testing", "--port", "0", "--keys", KEY],
        stdout=forked.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = re.search(r"http://\S+/v1", process.stdout.readline())
        assert base_url is not None
        reply = openai.OpenAI(api_key=KEY, base_url=base_url.group(0), max_retries=0)
        assert reply.chat.completions.create(model="m", messages=USER_HI).choices
    finally:
        process.terminate()
        assert process.wait(timeout=5) == 0
