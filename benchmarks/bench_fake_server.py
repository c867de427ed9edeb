"""Throughput of the fake OpenAI server: ``python benchmarks/bench_fake_server.py``.

Starts ``python -m openai_parallel_toolkit.testing --port 0`` in a subprocess, hammers
``POST /v1/chat/completions`` from a thread pool of raw HTTP clients (one keep-alive
connection per thread) for a few seconds and prints the requests per second. The Python
clients cost CPU too: on a small machine the figure is a lower bound for the server alone
(``--processes`` spreads the clients over several processes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

try:
    import httpx2 as httpx
except ImportError:  # the plain httpx package has the same API
    import httpx  # type: ignore[no-redef]

_URL_PATTERN = re.compile(r"https?://\S+/v1")


def start_server(extra_args: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start the fake server CLI on a free port; return the process and its base URL."""
    command = [sys.executable, "-m", "openai_parallel_toolkit.testing", "--port", "0"]
    process = subprocess.Popen(command + extra_args, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = _URL_PATTERN.search(line)
    if match is None:
        process.kill()
        raise RuntimeError(f"fake server did not start: {line!r}")
    return process, match.group(0)


def hammer(base_url: str, threads: int, duration: float) -> tuple[int, int]:
    """Send requests from `threads` threads for `duration` seconds; return (ok, failed)."""
    body = json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "benchmark me"}]}
    ).encode()
    headers = {"authorization": "Bearer sk-bench-0000", "content-type": "application/json"}
    url = base_url + "/chat/completions"
    deadline = time.monotonic() + duration
    ok = failed = 0
    lock = threading.Lock()

    def worker(_: int) -> None:
        nonlocal ok, failed
        good = bad = 0
        with httpx.Client(timeout=10.0) as client:
            while time.monotonic() < deadline:
                try:
                    response = client.post(url, content=body, headers=headers)
                    if response.status_code == 200:
                        good += 1
                    else:
                        bad += 1
                except httpx.HTTPError:
                    bad += 1
        with lock:
            ok += good
            failed += bad

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(worker, range(threads)))
    return ok, failed


def _hammer_process(args: tuple[str, int, float]) -> tuple[int, int]:
    return hammer(*args)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the requests per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds to run (5)")
    parser.add_argument("--concurrency", type=int, default=64, help="connections in total (64)")
    parser.add_argument("--processes", type=int, default=1, help="client processes (1)")
    parser.add_argument(
        "server_args", nargs=argparse.REMAINDER, help="after --: extra fake server flags"
    )
    args = parser.parse_args(argv)
    extra = [a for a in args.server_args if a != "--"]
    process, base_url = start_server(extra)
    try:
        # Warm up: first connections, imports, JIT-free but cache-warm paths.
        hammer(base_url, 4, 0.3)
        started = time.perf_counter()
        if args.processes <= 1:
            ok, failed = hammer(base_url, args.concurrency, args.duration)
        else:
            per_process = max(1, args.concurrency // args.processes)
            jobs: list[Any] = [(base_url, per_process, args.duration)] * args.processes
            with multiprocessing.Pool(args.processes) as pool:
                results = pool.map(_hammer_process, jobs)
            ok = sum(r[0] for r in results)
            failed = sum(r[1] for r in results)
        elapsed = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=10)
    print(
        f"{ok / elapsed:,.0f} requests/s ({ok} ok, {failed} failed in {elapsed:.1f} s, "
        f"{args.concurrency} connections, {args.processes} client process(es))"
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
