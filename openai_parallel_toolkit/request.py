"""`request_openai_api`: one logical request, sent through the key pool until it succeeds.

What happens after an error follows `errors.classify` (see the README's error table): rate
limits cool the key's group down and re-route at once, dead keys are removed, transient
failures back off within `max_retries`, and a wrong request fails at once. It never hangs and
never returns None in place of an error.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cache import RequestCache, active_cache
from .errors import Action, RequestFailedError, classify
from .keys import APIKeyManager, resolve_manager
from .models import OpenAIModel, check_generate_signature, prompt_usage

__all__ = ["RetryPolicy", "request_openai_api"]


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How hard one request tries.

    `max_retries` bounds retries after transient failures (5xx, timeouts, connection errors);
    each waits ``min(backoff_max, backoff_base * 2**n)`` scaled by a random factor in [0.5, 1].
    `max_rate_limited` bounds re-routes after 429 rate limits, which wait for the server's
    reset instead. Removed keys do not count: the pool runs out of keys first.
    """

    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_rate_limited: int = 50
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the retry after `failures` transient failures."""
        wait = min(self.backoff_max, self.backoff_base * 2 ** (failures - 1))
        wait *= 0.5 + 0.5 * self.rng.random()
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max))
        return wait


def request_openai_api(
    openai_model: OpenAIModel,
    keys: Sequence[str | Mapping[str, Any]] | None = None,
    config_path: str | os.PathLike[str] | None = None,
    max_retries: int = 5,
    *,
    manager: APIKeyManager | None = None,
    raw: bool = False,
    policy: RetryPolicy | None = None,
    cache: RequestCache | bool | None = None,
) -> Any:
    """Send `openai_model`'s request on the best available key and return its result.

    The result is `openai_model.parse(response)`: the reply's text for chat and completion
    models (your own `OpenAIModel` subclasses included, unless they override `parse`), vectors
    for embeddings; with `raw=True` the client's response object. The pool is `manager`, else
    one built from `keys` or `config_path`, else the default pool.

    Successful responses are stored in `cache` (None: the cache made active with `use_cache`,
    if any; False: none) and a request found there is not sent again.

    Raises `TypeError`, before anything is sent, when the model's `generate` cannot take the
    client (the original toolkit's ``generate(self)``); `RequestFailedError` when the request
    is wrong (400, 404, 422) or its retries are spent, and `NoKeysAvailableError` when every
    key has been removed.
    """
    check_generate_signature(openai_model)
    store: RequestCache | None
    if cache is None or cache is True:
        store = active_cache()
    elif cache is False:
        store = None
    else:
        store = cache
    description = openai_model.describe() if store is not None else None
    cache_key = RequestCache.key_for(description) if description is not None else None
    if store is not None and cache_key is not None:
        cached = store.get(cache_key)
        if cached is not None:
            return cached if raw else openai_model.parse(cached)
    response = _send(
        openai_model,
        resolve_manager(manager, keys=keys, config_path=config_path),
        policy or RetryPolicy(max_retries=max_retries),
    )
    if store is not None and cache_key is not None:
        store.put(cache_key, response)
    return response if raw else openai_model.parse(response)


def _send(openai_model: OpenAIModel, pool: APIKeyManager, policy: RetryPolicy) -> Any:
    """Send until success or a final error; returns the client's response."""
    prompt = openai_model.estimate_prompt_tokens()
    if prompt is None:
        tokens = openai_model.estimate_tokens()
    else:  # scaled by what the server's own counts taught the pool
        tokens = math.ceil(prompt * pool.prompt_scale) + openai_model.max_output_tokens()
    clock = pool.clock
    attempts = transient = rate_limited = 0
    while True:
        lease = pool.acquire(tokens)
        try:
            wait = lease.delay()
            if wait > 0:
                clock.sleep(wait)
                if not lease.still_valid():  # its key died or cooled down while we waited
                    continue
            attempts += 1
            try:
                with lease.sending():
                    response = openai_model.generate(lease.client)
            except Exception as exc:
                verdict = lease.fail(classify(exc))
                lease.scrub(exc)
                give_up = None
                if verdict.action is Action.FATAL:
                    give_up = "request failed"
                elif verdict.action is Action.RATE_LIMITED:
                    rate_limited += 1
                    if rate_limited > policy.max_rate_limited:
                        give_up = f"still rate limited after {rate_limited} tries"
                elif verdict.action is Action.TRANSIENT:
                    transient += 1
                    if transient > policy.max_retries:
                        give_up = f"gave up after {attempts} attempts"
                if give_up is not None:
                    raise RequestFailedError(
                        f"{give_up}: {verdict.reason}",
                        status_code=verdict.status_code,
                        attempts=attempts,
                    ) from exc
                if verdict.action is Action.TRANSIENT:
                    clock.sleep(policy.backoff(transient, verdict.retry_after))
                elif verdict.action is Action.RATE_LIMITED and not verdict.exhausted:
                    # An overload's 429: the group is not slowed, so this request backs off.
                    clock.sleep(policy.backoff(rate_limited, None))
                continue
            lease.succeed(
                openai_model.usage_tokens(response), openai_model.charged_tokens(response)
            )
            counted = prompt_usage(response)
            if prompt and counted:
                pool.observe_prompt_ratio(prompt, counted)
            return response
        finally:
            # Ctrl-C while waiting, a failing hook: never leave a reservation open.
            if not lease.settled:
                lease.cancel()
