"""``python -m openai_parallel_toolkit.serving``: run the OpenAI-compatible proxy in the foreground.

    python -m openai_parallel_toolkit.serving --host 127.0.0.1 --port 8000 \\
        --api_key CLIENT_KEY --config config.yaml

Then, in any program: ``openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="CLIENT_KEY")``.
Without --config the keys come from the environment (``OPENAI_API_KEY*``, ``./.env``).
openai-manager's flag names (--api_key, --custom_config) are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

# Here rather than imported from .server, so that --help works without the server extra.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The proxy's command-line arguments."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m openai_parallel_toolkit.serving",
        description="Serve an OpenAI-compatible proxy that spreads requests over a pool of keys.",
        epilog="example: %(prog)s --port 8000 --api_key my-client-key --config config.yaml",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (8000)")
    parser.add_argument(
        "--api_key",
        "--api-key",
        dest="api_key",
        help="the key clients must send (required unless --no-auth)",
    )
    parser.add_argument(
        "--no-auth", action="store_true", help="accept any client (trusted local use only)"
    )
    parser.add_argument(
        "--config",
        "--custom_config",
        dest="config",
        help="JSON or YAML key file (default: OPENAI_API_KEY* variables and ./.env)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,  # kept equal to server.DEFAULT_MAX_BODY_BYTES
        help="larger request bodies get 413",
    )
    parser.add_argument(
        "--max-wait", type=float, default=10.0, help="seconds to wait for a free key before 429"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="upstream timeout, seconds")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the proxy until Ctrl-C; returns the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not args.api_key and not args.no_auth:
        parser.error("--api_key is required (or --no-auth to accept any client)")
    try:
        import uvicorn

        from .asgi import bind, uvicorn_config
        from .errors import ConfigError
        from .keys import APIKeyManager
        from .server import ProxyServer
    except ImportError as exc:
        print(
            f"error: the proxy needs the server extra ({exc}); "
            'install it with: pip install ".[server]" in the project folder',
            file=sys.stderr,
        )
        return 2
    try:
        if args.config:
            manager = APIKeyManager(config_path=args.config, timeout=args.timeout)
        else:
            manager = APIKeyManager(dotenv=True, timeout=args.timeout)
        sock = bind(args.host, args.port)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    proxy = ProxyServer(
        manager,
        None if args.no_auth else args.api_key,
        max_body_bytes=args.max_body_bytes,
        max_wait=args.max_wait,
        timeout=args.timeout,
    )
    server = uvicorn.Server(uvicorn_config(proxy.app))
    print(
        f"Proxy on http://{args.host}:{sock.getsockname()[1]}/v1 over "
        f"{manager.key_count} keys (Ctrl-C to stop)",
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
