"""Throughput against rate limits: the toolkit's engine next to a naive thread pool.

    python benchmarks/bench_throughput.py [--only S1,S4] [--scale 0.5]

Every scenario runs the bundled fake OpenAI server in a process of its own (limits enforced
per key or per group with one second of burst, latency with jitter), then two clients, each in
a fresh process so that its peak memory is its own:

- naive: a plain thread pool of 64 threads, keys round-robin, the official client's own
  retries (2) -- what people write by hand;
- engine: `multi_process_one` with default settings (S5: the toolkit against the raw client in
  a plain pool of the same size, both without retries).

For each: the rate achieved (requests/s, or charged tokens/s for S4), the ceiling, their ratio,
429 responses as a share of all requests the server saw, failed items and peak RSS. `--scale`
multiplies the item counts (1.0: the sizes the targets were set for).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

NAIVE_THREADS = 64


@dataclass
class Scenario:
    name: str
    title: str
    items: int
    keys: int
    server: dict[str, Any]  # FakeOpenAIServer keyword arguments (keys are filled in)
    entry: dict[str, Any] = field(default_factory=dict)  # per-key config entries for the engine
    faults: list[tuple[int | str, str, float]] = field(default_factory=list)
    ceiling: float = 0.0  # requests/s, or tokens/s when tokens is True
    tokens: bool = False
    live_keys: int = 0  # keys still usable (S7)
    cpu: bool = False  # S5: compare with the raw client, no retries on either side


LATENCY = {"latency": 0.2, "jitter": 0.1}

SCENARIOS = [
    Scenario("S1", "configured limits", 2000, 8, {"rpm": 600, **LATENCY},
             {"requests_per_min": 600}, ceiling=80.0),
    Scenario("S2", "unknown limits", 2000, 8, {"rpm": 600, **LATENCY}, ceiling=80.0),
    Scenario("S3a", "one project, declared group", 600, 4,
             {"group_limits": {"proj": (1200, None)}, "charge_rejected": True, **LATENCY},
             {"limit_group": "proj", "requests_per_min": 1200}, ceiling=20.0),
    Scenario("S3b", "one project, not declared", 600, 4,
             {"group_limits": {"proj": (1200, None)}, "charge_rejected": True, **LATENCY},
             ceiling=20.0),
    Scenario("S4", "token-bound", 100, 4, {"tpm": 40_000, **LATENCY},
             {"tokens_per_min": 40_000}, ceiling=4 * 40_000 / 60, tokens=True),
    Scenario("S5", "CPU-bound", 3000, 1, {}, ceiling=0.0, cpu=True),
    Scenario("S6", "high latency", 3000, 10, {"rpm": 1200, "latency": 1.0},
             {"requests_per_min": 1200}, ceiling=200.0),
    Scenario("S7", "faults", 2000, 8, {"rpm": 600, **LATENCY}, {"requests_per_min": 600},
             faults=[(0, "insufficient_quota", 1.0), (1, "invalid_api_key", 1.0),
                     ("*", "server_error", 0.05)],
             ceiling=60.0, live_keys=6),
]  # fmt: skip


def _keys(count: int) -> list[str]:
    return [f"sk-bench-{'x' * 24}{i:04d}" for i in range(count)]


def _texts(scenario: Scenario) -> list[str]:
    rng = random.Random(42)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda"]
    texts = []
    for i in range(scenario.items):
        if scenario.tokens:  # 100-2,000 tokens as the server counts them (4 characters each)
            size = rng.randint(100, 2000) * 4
            body = " ".join(rng.choice(words) for _ in range(size // 5))
            texts.append(f"{i}: {body}"[:size])
        else:
            texts.append(f"item {i}: " + " ".join(rng.choice(words) for _ in range(12)))
    return texts


# -- child processes ------------------------------------------------------------------------


def _serve(config: dict[str, Any]) -> None:
    """Run the fake server; answer 'counters' / 'reset' / 'quit' lines on stdin."""
    from openai_parallel_toolkit.testing import FakeOpenAIServer

    keys = config["keys"]
    kwargs = dict(config["server"])
    if "group_limits" in kwargs:
        kwargs["groups"] = {key: "proj" for key in keys}
        kwargs["group_limits"] = {g: tuple(v) for g, v in kwargs["group_limits"].items()}
    server = FakeOpenAIServer(keys=keys, seed=1, **kwargs).start()
    for target, fault, probability in config["faults"]:
        key = keys[target] if isinstance(target, int) else target
        server.set_fault(key, fault, probability=probability)
    print(server.base_url, flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "counters":
            total = server.total()
            print(json.dumps(_asdict(total)), flush=True)
        elif command == "reset":
            server.reset_counters()
            print("ok", flush=True)
        elif command == "quit":
            break
    server.stop()


def _asdict(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def _client(config: dict[str, Any]) -> None:
    """Send every item with one method; print elapsed, ok, failed, peak RSS as JSON."""
    import openai

    texts: list[str] = config["texts"]
    keys: list[str] = config["keys"]
    base_url: str = config["base_url"]
    params: dict[str, Any] = config["params"]
    method: str = config["method"]
    failed = 0
    started = time.perf_counter()
    if method == "engine":
        from openai_parallel_toolkit import APIKeyManager, ChatModel, multi_process_one

        APIKeyManager(
            api_keys=[{"api_key": k, "api_base": base_url, **config["entry"]} for k in keys]
        )
        data = [("", text) for text in texts]
        results = multi_process_one(
            data,
            ChatModel,
            on_error="return",
            progress=False,
            threads=config.get("engine_threads"),
            **params,
        )
        failed = sum(isinstance(r, BaseException) for r in results)
    else:
        retries = 0 if method == "raw" else 2
        clients = [openai.OpenAI(api_key=k, base_url=base_url, max_retries=retries) for k in keys]

        def send(pair: tuple[int, str]) -> bool:
            index, text = pair
            client = clients[index % len(clients)]
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **params
                )
            except openai.OpenAIError:
                return False
            return True

        with ThreadPoolExecutor(config["threads"]) as pool:
            failed = sum(not ok for ok in pool.map(send, enumerate(texts)))
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"elapsed": elapsed, "failed": failed, "peak_mb": peak}))


# -- orchestration --------------------------------------------------------------------------


def _run_scenario(scenario: Scenario, scale: float) -> list[dict[str, Any]]:
    scenario.items = max(20, int(scenario.items * scale))
    keys = _keys(scenario.keys)
    texts = _texts(scenario)
    params = {"max_tokens": 256} if scenario.tokens else {"max_tokens": 16}
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    server_config = {"keys": keys, "server": scenario.server, "faults": scenario.faults}
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", json.dumps(server_config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert server.stdin is not None and server.stdout is not None
    base_url = server.stdout.readline().strip()

    def ask(command: str) -> str:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(command + "\n")
        server.stdin.flush()
        return server.stdout.readline().strip()

    rows = []
    methods = ["raw", "engine"] if scenario.cpu else ["naive", "engine"]
    try:
        for method in methods:
            ask("reset")
            time.sleep(1.2)  # let the server's buckets refill between methods
            client_config = {
                "method": method,
                "texts": texts,
                "keys": keys,
                "base_url": base_url,
                "params": params,
                "entry": scenario.entry,
                "threads": 32 if scenario.cpu else NAIVE_THREADS,
            }
            if scenario.cpu:  # the same pool size on both sides
                client_config["engine_threads"] = 32
            result = subprocess.run(
                [sys.executable, __file__, "--client"],
                input=json.dumps(client_config),
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(f"{scenario.name} {method} failed:\n{result.stderr[-2000:]}")
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            counters = json.loads(ask("counters"))
            done = scenario.items - measured["failed"]
            if scenario.tokens:
                rate = counters["charged_tokens"] / measured["elapsed"]
            else:
                rate = done / measured["elapsed"]
            rows.append(
                {
                    "scenario": scenario.name,
                    "title": scenario.title,
                    "method": method,
                    "rate": rate,
                    "unit": "tok/s" if scenario.tokens else "req/s",
                    "ceiling": scenario.ceiling,
                    "share_429": counters["rate_limited"] / max(1, counters["requests"]),
                    "failed": measured["failed"],
                    "peak_mb": measured["peak_mb"],
                    "elapsed": measured["elapsed"],
                    "requests": counters["requests"],
                }
            )
    finally:
        ask("quit")
        server.wait(timeout=10)
    if scenario.cpu:  # S5's ceiling is the raw client's rate
        for row in rows:
            row["ceiling"] = rows[0]["rate"]
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'scenario':<34} {'method':<7} {'rate':>13} {'ceiling':>9} {'ratio':>6} "
        f"{'429s':>6} {'failed':>6} {'sent':>6} {'peak':>7} {'time':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = row["rate"] / row["ceiling"] if row["ceiling"] else float("nan")
        print(
            f"{row['scenario'] + ' ' + row['title']:<34} {row['method']:<7} "
            f"{row['rate']:>7.1f} {row['unit']:<5} {row['ceiling']:>9.1f} {ratio:>6.0%} "
            f"{row['share_429']:>6.1%} {row['failed']:>6} {row['requests']:>6} "
            f"{row['peak_mb']:>5.0f}MB {row['elapsed']:>5.1f}s"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated scenario names (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the item counts")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(json.loads(args.serve))
        return 0
    if args.client:
        _client(json.loads(sys.stdin.read()))
        return 0
    wanted = set(args.only.split(",")) if args.only else None
    rows: list[dict[str, Any]] = []
    for scenario in SCENARIOS:
        if wanted is None or scenario.name in wanted:
            rows.extend(_run_scenario(scenario, args.scale))
            print(f"{scenario.name} done", file=sys.stderr, flush=True)
    _print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
