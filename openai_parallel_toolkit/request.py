"""`request_openai_api` and `arequest_openai_api`: one logical request, sent through the key
pool until it succeeds.

What happens after an error follows `errors.classify` (see the README's error table): rate
limits cool the key's group down and re-route at once, dead keys are removed, transient
failures back off within `max_retries`, and a wrong request fails at once. It never hangs and
never returns None in place of an error. The threaded and the asyncio versions differ only in
how they wait and send; the decisions (`Attempts`), the cost estimate, the cache and the
settling of each try are the helpers below, shared by both.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ._core.attempt import Attempts, RetryPolicy
from ._drivers import aio
from .cache import RequestCache, active_cache
from .errors import RequestFailedError, classify
from .keys import APIKeyManager, Lease, resolve_manager
from .models import OpenAIModel, check_generate_signature, prompt_usage, sends_async

__all__ = ["RetryPolicy", "arequest_openai_api", "request_openai_api"]


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
    store, cache_key = _cache_of(openai_model, cache)
    if store is not None and cache_key is not None:
        cached = store.get(cache_key)
        if cached is not None:
            return cached if raw else openai_model.parse(cached)
    pool = resolve_manager(manager, keys=keys, config_path=config_path)
    response = _send(openai_model, pool, policy or RetryPolicy(max_retries=max_retries))
    if store is not None and cache_key is not None:
        store.put(cache_key, response)
    return response if raw else openai_model.parse(response)


async def arequest_openai_api(
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
    """``await arequest_openai_api(model, ...)``: `request_openai_api` from an event loop.

    Same arguments, result and errors. The request waits for its slot in turn with every
    other thread and task on the same pool, without blocking the loop, and is sent with the
    key's `openai.AsyncOpenAI` client through `openai_model.agenerate` (a model that defines
    only `generate` runs it in a worker thread). Cancelling the task gives a reservation not
    yet answered back to the pool at once; an answer that arrived is settled (and cached)
    first. Cache lookups run in a worker thread (the cache is SQLite).
    """
    asynchronous = sends_async(openai_model)
    if not asynchronous:
        check_generate_signature(openai_model)
    store, cache_key = _cache_of(openai_model, cache)
    if store is not None and cache_key is not None:
        cached = await aio.run_in_thread(lambda: store.get(cache_key))
        if cached is not None:
            return cached if raw else openai_model.parse(cached)
    pool = resolve_manager(manager, keys=keys, config_path=config_path)
    policy = policy or RetryPolicy(max_retries=max_retries)
    response = await _asend(openai_model, pool, policy, asynchronous)
    if store is not None and cache_key is not None:
        # Shielded: a cancellation now must not lose an answer that was paid for.
        await asyncio.shield(aio.run_in_thread(lambda: store.put(cache_key, response)))
    return response if raw else openai_model.parse(response)


def _cache_of(
    openai_model: OpenAIModel, cache: RequestCache | bool | None
) -> tuple[RequestCache | None, str | None]:
    """The cache to use for this request (None: the active one) and the request's key in it."""
    store: RequestCache | None
    if cache is None or cache is True:
        store = active_cache()
    elif cache is False:
        store = None
    else:
        store = cache
    if store is None:
        return None, None
    description = openai_model.describe()
    if description is None:
        return None, None
    return store, RequestCache.key_for(description)


def _cost(openai_model: OpenAIModel, pool: APIKeyManager) -> tuple[int, int | None]:
    """The tokens to reserve per try, and the prompt's local estimate (None if unknown).

    Nothing is counted while no group paces tokens: loading an encoding and counting cost CPU
    that only a token limit repays (the first answer's headers tell whether there is one).
    """
    if not pool.counts_tokens:
        return 0, None
    prompt = openai_model.estimate_prompt_tokens()
    if prompt is None:
        return openai_model.estimate_tokens(), None
    # Scaled by what the server's own counts taught the pool.
    return math.ceil(prompt * pool.prompt_scale) + openai_model.max_output_tokens(), prompt


def _after_failure(lease: Lease, exc: Exception, attempts: Attempts) -> float:
    """Settle a failed try: the seconds to wait before the next, or raise `RequestFailedError`."""
    verdict = lease.fail(classify(exc, proxy=lease.key_config.proxy))
    lease.scrub(exc)
    decision = attempts.after(verdict)
    if decision.give_up is not None:
        raise RequestFailedError(
            f"{decision.give_up}: {verdict.reason}",
            status_code=verdict.status_code,
            attempts=attempts.tries,
        ) from exc
    return decision.wait


def _after_success(
    pool: APIKeyManager,
    lease: Lease,
    openai_model: OpenAIModel,
    response: Any,
    prompt: int | None,
) -> None:
    """Settle a successful try and let the pool learn the server's prompt count."""
    lease.succeed(openai_model.usage_tokens(response), openai_model.charged_tokens(response))
    counted = prompt_usage(response)
    if prompt and counted:
        pool.observe_prompt_ratio(prompt, counted)


def _send(openai_model: OpenAIModel, pool: APIKeyManager, policy: RetryPolicy) -> Any:
    """Send until success or a final error; returns the client's response."""
    tokens, prompt = _cost(openai_model, pool)
    attempts = Attempts(policy)
    while True:
        lease = pool.acquire(tokens)
        try:
            try:
                with lease.sending():
                    response = openai_model.generate(lease.client)
            except Exception as exc:
                wait = _after_failure(lease, exc, attempts)
                if wait:
                    pool.clock.sleep(wait)
                continue
            _after_success(pool, lease, openai_model, response, prompt)
            return response
        finally:
            # Ctrl-C while waiting, a failing hook: never leave a reservation open.
            if not lease.settled:
                lease.cancel()


async def _asend(
    openai_model: OpenAIModel, pool: APIKeyManager, policy: RetryPolicy, asynchronous: bool
) -> Any:
    """`_send` on the event loop: `agenerate`, or `generate` in a worker thread."""
    tokens, prompt = _cost(openai_model, pool)
    attempts = Attempts(policy)
    while True:
        lease = await pool.acquire_async(tokens)
        try:
            try:
                with lease.sending():
                    if asynchronous:
                        response = await openai_model.agenerate(lease.async_client)
                    else:
                        send = functools.partial(openai_model.generate, lease.client)
                        response = await aio.run_in_thread(send)
            except Exception as exc:
                wait = _after_failure(lease, exc, attempts)
                if wait:
                    await aio.sleep(pool.clock, wait)
                continue
            # No await between the answer and its settling: a cancellation cannot lose it.
            _after_success(pool, lease, openai_model, response, prompt)
            return response
        finally:
            # Cancelled while sending: the reservation goes back at once.
            if not lease.settled:
                lease.cancel()
