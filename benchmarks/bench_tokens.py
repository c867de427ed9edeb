"""Time token counting and splitting on about 5 MB of mixed text.

Run: ``python benchmarks/bench_tokens.py [--mb 5]``. Works offline: unless TIKTOKEN_CACHE_DIR is
set, it seeds and uses ``<repo>/.tiktoken-cache`` (as the tests do).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openai_parallel_toolkit.tiktoken_cache import seed_cache
from openai_parallel_toolkit.tokens import (
    encoding_for,
    num_tokens_from_string,
    split_string_by_tokens,
)

_ENGLISH_TEXT = (
    "the quick brown fox jumps over lazy dogs while rate limits reset every minute and "
    "parallel requests share one pool of keys across threads processes and machines"
)
_ENGLISH = _ENGLISH_TEXT.split(" ")
_CHINESE = list("今天天气很好我们去公园散步数据模型中文测试句子并行请求速率限制密钥")
_OTHER = ["1234", "3.14", "naïve", "café", "😀", "x = f(y)", "{'a': 1}", "https://example.com"]


def mixed_text(megabytes: float, seed: int = 42) -> str:
    """Deterministic text of about `megabytes` MB (UTF-8): English and Chinese sentences, code.

    English sentences end with ". ", Chinese ones with "。", and about one sentence in eight
    ends a paragraph with a newline.
    """
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    parts: list[str] = []
    size = 0
    while size < target:
        if rng.random() < 0.3:
            sentence = "".join(rng.choices(_CHINESE, k=rng.randint(8, 40))) + "。"
        else:
            words = rng.choices(_ENGLISH, k=rng.randint(5, 30))
            if rng.random() < 0.3:
                words.append(rng.choice(_OTHER))
            sentence = " ".join(words).capitalize() + ". "
        if rng.random() < 0.125:
            sentence += "\n"
        parts.append(sentence)
        size += len(sentence.encode())
    return "".join(parts)


def _timed(label: str, megabytes: float, call: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    detail = f"{len(result)} pieces" if isinstance(result, list) else f"{result} tokens"
    print(f"{label:<52} {seconds:7.3f} s {megabytes / seconds:7.2f} MB/s  ({detail})")
    return result


def main(argv: list[str] | None = None) -> int:
    """Generate the text, warm the encodings up, and print one timing line per operation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=5.0, help="size of the text in MB")
    args = parser.parse_args(argv)

    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        cache = Path(__file__).resolve().parent.parent / ".tiktoken-cache"
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
        seed_cache(cache)

    text = mixed_text(args.mb)
    megabytes = len(text.encode()) / 1_000_000
    print(f"text: {megabytes:.2f} MB, {len(text)} characters; python {sys.version.split()[0]}")
    for model in ("gpt-3.5-turbo", "gpt-4o"):
        encoding_for(model)  # load outside the timings

    for model in ("gpt-3.5-turbo", "gpt-4o"):
        encoding = encoding_for(model).name
        _timed(
            f"num_tokens_from_string [{encoding}]",
            megabytes,
            lambda model=model: num_tokens_from_string(text, model),
        )
        for limit, signal in ((1000, "\n"), (500, "。"), (200, ". ")):
            pieces = _timed(
                f"split_string_by_tokens({limit}, {signal!r}) [{encoding}]",
                megabytes,
                lambda model=model, limit=limit, signal=signal: split_string_by_tokens(
                    text, limit, signal, model
                ),
            )
            if "".join(pieces) != text:
                print("error: pieces do not join back to the text", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
