"""Flex processing: requests sent with ``service_tier="flex"``, at batch prices, online.

Flex answers are slow (OpenAI suggests timeouts of up to 15 minutes: `FLEX_TIMEOUT`) and, when
flex capacity is short, the API refuses a request with a 429 ``resource_unavailable``, which is
not billed and says nothing about our rate limits: the pool neither cools the key's group nor
counts it against the key (see `errors.is_flex_unavailable`). Such a request is tried again later
(`FLEX_RETRY`: a patient backoff), or, with ``fallback=True``, sent again at once on the
standard tier, at the standard price. Answers are priced at the tier the response names.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from .cache import RequestCache
from .costs import CostMeter
from .errors import Action, RequestFailedError, classify, is_flex_unavailable
from .keys import APIKeyManager
from .models import OpenAIModel, RawRequest
from .request import RetryPolicy, arequest_openai_api, request_openai_api

__all__ = [
    "FLEX_RETRY",
    "FLEX_TIMEOUT",
    "arequest_flex",
    "async_sender",
    "on_tier",
    "request_flex",
    "sender",
]

FLEX_TIMEOUT = 900.0
"""Seconds a flex request may take by default (OpenAI: up to ~15 minutes)."""

FLEX_RETRY = RetryPolicy(max_retries=8, backoff_base=2.0, backoff_max=120.0)
"""How hard a flex request tries without a fallback: capacity comes back within minutes, so
the waits grow to two minutes (about eight minutes in all) before the request fails."""

_ONE_TRY = RetryPolicy(max_retries=0)


def on_tier(model: OpenAIModel, tier: str | None) -> OpenAIModel:
    """A copy of `model` asking for `tier` (None: no ``service_tier``, the project's default).

    Works for `RawRequest` and the models that keep their parameters in ``params`` (chat,
    completion and embedding models); any other class raises `TypeError`.
    """
    if isinstance(model, RawRequest):
        body = {k: v for k, v in model.body.items() if k != "service_tier"}
        if tier is not None:
            body["service_tier"] = tier
        return RawRequest(model.endpoint, body)
    params = getattr(model, "params", None)
    if not isinstance(params, dict):
        raise TypeError(
            f"{type(model).__name__} keeps no request parameters in `params`: set "
            "service_tier='flex' in its request yourself instead of mode='flex'"
        )
    changed = copy.copy(model)
    new = {k: v for k, v in params.items() if k != "service_tier"}
    if tier is not None:
        new["service_tier"] = tier
    changed.params = new  # type: ignore[attr-defined]
    return changed


def _worth_standard(exc: RequestFailedError) -> bool:
    """True when a flex try failed in a way the standard tier may not repeat: capacity, a
    5xx, a timeout or a lost connection (a wrong request fails on any tier)."""
    if is_flex_unavailable(exc):
        return True
    cause = exc.__cause__
    return cause is not None and classify(cause).action is Action.TRANSIENT


def request_flex(
    model: OpenAIModel,
    *,
    manager: APIKeyManager,
    fallback: bool = False,
    policy: RetryPolicy | None = None,
    raw: bool = False,
    cache: RequestCache | bool | None = None,
    meter: CostMeter | None = None,
) -> Any:
    """Send `model` on the flex tier (`request_openai_api`'s arguments otherwise).

    Without `fallback` a refusal for want of capacity is retried with `policy` (default
    `FLEX_RETRY`); with it, a flex try that fails that way (or with a 5xx, a timeout, a lost
    connection) is sent again at once without ``service_tier``, with `policy` (default: the
    engine's).
    """
    flex = on_tier(model, "flex")
    if not fallback:
        return request_openai_api(
            flex, manager=manager, policy=policy or FLEX_RETRY, raw=raw, cache=cache, meter=meter
        )
    try:
        return request_openai_api(
            flex, manager=manager, policy=_ONE_TRY, raw=raw, cache=cache, meter=meter
        )
    except RequestFailedError as exc:
        if not _worth_standard(exc):
            raise
    standard = on_tier(model, None)
    return request_openai_api(
        standard, manager=manager, policy=policy, raw=raw, cache=cache, meter=meter
    )


async def arequest_flex(
    model: OpenAIModel,
    *,
    manager: APIKeyManager,
    fallback: bool = False,
    policy: RetryPolicy | None = None,
    raw: bool = False,
    cache: RequestCache | bool | None = None,
    meter: CostMeter | None = None,
) -> Any:
    """`request_flex` from an event loop (`arequest_openai_api`)."""
    flex = on_tier(model, "flex")
    if not fallback:
        return await arequest_openai_api(
            flex, manager=manager, policy=policy or FLEX_RETRY, raw=raw, cache=cache, meter=meter
        )
    try:
        return await arequest_openai_api(
            flex, manager=manager, policy=_ONE_TRY, raw=raw, cache=cache, meter=meter
        )
    except RequestFailedError as exc:
        if not _worth_standard(exc):
            raise
    standard = on_tier(model, None)
    return await arequest_openai_api(
        standard, manager=manager, policy=policy, raw=raw, cache=cache, meter=meter
    )


def sender(flex: bool, fallback: bool) -> Callable[..., Any]:
    """What sends one request: `request_flex` (with `fallback`) when `flex`, else
    `request_openai_api`; both take the same keyword arguments (``policy`` None on the flex
    tier: `FLEX_RETRY`)."""
    return functools.partial(request_flex, fallback=fallback) if flex else request_openai_api


def async_sender(flex: bool, fallback: bool) -> Callable[..., Awaitable[Any]]:
    """`sender` from an event loop: `arequest_flex` or `arequest_openai_api`."""
    return functools.partial(arequest_flex, fallback=fallback) if flex else arequest_openai_api
