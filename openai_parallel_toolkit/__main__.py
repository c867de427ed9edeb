"""Command line: ``openai-parallel-toolkit COMMAND ...`` or ``python -m openai_parallel_toolkit``.

Commands:
  run              send a JSONL file of requests, write a JSONL file of results (resumable)
  keys check       check every key: works or why not, its limits, its latency
  serve            run the OpenAI-compatible proxy over your keys (needs the ``server`` extra)
  fake-server      run the bundled fake OpenAI server (needs the ``server`` extra)
  tiktoken-cache   seed tiktoken's cache with verified encoding files, for offline use

Each command has --help. Example:
  openai-parallel-toolkit run requests.jsonl -o results.jsonl --config config.yaml
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]


def _fake_server(argv: list[str]) -> int:
    try:
        from .testing.fake_server import main as fake_server_main
    except ImportError as exc:
        print(
            f"error: the fake server needs the server extra ({exc}); "
            'install it with: pip install ".[server]" in the project folder',
            file=sys.stderr,
        )
        return 2
    return fake_server_main(argv, prog="openai-parallel-toolkit fake-server")


def _run(argv: list[str]) -> int:
    from .cli import run_main

    return run_main(argv)


def _keys(argv: list[str]) -> int:
    from .cli import keys_main

    return keys_main(argv)


def _serve(argv: list[str]) -> int:
    from .serving import main as serving_main

    return serving_main(argv, prog="openai-parallel-toolkit serve")


def _tiktoken_cache(argv: list[str]) -> int:
    from .tiktoken_cache import main as tiktoken_cache_main

    return tiktoken_cache_main(argv, prog="openai-parallel-toolkit tiktoken-cache")


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "run": _run,
    "keys": _keys,
    "serve": _serve,
    "fake-server": _fake_server,
    "tiktoken-cache": _tiktoken_cache,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[command](rest)


if __name__ == "__main__":
    raise SystemExit(main())
