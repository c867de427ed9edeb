"""The ``run`` and ``keys check`` commands of ``openai-parallel-toolkit``.

Exit statuses: 0 all good; 1 some items failed (run again to retry them) or a key is unusable;
2 bad usage, or a missing / broken input or config file (a one-line message says which);
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

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


def run_main(argv: Sequence[str], prog: str = "openai-parallel-toolkit run") -> int:
    """``run REQUESTS.jsonl -o RESULTS.jsonl``: a JSONL job; see `jobs.run_jsonl_job`."""
    from .jobs import run_jsonl_job

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
    parser.add_argument("--threads", type=int, help="requests in flight (default: from limits)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        manager = _manager(args.config)
        summary = run_jsonl_job(
            args.input,
            args.output,
            manager=manager,
            endpoint=args.endpoint,
            threads=args.threads,
            ordered=args.ordered,
            progress=not args.no_progress,
        )
    except (ConfigError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.output}: {summary}", file=sys.stderr)
    for line in summary.malformed[:20]:
        print(f"  malformed {line}", file=sys.stderr)
    if summary.interrupted:
        return 130
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
