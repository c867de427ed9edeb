"""The request file of a JSONL job: lines, ids and the hash that binds an answer to its request.

A line is a request body with an optional ``custom_id`` (a non-empty string, as in OpenAI's
Batch API) and an optional ``metadata`` value. A line without ``custom_id`` gets its line number
as id: numbers for generated ids, strings for the user's, so the two never collide. A bad line
(invalid UTF-8, not a JSON object, no endpoint, a bad or repeated ``custom_id``) is reported by
its number and skipped; the rest of the file still runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models import RawRequest

__all__ = [
    "BadLine",
    "Item",
    "infer_endpoint",
    "input_identity",
    "read_item",
    "read_lines",
    "request_hash",
]

ItemId = int | str
_BOM = b"\xef\xbb\xbf"
# Parameters the JSONL runner never sends: results are whole response objects, so a request
# asking for a stream is sent without one (the answer is the same, assembled by the server).
_STREAM_PARAMETERS = ("stream", "stream_options")


def infer_endpoint(body: Mapping[str, Any]) -> str:
    """The endpoint a request body is for: chat, completions, embeddings or responses."""
    if "messages" in body:
        return "chat"
    if "prompt" in body:
        return "completions"
    if "input" in body and "embedding" in str(body.get("model", "")):
        return "embeddings"
    if "input" in body:
        return "responses"
    raise ValueError("cannot tell the endpoint: no messages, prompt or input")


def request_hash(endpoint: str, body: Mapping[str, Any]) -> str:
    """A short, stable hash of one request: its endpoint and body (without id and metadata).

    Result lines carry it, so a resumed job only counts an answer as done when it answers the
    very request on that line now; a changed line, or the results of another input, is caught.
    """
    canonical = json.dumps(
        [endpoint, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Item:
    """One request of the file: where it is, its id, metadata, endpoint, body and hash."""

    line: int
    item_id: ItemId
    metadata: Any
    endpoint: str
    body: dict[str, Any]
    request_hash: str

    @property
    def explicit_id(self) -> bool:
        """True when the id is the line's own ``custom_id``, not its line number."""
        return isinstance(self.item_id, str)

    def sendable_body(self) -> dict[str, Any]:
        """The body as sent: the same parameters, never asking for a stream."""
        return {k: v for k, v in self.body.items() if k not in _STREAM_PARAMETERS}


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that is not a usable request, with why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def read_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, raw line) for each non-blank line; a leading BOM is dropped."""
    with open(path, "rb") as file:
        offset = 0
        for number, raw in enumerate(file, start=1):
            start = offset
            offset += len(raw)
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if raw.strip():
                yield number, start, raw


def read_item(number: int, raw: bytes, endpoint: str | None) -> Item | BadLine:
    """The request on one raw line, or why it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = raw[exc.start]
        return BadLine(number, f"not valid UTF-8 (byte 0x{byte:02x} at column {exc.start + 1})")
    try:
        body = json.loads(text)
    except ValueError as exc:
        return BadLine(number, f"not valid JSON ({exc})")
    if not isinstance(body, dict):
        return BadLine(number, "not a JSON object")
    # Decoded UTF-8 holds no surrogate: only a JSON escape can spell one, and the walk of the
    # whole request (a cost on every line) is needed only when the text has such an escape.
    broken = _lone_surrogate(body, "") if _SURROGATE_ESCAPE.search(text) else None
    if broken is not None:
        # JSON's \ud800-style escapes can spell half a character, which no UTF-8 can carry.
        return BadLine(
            number, f"field {broken!r}: a lone surrogate escape (half a character) in its text"
        )
    custom_id = body.pop("custom_id", None)
    metadata = body.pop("metadata", None)
    if custom_id is not None and (not isinstance(custom_id, str) or not custom_id):
        return BadLine(
            number,
            f"custom_id must be a non-empty string (as in OpenAI's Batch API), "
            f"not {json.dumps(custom_id)}",
        )
    try:
        chosen = endpoint or infer_endpoint(body)
    except ValueError as exc:
        return BadLine(number, str(exc))
    if chosen not in RawRequest.PATHS:
        return BadLine(number, f"unknown endpoint {chosen!r}")
    item_id: ItemId = custom_id if custom_id is not None else number
    return Item(number, item_id, metadata, chosen, body, request_hash(chosen, body))


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path (``messages[0].content``) of the first text in `value` that is not valid
    Unicode (a lone surrogate), or None."""
    if isinstance(value, str):
        return path if _has_lone_surrogate(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _has_lone_surrogate(str(key)):
                return where
            found = _lone_surrogate(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def input_identity(path: Path) -> str:
    """A hash of the request file's bytes: the same on every machine that reads the file."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
