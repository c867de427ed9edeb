"""Keys stay masked in what the toolkit hands on: chained errors (nested bodies, response text
and headers, the request's Authorization header) and the HTTP libraries' DEBUG logs.

The fake server runs behind a small ASGI wrapper that plays a careless compatible server: it
echoes the caller's key in response headers and, on errors, deep inside the JSON body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openai_parallel_toolkit import (
    APIKeyManager,
    ChatModel,
    RequestFailedError,
    mask_key,
    request_openai_api,
)
from openai_parallel_toolkit.testing import FakeOpenAIServer
from openai_parallel_toolkit.testing.fake_server import CONTEXT_LENGTH_MARKER

# One OpenAI-shaped key and one that only the pool's own knowledge of its keys can catch.
KEYS = ["sk-proj-" + "E" * 40 + "cho1", "gsk_echo_" + "z" * 30 + "tail"]


class EchoKey:
    """Wraps an ASGI app; every response echoes the bearer key in headers, errors in the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        key = auth.partition(" ")[2]
        start: dict[str, Any] = {}

        async def echo(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body = message.get("body", b"")
            if start["status"] >= 400:
                error = json.loads(body)
                error["error"]["message"] += f" (key {key})"
                error["error"]["detail"] = {"key": key, "seen": [{"authorization": auth}, key]}
                error["request"] = {"headers": {"authorization": auth}}
                body = json.dumps(error).encode()
            headers = [
                (name, value) for name, value in start["headers"] if name != b"content-length"
            ]
            headers += [
                (b"content-length", b"%d" % len(body)),
                (b"x-echo-key", key.encode()),
                (b"www-authenticate", auth.encode()),
            ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, echo)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    fake = FakeOpenAIServer()
    fake.app = EchoKey(fake.app)  # type: ignore[assignment]  # served instead of the router
    with fake:
        yield fake


@pytest.fixture(params=KEYS, ids=["sk-key", "other-key"])
def pool(request: pytest.FixtureRequest, server: FakeOpenAIServer) -> Iterator[APIKeyManager]:
    with APIKeyManager(
        [{"api_key": request.param, "api_base": server.base_url}], make_default=False
    ) as manager:
        yield manager


def _key_of(pool: APIKeyManager) -> str:
    return pool.config.keys[0].api_key


def test_the_wrapper_really_echoes_the_key(server: FakeOpenAIServer) -> None:
    """Without the pool's scrubbing, the key is everywhere in the error (the test's premise)."""
    key = KEYS[1]
    client = openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0)
    with client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": CONTEXT_LENGTH_MARKER}]
        )
    error = info.value
    assert key in str(error.body) and key in error.response.text
    assert error.response.headers["x-echo-key"] == key


def test_a_failed_request_hands_on_no_key(pool: APIKeyManager) -> None:
    key = _key_of(pool)
    with pytest.raises(RequestFailedError) as info:
        request_openai_api(ChatModel(content=CONTEXT_LENGTH_MARKER), manager=pool)
    error = info.value
    cause = error.__cause__
    assert isinstance(cause, openai.BadRequestError)
    response = cause.response
    handed_on = [
        str(error),
        repr(error),
        str(cause),
        repr(cause),
        cause.message,
        repr(cause.body),
        response.text,
        response.content.decode(),
        repr(response.json()),
        repr(response.headers.multi_items()),
        repr(response.request.headers.multi_items()),
        repr(cause.request.headers.multi_items()),
    ]
    assert not [text for text in handed_on if key in text]
    # Masked, not dropped: the user still sees which key it was and what the server said.
    body: Any = cause.body  # openai types it as object
    assert body["detail"]["key"] == mask_key(key)
    assert body["detail"]["seen"][1] == mask_key(key)
    assert response.headers["x-echo-key"] == mask_key(key)
    assert response.request.headers["authorization"] == f"Bearer {mask_key(key)}"
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_debug_logs_of_the_http_stack_show_no_key(
    pool: APIKeyManager, caplog: pytest.LogCaptureFixture
) -> None:
    key = _key_of(pool)
    caplog.set_level(logging.DEBUG)  # the root logger, as a user debugging a run would
    assert request_openai_api(ChatModel(content="hello"), manager=pool) == "echo: hello"
    with pytest.raises(RequestFailedError):
        request_openai_api(ChatModel(content=CONTEXT_LENGTH_MARKER), manager=pool)
    messages = [record.getMessage() for record in caplog.records]
    assert not [message for message in messages if key in message]
    assert key not in caplog.text
    # The third-party records were there, and logged the echoed headers, masked.
    echoed = [m for m in messages if "x-echo-key" in m and mask_key(key) in m]
    assert echoed, "no DEBUG record of the response headers was captured"
    roots = {record.name.split(".")[0] for record in caplog.records}
    assert "openai" in roots and roots & {"httpcore", "httpcore2"}
