"""One `openai.OpenAI` client per key of a pool, for the Batch API's files and batches.

Batch calls are few (an upload, a create, a poll), so they bypass the pool's rate limiting; the
clients are built as the pool builds its own (the key's base URL, proxy, organization, project,
timeout; the pool's `client_factory` when one is set) and named by the key's id, never the key.
Keys of one queue (the key's limit group, else its project, else the key itself) share the
enqueued-token limit and see each other's files, as keys of one OpenAI project do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._drivers.clients import default_client_factory
from ..config import KeyConfig
from ..keys import APIKeyManager

if TYPE_CHECKING:
    import openai  # imported by the client factory when a client is built: import stays light

__all__ = ["BatchClients", "KeyClient"]


@dataclass(frozen=True)
class KeyClient:
    """A key's id (a hash), its queue and its client."""

    key_id: str
    queue: str
    client: openai.OpenAI
    masked: str


def _ignore(response: Any) -> None:
    """Batch calls carry no rate-limit headers worth learning from."""


class BatchClients:
    """The clients of a pool's keys, by key id; built once, closed with `close`."""

    def __init__(self, manager: APIKeyManager) -> None:
        factory = manager.options.client_factory or default_client_factory(manager.timeout)
        self._keys: dict[str, KeyClient] = {}
        for config in manager.config.keys:
            ident = config.key_id
            if ident not in self._keys:
                client = factory(config, _ignore)
                self._keys[ident] = KeyClient(ident, _queue(config), client, config.masked_key)

    def __repr__(self) -> str:
        return f"BatchClients({len(self._keys)} keys)"

    def all(self) -> list[KeyClient]:
        """Every key, in the pool's order."""
        return list(self._keys.values())

    def get(self, key_id: str) -> KeyClient:
        """The key a journal names; a `KeyError` says the pool no longer holds it."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise KeyError(
                f"the key with id {key_id} that submitted a batch of this job is not in the "
                "pool: add it back to poll and collect its batches"
            ) from None

    def close(self) -> None:
        """Close every client."""
        for key in self._keys.values():
            key.client.close()


def _queue(config: KeyConfig) -> str:
    return config.limit_group or config.project or config.key_id
