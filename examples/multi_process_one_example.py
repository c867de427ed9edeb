"""Many requests in parallel, results in input order: the original toolkit's `multi_process_one`.

    python examples/multi_process_one_example.py [CONFIG]

Then the same with one item that fails for good, using ``on_error="return"`` so the failure
takes its item's place in the results instead of raising.

CONFIG is a JSON or YAML key file; without one, keys come from OPENAI_API_KEY* variables, else
the example runs against the bundled fake OpenAI server (which answers "echo: <content>").
"""

from __future__ import annotations

import sys

from _setup import key_pool

from openai_parallel_toolkit import Gpt35Turbo, multi_process_one

# Each tuple is (prompt, content): the system message, then the user message (which the fake
# server echoes, so every answer there is "echo: world").
DATA = [
    ("hello1", "world"),
    ("hello2", "world"),
    ("hello3", "world"),
    ("hello4", "world"),
    ("hello5", "world"),
]

# The fake server answers any prompt holding this marker with the 400 context_length_exceeded
# error a real API gives for a text longer than the model's context window. Against a real
# API the 30,000 repeated words do that by themselves (gpt-3.5-turbo reads 16,385 tokens);
# such a request is rejected before the model runs.
TOO_LONG = "[[context_length_exceeded]]" + " word" * 30_000


def main(argv: list[str]) -> int:
    with key_pool(argv[1] if len(argv) > 1 else None, name="multi"):
        results = multi_process_one(data=DATA, openai_model_class=Gpt35Turbo, temperature=0.7)
        for (prompt, content), result in zip(DATA, results, strict=True):
            print(f"{prompt!r}, {content!r} -> {result!r}")

        questions = [
            ("Answer in one word.", "What colour is the sky?"),
            ("Answer in one word.", TOO_LONG),
            ("Answer in one word.", "What colour is grass?"),
        ]
        # The default, on_error="raise", would raise a BatchError after every item ended.
        answers = multi_process_one(
            data=questions, openai_model_class=Gpt35Turbo, temperature=0.7, on_error="return"
        )
        for index, answer in enumerate(answers):
            if isinstance(answer, Exception):
                print(f"item {index} failed: {type(answer).__name__}: {str(answer)[:120]}")
            else:
                print(f"item {index} -> {answer!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
