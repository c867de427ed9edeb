"""Quick start: send a batch of chat requests over every configured key, in parallel.

    python examples/quickstart.py [CONFIG]

CONFIG is a JSON or YAML key file (see config.example.json). Without one, keys come from
OPENAI_API_KEY* environment variables; with none of those either, the example starts the
bundled fake OpenAI server on 127.0.0.1 and runs against it, so it works offline.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

from _setup import key_pool

from openai_parallel_toolkit import APIKeyManager, Gpt35Turbo, request_openai_api

SENTENCES = [f"Sentence number {i} of the quick-start batch." for i in range(40)]


def summarise(manager: APIKeyManager, sentence: str) -> str:
    model = Gpt35Turbo(content=sentence, prompt="Repeat the sentence in five words.")
    return request_openai_api(model, manager=manager)


def main(argv: list[str]) -> int:
    with key_pool(argv[1] if len(argv) > 1 else None, name="quickstart") as manager:
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(lambda s: summarise(manager, s), SENTENCES))
        for sentence, result in list(zip(SENTENCES, results, strict=True))[:5]:
            print(f"{sentence!r} -> {result!r}")
        stats = manager.statistics()
        print(
            f"{len(results)} requests done: {stats.successes} succeeded, "
            f"{stats.rate_limited} rate-limited, {stats.errors} errors, {stats.tokens} tokens, "
            f"over {stats.active_keys} keys"
        )
        for key in stats.keys:
            print(f"  {key.key}: {key.successes} ok, state {key.state.value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
