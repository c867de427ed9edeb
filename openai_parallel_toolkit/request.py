"""`request_openai_api`: one logical request, sent through the key pool until it succeeds.

What happens after an error follows `errors.classify` (see the README's error table): rate
limits cool the key's group down and re-route at once, dead keys are removed, transient
failures back off within `max_retries`, and a wrong request fails at once. It never hangs and
never returns None in place of an error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ._core.attempt import Attempts, RetryPolicy
from .cache import RequestCache, active_cache
from .errors import RequestFailedError, classify
from .keys import APIKeyManager, resolve_manager
from .models import OpenAIModel, check_generate_signature, prompt_usage

__all__ = ["RetryPolicy", "request_openai_api"]


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
    attempts = Attempts(policy)
    while True:
        lease = pool.acquire(tokens)
        try:
            try:
                with lease.sending():
                    response = openai_model.generate(lease.client)
            except Exception as exc:
                verdict = lease.fail(classify(exc, proxy=lease.key_config.proxy))
                lease.scrub(exc)
                decision = attempts.after(verdict)
                if decision.give_up is not None:
                    raise RequestFailedError(
                        f"{decision.give_up}: {verdict.reason}",
                        status_code=verdict.status_code,
                        attempts=attempts.tries,
                    ) from exc
                if decision.wait:
                    clock.sleep(decision.wait)
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
