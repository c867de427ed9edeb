"""The ``run`` and ``keys check`` commands of ``openai-parallel-toolkit``.

Exit statuses: 0 all good; 1 some items failed or input lines were bad (run again to retry them)
or a key is unusable; 2 bad usage, a missing / broken input or config file, or an output file
that is not the results of this job (a one-line message says which; nothing was changed);
130 interrupted by Ctrl-C, 143 stopped by SIGTERM (both finish and write the requests in flight
and print the summary).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import FrameType

from .config import KeyConfig
from .errors import Action, ConfigError, classify, redact
from .headers import RateLimitHeaders
from .keys import APIKeyManager
from .models import RawRequest

__all__ = ["KeyCheck", "check_keys", "keys_main", "run_main"]


def _manager(config: str | None) -> APIKeyManager:
    if config:
        return APIKeyManager(config_path=config, make_default=False)
    return APIKeyManager(dotenv=True, make_default=False)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[list[int]]:
    """SIGTERM raises KeyboardInterrupt where Ctrl-C would, so both end a run the same way.

    Yields a list that holds the signal numbers received, to tell the two apart afterwards.
    """
    received: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield received
        return
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt_status(received: list[int]) -> int:
    return 128 + signal.SIGTERM if received else 130


def run_main(argv: Sequence[str], prog: str = "openai-parallel-toolkit run") -> int:
    """``run REQUESTS.jsonl -o RESULTS.jsonl``: a JSONL job; see `jobs.run_jsonl_job`."""
    from .jobs import ResultsFileError, run_jsonl_job

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Send every request of a JSONL file over your keys; write one result line "
        "per request. Run it again to resume: answered requests are skipped, failed ones retried.",
        epilog="example: %(prog)s requests.jsonl -o results.jsonl --config config.yaml",
    )
    parser.add_argument("input", help="JSONL file: one request body per line")
    parser.add_argument("-o", "--output", required=True, help="JSONL file of results")
    parser.add_argument("--config", help="JSON or YAML key file (default: OPENAI_API_KEY*, .env)")
    parser.add_argument(
        "--endpoint",
        choices=sorted(RawRequest.PATHS),
        help="one endpoint for every line (default: told by each line's fields)",
    )
    parser.add_argument("--ordered", action="store_true", help="also write a copy sorted by id")
    parser.add_argument(
        "--redo-changed",
        action="store_true",
        help="send again lines whose request changed since they were answered (their old "
        "answers are dropped); without it such an output file is refused",
    )
    parser.add_argument("--threads", type=int, help="requests in flight (default: from limits)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    received: list[int] = []
    try:
        with _sigterm_as_interrupt() as received:
            manager = _manager(args.config)
            summary = run_jsonl_job(
                args.input,
                args.output,
                manager=manager,
                endpoint=args.endpoint,
                threads=args.threads,
                ordered=args.ordered,
                progress=not args.no_progress,
                redo_changed=args.redo_changed,
            )
    except (ConfigError, ResultsFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any request was sent
        print("interrupted before any request was sent", file=sys.stderr)
        return _interrupt_status(received)
    print(f"{args.output}: {summary}", file=sys.stderr)
    for line in summary.malformed[:20]:
        print(f"  skipped {line}", file=sys.stderr)
    if len(summary.malformed) > 20:
        print(f"  ... and {len(summary.malformed) - 20} more bad lines", file=sys.stderr)
    if summary.ordered_copy:
        print(f"ordered copy: {summary.ordered_copy}", file=sys.stderr)
    if summary.interrupted:
        return _interrupt_status(received)
    return 0 if summary.ok else 1


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """The outcome of one key's test request."""

    key: str  # masked
    ok: bool
    reason: str
    requests_per_min: float | None
    tokens_per_min: float | None
    latency: float | None


def check_keys(
    configs: Sequence[KeyConfig], *, model: str, timeout: float = 30.0
) -> list[KeyCheck]:
    """Send one tiny chat request with each key: works or why not, its limits, its latency."""
    import openai

    results = []
    for config in configs:
        client = openai.OpenAI(
            api_key=config.api_key,
            base_url=config.api_base,
            organization=config.organization,
            project=config.project,
            max_retries=0,
            timeout=timeout,
            http_client=openai.DefaultHttpxClient(proxy=config.proxy),
        )
        started = time.perf_counter()
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "ping"}], max_tokens=1
            )
        except Exception as exc:  # reported per key, never raised
            verdict = classify(exc)
            response = getattr(exc, "response", None)
            headers = RateLimitHeaders.from_headers(
                response.headers if response is not None else {}
            )
            # A rate-limited key works: it is only busy right now.
            usable = verdict.action is Action.RATE_LIMITED
            reason = redact(verdict.reason, [config.api_key])
            results.append(
                KeyCheck(
                    config.masked_key,
                    usable,
                    reason,
                    headers.limit_requests,
                    headers.limit_tokens,
                    time.perf_counter() - started,
                )
            )
        else:
            headers = RateLimitHeaders.from_headers(raw.headers)
            results.append(
                KeyCheck(
                    config.masked_key,
                    True,
                    "works",
                    headers.limit_requests,
                    headers.limit_tokens,
                    time.perf_counter() - started,
                )
            )
        finally:
            client.close()
    return results


def keys_main(argv: Sequence[str], prog: str = "openai-parallel-toolkit keys") -> int:
    """``keys check``: test every key of the config (or the environment)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check every key: whether it works or why not, its limits as the response "
        "headers tell, and its latency.",
        epilog=f"example: {prog} check --config config.yaml",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser(
        "check",
        help="send one tiny request with each key",
        epilog=f"example: {prog} check --config config.yaml",
    )
    check.add_argument("--config", help="JSON or YAML key file (default: OPENAI_API_KEY*, .env)")
    check.add_argument("--model", default="gpt-4o-mini", help="model for the test request")
    args = parser.parse_args(argv)
    try:
        manager = _manager(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    checks = check_keys(manager.config.keys, model=args.model, timeout=manager.timeout)
    print(f"{'key':<14} {'rpm':>8} {'tpm':>10} {'latency':>9}  status")
    for item in checks:
        rpm = f"{item.requests_per_min:.0f}" if item.requests_per_min else "-"
        tpm = f"{item.tokens_per_min:.0f}" if item.tokens_per_min else "-"
        latency = f"{item.latency * 1000:.0f}ms" if item.latency is not None else "-"
        print(f"{item.key:<14} {rpm:>8} {tpm:>10} {latency:>9}  {item.reason}")
    manager.close()
    return 0 if all(item.ok for item in checks) else 1
