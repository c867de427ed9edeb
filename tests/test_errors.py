"""Key masking and the classification of API errors (the README's error table)."""

from __future__ import annotations

import hashlib
import socket
import socketserver
import threading
from typing import Any

import openai
import pytest

from openai_parallel_toolkit import (
    Action,
    APIKeyManager,
    ChatModel,
    ConfigError,
    KeyConfig,
    NoKeysAvailableError,
    PoolOptions,
    RequestFailedError,
    RetryPolicy,
    classify,
    mask_key,
    request_openai_api,
)
from openai_parallel_toolkit.errors import redact, scrub_exception
from openai_parallel_toolkit.headers import retry_after_seconds

try:  # openai >= 3 speaks httpx2; older releases httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the installed openai
    import httpx  # type: ignore[no-redef]

KEY = "sk-proj-" + "Q" * 40 + "wxyz"
REQUEST = httpx.Request("POST", "https://api.example.test/v1/chat/completions")

_CLASSES = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def status_error(
    status: int, code: str | None = None, typ: str | None = None, **headers: str
) -> openai.APIStatusError:
    body: dict[str, Any] = {"message": f"boom for {KEY}", "type": typ, "code": code}
    response = httpx.Response(
        status, headers={k.replace("_", "-"): v for k, v in headers.items()}, request=REQUEST
    )
    cls = _CLASSES.get(status, openai.InternalServerError if status >= 500 else None)
    cls = cls or openai.APIStatusError
    return cls(f"Error code: {status} - {body}", response=response, body=body)


def test_mask_key() -> None:
    def label(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:4]

    assert mask_key(KEY) == f"sk-...wxyz#{label(KEY)}"
    assert mask_key("sk-short") == f"sk-...#{label('sk-short')}"  # too short to show a tail
    assert mask_key("") == "<empty key>"
    assert mask_key("abcdefghijklmnop") == f"...mnop#{label('abcdefghijklmnop')}"


def test_short_keys_are_told_apart_when_masked() -> None:
    """sk-test-1 and sk-test-2 both showed as sk-... (issue 13): a stable label follows."""
    one, two = mask_key("sk-test-1"), mask_key("sk-test-2")
    assert one != two and one.startswith("sk-...#") and two.startswith("sk-...#")
    assert mask_key("sk-test-1") == one  # stable
    assert "test" not in one + two
    first, second = KeyConfig(api_key="sk-test-1"), KeyConfig(api_key="sk-test-2")
    assert first.masked_key == one and second.masked_key == two
    assert first.group.startswith(f"key:{one}")  # the group's digest extends the label
    assert len(first.group) == len("key:sk-...#") + 12


def test_redact_masks_given_and_key_shaped_secrets() -> None:
    text = f"failed with {KEY} and custom-secret-123456"
    cleaned = redact(text, ["custom-secret-123456"])
    assert KEY not in cleaned and "custom-secret-123456" not in cleaned
    assert "sk-...wxyz" in cleaned


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (status_error(429, "rate_limit_exceeded", "requests"), Action.RATE_LIMITED),
        (status_error(429, "slow_down"), Action.RATE_LIMITED),
        (status_error(429, "insufficient_quota", "insufficient_quota"), Action.KEY_DEAD),
        (status_error(429, None, "insufficient_quota"), Action.KEY_DEAD),
        (status_error(429, "credit_balance_exhausted"), Action.KEY_DEAD),
        (status_error(429, "organization_spend_limit_exceeded"), Action.KEY_DEAD),
        (status_error(429, "project_spend_limit_exceeded"), Action.KEY_DEAD),
        (status_error(429, "organization_usage_limit_exceeded"), Action.KEY_DEAD),
        (status_error(401, "invalid_api_key", "invalid_request_error"), Action.KEY_DEAD),
        (status_error(401), Action.KEY_DEAD),
        (status_error(403, "unsupported_country_region_territory"), Action.KEY_DEAD),
        (status_error(408), Action.TRANSIENT),
        (status_error(409), Action.TRANSIENT),
        (status_error(500, None, "server_error"), Action.TRANSIENT),
        (status_error(502), Action.TRANSIENT),
        (status_error(503, "server_is_overloaded"), Action.TRANSIENT),
        (status_error(504), Action.TRANSIENT),
        (status_error(400, "context_length_exceeded", "invalid_request_error"), Action.FATAL),
        (status_error(404, "model_not_found"), Action.FATAL),
        (status_error(422), Action.FATAL),
        (openai.APIConnectionError(request=REQUEST), Action.TRANSIENT),
        (openai.APITimeoutError(request=REQUEST), Action.TRANSIENT),
        (httpx.RemoteProtocolError("peer closed connection", request=REQUEST), Action.TRANSIENT),
        (httpx.ReadTimeout("timed out", request=REQUEST), Action.TRANSIENT),
        (httpx.ConnectError("refused", request=REQUEST), Action.TRANSIENT),
        (ValueError("a bug in a model's generate()"), Action.FATAL),
    ],
    ids=lambda value: value.name if isinstance(value, Action) else type(value).__name__,
)
def test_classify(error: BaseException, action: Action) -> None:
    verdict = classify(error)
    assert verdict.action is action
    assert KEY not in verdict.reason


def test_classify_reads_the_servers_wait() -> None:
    verdict = classify(status_error(429, "rate_limit_exceeded", retry_after_ms="1500"))
    assert verdict.retry_after == pytest.approx(1.5)
    assert verdict.status_code == 429
    verdict = classify(status_error(429, "rate_limit_exceeded", retry_after="3"))
    assert verdict.retry_after == pytest.approx(3.0)
    assert classify(status_error(429, "rate_limit_exceeded")).retry_after is None
    # No retry-after: the reset of the exhausted limit says how long.
    tokens = status_error(
        429,
        "rate_limit_exceeded",
        "tokens",
        x_ratelimit_reset_tokens="20s",
        x_ratelimit_reset_requests="1s",
    )
    assert classify(tokens).retry_after == pytest.approx(20.0)
    unnamed = status_error(
        429,
        "rate_limit_exceeded",
        x_ratelimit_remaining_requests="0",
        x_ratelimit_reset_requests="6m0s",
        x_ratelimit_remaining_tokens="5000",
        x_ratelimit_reset_tokens="2s",
    )
    assert classify(unnamed).retry_after == pytest.approx(360.0)


def test_scrub_exception_masks_an_echoed_key() -> None:
    secret = "gsk_" + "z" * 40  # not shaped like sk-...: only the given secret can catch it
    error = status_error(401, "invalid_api_key")
    error.args = (f"Incorrect API key provided: {secret}",)
    error.message = error.args[0]
    error.body = {"message": f"bad key {secret}", "code": "invalid_api_key"}
    scrub_exception(error, [secret])
    assert secret not in str(error) and secret not in error.message
    assert secret not in str(error.body)
    assert "...zzzz" in str(error)


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"retry-after-ms": "250"}) == pytest.approx(0.25)
    assert retry_after_seconds({"retry-after": "2"}) == pytest.approx(2.0)
    assert retry_after_seconds(
        {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0
    ) == (pytest.approx(10.0))
    assert retry_after_seconds({"retry-after": "later"}) is None
    assert retry_after_seconds({}) is None


def test_error_messages_mask_keys() -> None:
    error = ConfigError(f"the key {KEY} appears twice", source="config.json", field="api_keys[1]")
    assert KEY not in str(error)
    assert "config.json" in str(error) and "api_keys[1]" in str(error)
    assert error.source == "config.json" and error.field == "api_keys[1]"
    dead = NoKeysAvailableError({mask_key(KEY): f"HTTP 401 for {KEY}"})
    assert KEY not in str(dead) and "sk-...wxyz" in str(dead)


# --- keys the HTTP stack cannot send ----------------------------------------------------------

UNSENDABLE = "sk-proj-" + "U" * 12 + "\u200b" + "U" * 27 + "tail"  # a zero-width space inside


def _unencodable_key_error(key: str) -> Exception:
    """What the openai client really raises for `key` (it fails before anything is sent)."""
    client = openai.OpenAI(api_key=key, base_url="http://127.0.0.1:9/v1", max_retries=0)
    with client, pytest.raises(Exception) as info:
        client.models.list()
    return info.value


def test_classify_a_key_the_http_stack_cannot_send_as_the_keys_fault() -> None:
    error = _unencodable_key_error(UNSENDABLE)
    verdict = classify(error)
    assert verdict.action is Action.KEY_DEAD
    assert "character 21 of 52 is U+200B (ZERO WIDTH SPACE)" in verdict.reason
    assert UNSENDABLE not in verdict.reason and UNSENDABLE[:-4] not in verdict.reason
    # Handed on scrubbed: the encoding error carries the whole header it failed on.
    scrub_exception(error, [UNSENDABLE])
    assert UNSENDABLE not in repr(vars(error)) + repr(getattr(error, "object", ""))


def test_other_unencodable_text_is_not_the_keys_fault() -> None:
    header = "Ünïcode request header"
    error = UnicodeEncodeError("ascii", header, 0, 1, "ordinal not in range(128)")
    assert classify(error).action is Action.FATAL


def test_pool_removes_a_key_the_http_stack_cannot_send() -> None:
    """Issue 10: such a key failed in 2 ms, was never removed and so won 19 of 20 grants."""
    from openai_parallel_toolkit import APIKeyManager, ChatModel, KeyState, request_openai_api
    from openai_parallel_toolkit.testing import FakeOpenAIServer

    good, bad = "sk-proj-" + "G" * 40 + "good", "sk-proj-" + "B" * 40 + "badd"

    def build(config: Any, on_response: Any) -> openai.OpenAI:
        # A factory that decorates keys: the kind of client the config's checks cannot see.
        api_key = config.api_key + ("\u200b" if config.api_key == bad else "")
        http_client = openai.DefaultHttpxClient(event_hooks={"response": [on_response]})
        return openai.OpenAI(
            api_key=api_key, base_url=config.api_base, max_retries=0, http_client=http_client
        )

    with (
        FakeOpenAIServer() as server,
        APIKeyManager(
            [
                {"api_key": bad, "api_base": server.base_url},
                {"api_key": good, "api_base": server.base_url},
            ],
            make_default=False,
            options=PoolOptions(client_factory=build),
        ) as pool,
    ):
        answers = [request_openai_api(ChatModel(content=str(i)), manager=pool) for i in range(20)]
        stats = {key.key: key for key in pool.statistics().keys}
    assert answers == [f"echo: {i}" for i in range(20)]
    removed = stats[mask_key(bad)]
    assert removed.state is KeyState.REMOVED and removed.requests == 1
    assert removed.removed_reason is not None and "U+200B" in removed.removed_reason
    assert stats[mask_key(good)].successes == 20


def test_scrub_exception_reaches_nested_bodies_and_the_chained_response() -> None:
    secret = "gsk_" + "n" * 40  # only the given secret can catch it
    request = httpx.Request(
        "POST", "https://api.example.test/v1/x", headers={"Authorization": f"Bearer {secret}"}
    )
    response = httpx.Response(
        401,
        headers={"x-echo": secret, "www-authenticate": f"Bearer {secret}"},
        json={"error": {"message": "no", "detail": {"keys": [secret, {"k": f"key={secret}"}]}}},
        request=request,
    )
    body = response.json()["error"]
    error = openai.AuthenticationError(f"Error code: 401 - {secret}", response=response, body=body)
    outer = RuntimeError("wrapped")
    outer.__cause__ = error
    scrub_exception(outer, [secret])
    assert secret not in str(error.body) and secret not in error.response.text
    assert secret not in error.response.content.decode()
    assert secret not in str(error.response.headers.multi_items())
    assert secret not in str(error.request.headers.multi_items())
    scrubbed: Any = error.body  # openai types it as object
    assert scrubbed["detail"]["keys"][1] == {"k": f"key={mask_key(secret)}"}
    assert error.response.request.headers["authorization"] == f"Bearer {mask_key(secret)}"
    assert error.response.json()["error"]["message"] == "no"  # still readable JSON


# --- connection failures name what could not be reached (issue 13) ---------------------------


def _free_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fail_fast(**entry: str) -> str:
    """The message of a request that cannot connect, with quick retries."""
    pool = APIKeyManager(api_keys=[{"api_key": "sk-test-1", **entry}], make_default=False)
    policy = RetryPolicy(max_retries=1, backoff_base=0.01, backoff_max=0.01)
    try:
        with pytest.raises(RequestFailedError) as info:
            request_openai_api(ChatModel(content="hi"), manager=pool, policy=policy)
    finally:
        pool.close()
    assert info.value.status_code is None and info.value.attempts == 2
    return str(info.value)


@pytest.fixture
def no_env_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)


def test_a_wrong_api_base_port_is_named(no_env_proxy: None) -> None:
    port = _free_port()
    message = _fail_fast(api_base=f"http://127.0.0.1:{port}/v1")
    assert f"cannot reach the API at 127.0.0.1:{port}" in message
    assert "proxy" not in message


def test_a_dead_proxy_is_named_without_its_credentials(no_env_proxy: None) -> None:
    port = _free_port()
    message = _fail_fast(
        api_base="http://api.example.test/v1", proxy=f"http://user:s3cret@127.0.0.1:{port}"
    )
    assert f"cannot reach the proxy 127.0.0.1:{port}" in message
    assert "api.example.test:80" in message
    assert "s3cret" not in message and "user" not in message


def test_a_proxy_that_cannot_reach_the_api_is_told_apart(no_env_proxy: None) -> None:
    """An HTTP proxy that answers CONNECT with 502: the proxy is up, the API is not."""

    class Refusing(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Refusing) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            port = proxy.server_address[1]
            message = _fail_fast(
                api_base="https://api.example.test:8443/v1", proxy=f"http://127.0.0.1:{port}"
            )
        finally:
            proxy.shutdown()
    assert f"the proxy 127.0.0.1:{port} could not connect" in message, message
    assert "to the API at api.example.test:8443" in message


def test_classify_names_the_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://u:p@proxy.corp.test:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    cause = httpx.ConnectError("[Errno 111] Connection refused", request=REQUEST)
    error = openai.APIConnectionError(request=REQUEST)
    error.__cause__ = cause
    reason = classify(error).reason
    assert "cannot reach the proxy proxy.corp.test:3128, from the environment" in reason
    assert "api.example.test:443" in reason and "u:p" not in reason
    assert (
        "cannot reach the proxy other.test:1080"
        in classify(error, proxy="socks5://other.test").reason
    )
