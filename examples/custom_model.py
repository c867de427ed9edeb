"""Your own request model: subclass `OpenAIModel` and use it like the built-in ones.

    python examples/custom_model.py [CONFIG]

`Translate` sends a chat request of its own making with the client of the key the pool chose,
tells the rate limiter what it may cost and describes itself, so its responses can be cached.
It needs no `parse`: the default one returns the reply's text, as the original toolkit did
(override it to return something else, or pass ``raw=True`` for the response object).
It is used with `request_openai_api`, then with `multi_process_one`, where each tuple
``(prompt, content, target_language)`` fills the model's parameters: prompt and content by
name, the values after them in declared order.

CONFIG is a JSON or YAML key file; without one, keys come from OPENAI_API_KEY* variables, else
the example runs against the bundled fake OpenAI server, which echoes instead of translating.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _setup import key_pool

from openai_parallel_toolkit import (
    OpenAIModel,
    RequestCache,
    estimate_chat_tokens,
    multi_process_one,
    request_openai_api,
)

if TYPE_CHECKING:
    import openai


class Translate(OpenAIModel):
    """Translate `content` into `target_language`; `prompt`, if any, is the system message."""

    model = "gpt-4o-mini"
    max_tokens = 300

    def __init__(self, content: str, prompt: str = "", target_language: str = "French") -> None:
        self.target_language = target_language
        self.messages = [
            {"role": "user", "content": f"Translate into {target_language}: {content}"}
        ]
        if prompt:
            self.messages.insert(0, {"role": "system", "content": prompt})

    def generate(self, client: openai.OpenAI) -> Any:
        return client.chat.completions.create(
            model=self.model, messages=self.messages, max_tokens=self.max_tokens, temperature=0
        )

    def estimate_tokens(self) -> int:
        # Reserved against the key's token limit before sending: the prompt plus the longest
        # answer allowed, as OpenAI counts it.
        return estimate_chat_tokens(self.messages, self.model) + self.max_tokens

    def describe(self) -> dict[str, Any]:
        # Everything that shapes the answer: requests with equal descriptions share one cached
        # response. Returning None (the default) would mean "never cache".
        return {
            "endpoint": "chat.completions",
            "model": self.model,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }


DATA = [
    ("Keep it short.", "Where is the railway station?", "French"),
    ("Keep it short.", "Two coffees, please.", "Spanish"),
    ("Be formal.", "Thank you for your help.", "German"),
    ("Be formal.", "The meeting starts at nine.", "Italian"),
]


def main(argv: list[str]) -> int:
    with key_pool(argv[1] if len(argv) > 1 else None, name="custom") as pool:
        print(request_openai_api(Translate(content="Good morning!", target_language="Dutch")))

        results = multi_process_one(data=DATA, openai_model_class=Translate)
        for (_, content, language), result in zip(DATA, results, strict=True):
            print(f"{language}: {content!r} -> {result!r}")

        # describe() makes the responses cacheable: the second batch is served from the cache.
        with (
            tempfile.TemporaryDirectory() as folder,
            RequestCache(Path(folder) / "c.sqlite") as cache,
        ):
            multi_process_one(data=DATA, openai_model_class=Translate, cache=cache)
            sent = pool.statistics().requests
            again = multi_process_one(data=DATA, openai_model_class=Translate, cache=cache)
            print(
                f"Same batch again: {len(again)} results, "
                f"{pool.statistics().requests - sent} requests sent, {cache.hits} from the cache"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
