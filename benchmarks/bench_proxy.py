"""The reverse proxy against calling the fake server directly: added latency and throughput.

    python benchmarks/bench_proxy.py [--requests 1000] [--seconds 5] [--concurrency 64]

Starts the bundled fake server (8 keys, no limits, no latency) and the proxy over those 8 keys,
each in a process of its own, then measures from this process:
- latency: the same chat request sent one at a time, directly and through the proxy; the added
  latency is the difference of the percentiles;
- throughput: as many requests as `--concurrency` connections can push through the proxy in
  `--seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

KEYS = [f"sk-proxy-bench-{'b' * 20}{i:04d}" for i in range(8)]
CLIENT_KEY = "bench-client-key"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 8}


def _start(command: list[str], pattern: str) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(pattern, line)
    if match is None:
        process.kill()
        raise RuntimeError(f"could not start {command[2:4]}: {line!r}")
    return process, match.group(1)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _latencies(url: str, key: str, count: int) -> list[float]:
    times = []
    with httpx2.Client(headers={"authorization": f"Bearer {key}"}) as client:
        for _ in range(20):  # warm up connections and caches
            client.post(url, json=BODY).raise_for_status()
        for _ in range(count):
            started = time.perf_counter()
            client.post(url, json=BODY).raise_for_status()
            times.append(time.perf_counter() - started)
    return times


async def _throughput(url: str, seconds: float, concurrency: int) -> tuple[float, int]:
    done = errors = 0
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    async with httpx2.AsyncClient(limits=limits, headers=headers, timeout=30) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                response = await client.post(url, json=BODY)
                if response.status_code == 200:
                    done += 1
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started), errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="sequential latency samples")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput run length")
    parser.add_argument("--concurrency", type=int, default=64, help="connections for throughput")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fake, fake_url = _start(
            [sys.executable, "-m", "openai_parallel_toolkit", "fake-server", "--port", "0",
             "--keys", ",".join(KEYS)],
            r"(http://\S+/v1)",
        )  # fmt: skip
        config = Path(tmp) / "keys.json"
        config.write_text(json.dumps({"api_keys": KEYS, "api_base": fake_url}))
        proxy, proxy_url = _start(
            [sys.executable, "-m", "openai_parallel_toolkit.serving", "--port", "0",
             "--api_key", CLIENT_KEY, "--config", str(config)],
            r"(http://\S+/v1)",
        )  # fmt: skip
        try:
            direct = _latencies(fake_url + "/chat/completions", KEYS[0], args.requests)
            through = _latencies(proxy_url + "/chat/completions", CLIENT_KEY, args.requests)
            rate, errors = asyncio.run(
                _throughput(proxy_url + "/chat/completions", args.seconds, args.concurrency)
            )
        finally:
            for process in (proxy, fake):
                process.terminate()
                process.wait(timeout=10)
    ms = 1000.0
    print(f"{'':<24} {'p50':>8} {'p99':>8} {'mean':>8}")
    for name, values in (("direct to fake server", direct), ("through the proxy", through)):
        p50, p99 = _percentile(values, 0.5) * ms, _percentile(values, 0.99) * ms
        print(f"{name:<24} {p50:>6.2f}ms {p99:>6.2f}ms {statistics.fmean(values) * ms:>6.2f}ms")
    print(
        f"{'added by the proxy':<24} "
        f"{(_percentile(through, 0.5) - _percentile(direct, 0.5)) * ms:>6.2f}ms "
        f"{(_percentile(through, 0.99) - _percentile(direct, 0.99)) * ms:>6.2f}ms"
    )
    print(
        f"throughput through the proxy, 8 keys, {args.concurrency} connections: "
        f"{rate:.0f} requests/s ({errors} errors)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
