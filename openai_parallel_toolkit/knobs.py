"""Environment knobs, under the names openai-manager used (its README's and its code's).

Read when a key pool is built or a batched call runs, never at import. Values in a config file
win over them. Unset knobs keep this toolkit's defaults (see the README's table).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import overload

from .errors import ConfigError

__all__ = ["Knobs"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, kw_only=True, slots=True)
class Knobs:
    """The knobs in force. Field names are this toolkit's; `from_env` reads the variables."""

    global_request_limit: int = 500
    """Requests in flight at once in a batched call (OPENAI_GLOBAL_NUM_REQUEST_LIMIT)."""
    requests_per_min: float | None = None
    """Default request limit of keys without one (OPENAI_REQUESTS_PER_MIN_LIMIT); None: learn."""
    tokens_per_min: float | None = None
    """Default token limit of keys without one (TOKENS_PER_MIN_LIMIT); None: learn."""
    concurrency_per_key: int | None = None
    """Requests in flight per key in a batched call (COROTINE_PER_AUTH); None: from limits."""
    attempts_per_prompt: int = 5
    """Tries per prompt in a batched call, the first included (ATTEMPTS_PER_PROMPT)."""
    ratelimit_after_submission: bool = True
    """Settle a request's token cost with the server's count after the reply."""
    log_level: int | None = None
    """Level of this package's logger while batched calls run (OPENAI_LOG_LEVEL, numeric)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Knobs:
        """Knobs from `environ` (default: the process environment, read now)."""
        env = os.environ if environ is None else environ
        return cls(
            global_request_limit=_int(
                env, ("OPENAI_GLOBAL_NUM_REQUEST_LIMIT", "GLOBAL_NUM_REQUEST_LIMIT"), 500
            ),
            requests_per_min=_float(
                env, ("OPENAI_REQUESTS_PER_MIN_LIMIT", "REQUESTS_PER_MIN_LIMIT")
            ),
            tokens_per_min=_float(env, ("TOKENS_PER_MIN_LIMIT", "OPENAI_TOKENS_PER_MIN_LIMIT")),
            concurrency_per_key=_int(env, ("COROTINE_PER_AUTH", "COROUTINE_PER_AUTH"), None),
            attempts_per_prompt=_int(env, ("ATTEMPTS_PER_PROMPT",), 5),
            ratelimit_after_submission=_bool(env, "RATELIMIT_AFTER_SUBMISSION", True),
            log_level=_int(env, ("OPENAI_LOG_LEVEL",), None, minimum=0),
        )


def _lookup(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


@overload
def _int(env: Mapping[str, str], names: tuple[str, ...], default: int, minimum: int = 1) -> int: ...
@overload
def _int(
    env: Mapping[str, str], names: tuple[str, ...], default: None, minimum: int = 1
) -> int | None: ...
def _int(
    env: Mapping[str, str], names: tuple[str, ...], default: int | None, minimum: int = 1
) -> int | None:
    found = _lookup(env, names)
    if found is None:
        return default
    name, value = found
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(
            f"{value!r} is not a whole number", source="environment", field=name
        ) from None
    if number < minimum:
        raise ConfigError(f"must be >= {minimum}, got {number}", source="environment", field=name)
    return number


def _float(env: Mapping[str, str], names: tuple[str, ...]) -> float | None:
    found = _lookup(env, names)
    if found is None:
        return None
    name, value = found
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not a number", source="environment", field=name) from None
    if not number > 0:
        raise ConfigError(f"must be > 0, got {value}", source="environment", field=name)
    return number


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{value!r} is not true or false", source="environment", field=name)
