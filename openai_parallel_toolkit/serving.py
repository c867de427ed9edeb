"""``python -m openai_parallel_toolkit.serving``: run the OpenAI-compatible proxy in the foreground.

    python -m openai_parallel_toolkit.serving --host 127.0.0.1 --port 8000 \\
        --api-key-file ~/.proxy-key --config config.yaml

Then, in any program: ``openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="CLIENT_KEY")``.
Without --config the keys come from the environment (``OPENAI_API_KEY*``, ``./.env``).
The client key comes from --api-key-file, the ``OPENAI_PARALLEL_TOOLKIT_PROXY_KEY`` variable or
--api_key (visible to other users of the machine in the process list).
openai-manager's flag names (--api_key, --custom_config) are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .cli import add_redis_option, load_pool_config

if TYPE_CHECKING:
    import socket

    from .server import ProxyServer

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "KEY_ENV_VAR",
    "build_parser",
    "main",
]

# Here rather than in .server / .asgi, so that --help works without the server extra.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
KEY_ENV_VAR = "OPENAI_PARALLEL_TOOLKIT_PROXY_KEY"

N = TypeVar("N", int, float)


def _number(
    kind: Callable[[str], N],
    *,
    minimum: float,
    inclusive: bool = True,
    maximum: float = math.inf,
) -> Callable[[str], N]:
    """An argparse type: a finite `kind` number in [minimum, maximum] (or (minimum, maximum])."""
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
    wanted = f"{'an integer' if kind is int else 'a number'} {bound}"
    if maximum != math.inf:
        wanted += f" and <= {maximum:g}"

    def convert(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        low_ok = value >= minimum if inclusive else value > minimum
        if not (math.isfinite(value) and low_ok and value <= maximum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return convert


def _host(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected an interface name or address, got ''")
    return text


def _key_file(text: str) -> str:
    """An argparse type: the client key read from the file `text` (first line, stripped)."""
    try:
        lines = Path(text).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise argparse.ArgumentTypeError(f"cannot read {text}: {reason}") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise argparse.ArgumentTypeError(f"{text} holds no key on its first line")
    return key


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The proxy's command-line arguments; every value is checked as it is parsed."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m openai_parallel_toolkit.serving",
        description="Serve an OpenAI-compatible proxy that spreads requests over a pool of keys.",
        epilog=(
            "The client key: --api-key-file PATH, or the environment variable "
            f"{KEY_ENV_VAR}, or --api_key (which other users of the machine can read in the "
            "process list). example: %(prog)s --port 8000 --api-key-file ~/.proxy-key "
            "--config config.yaml"
        ),
    )
    _add_address_options(parser)
    _add_client_key_options(parser)
    parser.add_argument(
        "--config",
        "--custom_config",
        dest="config",
        help="JSON or YAML key file (default: OPENAI_API_KEY* variables and ./.env)",
    )
    _add_request_options(parser)
    add_redis_option(parser)
    _add_connection_options(parser)
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request to stderr (client, request line, status)",
    )
    return parser


def _add_address_options(parser: argparse.ArgumentParser) -> None:
    """Where the proxy listens: ``--host``, ``--port``."""
    parser.add_argument(
        "--host", type=_host, default="127.0.0.1", help="interface to bind (127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=_number(int, minimum=0, maximum=65535),
        default=8000,
        help="port, 0 for any free one (8000)",
    )


def _add_client_key_options(parser: argparse.ArgumentParser) -> None:
    """The key clients must send: ``--api_key`` or ``--api-key-file``, or ``--no-auth``."""
    key = parser.add_mutually_exclusive_group()
    key.add_argument(
        "--api_key",
        "--api-key",
        dest="api_key",
        help=f"the key clients must send (or --api-key-file, or ${KEY_ENV_VAR}); "
        "required unless --no-auth",
    )
    key.add_argument(
        "--api-key-file",
        dest="api_key",
        type=_key_file,
        metavar="PATH",
        help="read the client key from the first line of PATH",
    )
    parser.add_argument(
        "--no-auth", action="store_true", help="accept any client (trusted local use only)"
    )


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    """What one request may take: ``--max-body-bytes``, ``--max-wait`` for a free key."""
    parser.add_argument(
        "--max-body-bytes",
        type=_number(int, minimum=1),
        default=DEFAULT_MAX_BODY_BYTES,  # server.DEFAULT_MAX_BODY_BYTES is this one
        help=f"larger request bodies get 413 ({DEFAULT_MAX_BODY_BYTES})",
    )
    parser.add_argument(
        "--max-wait",
        type=_number(float, minimum=0),
        default=10.0,
        help="seconds to wait for a free key before 429 (10)",
    )


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Connections upstream and from clients: ``--timeout``, ``--header-timeout``,
    ``--max-connections``."""
    parser.add_argument(
        "--timeout",
        type=_number(float, minimum=0, inclusive=False),
        default=120.0,
        help="upstream timeout, seconds (120)",
    )
    parser.add_argument(
        "--header-timeout",
        type=_number(float, minimum=0, inclusive=False),
        default=DEFAULT_HEADER_TIMEOUT,
        help="seconds a client has to send a request's headers, then it is cut off "
        f"({DEFAULT_HEADER_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=_number(int, minimum=1),
        default=None,
        help="open client connections at most; more get 503 "
        "(default: half the open-file limit, at most 4096)",
    )


def _client_key(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The key clients must send (None with --no-auth); exits 2 when there is none."""
    if args.no_auth:
        return None
    key = args.api_key or os.environ.get(KEY_ENV_VAR, "").strip()
    if not key:
        parser.error(
            f"a client key is required: --api-key-file PATH, ${KEY_ENV_VAR} or --api_key "
            "(or --no-auth to accept any client)"
        )
    return key


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _enable_access_log() -> None:
    from uvicorn.logging import AccessFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        AccessFormatter(
            '%(asctime)s %(client_addr)s "%(request_line)s" %(status_code)s', use_colors=False
        )
    )
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the proxy until Ctrl-C; returns the exit status (2: bad arguments or start-up)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    client_key = _client_key(parser, args)
    missing = _missing_server_extra()
    if missing is not None:
        print(
            f"error: the proxy needs the server extra ({missing}); "
            'install it with: pip install ".[server]" in the project folder',
            file=sys.stderr,
        )
        return 2
    from .asgi import bind
    from .errors import ConfigError
    from .keys import APIKeyManager
    from .options import PoolOptions
    from .server import ProxyServer

    options = PoolOptions(timeout=args.timeout)
    try:
        manager = APIKeyManager(
            config=load_pool_config(args.config, None, args.redis), options=options
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(
            f"error: cannot listen on {_address(args.host, args.port)}: {reason}", file=sys.stderr
        )
        return 2
    proxy = ProxyServer(
        manager,
        client_key,
        max_body_bytes=args.max_body_bytes,
        max_wait=args.max_wait,
        timeout=args.timeout,
    )
    _serve(args, proxy, sock, manager.key_count)
    return 0


def _missing_server_extra() -> ImportError | None:
    """Why the server extra (uvicorn, starlette) cannot be imported, or None when it can."""
    try:
        import uvicorn  # noqa: F401

        from . import asgi, server  # noqa: F401
    except ImportError as exc:
        return exc
    return None


def _serve(
    args: argparse.Namespace, proxy: ProxyServer, sock: socket.socket, key_count: int
) -> None:
    """Serve `proxy` on the bound `sock` until Ctrl-C, then close both."""
    import uvicorn

    from .asgi import uvicorn_config

    config = uvicorn_config(
        proxy.app,
        header_timeout=args.header_timeout,
        max_connections=args.max_connections,
        access_log=args.access_log,
    )
    if args.access_log:
        _enable_access_log()  # after uvicorn_config: uvicorn resets its loggers there
    server = uvicorn.Server(config)
    print(
        f"Proxy on http://{_address(args.host, sock.getsockname()[1])}/v1 over "
        f"{key_count} keys (Ctrl-C to stop)",
        flush=True,
    )

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            await proxy.aclose()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


if __name__ == "__main__":
    raise SystemExit(main())
