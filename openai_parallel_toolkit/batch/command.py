"""The batch commands: ``run --mode batch`` and ``batch status|cancel|collect JOURNAL``.

Exit statuses: 0 done (every line answered, or the command did what it said); 1 some lines
failed for good, or the API refused a call (a dead key, an unreachable server: said in one
line; the journal keeps what was done); 2 bad usage, a missing input, journal or config, or an
output file that is not this job's (nothing changed); 130 interrupted by Ctrl-C (the journal
keeps every batch: run the same command again to go on polling them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import ConfigError, ResultsFileError, classify, redact
from ..keys import APIKeyManager
from .job import BatchJob
from .planner import BatchLimits
from .runner import BatchRunOptions, run_batch_job

__all__ = ["batch_main", "run_batch_mode"]

_ERRORS = (ConfigError, ResultsFileError, OSError, ValueError, KeyError)


def _api_failure(exc: Exception, manager: APIKeyManager | None) -> str | None:
    """One line for an error of the API client (masked), or None for any other exception."""
    import openai

    if not isinstance(exc, openai.OpenAIError):
        return None
    secrets = [key.api_key for key in manager.config.keys] if manager is not None else []
    return redact(f"a Batch API call failed: {classify(exc).reason}", secrets)


def _pool(config: str | None, timeout: float | None = None) -> APIKeyManager:
    from ..cli import load_pool_config  # the one reading of --config and the environment

    return APIKeyManager(config=load_pool_config(config, timeout), make_default=False)


def run_batch_mode(args: argparse.Namespace) -> int:
    """``run IN -o OUT --mode batch``: `run_batch_job` until every line has a result."""
    manager: APIKeyManager | None = None
    try:
        manager = _pool(args.config, args.timeout)
        try:
            limits = BatchLimits(max_requests=args.batch_size) if args.batch_size else None
            options = BatchRunOptions(
                poll_interval=args.poll_interval,
                max_retries=max(0, args.max_retries),
                limits=limits,
                progress=None if args.no_progress else sys.stderr,
                fallback=args.fallback == "standard",
            )
            summary = run_batch_job(
                args.input, args.output, manager=manager, endpoint=args.endpoint, options=options
            )
        finally:
            manager.close()
    except _ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the journal keeps every batch; run again to go on", file=sys.stderr)
        return 130
    except Exception as exc:
        message = _api_failure(exc, manager)
        if message is None:
            raise
        print(
            f"error: {message}; the journal keeps every batch: run again to go on", file=sys.stderr
        )
        return 1
    print(f"{args.output}: {summary}", file=sys.stderr)
    from ..cli import write_summary

    if not write_summary(args, summary):
        return 2
    return 0 if summary.ok else 1


def _parser(prog: str) -> argparse.ArgumentParser:
    from ..cli import CommandLineParser

    parser = CommandLineParser(
        prog=prog,
        description='Look after the batches of a "run --mode batch" job through its journal '
        "(OUTPUT.batches.sqlite): status polls them, collect writes the results of finished "
        "ones, cancel cancels those in flight (their answers so far can still be collected).",
        epilog=f"example:\n  {prog} status results.jsonl.batches.sqlite --config config.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("status", "collect", "cancel"))
    parser.add_argument("journal", help="the job's journal, OUTPUT.batches.sqlite")
    parser.add_argument("--config", help="JSON or YAML key file (default: OPENAI_API_KEY*, .env)")
    return parser


def batch_main(argv: Sequence[str], prog: str = "openai-parallel-toolkit batch") -> int:
    """``batch status|collect|cancel JOURNAL``; prints what it did on stdout."""
    args = _parser(prog).parse_args(argv)
    manager: APIKeyManager | None = None
    try:
        manager = _pool(args.config)
        try:
            with BatchJob.from_journal(args.journal, manager=manager) as job:
                if args.action == "status":
                    print(job.status())
                elif args.action == "collect":
                    print(f"{job.collect()} result lines written to {job.output}")
                    print(job.status())
                else:
                    print(f"{job.cancel()} batches cancelled")
        finally:
            manager.close()
    except _ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        message = _api_failure(exc, manager)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0
