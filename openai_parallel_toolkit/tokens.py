"""tiktoken helpers: counting tokens, estimating request costs, splitting long text.

Encodings are loaded on first use (never at import) and cached for the process: from tiktoken's
cache, else from the ``bpe-openai`` package (the ``offline`` extra) without network or any
environment variable, else downloaded (see `encoding_for` and
`openai_parallel_toolkit.tiktoken_cache`).

Exact counts (`num_tokens_from_string`, `split_string_by_tokens`) raise
`TokenizerUnavailableError` when no encoding can be loaded; estimates for rate limiting
(`estimate_tokens`, `estimate_chat_tokens`) fall back to a character count instead, with one
warning per process.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tiktoken

from . import tiktoken_cache
from .errors import TokenizerUnavailableError

# Reserved for the answer when a request sets no max_tokens; settled with the real usage after.
DEFAULT_COMPLETION_TOKENS = 256

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "DEFAULT_ESTIMATE_ENCODING",
    "IMAGE_PART_TOKENS",
    "REPLY_PRIMING_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "clear_caches",
    "encoding_for",
    "encoding_name_for",
    "estimate_chat_tokens",
    "estimate_request_tokens",
    "estimate_tokens",
    "num_tokens_from_string",
    "output_is_capped",
    "request_output_allowance",
    "split_string_by_tokens",
]

logger = logging.getLogger(__name__)

DEFAULT_ESTIMATE_ENCODING = "o200k_base"
"""Encoding `estimate_tokens` and `estimate_chat_tokens` use when no model is given."""

TOKENS_PER_MESSAGE = 3
"""Tokens a chat message costs on top of its strings (OpenAI's counting convention)."""

TOKENS_PER_NAME = 1
"""Extra token a message's ``name`` field costs."""

REPLY_PRIMING_TOKENS = 3
"""Tokens every chat request costs for priming the reply (``<|start|>assistant<|message|>``)."""

IMAGE_PART_TOKENS = 85
"""Flat estimate for one image part (the cost of a low-detail image)."""

_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-4o", "o1", "o3", "o4")
_IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})

# Guards the once-per-process fallback warning of the estimates.
_warn_lock = threading.Lock()
_fallback_warned = False


def _base_model(name: str) -> str:
    """The base model of a fine-tune (``ft:<base>:<org>:...``) or a provider-prefixed name."""
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    return name.rsplit("/", 1)[-1]


def encoding_name_for(model_or_encoding: str) -> str:
    """The tiktoken encoding name for a model name or an encoding name, without loading it.

    Encoding names (``cl100k_base``, ``o200k_base``, ``p50k_base``, ...) are returned as they are;
    model names are mapped by ``tiktoken.encoding_name_for_model`` (fine-tunes by their base
    model). Names tiktoken does not know map to ``o200k_base`` when they start like a current
    model family (``gpt-4o``, ``gpt-4.1``, ``gpt-4.5``, ``gpt-5``, ``o1``, ``o3``, ``o4``) and to
    ``cl100k_base`` otherwise.
    """
    name = model_or_encoding.strip()
    if name in tiktoken.list_encoding_names():
        return name
    base = _base_model(name)
    try:
        return tiktoken.encoding_name_for_model(base)
    except KeyError:
        pass
    fallback = "o200k_base" if base.lower().startswith(_O200K_PREFIXES) else "cl100k_base"
    logger.debug("tiktoken does not know model %r; counting with %s", model_or_encoding, fallback)
    return fallback


@functools.lru_cache(maxsize=256)
def encoding_for(model_or_encoding: str) -> tiktoken.Encoding:
    """The tiktoken encoding for a model or encoding name (see `encoding_name_for`), cached.

    Looked for in this order, without any environment variable: tiktoken's own cache folder
    (``$TIKTOKEN_CACHE_DIR``, else its default); the files of the ``bpe-openai`` package (the
    ``offline`` extra: ``cl100k_base`` and ``o200k_base``, hash-checked and put into that cache
    folder, as tiktoken stores its downloads); else tiktoken's download.

    Raises `TokenizerUnavailableError` (one line, chaining tiktoken's error) when none of these
    works, typically offline without the ``offline`` extra. Failures are not cached: a later
    call tries again.
    """
    name = encoding_name_for(model_or_encoding)
    if tiktoken_cache.is_cached(name):
        try:
            return tiktoken.get_encoding(name)
        except Exception as exc:  # a corrupt cached file, refused by tiktoken's hash check
            logger.debug("tiktoken could not use its cached %s: %s", name, exc)
    try:
        packaged = tiktoken_cache.packaged_encoding(name)
    except TokenizerUnavailableError as exc:
        raise TokenizerUnavailableError(f"tiktoken encoding {name!r}: {exc}") from exc
    if packaged is not None:
        return packaged
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:
        # tiktoken surfaces network, hash and plugin problems as assorted exception types.
        raise TokenizerUnavailableError(_unavailable(name, model_or_encoding, exc)) from exc


def _unavailable(name: str, model_or_encoding: str, exc: Exception) -> str:
    """One line on why encoding `name` could not be loaded and what fixes it."""
    modules = {cls.__module__.split(".")[0] for cls in type(exc).__mro__}
    if modules & {"requests", "urllib3"} or isinstance(exc, OSError):
        why = "not cached, download failed: offline?"
    else:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        why = f"{type(exc).__name__}: {detail[:120]}"
    shipped = tiktoken_cache.packaged_encoding_names()
    if shipped:
        fix = f"the offline extra ships only {', '.join(shipped)}"
    else:
        fix = "pip install -e '.[offline]'"
    target = repr(name) if name == model_or_encoding else f"{name!r} for {model_or_encoding!r}"
    return (
        f"tiktoken encoding {target} unavailable ({why}); fix: {fix}, or seed a "
        "TIKTOKEN_CACHE_DIR with python -m openai_parallel_toolkit.tiktoken_cache --source DIR"
    )


@functools.lru_cache(maxsize=256)
def _encoding_or_none(model_or_encoding: str) -> tiktoken.Encoding | None:
    """`encoding_for`, or None once it has failed (cached, so a failed load is not retried)."""
    global _fallback_warned
    try:
        return encoding_for(model_or_encoding)
    except TokenizerUnavailableError as exc:
        with _warn_lock:
            first = not _fallback_warned
            _fallback_warned = True
        if first:
            logger.warning("token estimates fall back to characters/4: %s", exc)
        return None


def clear_caches() -> None:
    """Forget loaded encodings and cached load failures (e.g. after seeding the cache)."""
    global _fallback_warned
    encoding_for.cache_clear()
    _encoding_or_none.cache_clear()
    with _warn_lock:
        _fallback_warned = False


def _char_estimate(text: str) -> int:
    return -(-len(text) // 4)


def _counter(model: str | None) -> Callable[[str], int]:
    encoding = _encoding_or_none(model or DEFAULT_ESTIMATE_ENCODING)
    if encoding is None:
        return _char_estimate
    encode = encoding.encode_ordinary
    return lambda text: len(encode(text))


def num_tokens_from_string(string: str, encoding_name: str = "gpt-3.5-turbo") -> int:
    """The number of tokens in `string`, for a model name or an encoding name.

    Special-token text such as ``<|endoftext|>`` is counted as ordinary text (it never raises).
    Raises `TokenizerUnavailableError` when the encoding cannot be loaded: this is an exact
    count, never an estimate.
    """
    return len(encoding_for(encoding_name).encode_ordinary(string))


def estimate_tokens(text: str, model: str | None = None) -> int:
    """Tokens in `text` for rate limiting: exact when the encoding loads, else about len/4.

    `model` is a model or encoding name (default: `DEFAULT_ESTIMATE_ENCODING`). When the encoding
    cannot be loaded, the estimate is ``ceil(len(text) / 4)`` and one warning is logged per
    process; the failed load is remembered, not retried on every call (see `clear_caches`).
    """
    if not text:
        return 0
    return _counter(model)(text)


def _nested_tokens(value: Any, count: Callable[[str], int]) -> int:
    if isinstance(value, str):
        return count(value) if value else 0
    if isinstance(value, Mapping):
        return sum(_nested_tokens(item, count) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nested_tokens(item, count) for item in value)
    return 0


def _content_tokens(content: Any, count: Callable[[str], int]) -> int:
    if isinstance(content, str):
        return count(content) if content else 0
    if not isinstance(content, (list, tuple)):
        return 0
    total = 0
    for part in content:
        if isinstance(part, str):
            total += count(part) if part else 0
        elif isinstance(part, Mapping):
            if part.get("type") in _IMAGE_PART_TYPES:
                total += IMAGE_PART_TOKENS
            elif isinstance(part.get("text"), str):
                total += count(part["text"]) if part["text"] else 0
            # Audio and file parts are not estimated: their cost is not a function of the text.
    return total


def estimate_chat_tokens(messages: Sequence[Mapping[str, Any]], model: str | None = None) -> int:
    """Prompt tokens of a chat request, by OpenAI's counting convention.

    Each message costs `TOKENS_PER_MESSAGE` plus the tokens of its string values (``role``,
    ``content``, ``name`` (+`TOKENS_PER_NAME`), ``tool_call_id``, and the strings nested in
    ``tool_calls`` / ``function_call``); a list ``content`` counts its ``text`` parts and
    `IMAGE_PART_TOKENS` per image part. The request adds `REPLY_PRIMING_TOKENS`. Falls back to
    character estimates like `estimate_tokens` when the encoding cannot be loaded.
    """
    count = _counter(model)
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                total += _content_tokens(value, count)
            else:
                total += _nested_tokens(value, count)
                if key == "name":
                    total += TOKENS_PER_NAME
    return total


def split_string_by_tokens(
    string: str,
    thunk_len: int,
    split_signal: str,
    encoding_name: str = "gpt-3.5-turbo",
) -> list[str]:
    """Split `string` into pieces of at most `thunk_len` tokens, cutting only after `split_signal`.

    A sentence is the text up to and including an occurrence of `split_signal` (the text after
    the last one is a final sentence). Pieces are runs of whole sentences, so every piece but
    possibly the last ends with `split_signal`, and ``"".join(pieces) == string`` exactly.
    A sentence longer than `thunk_len` on its own becomes a piece by itself, whole.

    Each sentence is tokenised once and pieces are filled greedily on the sum of those counts,
    which keeps the work linear in the length of `string`. Tokens can merge differently across
    a sentence boundary, so each piece of several sentences is then counted once as a whole and,
    in the rare case that it exceeds `thunk_len`, given back its last sentences until it fits:
    every piece of more than one sentence holds at most `thunk_len` tokens.

    Raises ValueError for ``thunk_len < 1`` or an empty `split_signal`, and
    `TokenizerUnavailableError` when the encoding cannot be loaded.
    """
    if thunk_len < 1:
        raise ValueError(f"thunk_len must be at least 1, got {thunk_len}")
    if not split_signal:
        raise ValueError("split_signal must not be empty")
    if not string:
        return []
    encode = encoding_for(encoding_name).encode_ordinary

    ends: list[int] = []  # end offset (exclusive) of each sentence
    step = len(split_signal)
    position = string.find(split_signal)
    while position >= 0:
        ends.append(position + step)
        position = string.find(split_signal, position + step)
    if not ends or ends[-1] < len(string):
        ends.append(len(string))

    counts: list[int] = []
    start = 0
    for end in ends:
        counts.append(len(encode(string[start:end])))
        start = end

    pieces: list[str] = []
    first = 0
    while first < len(ends):
        start = ends[first - 1] if first else 0
        stop = first + 1  # the first sentence always goes in, even when it alone is too long
        total = counts[first]
        while stop < len(ends) and total + counts[stop] <= thunk_len:
            total += counts[stop]
            stop += 1
        while stop - first > 1 and len(encode(string[start : ends[stop - 1]])) > thunk_len:
            stop -= 1
        pieces.append(string[start : ends[stop - 1]])
        first = stop
    return pieces


def estimate_request_tokens(path: str, body: Mapping[str, Any]) -> int:
    """The token cost of a raw request `body` for the endpoint `path` (e.g. "/chat/completions"):
    the prompt's tokens plus the output allowance, as the API charges it.

    A body the estimate cannot make sense of is charged by its length: it is the upstream's
    job, not the proxy's, to say what is wrong with it.
    """
    try:
        return _estimate_parts(path, body)
    except (TypeError, ValueError, AttributeError, OverflowError, RecursionError):
        return len(json.dumps(body, default=str)) // 4 + DEFAULT_COMPLETION_TOKENS


def _estimate_parts(path: str, body: Mapping[str, Any]) -> int:
    model = body.get("model") if isinstance(body.get("model"), str) else None
    if isinstance(body.get("messages"), list):
        prompt = estimate_chat_tokens(body["messages"], model)
    else:
        source = body.get("prompt", body.get("input", ""))
        items = source if isinstance(source, list) else [source]
        prompt = sum(
            estimate_tokens(item if isinstance(item, str) else json.dumps(item), model)
            for item in items
        )
    return prompt + request_output_allowance(path, body)


def request_output_allowance(path: str, body: Mapping[str, Any]) -> int:
    """The output tokens a raw request may use: its ``max_*tokens`` (default
    `DEFAULT_COMPLETION_TOKENS`) times ``n``; 0 for embeddings."""
    if path == "/embeddings":
        return 0
    try:
        return int(_output_limit(body) or DEFAULT_COMPLETION_TOKENS) * int(body.get("n") or 1)
    except (TypeError, ValueError, OverflowError):
        return DEFAULT_COMPLETION_TOKENS


def _output_limit(body: Mapping[str, Any]) -> Any:
    return (
        body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    )


def output_is_capped(path: str, body: Mapping[str, Any]) -> bool:
    """True when the request's output has a limit of its own (or none: embeddings)."""
    return path == "/embeddings" or bool(_output_limit(body))
