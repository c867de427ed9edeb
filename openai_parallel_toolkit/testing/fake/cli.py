"""The fake server's command line: ``python -m openai_parallel_toolkit.testing``."""

from __future__ import annotations

import argparse
import signal
import threading

from .server import FakeOpenAIServer
from .settings import LimitSettings, ServerSettings

__all__ = ["build_parser", "main", "server_from_args"]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the fake server command line."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m openai_parallel_toolkit.testing",
        description="Run a fake OpenAI-compatible API server for offline testing.",
        epilog="example: %(prog)s --port 8001 --keys sk-test-1,sk-test-2 --rpm 600 --latency 0.2",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port, 0 for any free one (8001)")
    parser.add_argument(
        "--keys", default=None, help="comma-separated accepted API keys (default: any key)"
    )
    parser.add_argument("--rpm", type=float, default=None, help="requests per minute per key")
    parser.add_argument("--tpm", type=float, default=None, help="tokens per minute per key")
    parser.add_argument("--latency", type=float, default=0.0, help="reply delay in seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="± uniform delay jitter, s")
    parser.add_argument(
        "--burst-seconds", type=float, default=1.0, help="bucket capacity in seconds of rate"
    )
    parser.add_argument(
        "--reported-burst-seconds",
        type=float,
        default=None,
        help="bucket capacity the headers report, in seconds of rate (default: --burst-seconds)",
    )
    parser.add_argument(
        "--charge-rejected", action="store_true", help="429-rejected requests use up a request"
    )
    parser.add_argument(
        "--no-rate-limit-headers", action="store_true", help="omit the x-ratelimit-* headers"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for jitter and faults")
    return parser


def server_from_args(args: argparse.Namespace) -> FakeOpenAIServer:
    """Build a (not started) `FakeOpenAIServer` from parsed `build_parser` arguments."""
    keys = [k.strip() for k in args.keys.split(",") if k.strip()] if args.keys else None
    limits = LimitSettings(
        burst_seconds=args.burst_seconds,
        reported_burst_seconds=args.reported_burst_seconds,
        charge_rejected=args.charge_rejected,
        send_headers=not args.no_rate_limit_headers,
    )
    return FakeOpenAIServer(
        keys=keys,
        rpm=args.rpm,
        tpm=args.tpm,
        latency=args.latency,
        jitter=args.jitter,
        seed=args.seed,
        settings=ServerSettings(limits=limits, host=args.host, port=args.port),
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the fake server in the foreground until Ctrl-C or SIGTERM; returns the exit code."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        server = server_from_args(args).start()
    except (ValueError, OSError, RuntimeError) as exc:
        parser.exit(2, f"error: {exc}\n")
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    print(f"Fake OpenAI server listening on {server.base_url} (Ctrl-C to stop)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
