"""openai-manager style batched calls: ``Completion.create(prompt=[...])`` and friends.

Each `create` takes the official request parameters; a list of prompts, conversations or
inputs is spread over every key of the default pool and comes back as a list in input order,
as plain dicts shaped like the API's JSON (``return_openai_response=True``: the client's
response objects). Parameters this module does not know go into the request body unchanged.

The toolkit's own options have names no API parameter uses: ``no_tqdm`` and
``return_openai_response`` (openai-manager's), and ``opt_attempts``, ``opt_on_error``,
``opt_manager``, ``opt_cache``, ``opt_max_cost``, ``opt_mode`` (also ``mode``, as in
`multi_process_one`; ``"online"``, ``"flex"``:
``service_tier="flex"`` at batch prices, ``"batch"``: through the Batch API at half price,
waiting for the batches), ``opt_fallback`` (``"standard"``: what flex or the batches could not
answer goes on the standard tier) and ``opt_batch_options`` (a `BatchRunOptions`: polling,
retries, limits). A prompt that fails for good raises a
`BatchError` carrying the other results once they are all done (``opt_on_error="none"`` /
``"return"``: None or the exception in its place); nothing hangs. ``opt_max_cost`` (USD)
caps what the call spends as `multi_process_one`'s ``max_cost`` does: prompts left unsent
by the cap fail with `BudgetReachedError` and follow ``opt_on_error`` like any other failure.

The calls are plain blocking functions on threads: they work from a script, from a worker
thread, and while an event loop is running in the calling thread (Jupyter). Each has an
asyncio twin, ``await ChatCompletion.acreate(...)`` (and `Completion.acreate`,
`Embedding.acreate`), with the same parameters and results, whose requests are tasks of the
running loop on the same pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .batch.library import SendMode, send_as_batch
from .batch.runner import BatchRunOptions
from .cache import RequestCache
from .config import load_config
from .costs import CostMeter
from .errors import ConfigError
from .flex import async_sender, sender
from .keys import APIKeyManager, KeyState, current_default, get_default_manager
from .models import ChatModel, CompletionModel, EmbeddingModel, OpenAIModel
from .parallel import (
    MAX_ASYNC_CONCURRENCY,
    MAX_CONCURRENCY,
    BatchError,
    OnError,
    aparallel_map,
    default_concurrency,
    parallel_map,
    pool_watch,
)
from .request import RetryPolicy

__all__ = ["ChatCompletion", "Completion", "Embedding", "append_auth_from_config"]

_PACKAGE_LOGGER = "openai_parallel_toolkit"
# Inputs per embeddings request: several per request is cheaper, a few requests per key
# spread the work.
EMBEDDING_INPUTS_PER_REQUEST = 16


def append_auth_from_config(config_path: str | os.PathLike[str]) -> APIKeyManager:
    """Add the keys of a YAML (or JSON) key file to the default pool; return the pool.

    Without a default pool yet, the environment's keys (and ``./.env``) are taken too when
    there are any, as openai-manager did.
    """
    config = load_config(config_path)
    pool = current_default()
    if pool is None:
        try:
            pool = APIKeyManager(dotenv=True)
        except ConfigError:  # no keys in the environment: the file's keys alone
            return APIKeyManager(config=config)
    pool.add_keys(config)
    return pool


def _pool(manager: APIKeyManager | None) -> APIKeyManager:
    if manager is not None:
        return manager
    if current_default() is None:
        # openai-manager read the environment and ./.env; build the default pool the same way.
        with contextlib.suppress(ConfigError):
            return APIKeyManager(dotenv=True)
    return get_default_manager()  # raises the explanatory ConfigError


@contextlib.contextmanager
def _log_level(level: int | None) -> Iterator[None]:
    if level is None:
        yield
        return
    logger = logging.getLogger(_PACKAGE_LOGGER)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _as_result(response: Any, raw: bool) -> Any:
    if raw:
        return response
    to_dict = getattr(response, "to_dict", None)
    return to_dict() if callable(to_dict) else response


@dataclass(frozen=True, slots=True)
class _Batch:
    """One batched call, ready to send: its pool, requests and how to run them."""

    pool: APIKeyManager
    models: list[OpenAIModel]
    policy: RetryPolicy
    cache: RequestCache | bool | None
    progress: bool | None
    desc: str
    meter: CostMeter | None = None
    how: SendMode = field(default_factory=SendMode)

    def concurrency(self, cap: int) -> int:
        """Requests in flight: the pool's default, or openai-manager's per-key knob."""
        knobs = self.pool.knobs
        count = default_concurrency(self.pool, cap=cap)
        if knobs.concurrency_per_key is not None:
            count = knobs.concurrency_per_key * sum(
                key.state is not KeyState.REMOVED for key in self.pool.statistics().keys
            )
        return max(1, min(count, knobs.global_request_limit, len(self.models)))

    def counting_meter(self) -> CostMeter:
        """The call's cap, or an uncapped meter that counts its answers for the bar."""
        return self.meter if self.meter is not None else CostMeter()

    def send(self) -> list[Any]:
        """Every response, or the exception in its place, in input order (threads)."""
        if self.how.mode == "batch":
            with _log_level(self.pool.knobs.log_level):
                return send_as_batch(self.models, manager=self.pool, options=self.how.run_options())
        meter = self.counting_meter()
        count = self.concurrency(MAX_CONCURRENCY)

        send = sender(self.how.mode == "flex", self.how.standard_fallback)

        def one(model: OpenAIModel) -> Any:
            return send(
                model,
                manager=self.pool,
                policy=self.policy,
                raw=True,
                cache=self.cache,
                meter=meter,
            )

        with _log_level(self.pool.knobs.log_level):
            return parallel_map(
                one,
                self.models,
                threads=count,
                on_error="return",
                progress=self.progress,
                desc=self.desc,
                watch=pool_watch(self.pool, len(self.models), meter, count),
            )

    async def asend(self) -> list[Any]:
        """`send` as tasks of the running event loop (a batch run polls in a worker thread)."""
        if self.how.mode == "batch":
            return await asyncio.to_thread(self.send)
        meter = self.counting_meter()
        count = self.concurrency(MAX_ASYNC_CONCURRENCY)

        send = async_sender(self.how.mode == "flex", self.how.standard_fallback)

        async def one(model: OpenAIModel) -> Any:
            return await send(
                model,
                manager=self.pool,
                policy=self.policy,
                raw=True,
                cache=self.cache,
                meter=meter,
            )

        with _log_level(self.pool.knobs.log_level):
            return await aparallel_map(
                one,
                self.models,
                concurrency=count,
                on_error="return",
                progress=self.progress,
                desc=self.desc,
                watch=pool_watch(self.pool, len(self.models), meter, count),
            )


class _BatchCall:
    """What the three endpoints share: options, concurrency, retries, order, errors."""

    endpoint: ClassVar[str]

    @classmethod
    def _models(cls, params: dict[str, Any]) -> list[OpenAIModel]:
        raise NotImplementedError

    @classmethod
    def _batch(
        cls,
        name: str,
        no_tqdm: bool,
        opt_attempts: int | None,
        opt_manager: APIKeyManager | None,
        opt_cache: RequestCache | bool | None,
        opt_max_cost: float | None,
        params: dict[str, Any],
        how: SendMode,
    ) -> _Batch:
        if how.mode == "batch" and opt_max_cost is not None:
            raise ValueError(
                "opt_max_cost caps online requests: leave it out with opt_mode='batch'"
            )
        if how.mode == "online" and how.standard_fallback:
            raise ValueError("opt_fallback='standard' needs opt_mode='flex' or opt_mode='batch'")
        pool = _pool(opt_manager)
        attempts = opt_attempts if opt_attempts is not None else pool.knobs.attempts_per_prompt
        return _Batch(
            pool=pool,
            models=cls._models(params),
            policy=RetryPolicy(max_retries=max(0, attempts - 1)),
            cache=opt_cache,
            progress=False if no_tqdm else None,
            desc=f"{cls.__name__}.{name}",
            meter=None if opt_max_cost is None else CostMeter(opt_max_cost),
            how=how,
        )

    @classmethod
    def create(
        cls,
        *,
        no_tqdm: bool = False,
        return_openai_response: bool = False,
        opt_attempts: int | None = None,
        opt_on_error: OnError = "raise",
        opt_manager: APIKeyManager | None = None,
        opt_cache: RequestCache | bool | None = None,
        opt_max_cost: float | None = None,
        opt_mode: str | None = None,
        opt_fallback: str = "none",
        opt_batch_options: BatchRunOptions | None = None,
        mode: str | None = None,
        **params: Any,
    ) -> list[Any]:
        """Send the request(s) described by the official parameters; results in input order."""
        batch = cls._batch(
            "create",
            no_tqdm,
            opt_attempts,
            opt_manager,
            opt_cache,
            opt_max_cost,
            params,
            _send_mode(mode, opt_mode, opt_fallback, opt_batch_options),
        )
        return _results(batch.send(), return_openai_response, opt_on_error)

    @classmethod
    async def acreate(
        cls,
        *,
        no_tqdm: bool = False,
        return_openai_response: bool = False,
        opt_attempts: int | None = None,
        opt_on_error: OnError = "raise",
        opt_manager: APIKeyManager | None = None,
        opt_cache: RequestCache | bool | None = None,
        opt_max_cost: float | None = None,
        opt_mode: str | None = None,
        opt_fallback: str = "none",
        opt_batch_options: BatchRunOptions | None = None,
        mode: str | None = None,
        **params: Any,
    ) -> list[Any]:
        """``await ...acreate(...)``: `create` from an event loop, requests sent as its tasks."""
        batch = cls._batch(
            "acreate",
            no_tqdm,
            opt_attempts,
            opt_manager,
            opt_cache,
            opt_max_cost,
            params,
            _send_mode(mode, opt_mode, opt_fallback, opt_batch_options),
        )
        return _results(await batch.asend(), return_openai_response, opt_on_error)


def _send_mode(
    mode: str | None,
    opt_mode: str | None,
    fallback: str,
    batch_options: BatchRunOptions | None,
) -> SendMode:
    """The call's `SendMode`: ``mode=`` and ``opt_mode=`` name the same option (no request
    parameter of these endpoints is called ``mode``); giving both is an error."""
    if mode is not None and opt_mode is not None:
        raise TypeError("give mode= or opt_mode=, not both (they are the same option)")
    chosen = mode if mode is not None else opt_mode
    return SendMode(mode=chosen or "online", fallback=fallback, batch_options=batch_options)


def _results(responses: list[Any], raw: bool, on_error: OnError) -> list[Any]:
    """The caller's results from the responses (exceptions in place of failures)."""
    errors = {i: r for i, r in enumerate(responses) if isinstance(r, BaseException)}
    results = [None if i in errors else _as_result(r, raw) for i, r in enumerate(responses)]
    return _apply_on_error(errors, results, on_error)


def _apply_on_error(
    errors: dict[int, BaseException], results: list[Any], on_error: OnError
) -> list[Any]:
    if on_error not in ("raise", "none", "return"):
        raise ValueError(f"opt_on_error must be 'raise', 'none' or 'return', not {on_error!r}")
    if errors and on_error == "raise":
        raise BatchError(results, errors)
    if on_error == "return":
        for index, error in errors.items():
            results[index] = error
    return results


def _is_batch_of_prompts(prompt: Any) -> bool:
    # A list of strings, or a list of token lists, is a batch; a list of ints is one prompt.
    return isinstance(prompt, list) and bool(prompt) and not isinstance(prompt[0], int)


class Completion(_BatchCall):
    """``Completion.create(model=..., prompt=[...], ...)``: one request per prompt."""

    endpoint = "completions"

    @classmethod
    def _models(cls, params: dict[str, Any]) -> list[OpenAIModel]:
        params = dict(params)
        prompt = params.pop("prompt", None)
        if prompt is None:
            raise TypeError("Completion.create needs prompt=")
        prompts = prompt if _is_batch_of_prompts(prompt) else [prompt]
        return [CompletionModel(p, **params) for p in prompts]


class ChatCompletion(_BatchCall):
    """``ChatCompletion.create(model=..., messages=[conversation, ...], ...)``.

    A list of conversations (each a list of message dicts) runs in parallel; a single
    conversation runs alone (and still returns a list of one result).
    """

    endpoint = "chat.completions"

    @classmethod
    def _models(cls, params: dict[str, Any]) -> list[OpenAIModel]:
        params = dict(params)
        messages = params.pop("messages", None)
        if not isinstance(messages, list) or not messages:
            raise TypeError("ChatCompletion.create needs messages= (a conversation or a list)")
        conversations = messages if isinstance(messages[0], list) else [messages]
        return [ChatModel(messages=conversation, **params) for conversation in conversations]


class Embedding(_BatchCall):
    """``Embedding.create(model=..., input=[...])``: one result per input, in order.

    Inputs are sent several per request (up to 16); each input's result is shaped like the
    API's answer for that input alone, with its share of the usage.
    """

    endpoint = "embeddings"

    @classmethod
    def create(cls, **kwargs: Any) -> list[Any]:
        """Embed `input` (a string or a list); one result per input, in input order."""
        finish = _embedding_chunks(kwargs)
        return finish(super().create(**kwargs))

    @classmethod
    async def acreate(cls, **kwargs: Any) -> list[Any]:
        """``await Embedding.acreate(...)``: `create` from an event loop."""
        finish = _embedding_chunks(kwargs)
        return finish(await super().acreate(**kwargs))

    @classmethod
    def _models(cls, params: dict[str, Any]) -> list[OpenAIModel]:
        params = dict(params)
        chunks = params.pop("input")
        return [EmbeddingModel(chunk, **params) for chunk in chunks]


def _embedding_chunks(kwargs: dict[str, Any]) -> Callable[[list[Any]], list[Any]]:
    """Turn `kwargs` (changed in place) into a batched call of chunks of inputs; return what
    makes one result per input of the chunks' responses."""
    raw = bool(kwargs.get("return_openai_response", False))
    on_error: OnError = kwargs.pop("opt_on_error", "raise")
    kwargs["opt_on_error"] = "return"
    inputs = kwargs.get("input")
    if inputs is None:
        raise TypeError("Embedding.create needs input=")
    single = isinstance(inputs, str) or (
        isinstance(inputs, list) and bool(inputs) and isinstance(inputs[0], int)
    )
    items = [inputs] if single else list(inputs)
    chunks = [
        items[i : i + EMBEDDING_INPUTS_PER_REQUEST]
        for i in range(0, len(items), EMBEDDING_INPUTS_PER_REQUEST)
    ]
    kwargs["input"] = chunks
    kwargs["return_openai_response"] = True

    def finish(responses: list[Any]) -> list[Any]:
        results: list[Any] = []
        errors: dict[int, BaseException] = {}
        for chunk, response in zip(chunks, responses, strict=True):
            if isinstance(response, BaseException):
                for _ in chunk:
                    errors[len(results)] = response
                    results.append(None)
                continue
            results.extend(_split_embeddings(response, chunk, raw))
        return _apply_on_error(errors, results, on_error)

    return finish


def _split_embeddings(response: Any, chunk: Sequence[Any], raw: bool) -> list[Any]:
    """One single-input response per input of a batched embeddings response."""
    data = sorted(response.data, key=lambda item: item.index)
    usage = getattr(response, "usage", None)
    total = getattr(usage, "prompt_tokens", 0) or 0
    sizes = [max(1, len(item) if isinstance(item, list) else len(str(item))) for item in chunk]
    results = []
    for item, size in zip(data, sizes, strict=True):
        share = math.ceil(total * size / sum(sizes)) if total else 0
        record = {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": item.embedding}],
            "model": response.model,
            "usage": {"prompt_tokens": share, "total_tokens": share},
        }
        if raw:
            record = type(response).construct(**record)
        results.append(record)
    return results
