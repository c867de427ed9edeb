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
from decimal import Decimal
from typing import Any

from ._core.attempt import Attempts, RetryPolicy
from ._drivers import aio
from .cache import RequestCache, active_cache
from .costs import CostMeter, record_in_context
from .errors import BudgetReachedError, CostUnknownError, RequestFailedError, classify
from .keys import APIKeyManager, Lease, resolve_manager
from .models import OpenAIModel, check_generate_signature, prompt_usage, sends_async
from .prices import Usage, tier_of, usd

__all__ = ["RetryPolicy", "arequest_openai_api", "request_openai_api"]

# What one answer was counted as: (key masked, model, usage, cost), or None without usage.
_Counted = tuple[str, str | None, Usage, Decimal | None] | None


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
    meter: CostMeter | None = None,
) -> Any:
    """Send `openai_model`'s request on the best available key and return its result.

    The result is `openai_model.parse(response)`: the reply's text for chat and completion
    models (your own `OpenAIModel` subclasses included, unless they override `parse`), vectors
    for embeddings; with `raw=True` the client's response object. The pool is `manager`, else
    one built from `keys` or `config_path`, else the default pool.

    Successful responses are stored in `cache` (None: the cache made active with `use_cache`,
    if any; False: none) and a request found there is not sent again.

    Every answer's tokens and cost are counted in the pool (`APIKeyManager.statistics`) and
    in `meter`, if given; a `CostMeter` with a `max_cost` reserves the request's worst case
    before it is sent and raises `BudgetReachedError` (nothing sent) when that would pass
    the cap, or `CostUnknownError` when the model has no known price.

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
    response = _send(openai_model, pool, policy or RetryPolicy(max_retries=max_retries), meter)
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
    meter: CostMeter | None = None,
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
    response = await _asend(openai_model, pool, policy, asynchronous, meter)
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
) -> _Counted:
    """Settle a successful try, let the pool learn the server's prompt count, count the
    answer's tokens and cost in the pool (per key and model) and return what was counted."""
    lease.succeed(openai_model.usage_tokens(response), openai_model.charged_tokens(response))
    counted = prompt_usage(response)
    if prompt and counted:
        pool.observe_prompt_ratio(prompt, counted)
    usage = Usage.of(response)
    if usage is None:
        return None
    model = openai_model.model_name() or _answer_model(response)
    cost = pool.prices.cost_of(model, usage, tier_of(response, _request_params(openai_model)))
    pool.usage.record(lease.key, model, usage, cost)
    record_in_context(lease.key, model, usage, cost)
    return lease.key, model, usage, cost


def _answer_model(response: Any) -> str | None:
    model = response.get("model") if isinstance(response, Mapping) else None
    model = model or getattr(response, "model", None)
    return model if isinstance(model, str) else None


def _request_params(openai_model: OpenAIModel) -> Mapping[str, Any] | None:
    """The request's parameters (for its ``service_tier``), where the model keeps them."""
    params = getattr(openai_model, "body", None) or getattr(openai_model, "params", None)
    return params if isinstance(params, Mapping) else None


def _reserve(openai_model: OpenAIModel, pool: APIKeyManager, meter: CostMeter | None) -> Decimal:
    """Reserve the request's worst-case cost against `meter`'s cap (0 without one).

    The worst case is the prompt as counted locally (scaled up, never down, by what the
    server's counts taught the pool) plus the whole output allowance, at the asked tier's
    price. Raises `BudgetReachedError` or `CostUnknownError`; nothing is sent then.
    """
    if meter is None or not meter.capped:
        return Decimal(0)
    model = openai_model.model_name()
    price = None if model is None else pool.prices.price_of(model, _asked_tier(openai_model))
    if price is None:
        raise CostUnknownError(
            f"cost unknown for model {model!r}, so the cost cap cannot be kept: give its price "
            "under 'prices:' in the config"
        )
    output = openai_model.max_output_tokens()
    prompt = openai_model.estimate_prompt_tokens()
    if prompt is None:
        prompt = max(0, openai_model.estimate_tokens() - output)
    worst = price.worst_case(math.ceil(prompt * max(1.0, pool.prompt_scale)), output)
    if not meter.reserve(worst):
        raise BudgetReachedError(
            f"the cost cap of {usd(meter.max_cost or 0)} is reached (spent "
            f"{usd(meter.spent)}; this request may cost up to {usd(worst)})"
        )
    return worst


def _asked_tier(openai_model: OpenAIModel) -> Any:
    return tier_of({}, _request_params(openai_model))


def _send(
    openai_model: OpenAIModel, pool: APIKeyManager, policy: RetryPolicy, meter: CostMeter | None
) -> Any:
    """Send until success or a final error; returns the client's response."""
    with _Metered(openai_model, pool, meter) as metered:
        response, metered.answer = _send_reserved(openai_model, pool, policy)
    return response


class _Metered:
    """Reserves the request's worst case in `meter` around its sending (released if it fails);
    the sending sets `answer`, what its answer was counted as, which settles the reservation.

    A class rather than a generator: one is entered for every request.
    """

    __slots__ = ("answer", "meter", "reserved")

    def __init__(
        self, openai_model: OpenAIModel, pool: APIKeyManager, meter: CostMeter | None
    ) -> None:
        self.meter = meter
        self.reserved = _reserve(openai_model, pool, meter)
        self.answer: _Counted = None

    def __enter__(self) -> _Metered:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            _settle(self.meter, self.reserved, self.answer)
        elif self.meter is not None:
            self.meter.release(self.reserved)


def _settle(meter: CostMeter | None, reserved: Decimal, counted: _Counted) -> None:
    """Count an answer in the run's `meter` and settle its reservation with its real cost."""
    if meter is None:
        return
    if counted is None:  # an answer without usage: its worst case stands
        meter.settle(reserved, None)
        return
    key, model, usage, cost = counted
    meter.ledger.record(key, model, usage, cost)
    meter.settle(reserved, cost)


def _send_reserved(
    openai_model: OpenAIModel, pool: APIKeyManager, policy: RetryPolicy
) -> tuple[Any, _Counted]:
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
            counted = _after_success(pool, lease, openai_model, response, prompt)
            return response, counted
        finally:
            # Ctrl-C while waiting, a failing hook: never leave a reservation open.
            if not lease.settled:
                lease.cancel()


async def _asend(
    openai_model: OpenAIModel,
    pool: APIKeyManager,
    policy: RetryPolicy,
    asynchronous: bool,
    meter: CostMeter | None,
) -> Any:
    """`_send` on the event loop: `agenerate`, or `generate` in a worker thread."""
    with _Metered(openai_model, pool, meter) as metered:
        response, metered.answer = await _asend_reserved(openai_model, pool, policy, asynchronous)
    return response


async def _asend_reserved(
    openai_model: OpenAIModel, pool: APIKeyManager, policy: RetryPolicy, asynchronous: bool
) -> tuple[Any, _Counted]:
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
            counted = _after_success(pool, lease, openai_model, response, prompt)
            return response, counted
        finally:
            # Cancelled while sending: the reservation goes back at once.
            if not lease.settled:
                lease.cancel()
