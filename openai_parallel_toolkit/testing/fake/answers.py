"""The JSON bodies (and server-sent-event chunks) of the fake server's successful replies."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import sys
import time
from array import array
from collections.abc import Mapping
from typing import Any

__all__ = [
    "chat",
    "chat_stream",
    "completions",
    "embeddings",
    "model",
    "models",
    "response",
    "sse",
]

_DONE = b"data: [DONE]\n\n"


def sse(payload: Mapping[str, Any]) -> bytes:
    """One server-sent event carrying `payload`."""
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _pieces(text: str) -> list[str]:
    # Split after spaces so that the streamed deltas join back to the exact text.
    pieces = [word + " " for word in text.split(" ")]
    pieces[-1] = pieces[-1][:-1]
    return [p for p in pieces if p] or [""]


def chat(ident: str, created: int, model: str, reply: str, n: int, usage: dict[str, Any]) -> bytes:
    """A ``chat.completion`` with `n` choices of `reply`."""
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": reply, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
        for i in range(n)
    ]
    payload = {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
        "system_fingerprint": "fp_fake",
    }
    return json.dumps(payload).encode()


def chat_stream(
    ident: str,
    created: int,
    model: str,
    reply: str,
    n: int,
    usage: dict[str, Any],
    include_usage: bool,
) -> list[bytes]:
    """The ``chat.completion.chunk`` events of `n` streamed choices of `reply`."""
    head: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        head["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**head, "choices": [choice]})

    chunks: list[bytes] = []
    for i in range(n):
        chunks.append(chunk(i, {"role": "assistant", "content": ""}, None))
        chunks.extend(chunk(i, {"content": piece}, None) for piece in _pieces(reply))
        chunks.append(chunk(i, {}, "stop"))
    if include_usage:
        chunks.append(sse({**head, "choices": [], "usage": usage}))
    chunks.append(_DONE)
    return chunks


def completions(
    ident: str,
    model: str,
    replies: list[str],
    n: int,
    usage: dict[str, Any],
    stream: bool,
    include_usage: bool,
) -> bytes | list[bytes]:
    """A ``text_completion`` with `n` choices per reply, or its events when streamed."""
    head: dict[str, Any] = {
        "id": ident,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
    }
    choices = [
        {"text": reply, "index": p * n + j, "logprobs": None, "finish_reason": "stop"}
        for p, reply in enumerate(replies)
        for j in range(n)
    ]
    if not stream:
        return json.dumps({**head, "choices": choices, "usage": usage}).encode()
    if include_usage:
        head["usage"] = None
    chunks = [sse({**head, "choices": [choice]}) for choice in choices]
    if include_usage:
        chunks.append(sse({**head, "choices": [], "usage": usage}))
    chunks.append(_DONE)
    return chunks


def _embedding(text: str, dims: int) -> list[float]:
    raw = hashlib.shake_128(text.encode()).digest(2 * dims)
    values = [v / 32767.5 - 1.0 for v in struct.unpack(f"<{dims}H", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _embedding_base64(vector: list[float]) -> str:
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def embeddings(
    model: str, inputs: list[str], dims: int, as_base64: bool, prompt_tokens: int
) -> bytes:
    """A list of embeddings: unit vectors of `dims` derived from each input's hash."""
    data = []
    for index, text in enumerate(inputs):
        vector = _embedding(text, dims)
        value: Any = _embedding_base64(vector) if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": value})
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return json.dumps({"object": "list", "data": data, "model": model, "usage": usage}).encode()


def response(
    ident: str,
    model: str,
    reply: str,
    instructions: str | None,
    input_tokens: int,
    output_tokens: int,
) -> bytes:
    """A completed ``response`` whose one message says `reply`."""
    payload = {
        "id": "resp_" + ident,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_" + ident,
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": reply, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "error": None,
        "incomplete_details": None,
        "instructions": instructions,
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
    }
    return json.dumps(payload).encode()


_MODEL_CREATED = 1_700_000_000


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _MODEL_CREATED, "owned_by": "system"}


def models(names: list[str]) -> bytes:
    """The ``/v1/models`` list of `names`."""
    data = [_model_object(name) for name in names]
    return json.dumps({"object": "list", "data": data}).encode()


def model(name: str) -> bytes:
    """One model object (``/v1/models/{name}``)."""
    return json.dumps(_model_object(name)).encode()
