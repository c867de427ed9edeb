"""A 100,000-request job in batch mode on the fake server, next to the same job online.

    python benchmarks/bench_batch.py [--lines 100000] [--batch-size 50000] [--online-lines 0]
                                     [--tracemalloc]

The fake server runs in this process with fast batch processing (a few milliseconds per
status); `run_batch_job` drives the job (planning, uploads, polling, collecting) as
``run --mode batch`` does. Printed: wall time, the process's peak RSS (the fake server's files
and batches included: it keeps every file in memory) or, with ``--tracemalloc``, peak traced
memory (which makes the run several times slower), requests per batch, and the cost of the
answers at the batch price next to the same answers at the standard (online) price.
``--online-lines N`` also runs the first N lines online on the same server for a wall-time
comparison (its cost is the standard price).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from openai_parallel_toolkit import (
    APIKeyManager,
    BatchLimits,
    BatchRunOptions,
    run_batch_job,
    run_jsonl_job,
)
from openai_parallel_toolkit.prices import usd
from openai_parallel_toolkit.testing import FakeOpenAIServer, LimitSettings, ServerSettings
from openai_parallel_toolkit.testing.fake_batches import BatchSettings

KEYS = [f"sk-batch-bench-{'b' * 16}{i:04d}" for i in range(4)]
GROUPS = {key: f"proj-{i % 2}" for i, key in enumerate(KEYS)}


def write_requests(path: Path, lines: int) -> None:
    with open(path, "w", encoding="utf-8") as file:
        for i in range(lines):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"Summarise item {i} in a word."}],
                "max_tokens": 16,
            }
            file.write(json.dumps(body) + "\n")


def costs(path: Path) -> tuple[float, int]:
    """(sum of the result lines' costs, answered lines)."""
    total, answered = 0.0, 0
    with open(path, encoding="utf-8") as file:
        for line in file:
            record = json.loads(line)
            if "response" in record:
                answered += 1
                total += record.get("cost") or 0.0
    return total, answered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=50_000, help="requests per file")
    parser.add_argument("--online-lines", type=int, default=0)
    parser.add_argument("--tracemalloc", action="store_true", help="trace peak memory (slow)")
    args = parser.parse_args()
    settings = BatchSettings(
        validate_seconds=0.005, processing_seconds=0.05, finalize_seconds=0.005
    )
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as folder:
        source = Path(folder) / "requests.jsonl"
        write_requests(source, args.lines)
        out = Path(folder) / "results.jsonl"
        with FakeOpenAIServer(
            keys=KEYS,
            settings=ServerSettings(limits=LimitSettings(groups=GROUPS), batches=settings),
        ) as server:
            pool = APIKeyManager(api_keys=KEYS, api_base=server.base_url, make_default=False)
            options = BatchRunOptions(
                poll_interval=0.05, limits=BatchLimits(max_requests=args.batch_size)
            )
            if args.tracemalloc:
                tracemalloc.start()
            started = time.perf_counter()
            summary = run_batch_job(source, out, manager=pool, options=options)
            elapsed = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            traced = f"{peak / 1e6:.1f} MB (server included)" if args.tracemalloc else "-"
            status = summary.status
            paid, answered = costs(out)
            rows += [
                ("requests", f"{args.lines:,}"),
                ("answered (batch)", f"{answered:,}"),
                ("batches", f"{status.created}"),
                ("requests per batch", f"{args.lines / max(1, status.created):,.0f}"),
                ("wall time (batch mode)", f"{elapsed:.1f} s"),
                ("throughput", f"{args.lines / elapsed:,.0f} requests/s"),
                ("peak traced memory", traced),
                ("cost at the batch price", usd(paid)),
                ("same answers online (standard)", usd(status.standard_cost)),
                ("saved", usd(status.saved)),
            ]
            if args.online_lines:
                small = Path(folder) / "first.jsonl"
                with open(source, encoding="utf-8") as src, open(small, "w") as dst:
                    for _, line in zip(range(args.online_lines), src, strict=False):
                        dst.write(line)
                started = time.perf_counter()
                online = run_jsonl_job(
                    small, Path(folder) / "online.jsonl", manager=pool, progress=False
                )
                took = time.perf_counter() - started
                rows.append(
                    (
                        f"online, first {args.online_lines:,} lines",
                        f"{took:.1f} s, {usd(online.usage.total.cost or 0)} (standard)",
                    )
                )
            pool.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append(("peak RSS (job + fake server)", f"{rss:.0f} MB"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
