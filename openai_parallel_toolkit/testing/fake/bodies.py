"""Reading request bodies as the fake server does: texts, token estimates, checked parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ApiError

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "estimate",
    "include_usage",
    "max_tokens",
    "model_of",
    "positive_int",
    "prompt_texts",
    "text_of",
]

DEFAULT_MAX_TOKENS = 16


def estimate(text: str) -> int:
    """The tokens of `text` as the fake server counts them: a token per 4 characters, plus one."""
    return len(text) // 4 + 1


def include_usage(body: Mapping[str, Any]) -> bool:
    """Whether a streamed reply ends with a usage chunk (``stream_options.include_usage``)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def positive_int(body: Mapping[str, Any], name: str, default: int) -> int:
    """The integer parameter `name` (`default` when absent); a 400 unless it is >= 1."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"Invalid '{name}': expected a positive integer.", param=name)
    return value


def model_of(body: Mapping[str, Any]) -> str:
    """The ``model`` parameter; a 400 when it is missing."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter")
    return model


def max_tokens(body: Mapping[str, Any], *names: str) -> int:
    """The output-token cap under the first of `names` given, else the default of 16."""
    for name in names:
        if body.get(name) is not None:
            return positive_int(body, name, DEFAULT_MAX_TOKENS)
    return DEFAULT_MAX_TOKENS


def prompt_texts(value: Any, param: str) -> list[str]:
    """Normalise a ``prompt``/``input`` value: a string, token list, or list of either."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, int) for item in value):
            return [" ".join(map(str, value))]
        texts: list[str] = []
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list) and all(isinstance(t, int) for t in item):
                texts.append(" ".join(map(str, item)))
            else:
                raise ApiError(400, f"Invalid '{param}': unsupported item type.", param=param)
        return texts
    raise ApiError(400, f"Invalid '{param}': expected a string or a list.", param=param)
