"""A request's answer, planned: what it costs the limits and how its reply is rendered.

`Planner.plan` validates a request body of one endpoint (raising `ApiError` for a 400) and
returns a `Plan`; the reply is rendered only when the request is admitted. Replies are
deterministic echoes of the input (``echo: `` and the last user text), so tests can check order.

Chat replies report ``prompt_tokens_details.cached_tokens`` as OpenAI's prompt caching does for a
repeated prefix: the leading system (or developer) messages of a request count as cached when an
earlier request began with the same ones (whatever their length, unlike OpenAI's 1,024 token
minimum, so that small tests see cache hits).
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from . import answers
from .bodies import (
    estimate,
    include_usage,
    max_tokens,
    model_of,
    positive_int,
    prompt_texts,
    text_of,
)
from .errors import ApiError, marker

__all__ = ["KINDS", "Plan", "Planner", "Render"]

KINDS = ("chat", "completions", "embeddings", "responses")
"""The endpoints whose requests are planned (`Planner.plan`'s `kind`)."""

Render = Callable[[str], "bytes | list[bytes]"]
"""request id → the reply's JSON body, or its server-sent-event chunks when streamed."""

_MAX_EMBEDDING_DIMS = 8192
_DEFAULT_EMBEDDING_DIMS = 8
_PREFIXES = 1024  # system prefixes remembered for cached_tokens (a test's few)


class Plan:
    """A validated request: what it costs and how to render its successful reply."""

    __slots__ = (
        "cached_tokens",
        "completion_tokens",
        "cost",
        "marker",
        "model",
        "param",
        "prompt_tokens",
        "render",
    )

    def __init__(
        self,
        model: str,
        cost: int,
        prompt_tokens: int,
        completion_tokens: int,
        marker: str | None,
        param: str,
        render: Render,
    ) -> None:
        self.model = model
        self.cost = cost
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.marker = marker
        self.param = param
        self.render = render
        self.cached_tokens = 0


class Planner:
    """Plans the requests of every endpoint; remembers system prefixes; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prefixes: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._plans: dict[str, Callable[[dict[str, Any]], Plan]] = {
            "chat": self._chat,
            "completions": _completions,
            "embeddings": _embeddings,
            "responses": _responses,
        }

    def plan(self, kind: str, body: dict[str, Any]) -> Plan:
        """The plan of a request to endpoint `kind` (one of `KINDS`); `ApiError` for a 400."""
        return self._plans[kind](body)

    def cached_prefix(self, messages: list[Any]) -> int:
        """Tokens of the leading system/developer messages when an earlier request began with
        the same ones (remembered from now on if not): the prompt cache's hit."""
        prefix: list[str] = []
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ("system", "developer"):
                break
            prefix.append(text_of(message.get("content")))
        if not prefix:
            return 0
        digest = hashlib.sha256(json.dumps(prefix).encode()).hexdigest()
        with self._lock:
            if digest in self._prefixes:
                self._prefixes.move_to_end(digest)
                return sum(estimate(text) for text in prefix)
            self._prefixes[digest] = None
            if len(self._prefixes) > _PREFIXES:
                self._prefixes.popitem(last=False)
        return 0

    def _chat(self, body: dict[str, Any]) -> Plan:
        model = model_of(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty array.", param="messages")
        prompt_tokens = 0
        found: str | None = None
        last_user = ""
        for message in messages:
            if not isinstance(message, dict):
                raise ApiError(400, "Invalid 'messages': expected objects.", param="messages")
            text = text_of(message.get("content"))
            prompt_tokens += estimate(text)
            found = found or marker(text)
            if message.get("role") == "user":
                last_user = text
        n = positive_int(body, "n", 1)
        cap = max_tokens(body, "max_completion_tokens", "max_tokens")
        reply = "echo: " + last_user
        completion_tokens = estimate(reply) * n
        stream = body.get("stream") is True
        usage_chunk = include_usage(body)
        cached_tokens = self.cached_prefix(messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

        def render(rid: str) -> bytes | list[bytes]:
            ident, created = "chatcmpl-" + rid[4:], int(time.time())
            if not stream:
                return answers.chat(ident, created, model, reply, n, usage)
            return answers.chat_stream(ident, created, model, reply, n, usage, usage_chunk)

        plan = Plan(
            model,
            prompt_tokens + cap * n,
            prompt_tokens,
            completion_tokens,
            found,
            "messages",
            render,
        )
        plan.cached_tokens = cached_tokens
        return plan


def _completions(body: dict[str, Any]) -> Plan:
    model = model_of(body)
    prompts = prompt_texts(body.get("prompt"), "prompt")
    n = positive_int(body, "n", 1)
    cap = max_tokens(body, "max_tokens")
    replies = ["echo: " + prompt for prompt in prompts]
    prompt_tokens = sum(estimate(prompt) for prompt in prompts)
    completion_tokens = sum(estimate(reply) for reply in replies) * n
    found = next((m for m in map(marker, prompts) if m is not None), None)
    stream = body.get("stream") is True
    usage_chunk = include_usage(body)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }

    def render(rid: str) -> bytes | list[bytes]:
        return answers.completions("cmpl-" + rid[4:], model, replies, n, usage, stream, usage_chunk)

    return Plan(
        model,
        prompt_tokens + cap * n * len(prompts),
        prompt_tokens,
        completion_tokens,
        found,
        "prompt",
        render,
    )


def _embeddings(body: dict[str, Any]) -> Plan:
    model = model_of(body)
    inputs = prompt_texts(body.get("input"), "input")
    dims = positive_int(body, "dimensions", _DEFAULT_EMBEDDING_DIMS)
    if dims > _MAX_EMBEDDING_DIMS:
        raise ApiError(
            400, f"Invalid 'dimensions': at most {_MAX_EMBEDDING_DIMS}.", param="dimensions"
        )
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        message = "Invalid 'encoding_format': expected 'float' or 'base64'."
        raise ApiError(400, message, param="encoding_format")
    prompt_tokens = sum(estimate(text) for text in inputs)
    found = next((m for m in map(marker, inputs) if m is not None), None)

    def render(rid: str) -> bytes:
        return answers.embeddings(model, inputs, dims, encoding == "base64", prompt_tokens)

    return Plan(model, prompt_tokens, prompt_tokens, 0, found, "input", render)


def _responses(body: dict[str, Any]) -> Plan:
    model = model_of(body)
    value = body.get("input")
    texts: list[str] = []
    last_user = ""
    if isinstance(value, str):
        texts.append(value)
        last_user = value
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, dict):
                raise ApiError(400, "Invalid 'input': expected objects.", param="input")
            text = text_of(item.get("content"))
            texts.append(text)
            if item.get("role", "user") == "user":
                last_user = text
    else:
        raise ApiError(400, "Invalid 'input': expected a string or a list.", param="input")
    raw_instructions = body.get("instructions")
    instructions = raw_instructions if isinstance(raw_instructions, str) else None
    if instructions is not None:
        texts.append(instructions)
    input_tokens = sum(estimate(text) for text in texts)
    cap = max_tokens(body, "max_output_tokens")
    reply = "echo: " + last_user
    output_tokens = estimate(reply)
    found = next((m for m in map(marker, texts) if m is not None), None)

    def render(rid: str) -> bytes:
        return answers.response(rid[4:], model, reply, instructions, input_tokens, output_tokens)

    return Plan(model, input_tokens + cap, input_tokens, output_tokens, found, "input", render)
