"""Command line: ``openai-parallel-toolkit COMMAND ...`` or ``python -m openai_parallel_toolkit``.

The commands (``run``, ``keys check``, ``serve``, ``fake-server``, ``tiktoken-cache``) are
listed by ``--help``; each command has its own ``--help`` with an example. Options before the
command (``--version``, ``-v`` / ``-q`` / ``--log-level``) apply to every command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .cli import CommandLineParser, add_logging_options, configure_logging, logging_level

__all__ = ["main"]

PROG = "openai-parallel-toolkit"

_DESCRIPTION = """\
Push requests through OpenAI-compatible APIs at the full rate limit of many API keys.

commands:
  run              send a JSONL file of requests, write a JSONL file of results (resumable)
  keys check       check every key: works or why not, its limits, its latency
  batch            status, collect or cancel the batches of a "run --mode batch" job
  serve            run the OpenAI-compatible proxy over your keys (needs the server extra)
  fake-server      run the bundled fake OpenAI server (needs the server extra)
  tiktoken-cache   seed tiktoken's cache with verified encoding files, for offline use
"""

_EPILOG = f"""\
Each command has --help. Example:
  {PROG} run requests.jsonl -o results.jsonl --config config.yaml
"""


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
    return fake_server_main(argv, prog=f"{PROG} fake-server")


def _run(argv: list[str]) -> int:
    from .cli import run_main

    return run_main(argv, prog=f"{PROG} run")


def _keys(argv: list[str]) -> int:
    from .cli import keys_main

    return keys_main(argv, prog=f"{PROG} keys")


def _batch(argv: list[str]) -> int:
    from .batch.command import batch_main

    return batch_main(argv, prog=f"{PROG} batch")


def _serve(argv: list[str]) -> int:
    from .serving import main as serving_main

    return serving_main(argv, prog=f"{PROG} serve")


def _tiktoken_cache(argv: list[str]) -> int:
    from .tiktoken_cache import main as tiktoken_cache_main

    return tiktoken_cache_main(argv, prog=f"{PROG} tiktoken-cache")


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "run": _run,
    "keys": _keys,
    "batch": _batch,
    "serve": _serve,
    "fake-server": _fake_server,
    "tiktoken-cache": _tiktoken_cache,
}


def _parser() -> CommandLineParser:
    parser = CommandLineParser(
        prog=PROG,
        usage=f"{PROG} [-h] [--version] [-v | -q | --log-level LEVEL] COMMAND ...",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_logging_options(parser)
    parser.add_argument(
        "command", nargs="?", metavar="COMMAND", help="one of: " + ", ".join(COMMANDS)
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for bad usage, with a message on stderr)."""
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:  # no command: the usage and the commands, on stderr
        parser.print_help(sys.stderr)
        return 2
    if args.command not in COMMANDS:
        parser.error(f"unknown command {args.command!r}; one of: {', '.join(COMMANDS)}")
    configure_logging(logging_level(args) or logging.WARNING)
    return COMMANDS[args.command](args.args)


if __name__ == "__main__":
    raise SystemExit(main())
