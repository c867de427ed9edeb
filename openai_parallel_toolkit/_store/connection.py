"""What every Redis user of this package shares: the client, its errors, scripts, names."""

from __future__ import annotations

import importlib.resources
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

from ..config import masked_url
from ..errors import ConfigError

if TYPE_CHECKING:
    import redis

__all__ = ["connect", "lua_script", "worker_name"]


def connect(url: str, **options: Any) -> tuple[redis.Redis, tuple[type[BaseException], ...]]:
    """A client for `url` (redis-py's `options`), asked once now, and the errors that mean
    Redis is not doing its part (lost connection, wrong password or database, script error).

    Raises ConfigError, in one line with the password masked, when the ``redis`` extra is
    missing or Redis does not answer.
    """
    try:
        import redis as redis_module
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ConfigError(
            'sharing through Redis needs the redis extra: pip install -e ".[redis]" in the '
            "project folder"
        ) from exc
    errors: tuple[type[BaseException], ...] = (redis_module.RedisError, OSError)
    client = redis_module.Redis.from_url(url, **options)
    try:
        client.ping()
    except errors as exc:
        client.close()
        raise ConfigError(
            f"shared state at {masked_url(url)} does not answer: {type(exc).__name__}: {exc}"
        ) from None
    return client, errors


def lua_script(name: str) -> str:
    """The text of the Lua script `name` shipped in ``_store/lua``."""
    return importlib.resources.files(__package__).joinpath(f"lua/{name}.lua").read_text()


def worker_name() -> str:
    """This process among the workers: ``host:pid:random`` (no secret in it)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
