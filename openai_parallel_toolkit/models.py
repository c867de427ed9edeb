"""Request models: what to send, how much it may cost, and what to return.

A model object describes one logical request. The engine calls `estimate_tokens()` to reserve
rate-limit budget, `generate(client)` with the `openai.OpenAI` client of the key it chose (the
asyncio engine: `agenerate(client)` with its `openai.AsyncOpenAI` client), and
`parse(response)` to turn the response into the caller's result. To support another endpoint,
subclass `OpenAIModel` and implement `generate` (and `agenerate`, to send from an event loop
without a worker thread).
"""

from __future__ import annotations

import abc
import inspect
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from .tokens import (
    DEFAULT_COMPLETION_TOKENS,
    estimate_chat_tokens,
    estimate_request_tokens,
    estimate_tokens,
    request_output_allowance,
)

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "ChatModel",
    "CompletionModel",
    "EmbeddingModel",
    "Gpt4",
    "Gpt35Turbo",
    "Gpt35Turbo0613",
    "Gpt35Turbo16K",
    "OpenAIModel",
    "RawRequest",
    "sends_async",
]


class OpenAIModel(abc.ABC):
    """One request to an OpenAI-compatible API.

    Subclasses implement `generate(client)`, and `agenerate(client)` to be sent from an event
    loop without a worker thread; they may override `estimate_tokens` (the rate-limit cost
    reserved before sending), `parse` (the result handed back) and `usage_tokens`.
    """

    @abc.abstractmethod
    def generate(self, client: openai.OpenAI) -> Any:
        """Send the request with `client` (the chosen key's client) and return the response.

        `client` is the `openai.OpenAI` client of the key the pool chose for this attempt; use
        it instead of the module-level ``openai`` functions, which know nothing of the pool.
        """

    async def agenerate(self, client: openai.AsyncOpenAI) -> Any:
        """Send the request with `client` (an `openai.AsyncOpenAI`); return the response.

        The asyncio engine calls it when the class that defines `generate` (or a subclass of
        it) defines `agenerate` too (`sends_async`); otherwise it runs `generate` with the
        key's sync client in a worker thread, so the event loop is never blocked. This default
        only raises `NotImplementedError`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define agenerate")

    def estimate_tokens(self) -> int:
        """Tokens this request may consume, reserved against the token limit before sending.

        By default the prompt estimate plus the output allowance. Overriding this instead of
        the two methods below is fine; the pool then cannot learn how its prompt estimates
        compare with the server's counts.
        """
        return (self.estimate_prompt_tokens() or 0) + self.max_output_tokens()

    def estimate_prompt_tokens(self) -> int | None:
        """The prompt's tokens as counted locally (tiktoken), or None if unknown."""
        return None

    def max_output_tokens(self) -> int:
        """The output allowance the server charges up front (``max_tokens`` x ``n``)."""
        return 0

    def describe(self) -> dict[str, Any] | None:
        """The full request as JSON-able data (endpoint, model, every parameter), or None.

        It keys the response cache: two models with equal descriptions share one cached
        response. None (the default for subclasses) means "never cache this request".
        """
        return None

    def parse(self, response: Any) -> Any:
        """The result `request_openai_api` returns for `response` (unless ``raw=True``).

        As in the original toolkit, the reply's text: for a chat completion the first choice's
        message content, for a legacy completion the first choice's text, for a Responses API
        response its ``output_text``; each stripped, and "" when the reply has no text (tool
        calls, say: override `parse` or pass ``raw=True`` to get at them). Any other response
        (embeddings, streams, dicts, objects of your own) is returned unchanged.
        """
        return _default_result(response)

    def model_name(self) -> str | None:
        """The model this request asks for, which prices its answer (None: the answer's own
        ``model``). By default the object's `model` attribute, if it has one."""
        name = getattr(self, "model", None)
        return name if isinstance(name, str) else None

    def usage_tokens(self, response: Any) -> int | None:
        """Tokens the response says it used (``usage.total_tokens``), or None if unknown."""
        usage = getattr(response, "usage", None)
        total = getattr(usage, "total_tokens", None)
        return total if isinstance(total, int) else None

    def charged_tokens(self, response: Any) -> int | None:
        """What the request cost against the token limit, as far as `response` tells.

        The pool settles its reservation with it (both ways). None (the default) settles with
        `usage_tokens` instead, charging only usage above the reservation.
        """
        return None


def _chat_text(response: Any) -> str:
    """The first choice's message text of a chat completion, stripped ("" when it has none)."""
    return (response.choices[0].message.content or "").strip()


def _completion_text(response: Any) -> str:
    """The first choice's text of a legacy completion, stripped ("" when it has none)."""
    return (response.choices[0].text or "").strip()


def _default_result(response: Any) -> Any:
    """What `OpenAIModel.parse` returns: the text of openai's text responses, else `response`."""
    if "openai" not in sys.modules:
        return response  # then it cannot be one of openai's types: no need to import it
    from openai.types import Completion
    from openai.types.chat import ChatCompletion

    if isinstance(response, ChatCompletion):
        return _chat_text(response)
    if isinstance(response, Completion):
        return _completion_text(response)
    try:
        from openai.types.responses import Response
    except ImportError:  # openai older than the Responses API
        return response
    if isinstance(response, Response):
        return (response.output_text or "").strip()
    return response


def _defined_by(cls: type, name: str) -> type:
    return next(klass for klass in cls.__mro__ if name in vars(klass))


def sends_async(model: OpenAIModel) -> bool:
    """Whether the asyncio engine sends `model` with `agenerate` (else `generate` in a thread).

    True when `agenerate` is defined by the class that defines `generate` or by a subclass of
    it: a subclass of `ChatModel` that overrides only `generate` is sent with its own
    `generate`, not with the `agenerate` it inherits.
    """
    cls = type(model)
    return issubclass(_defined_by(cls, "agenerate"), _defined_by(cls, "generate"))


def check_generate_signature(model: OpenAIModel) -> None:
    """Raise `TypeError` unless ``model.generate(client)`` can be called with one client.

    The original toolkit called ``generate(self)`` and left the key in global ``openai`` state;
    here each attempt passes the chosen key's client instead, so a model written the old way
    would fail on every attempt. `request_openai_api` calls this before anything is sent.
    """
    generate = model.generate
    try:
        signature = inspect.signature(generate)
    except (TypeError, ValueError):  # not introspectable (a C callable): let the call decide
        return
    try:
        signature.bind(object())
    except TypeError:
        cls = type(model)
        shown = signature.replace(return_annotation=inspect.Signature.empty)
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__}.generate{shown} cannot be called as "
            "generate(client). Each request is sent with the openai.OpenAI client of the key "
            "the pool chose, passed to generate(); no global key is set. Change "
            "`def generate(self):` to `def generate(self, client):` and call "
            "`client.chat.completions.create(...)` where the original toolkit called "
            "`openai.ChatCompletion.create(...)`."
        ) from None


def prompt_usage(response: Any) -> int | None:
    """``usage.prompt_tokens`` of a response: the server's own count of the prompt."""
    prompt = getattr(getattr(response, "usage", None), "prompt_tokens", None)
    return prompt if isinstance(prompt, int) else None


def _qualified_name(model: OpenAIModel) -> str:
    # Part of the cache key: a subclass that changes generate() must not share its entries.
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def _max_output(params: Mapping[str, Any]) -> int:
    limit = params.get("max_completion_tokens") or params.get("max_tokens")
    n = params.get("n") or 1
    return int(limit or DEFAULT_COMPLETION_TOKENS) * int(n)


class ChatModel(OpenAIModel):
    """A chat completion with any model and parameters; the result is the assistant's text.

    Give either `messages`, or `content` (the user message) with an optional `prompt` (the
    system message). Every other keyword is passed to ``chat.completions.create``.
    """

    default_model = "gpt-4o-mini"

    def __init__(
        self,
        content: str | None = None,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> None:
        if messages is None:
            if content is None:
                raise ValueError("give either messages= or content=")
            messages = [{"role": "user", "content": content}]
            if prompt:
                messages.insert(0, {"role": "system", "content": prompt})
        elif content is not None or prompt is not None:
            raise ValueError("give either messages= or content=/prompt=, not both")
        if params.get("stream"):
            raise ValueError(
                "ChatModel returns the whole reply and cannot stream; for streaming, subclass "
                "OpenAIModel and consume the stream in generate()"
            )
        self.messages: list[Mapping[str, Any]] = list(messages)
        self.model = model or self.default_model
        self.params = params

    def estimate_prompt_tokens(self) -> int | None:
        return estimate_chat_tokens(self.messages, self.model)

    def max_output_tokens(self) -> int:
        return _max_output(self.params)

    def describe(self) -> dict[str, Any] | None:
        return {
            "endpoint": "chat.completions",
            "class": _qualified_name(self),
            "model": self.model,
            "messages": self.messages,
            **self.params,
        }

    def charged_tokens(self, response: Any) -> int | None:
        # The API charges the prompt and the whole output allowance when the request starts.
        prompt = prompt_usage(response)
        return None if prompt is None else prompt + self.max_output_tokens()

    def generate(self, client: openai.OpenAI) -> Any:
        # The messages are the caller's dicts, passed on as given (the server validates them);
        # openai types them as a union of TypedDicts that plain mappings cannot be checked against.
        messages = cast("list[ChatCompletionMessageParam]", self.messages)
        return client.chat.completions.create(model=self.model, messages=messages, **self.params)

    async def agenerate(self, client: openai.AsyncOpenAI) -> Any:
        messages = cast("list[ChatCompletionMessageParam]", self.messages)
        return await client.chat.completions.create(
            model=self.model, messages=messages, **self.params
        )

    def parse(self, response: Any) -> Any:
        """The first choice's text, stripped ("" when the reply has no text content)."""
        return _chat_text(response)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, messages={len(self.messages)})"


class Gpt35Turbo(ChatModel):
    """The original toolkit's model: system = `prompt`, user = `content`, at `temperature`.

    `model=` chooses another chat model; other keywords go into the request.
    """

    default_model = "gpt-3.5-turbo"

    def __init__(
        self,
        content: str,
        prompt: str = "",
        temperature: float | None = None,
        *,
        model: str | None = None,
        **params: Any,
    ) -> None:
        if temperature is not None:
            params["temperature"] = temperature
        super().__init__(content=content, prompt=prompt, model=model, **params)
        self.content = content
        self.prompt = prompt
        self.temperature = temperature


class Gpt35Turbo16K(Gpt35Turbo):
    """`Gpt35Turbo` on gpt-3.5-turbo-16k (kept from the original toolkit)."""

    default_model = "gpt-3.5-turbo-16k"


class Gpt35Turbo0613(Gpt35Turbo):
    """`Gpt35Turbo` on gpt-3.5-turbo-0613 (kept from the original toolkit)."""

    default_model = "gpt-3.5-turbo-0613"


class Gpt4(Gpt35Turbo):
    """`Gpt35Turbo` on gpt-4 (kept from the original toolkit)."""

    default_model = "gpt-4"


class CompletionModel(OpenAIModel):
    """A legacy text completion; the result is the first choice's text, stripped."""

    def __init__(self, prompt: str, *, model: str = "gpt-3.5-turbo-instruct", **params: Any):
        self.prompt = prompt
        self.model = model
        self.params = params

    def estimate_prompt_tokens(self) -> int | None:
        return estimate_tokens(self.prompt, self.model)

    def max_output_tokens(self) -> int:
        return _max_output(self.params)

    def describe(self) -> dict[str, Any] | None:
        return {
            "endpoint": "completions",
            "model": self.model,
            "prompt": self.prompt,
            **self.params,
        }

    def charged_tokens(self, response: Any) -> int | None:
        prompt = prompt_usage(response)
        return None if prompt is None else prompt + self.max_output_tokens()

    def generate(self, client: openai.OpenAI) -> Any:
        return client.completions.create(model=self.model, prompt=self.prompt, **self.params)

    async def agenerate(self, client: openai.AsyncOpenAI) -> Any:
        return await client.completions.create(model=self.model, prompt=self.prompt, **self.params)

    def parse(self, response: Any) -> Any:
        """The first choice's text, stripped ("" when it has none)."""
        return _completion_text(response)

    def __repr__(self) -> str:
        return f"CompletionModel(model={self.model!r})"


class EmbeddingModel(OpenAIModel):
    """Embeddings of one text or a list of texts; the result is a vector or a list of vectors."""

    def __init__(
        self, input: str | Sequence[str], *, model: str = "text-embedding-3-small", **params: Any
    ):
        self.input = input
        self.model = model
        self.params = params

    def estimate_prompt_tokens(self) -> int | None:
        texts = [self.input] if isinstance(self.input, str) else self.input
        return sum(estimate_tokens(text, self.model) for text in texts)

    def describe(self) -> dict[str, Any] | None:
        return {
            "endpoint": "embeddings",
            "class": _qualified_name(self),
            "model": self.model,
            "input": self.input,
            **self.params,
        }

    def charged_tokens(self, response: Any) -> int | None:
        return prompt_usage(response)

    def generate(self, client: openai.OpenAI) -> Any:
        # A list for a sequence: openai's parameter type excludes str from its sequences.
        texts = self.input if isinstance(self.input, str) else list(self.input)
        return client.embeddings.create(model=self.model, input=texts, **self.params)

    async def agenerate(self, client: openai.AsyncOpenAI) -> Any:
        texts = self.input if isinstance(self.input, str) else list(self.input)
        return await client.embeddings.create(model=self.model, input=texts, **self.params)

    def parse(self, response: Any) -> Any:
        vectors = [item.embedding for item in sorted(response.data, key=lambda d: d.index)]
        return vectors[0] if isinstance(self.input, str) else vectors

    def __repr__(self) -> str:
        count = 1 if isinstance(self.input, str) else len(self.input)
        return f"EmbeddingModel(model={self.model!r}, inputs={count})"


class RawRequest(OpenAIModel):
    """A request body sent unchanged to an endpoint; the result is the answer's JSON (a dict).

    `endpoint` is ``"chat"``, ``"completions"``, ``"embeddings"`` or ``"responses"``. Used by
    the command line's JSONL jobs, where every line is a request body of its own.
    """

    PATHS: ClassVar[dict[str, str]] = {
        "chat": "/chat/completions",
        "completions": "/completions",
        "embeddings": "/embeddings",
        "responses": "/responses",
    }

    def __init__(self, endpoint: str, body: Mapping[str, Any]) -> None:
        if endpoint not in self.PATHS:
            raise ValueError(f"endpoint must be one of {', '.join(self.PATHS)}, not {endpoint!r}")
        self.endpoint = endpoint
        self.path = self.PATHS[endpoint]
        self.body = dict(body)

    def estimate_tokens(self) -> int:
        return estimate_request_tokens(self.path, self.body)

    def max_output_tokens(self) -> int:
        return request_output_allowance(self.path, self.body)

    def generate(self, client: openai.OpenAI) -> Any:
        return client.post(self.path, body=self.body, cast_to=object)

    async def agenerate(self, client: openai.AsyncOpenAI) -> Any:
        return await client.post(self.path, body=self.body, cast_to=object)

    def parse(self, response: Any) -> Any:
        """The answer's JSON as the server sent it, whatever the endpoint."""
        return response

    def model_name(self) -> str | None:
        name = self.body.get("model")
        return name if isinstance(name, str) else None

    def usage_tokens(self, response: Any) -> int | None:
        usage = response.get("usage") if isinstance(response, dict) else None
        total = usage.get("total_tokens") if isinstance(usage, dict) else None
        return total if isinstance(total, int) else None

    def describe(self) -> dict[str, Any] | None:
        return {"endpoint": self.path, **self.body}

    def __repr__(self) -> str:
        return f"RawRequest({self.endpoint!r}, model={self.body.get('model')!r})"
