"""The ``run`` and ``keys check`` commands of ``openai-parallel-toolkit``.

Exit statuses: 0 all good; 1 some items failed or input lines were bad (run again to retry them)
or a key is unusable; 2 bad usage, a missing / broken input or config file, or an output file
that is not the results of this job (a one-line message says which; nothing was changed);
3 the run stopped at its --max-cost (requests in flight finished and written; run again with a
higher cap to continue); 130 interrupted by Ctrl-C, 143 stopped by SIGTERM (both finish and
write the requests in flight and print the summary).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn, Protocol, TextIO

from ._drivers.clients import tls_context
from .config import (
    SHARED_STATE_VARIABLE,
    KeyConfig,
    ToolkitConfig,
    check_shared_state,
    config_from_env,
    load_config,
)
from .errors import Action, ConfigError, ResultsFileError, classify, redact
from .headers import RateLimitHeaders
from .keys import APIKeyManager
from .models import RawRequest
from .prices import PriceTable

if TYPE_CHECKING:
    from .jobs import JobSummary

__all__ = [
    "DEFAULT_BATCH_THRESHOLD",
    "CommandLineParser",
    "KeyCheck",
    "add_batch_options",
    "add_logging_options",
    "check_keys",
    "configure_logging",
    "keys_main",
    "logging_level",
    "run_main",
    "write_summary",
]

_PACKAGE_LOGGER = "openai_parallel_toolkit"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_CHECK_TIMEOUT = 30.0  # seconds: a key that cannot answer "ping" in this time is reported
EXIT_BUDGET_REACHED = 3  # `run` stopped taking new work at its --max-cost
_CHECK_THREADS = 16  # keys checked at once


class CommandLineParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose usage errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` to stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}")
    return value


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """Add ``-v`` / ``-q`` / ``--log-level``: how much the toolkit logs on stderr."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: -v info messages, -vv debug messages",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="log errors only")
    group.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LOG_LEVELS,
        metavar="LEVEL",
        help=f"log messages of this level and above: {', '.join(_LOG_LEVELS)} (default: WARNING)",
    )


def logging_level(args: argparse.Namespace) -> int | None:
    """The level the options of `add_logging_options` ask for, or None when none was given."""
    if args.log_level:
        return int(getattr(logging, args.log_level))
    if args.quiet:
        return logging.ERROR
    if args.verbose:
        return logging.INFO if args.verbose == 1 else logging.DEBUG
    return None


def configure_logging(level: int = logging.WARNING) -> None:
    """Log the toolkit's messages of `level` and above on stderr (for the command line only).

    Other libraries (httpx, openai) log warnings and above only, whatever `level` says, so that
    ``-v`` does not print a line per HTTP request. The library itself never configures logging.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger(_PACKAGE_LOGGER).setLevel(level)


def load_pool_config(
    path: str | None, timeout: float | None, redis: str | None = None
) -> ToolkitConfig:
    """The config file, else the environment (and .env); `timeout` replaces every key's own,
    `redis` the config's ``shared_state``."""
    config = load_config(path) if path else config_from_env(dotenv=True)
    if redis is not None:
        config = dataclasses.replace(
            config, shared_state=check_shared_state(redis, "arguments", "--redis")
        )
    if timeout is None:
        return config
    keys = tuple(dataclasses.replace(key, timeout=timeout) for key in config.keys)
    return dataclasses.replace(config, keys=keys)


def add_redis_option(parser: argparse.ArgumentParser) -> None:
    """``--redis URL``: share limits with every process using the same keys and Redis."""
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="share rate limits, cool-downs and removed keys with the other processes using "
        "this Redis, e.g. redis://host:6379/0 (default: the config's shared_state, else "
        f"{SHARED_STATE_VARIABLE}, else none)",
    )


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


def _silence_stdout() -> None:
    """Point stdout at the null device, so that flushing it at exit cannot fail."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _spool_stdin(folder: Path) -> Path:
    """Copy stdin to a file in `folder`: the job reads its input twice, by byte offset."""
    path = folder / "stdin.jsonl"
    with open(path, "wb") as file:
        shutil.copyfileobj(sys.stdin.buffer, file, 1 << 20)
    return path


def _non_negative_usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of USD, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of USD >= 0, not {text}")
    return value


def _run_parser(prog: str) -> CommandLineParser:
    """The ``run`` command's parser; the order of the groups is the order ``--help`` shows."""
    parser = CommandLineParser(
        prog=prog,
        description="Send every request of a JSONL file over your keys; write one result line\n"
        "per request. Run it again to resume: answered requests are skipped, failed ones\n"
        "retried. Progress and the summary go to stderr: a progress bar on a terminal, else\n"
        "a status line every --status-interval seconds.",
        epilog="example:\n  %(prog)s requests.jsonl -o results.jsonl --config config.yaml\n"
        "  cat requests.jsonl | %(prog)s - -o - --config config.yaml | jq .id\n\n"
        "exit status: 0 all answered; 1 some failed or bad lines (run again to retry);\n"
        "2 bad usage, input, config or output file (nothing changed); 3 stopped at\n"
        "--max-cost (in-flight requests finished and written; run again with a higher cap\n"
        "to continue); 130 Ctrl-C, 143 SIGTERM.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_job_options(parser)
    _add_concurrency_options(parser)
    add_redis_option(parser)
    _add_worker_options(parser)
    _add_cost_options(parser)
    add_batch_options(parser)
    _add_progress_options(parser)
    add_logging_options(parser)
    return parser


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    """The job's files and how its lines are read: ``INPUT``, ``-o``, ``--config``,
    ``--endpoint``, ``--ordered``, ``--redo-changed``."""
    parser.add_argument("input", help="JSONL file, one request body per line; - reads stdin")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="JSONL file of results; - writes them to stdout as they finish (no resume then)",
    )
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


def _add_concurrency_options(parser: argparse.ArgumentParser) -> None:
    """How requests are sent: ``--threads``, ``--async``, ``--timeout``."""
    parser.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="requests in flight, >= 1 (default: from limits)",
    )
    parser.add_argument(
        "--async",
        dest="use_async",
        action="store_true",
        help="send from an event loop (tasks) instead of threads; --threads then counts tasks",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="seconds one request may take before it is retried (default: the config's "
        "timeout, else 120; with --mode flex: 900)",
    )


def _add_worker_options(parser: argparse.ArgumentParser) -> None:
    """A job shared by workers through Redis: ``--worker``, ``--lease``, ``--chunk-size``."""
    parser.add_argument(
        "--worker",
        action="store_true",
        help="share this job with the other workers started with the same input, output and "
        "Redis (on any machine that sees the files at the same paths); each line is answered "
        "once, a killed worker's lines are taken over after --lease",
    )
    parser.add_argument(
        "--lease",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="with --worker: seconds a silent worker's lines stay its own (default: 30)",
    )
    parser.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=50,
        metavar="N",
        help="with --worker: lines claimed at a time (default: 50)",
    )


def _add_cost_options(parser: argparse.ArgumentParser) -> None:
    """What the run may spend, would spend, and did: ``--max-cost``, ``--dry-run``,
    ``--summary``."""
    parser.add_argument(
        "--max-cost",
        type=_non_negative_usd,
        metavar="USD",
        help="a hard cap on what this run spends: each request's worst case (prompt + output "
        "allowance) is reserved before it is sent; when the next would pass the cap, no new "
        f"work is taken, requests in flight finish, exit status {EXIT_BUDGET_REACHED}",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the estimated cost of the lines not yet answered (tiktoken prompt counts "
        "+ output allowance) and send nothing",
    )
    parser.add_argument(
        "--summary",
        metavar="FILE",
        help="also write the run's summary to FILE as JSON (requests, 429s, tokens, cost per "
        "model and per key, elapsed; the README documents its fields)",
    )


def _add_progress_options(parser: argparse.ArgumentParser) -> None:
    """How progress shows on stderr: ``--no-progress``, ``--status-interval``."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or status")
    parser.add_argument(
        "--status-interval",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="seconds between status lines when stderr is not a terminal (default: 10)",
    )


DEFAULT_BATCH_THRESHOLD = 10_000
"""``--mode auto`` sends jobs with at least this many unanswered lines as batches."""


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--mode`` and the options of the batch and flex modes to the ``run`` parser."""
    parser.add_argument(
        "--mode",
        choices=("online", "batch", "flex", "auto"),
        default="online",
        help="online: send each request now (default); batch: through the Batch API at half "
        "price, answers within 24 h (a journal beside the output makes it resumable); flex: "
        'online with service_tier="flex" at the batch price, slower, with long timeouts; '
        "auto: batch when at least --batch-threshold lines are unanswered (or a batch journal "
        "of this output exists), else online",
    )
    parser.add_argument(
        "--fallback",
        choices=("none", "standard"),
        default="none",
        help="standard: with --mode flex, a request refused for want of flex capacity goes "
        "again at once on the standard tier (else it is retried later); with --mode batch, "
        "lines still failed or expired after --max-retries are sent online (default: none)",
    )
    parser.add_argument(
        "--batch-threshold",
        type=_positive_int,
        default=DEFAULT_BATCH_THRESHOLD,
        metavar="N",
        help=f"with --mode auto: unanswered lines from which the job goes as batches "
        f"(default: {DEFAULT_BATCH_THRESHOLD:,})",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="with --mode batch: at most N requests per batch file (default: the API's 50,000; "
        "files are also kept within 200 MB and the model's enqueued-token limit)",
    )
    parser.add_argument(
        "--poll-interval",
        type=_positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="with --mode batch: seconds between polls of the batches (default: 60)",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=2,
        metavar="N",
        help="with --mode batch: times a failed or expired line is submitted again (default: 2)",
    )


def _resolve_mode(args: argparse.Namespace) -> str:
    """The mode to run in: ``auto`` decided from the count of unanswered lines."""
    if args.mode != "auto":
        return str(args.mode)
    if "-" in (args.input, args.output):
        return "online"  # a batch job needs files; a pipe is online work
    from .batch.journal import journal_path
    from .jobs.plan import plan_job
    from .jobs.results import read_results

    output = Path(args.output)
    if journal_path(output).exists():
        return "batch"  # a batch run of this job went before: poll what it paid for
    source = Path(args.input)
    if not source.is_file():
        return "online"  # the online run says what is wrong with it
    unanswered = len(plan_job(source, read_results(output), args.endpoint))
    mode = "batch" if unanswered >= args.batch_threshold else "online"
    logging.getLogger(__name__).info(
        "--mode auto: %d unanswered lines, threshold %d: %s", unanswered, args.batch_threshold, mode
    )
    return mode


def _dry_run(args: argparse.Namespace, source: str | Path, target: str | Path) -> int:
    """``run --dry-run``: price the lines not yet answered and send nothing. No key is needed:
    the config (when given) is read for its ``prices:`` only."""
    from .jobs.estimate import estimate_job_cost

    overrides = load_config(args.config).prices if args.config else None
    estimate = estimate_job_cost(
        source,
        target,
        prices=PriceTable(overrides),
        endpoint=args.endpoint,
        redo_changed=args.redo_changed,
    )
    print(estimate, file=sys.stderr)
    return 0


def run_main(argv: Sequence[str], prog: str = "openai-parallel-toolkit run") -> int:
    """``run REQUESTS.jsonl -o RESULTS.jsonl``: a JSONL job; see `jobs.run_jsonl_job`."""
    parser = _run_parser(prog)
    args = parser.parse_args(argv)
    _check_run_args(parser, args)
    level = logging_level(args)
    if level is not None:
        configure_logging(level)
    try:
        args.mode = _resolve_mode(args)
    except (ResultsFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.mode == "flex" and args.timeout is None:
        from .flex import FLEX_TIMEOUT

        args.timeout = FLEX_TIMEOUT  # flex answers are slow: OpenAI suggests up to 15 minutes
    if args.mode == "batch":
        from .batch.command import run_batch_mode

        return run_batch_mode(args)
    return _run_online(args)


def _check_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error (status 2) for options that do not go together."""
    if args.ordered and args.output == "-":
        parser.error("--ordered needs an output file, not - (stdout)")
    if args.worker and "-" in (args.input, args.output):
        parser.error("--worker needs an input file and an output file, not - (stdin, stdout)")
    if args.worker and args.use_async:
        parser.error("--worker sends on threads; leave out --async")
    if args.worker and args.max_cost is not None:
        parser.error("--max-cost is per run of one process; leave out --worker")
    if args.mode == "batch" and "-" in (args.input, args.output):
        parser.error("--mode batch needs an input file and an output file, not - (stdin, stdout)")
    if args.mode in ("batch", "auto") and (
        args.worker or args.dry_run or args.max_cost is not None
    ):
        parser.error(
            f"--mode {args.mode} works alone: leave out --worker, --dry-run and --max-cost"
        )
    if args.mode == "flex" and args.worker:
        parser.error("--mode flex sends from one process; leave out --worker")
    if args.fallback != "none" and args.mode == "online":
        parser.error("--fallback needs --mode flex, batch or auto")


def _run_online(args: argparse.Namespace) -> int:
    """``run`` in the online and flex modes (or ``--dry-run``): stdin and stdout go through
    a temporary folder; returns the exit status."""
    received: list[int] = []
    folder: Path | None = None
    try:
        with contextlib.ExitStack() as stack, _sigterm_as_interrupt() as received:
            if "-" in (args.input, args.output):
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="opt-run-")))
            source = _spool_stdin(folder) if args.input == "-" and folder else args.input
            to_stdout = args.output == "-" and folder is not None
            target = folder / "results.jsonl" if to_stdout and folder else args.output
            if args.dry_run:
                return _dry_run(args, source, target)
            manager = APIKeyManager(
                config=load_pool_config(args.config, args.timeout, args.redis), make_default=False
            )
            stack.callback(manager.close)
            summary = _run_job(args, manager, source, target, sys.stdout if to_stdout else None)
            if to_stdout and summary.interrupted:
                _silence_stdout()  # its reader may be gone: no second error at exit
    except (ConfigError, ResultsFileError, OSError) as exc:
        message = str(exc)
        if folder is not None:
            message = message.replace(str(folder / "stdin.jsonl"), "stdin")
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted before any request was sent", file=sys.stderr)
        return _interrupt_status(received)
    return _report(args, summary, received)


def _run_job(
    args: argparse.Namespace,
    manager: APIKeyManager,
    source: str | Path,
    target: str | Path,
    echo: TextIO | None,
) -> JobSummary:
    """Run the job on `manager`: this process's part of a shared one with ``--worker``."""
    from .jobs import run_jsonl_job

    if args.worker:
        return _run_worker(args, manager)
    return run_jsonl_job(
        source,
        target,
        manager=manager,
        endpoint=args.endpoint,
        threads=args.threads,
        ordered=args.ordered,
        progress=not args.no_progress,
        redo_changed=args.redo_changed,
        status_interval=args.status_interval,
        echo=echo,
        use_async=args.use_async,
        max_cost=args.max_cost,
        flex=args.mode == "flex",
        fallback=args.fallback == "standard",
    )


class _ToDict(Protocol):
    """A run summary that can be written as JSON (`JobSummary`, `BatchRunSummary`)."""

    def to_dict(self) -> dict[str, object]: ...


def _report(args: argparse.Namespace, summary: JobSummary, received: list[int]) -> int:
    """Print the summary (and write it with ``--summary``); returns the run's exit status."""
    _print_summary("stdout" if args.output == "-" else args.output, summary)
    if not write_summary(args, summary):
        return 2
    if summary.interrupted:
        return _interrupt_status(received)
    if summary.budget_reached:
        return EXIT_BUDGET_REACHED
    return 0 if summary.ok else 1


def write_summary(args: argparse.Namespace, summary: _ToDict) -> bool:
    """``--summary FILE`` (if given): the run's summary as JSON, written whole (a temporary
    file renamed into place), so that a chart reading it never sees half a file. False (said
    on stderr) when it cannot be written."""
    if not args.summary:
        return True
    record = {"input": args.input, "output": args.output, **summary.to_dict()}
    destination = Path(args.summary)
    partial = destination.with_name(destination.name + ".partial")
    try:
        partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, destination)
    except OSError as exc:
        print(f"error: cannot write the summary: {exc}", file=sys.stderr)
        return False
    return True


def _run_worker(args: argparse.Namespace, manager: APIKeyManager) -> JobSummary:
    """``run --worker``: this process's part in a job shared through Redis."""
    from .jobs.distributed import run_shared_jsonl_job
    from .jobs.runner import with_pool_counts

    before = manager.statistics()

    url = manager.config.shared_state or os.environ.get(SHARED_STATE_VARIABLE)
    if not url:
        raise ConfigError(
            "--worker needs Redis: --redis URL, shared_state in the config, or "
            f"{SHARED_STATE_VARIABLE}"
        )
    summary = run_shared_jsonl_job(
        args.input,
        args.output,
        manager=manager,
        redis_url=url,
        endpoint=args.endpoint,
        threads=args.threads,
        ordered=args.ordered,
        progress=not args.no_progress,
        redo_changed=args.redo_changed,
        status_interval=args.status_interval,
        lease_seconds=args.lease,
        chunk_size=args.chunk_size,
    )
    return with_pool_counts(summary, before, manager.statistics())


def _print_summary(name: str, summary: JobSummary) -> None:
    print(f"{name}: {summary}", file=sys.stderr)
    # Each bad line is reported once: here, unless the job's log already showed it.
    from .jobs import runner

    if logging.getLogger(runner.__name__).isEnabledFor(logging.INFO):
        if summary.malformed:
            print(f"  {len(summary.malformed)} bad lines skipped (logged above)", file=sys.stderr)
    else:
        for line in summary.malformed[:20]:
            print(f"  skipped {line}", file=sys.stderr)
        if len(summary.malformed) > 20:
            print(f"  ... and {len(summary.malformed) - 20} more bad lines", file=sys.stderr)
    if summary.ordered_copy:
        print(f"ordered copy: {summary.ordered_copy}", file=sys.stderr)


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
    configs: Sequence[KeyConfig], *, model: str, timeout: float = _CHECK_TIMEOUT
) -> list[KeyCheck]:
    """Send one tiny chat request with each key: works or why not, its limits, its latency.

    The keys are tested at the same time (up to 16 at once); results come in the order of
    `configs`. `timeout` is the seconds each key may take, unless its config sets ``timeout``.
    """
    if not configs:
        return []
    with ThreadPoolExecutor(min(len(configs), _CHECK_THREADS), "keys-check") as executor:
        return list(executor.map(lambda config: _check_key(config, model, timeout), configs))


def _check_key(config: KeyConfig, model: str, timeout: float) -> KeyCheck:
    import openai

    client = openai.OpenAI(
        api_key=config.api_key,
        base_url=config.api_base,
        organization=config.organization,
        project=config.project,
        max_retries=0,
        timeout=config.timeout if config.timeout is not None else timeout,
        http_client=openai.DefaultHttpxClient(proxy=config.proxy, verify=tls_context()),
    )
    started = time.perf_counter()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "ping"}], max_tokens=1
        )
    except Exception as exc:  # reported per key, never raised
        verdict = classify(exc, proxy=config.proxy)
        response = getattr(exc, "response", None)
        headers = RateLimitHeaders.from_headers(response.headers if response is not None else {})
        # A rate-limited key works: it is only busy right now.
        usable = verdict.action is Action.RATE_LIMITED
        reason = redact(verdict.reason, [config.api_key])
    else:
        headers = RateLimitHeaders.from_headers(raw.headers)
        usable, reason = True, "works"
    finally:
        client.close()
    return KeyCheck(
        config.masked_key,
        usable,
        reason,
        headers.limit_requests,
        headers.limit_tokens,
        time.perf_counter() - started,
    )


def keys_main(argv: Sequence[str], prog: str = "openai-parallel-toolkit keys") -> int:
    """``keys check``: test every key of the config (or the environment), all at once."""
    parser = CommandLineParser(
        prog=prog,
        description="Check every key: whether it works or why not, its limits as the response "
        "headers tell, and its latency.",
        epilog=f"example: {prog} check --config config.yaml",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="send one tiny request with each key, all keys at the same time",
        description="Send one tiny request with each key, all keys at the same time; exit "
        "status 1 if a key is unusable.",
        epilog=f"example: {prog} check --config config.yaml",
    )
    check.add_argument("--config", help="JSON or YAML key file (default: OPENAI_API_KEY*, .env)")
    check.add_argument("--model", default="gpt-4o-mini", help="model for the test request")
    check.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help=f"seconds each key may take (default: the config's timeout, else {_CHECK_TIMEOUT:g})",
    )
    add_logging_options(check)
    args = parser.parse_args(argv)
    level = logging_level(args)
    if level is not None:
        configure_logging(level)
    try:
        config = load_pool_config(args.config, args.timeout)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    checks = check_keys(config.keys, model=args.model)
    print(f"{'key':<14} {'rpm':>8} {'tpm':>10} {'latency':>9}  status")
    for item in checks:
        rpm = f"{item.requests_per_min:.0f}" if item.requests_per_min else "-"
        tpm = f"{item.tokens_per_min:.0f}" if item.tokens_per_min else "-"
        latency = f"{item.latency * 1000:.0f}ms" if item.latency is not None else "-"
        print(f"{item.key:<14} {rpm:>8} {tpm:>10} {latency:>9}  {item.reason}")
    return 0 if all(item.ok for item in checks) else 1
