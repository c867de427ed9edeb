"""The one place that builds a key's HTTP client: its base URL, proxy, identity and timeout."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import KeyConfig

if TYPE_CHECKING:
    import openai

__all__ = ["ClientFactory", "default_client_factory"]

# Builds the client of one key; the callable it is given must see every HTTP response.
ClientFactory = Callable[[KeyConfig, Callable[[Any], None]], "openai.OpenAI"]


def default_client_factory(timeout: float) -> ClientFactory:
    """A factory of `openai.OpenAI` clients: `timeout` for keys whose config sets none."""

    def build(config: KeyConfig, on_response: Callable[[Any], None]) -> openai.OpenAI:
        import openai

        # Our own HTTP client per key: it carries the key's proxy, and its response hook feeds
        # the x-ratelimit-* headers of every response (errors included) to the limiter.
        http_client = openai.DefaultHttpxClient(
            proxy=config.proxy, event_hooks={"response": [on_response]}
        )
        return openai.OpenAI(
            api_key=config.api_key,
            base_url=config.api_base,
            organization=config.organization,
            project=config.project,
            max_retries=0,  # the pool decides about retries, with better knowledge
            timeout=config.timeout if config.timeout is not None else timeout,
            http_client=http_client,
        )

    return build
