"""Throughput against rate limits: the toolkit's engine next to a naive thread pool.

    python benchmarks/bench_throughput.py [--only S1,J,W2] [--scale 0.5] [--repeat 3]

Every run starts a fresh server in a process of its own -- the bundled fake OpenAI server
(limits per key or per group, latency with jitter), or llmock, a third-party mock, for the X
scenarios -- then the clients, each in a fresh process so that its peak memory is its own:

- naive: a plain thread pool of 64 threads, keys round-robin, the official client's own
  retries (2) -- what people write by hand;
- engine: `multi_process_one` with default settings (S5: the toolkit against the raw client in
  a plain pool of the same size, both without retries).

Scenarios (groups for --only in brackets):

- [S] S1-S7: the original set, tuned conditions (one second of burst, 0.2 s +- 0.1 s latency).
- [J] latency jitter: J1 10 keys x 1,200 RPM configured, 1 s +- 0.5 s; J2 12 keys x 600 RPM not
  configured, 0.5 s +- 0.45 s; J3a/J3b 4 and 32 keys x 300 RPM configured, 3 s +- 2 s.
- [W] windows: W1 per-minute buckets that start full (ceiling over a run of T seconds:
  (initial capacity + rate x T) / T); W2 a server reporting the minute's remaining quota while
  enforcing a one-second bucket (ceiling: the rate).
- [P] P1 two undeclared projects of 3 keys (1,200 RPM each) plus 2 lone keys (600 RPM).
- [M] several processes: M1 two engine (or naive) processes on the same 8 keys at once, combined
  rate; M2 a third party (a paced loop in another process) spends 30% of one key's limit.
- [C] 429s that are not exhaustion: W1's server where 5% (C1) or 20% (C2) of requests get a 429
  with no retry-after and no x-ratelimit headers, while successes report plenty remaining.
- [L] L1 5 s responses, 10 keys x 600 RPM (about 500 requests in flight at the ceiling).
- [X] llmock (skipped when not installed, see thirdparty_mock.py): 4 keys x 600 RPM per-minute
  buckets, X1 drained first, X1f starting full; X2 drained with 5% random 429s (retry-after
  only). Latency is fixed there (llmock has no jitter).
- [A] the asyncio engine (issue 12), other methods side by side:
  A1 a ceiling of 500 requests/s (10 keys x 3,000 RPM, configured) at 2.5 s +- 0.5 s:
  `engine` (threads, at most 1,024 in flight), `aio` (`amulti_process_one`, default settings),
  `aioaiohttp` (the same on openai's aiohttp transport), `rawaio` (the official `AsyncOpenAI`
  clients, keys round-robin, in a plain `asyncio.gather` under a semaphore of 1,500, the
  client's own retries (2)) and `rawaiohttp` (the same clients on `DefaultAioHttpClient`).
  A4 the same at 300 requests/s (10 keys x 1,800 RPM): about 800 in flight, at a rate one
  client core can send.
  A2 CPU-bound (one key, no latency, no limit): `aio` vs `rawaio` vs `raw` (the sync client in
  a pool of 64 threads) vs `rawaiohttp` (`AsyncOpenAI` on `DefaultAioHttpClient`, when
  ``openai[aiohttp]`` is installed) vs `aioaiohttp` (the engine on that transport), all with
  64 in flight and no retries, one after another; the ceiling is the fastest raw client's rate
  in the same round (on the same event loop: a `+uvloop` row against the raw `+uvloop` rows).
  A3 the same clients, plus `control` (a second `rawaiohttp` process) and `+uvloop` rows (the
  client on uvloop's event loop), taking turns on one core (`_run_in_turns`): the machine's
  drift, which moves A2's rounds by a third, reaches them all alike. Linux only.
  The fake server and the client run pinned to a core each (S5 and the A group, where the
  machine has two or more), so that rounds compare the clients more than where the scheduler
  put two busy processes. The notes give each client's own CPU time per request (packages
  imported before the clock starts) and, for the fake server, its own.

`--repeat N` runs each scenario N times and prints the WORST run per scenario and method (by
ratio to the ceiling), with the best ratio next to it. Columns: the rate achieved (requests/s,
or charged tokens/s for S4), the ceiling, their ratio, `r/rate` the rate over the steady rate
alone (differs where the buckets start full), `ideal` the shortest possible run (everything
sent at the ceiling, then the slowest response time, latency + jitter, for the last answers)
over the run's time: the share of what any engine could reach, 429 responses caused by the
limits as a share of all requests the server saw (injected 429s and the third party's
requests excluded), failed items, requests sent, peak RSS and time. Where the naive pool would
take minutes at its fixed 64 threads, it sends only a share of the items (noted); a rate is a
rate. `--scale` multiplies the item counts (1.0: runs of about 20-40 s per method) beyond the
buckets' initial capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

import thirdparty_mock  # a sibling module, benchmarks only

NAIVE_THREADS = 64
RAW_ASYNC_IN_FLIGHT = 1500  # A1: what covers 500 requests/s at 3 s per answer
CLIENT_TIMEOUT = 900.0  # seconds a client process may take before it is killed
PACER_MAX_SECONDS = 900.0  # the third party's own bound
LLMOCK_LATENCY = 0.2


@dataclass
class Scenario:
    name: str
    title: str
    items: int
    keys: int
    # FakeOpenAIServer keyword arguments (keys are filled in), and LimitSettings fields
    server: dict[str, Any]
    entry: dict[str, Any] = field(default_factory=dict)  # per-key config entries for the engine
    faults: list[tuple[int | str, str, float]] = field(default_factory=list)
    ceiling: float = 0.0  # requests/s (tokens/s when tokens is True): the steady rate
    initial: float = 0.0  # requests the buckets hold at the start, added to the ceiling
    tokens: bool = False
    live_keys: int = 0  # keys still usable (S7)
    cpu: bool = False  # S5: compare with the raw client, no retries on either side
    group: str = "S"  # the --only group
    groups: dict[str, list[int]] = field(default_factory=dict)  # server-side projects by key
    processes: int = 1  # client processes at once on the same keys (M1)
    third_party: float = 0.0  # share of key 0's limit a paced loop spends meanwhile (M2)
    naive_share: float = 1.0  # share of the items the naive pool sends
    llmock: dict[str, Any] | None = None  # run_llmock arguments: the X scenarios
    drain: bool = False  # llmock: empty the buckets before the run
    methods: list[str] = field(default_factory=list)  # default: naive and engine (S5: raw)
    shares: dict[str, float] = field(default_factory=dict)  # share of the items per method
    in_flight: int | None = None  # the A scenarios: requests in flight of every method
    in_turns: bool = False  # A3: the methods take turns on one core (`_run_in_turns`)


LATENCY = {"latency": 0.2, "jitter": 0.1}
MINUTE = {"rpm": 600, "burst_seconds": 60, **LATENCY}  # per-minute buckets, starting full

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
    # -- issue 11: the conditions users meet ------------------------------------------------
    Scenario("J1", "1s+-0.5s, 10x1200 configured", 4000, 10,
             {"rpm": 1200, "latency": 1.0, "jitter": 0.5}, {"requests_per_min": 1200},
             ceiling=200.0, group="J", naive_share=0.5),
    Scenario("J2", "0.5s+-0.45s, 12x600 unknown", 3000, 12,
             {"rpm": 600, "latency": 0.5, "jitter": 0.45}, ceiling=120.0, group="J"),
    Scenario("J3a", "3s+-2s, 4x300 configured", 500, 4,
             {"rpm": 300, "latency": 3.0, "jitter": 2.0}, {"requests_per_min": 300},
             ceiling=20.0, group="J"),
    Scenario("J3b", "3s+-2s, 32x300 configured", 4000, 32,
             {"rpm": 300, "latency": 3.0, "jitter": 2.0}, {"requests_per_min": 300},
             ceiling=160.0, group="J", naive_share=0.15),
    Scenario("W1", "minute buckets start full", 3000, 4, MINUTE, {"requests_per_min": 600},
             ceiling=40.0, initial=4 * 600, group="W"),
    Scenario("W2", "reports minute, enforces 1s", 1000, 4,
             {"rpm": 600, "reported_burst_seconds": 60, **LATENCY}, {"requests_per_min": 600},
             ceiling=40.0, group="W"),
    Scenario("P1", "2 undeclared projects + 2 keys", 1500, 8,
             {"rpm": 600, "group_limits": {"pa": (1200, None), "pb": (1200, None)},
              "charge_rejected": True, **LATENCY},
             groups={"pa": [0, 1, 2], "pb": [3, 4, 5]}, ceiling=60.0, group="P"),
    Scenario("M1", "2 processes, same 8 keys", 2400, 8, {"rpm": 600, **LATENCY},
             {"requests_per_min": 600}, ceiling=80.0, group="M", processes=2),
    Scenario("M2", "third party 30% of one key", 1000, 4, {"rpm": 600, **LATENCY},
             {"requests_per_min": 600}, ceiling=40.0, group="M", third_party=0.3),
    Scenario("C1", "W1 + 5% bare 429s", 3000, 4, MINUTE, {"requests_per_min": 600},
             faults=[("*", "rate_limit_bare", 0.05)], ceiling=40.0, initial=4 * 600,
             group="C"),
    Scenario("C2", "W1 + 20% bare 429s", 3000, 4, MINUTE, {"requests_per_min": 600},
             faults=[("*", "rate_limit_bare", 0.20)], ceiling=40.0, initial=4 * 600,
             group="C"),
    Scenario("L1", "5s responses, 10x600", 2500, 10, {"rpm": 600, "latency": 5.0},
             {"requests_per_min": 600}, ceiling=100.0, group="L", naive_share=0.15),
    Scenario("X1", "llmock 4x600, drained", 1000, 4, {}, {"requests_per_min": 600},
             ceiling=40.0, group="X", llmock={"rpm": 600}, drain=True),
    Scenario("X1f", "llmock 4x600, starts full", 3000, 4, {}, {"requests_per_min": 600},
             ceiling=40.0, initial=4 * 600, group="X", llmock={"rpm": 600}),
    Scenario("X2", "llmock 4x600, 5% random 429", 1000, 4, {}, {"requests_per_min": 600},
             ceiling=40.0, group="X", llmock={"rpm": 600, "random_429": 0.05}, drain=True),
    Scenario("A1", "500 req/s at 2.5s+-0.5s, 10 keys", 10000, 10,
             {"rpm": 3000, "latency": 2.5, "jitter": 0.5}, {"requests_per_min": 3000},
             ceiling=500.0, group="A",
             methods=["engine", "aio", "aioaiohttp", "rawaio", "rawaiohttp"],
             shares={"engine": 0.4}),
    Scenario("A4", "300 req/s at 2.5s+-0.5s, 10 keys", 10000, 10,
             {"rpm": 1800, "latency": 2.5, "jitter": 0.5}, {"requests_per_min": 1800},
             ceiling=300.0, group="A", methods=["engine", "aio", "aioaiohttp", "rawaiohttp"],
             shares={"engine": 0.4}),
    Scenario("A2", "CPU-bound, asyncio", 3000, 1, {}, ceiling=0.0, cpu=True, group="A",
             methods=["raw", "rawaio", "rawaiohttp", "aio", "aioaiohttp"], in_flight=64),
    Scenario("A3", "CPU-bound, taking turns", 16000, 8, {}, ceiling=0.0, cpu=True,
             group="A", methods=["raw", "rawaio", "rawaiohttp", "aio", "aioaiohttp", "control",
                                 "rawaiohttp+uvloop", "aioaiohttp+uvloop"],
             in_flight=64, in_turns=True),
]  # fmt: skip


def _keys(count: int) -> list[str]:
    return thirdparty_mock.bench_keys(count)


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

# Scenario.server names that go into the fake server's LimitSettings.
_LIMIT_FIELDS = ("burst_seconds", "reported_burst_seconds", "charge_rejected", "group_limits")


def _pinned(scenario: Scenario) -> bool:
    """Whether server and client get a core each: where the client's CPU is the limit."""
    return scenario.cpu or scenario.group == "A"


def _pin(core: int | None) -> None:
    """Keep this process on one core (the CPU-bound scenarios: server and client each on a
    core of their own, so that rounds compare the clients rather than where the scheduler put
    two busy processes; a no-op where affinity cannot be set or there is one core)."""
    if core is not None and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {core})


def _serve(config: dict[str, Any]) -> None:
    """Run the fake server; answer 'counters' / 'reset' / 'quit' lines on stdin."""
    _pin(config.get("core"))
    from openai_parallel_toolkit.testing import FakeOpenAIServer
    from openai_parallel_toolkit.testing.fake_server import LimitSettings, ServerSettings

    keys = config["keys"]
    kwargs = dict(config["server"])
    limits = {name: kwargs.pop(name) for name in _LIMIT_FIELDS if name in kwargs}
    if "group_limits" in limits:
        projects: dict[str, list[int]] = config.get("groups") or {"proj": list(range(len(keys)))}
        limits["groups"] = {keys[i]: name for name, indices in projects.items() for i in indices}
        limits["group_limits"] = {g: tuple(v) for g, v in limits["group_limits"].items()}
    settings = ServerSettings(limits=LimitSettings(**limits))
    server = FakeOpenAIServer(keys=keys, seed=1, settings=settings, **kwargs).start()
    for target, fault, probability in config["faults"]:
        key = keys[target] if isinstance(target, int) else target
        server.set_fault(key, fault, probability=probability)
    print(server.base_url, flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "counters":
            total = server.total()
            print(json.dumps({**_asdict(total), "cpu": time.process_time()}), flush=True)
        elif command == "keys":  # requests per key so far
            counts = {key: c.requests for key, c in server.counters().items()}
            print(json.dumps(counts), flush=True)
        elif command == "cpu":
            print(time.process_time(), flush=True)
        elif command == "reset":
            server.reset_counters()
            print("ok", flush=True)
        elif command == "quit":
            break
    server.stop()


def _asdict(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def _client(config: dict[str, Any]) -> None:
    """Send every item with one method; print start/end, failed, peak RSS as JSON."""
    import openai

    texts: list[str] = config["texts"]
    keys: list[str] = config["keys"]
    base_url: str = config["base_url"]
    params: dict[str, Any] = config["params"]
    method, _, loop = config["method"].partition("+")
    config = {**config, "method": method}
    failed = 0
    _pin(config.get("core"))
    if loop == "uvloop":  # "aioaiohttp+uvloop": the same client on uvloop's event loop
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if method in ("engine", "aio", "aioaiohttp"):
        # Imported before the clock starts, as openai is for every method: a run measures
        # sending, not the interpreter loading modules (the package's own import is 0.2 s).
        import openai_parallel_toolkit  # noqa: F401
    started_wall = time.time()
    started = time.perf_counter()
    started_cpu = time.process_time()
    if method in ("aio", "aioaiohttp", "rawaio", "rawaiohttp", "control"):
        failed = asyncio.run(_async_client(config))
    elif method == "engine":
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
        clients = [
            openai.OpenAI(api_key=k, base_url=base_url, max_retries=retries, timeout=60.0)
            for k in keys
        ]

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
    cpu = time.process_time() - started_cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "elapsed": elapsed,
                "start": started_wall,
                "end": started_wall + elapsed,
                "items": len(texts),
                "failed": failed,
                "peak_mb": peak,
                "cpu": cpu,
            }
        )
    )


async def _async_client(config: dict[str, Any]) -> int:
    """The asyncio methods: the engine, or raw `AsyncOpenAI` clients under a semaphore."""
    import openai

    texts: list[str] = config["texts"]
    keys: list[str] = config["keys"]
    params: dict[str, Any] = config["params"]
    if config["method"] in ("aio", "aioaiohttp"):
        from openai_parallel_toolkit import (
            APIKeyManager,
            ChatModel,
            PoolOptions,
            amulti_process_one,
        )
        from openai_parallel_toolkit._drivers.clients import default_async_client_factory

        transport: Literal["httpx", "aiohttp"] = (
            "aiohttp" if config["method"] == "aioaiohttp" else "httpx"
        )
        factory = default_async_client_factory(120.0, transport=transport)
        APIKeyManager(
            api_keys=[
                {"api_key": k, "api_base": config["base_url"], **config["entry"]} for k in keys
            ],
            options=PoolOptions(async_client_factory=factory),
        )
        results = await amulti_process_one(
            [("", text) for text in texts],
            ChatModel,
            on_error="return",
            progress=False,
            concurrency=config.get("in_flight"),
            **params,
        )
        return sum(isinstance(r, BaseException) for r in results)
    retries = 0 if config.get("in_flight") else 2  # A2 compares clients without retries
    clients = [
        openai.AsyncOpenAI(
            api_key=k,
            base_url=config["base_url"],
            max_retries=retries,
            timeout=60.0,
            http_client=(
                openai.DefaultAioHttpClient()
                if config["method"] in ("rawaiohttp", "control")
                else None
            ),
        )
        for k in keys
    ]
    gate = asyncio.Semaphore(config.get("in_flight") or RAW_ASYNC_IN_FLIGHT)

    async def send(index: int, text: str) -> bool:
        async with gate:
            try:
                await clients[index % len(clients)].chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **params
                )
            except openai.OpenAIError:
                return False
            return True

    outcomes = await asyncio.gather(*(send(i, text) for i, text in enumerate(texts)))
    return sum(not ok for ok in outcomes)


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _pace(config: dict[str, Any]) -> None:
    """A third party: one key at a fixed request rate, no retries, until 'stop' or the bound.

    Prints {sent, ok, limited, elapsed} as JSON.
    """
    import openai

    rate: float = config["rate"]
    max_seconds: float = config["max_seconds"]
    client = openai.OpenAI(
        api_key=config["key"], base_url=config["base_url"], max_retries=0, timeout=30.0
    )
    stop = threading.Event()
    outcomes: list[str] = []
    lock = threading.Lock()

    def watch_stdin() -> None:
        sys.stdin.readline()  # "stop", or EOF when the parent goes away
        stop.set()

    def send(index: int) -> None:
        try:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"third party {index}"}],
                max_tokens=16,
            )
            outcome = "ok"
        except openai.RateLimitError:
            outcome = "limited"
        except openai.OpenAIError:
            outcome = "error"
        with lock:
            outcomes.append(outcome)

    threading.Thread(target=watch_stdin, daemon=True).start()
    print("ready", flush=True)
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        for index in range(int(rate * max_seconds) + 1):
            due = started + index / rate
            if stop.wait(max(0.0, due - time.monotonic())):
                break
            pool.submit(send, index)
        elapsed = time.monotonic() - started
    counts = {kind: outcomes.count(kind) for kind in ("ok", "limited", "error")}
    print(json.dumps({"sent": len(outcomes), **counts, "elapsed": elapsed}), flush=True)


# -- servers --------------------------------------------------------------------------------


class _FakeServer:
    """The fake server in a process of its own, driven over its stdin."""

    def __init__(self, scenario: Scenario, keys: list[str], env: dict[str, str]) -> None:
        config = {
            "keys": keys,
            "server": scenario.server,
            "faults": scenario.faults,
            "groups": scenario.groups,
            "core": 0 if _pinned(scenario) else None,
        }
        self._process = subprocess.Popen(
            [sys.executable, __file__, "--serve", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self._process.stdout is not None
        self.base_url = self._process.stdout.readline().strip()
        if not self.base_url:
            self.close()
            raise RuntimeError(f"{scenario.name}: the fake server did not start")
        self._started_cpu = float(self._ask("cpu"))  # start-up and imports are not serving

    def _ask(self, command: str) -> str:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        return self._process.stdout.readline().strip()

    def counters(self) -> dict[str, float]:
        """The server's totals, and ``cpu``: its CPU seconds since it started serving."""
        counters: dict[str, float] = json.loads(self._ask("counters"))
        counters["cpu"] -= self._started_cpu
        return counters

    def requests_by_key(self) -> dict[str, int]:
        counts: dict[str, int] = json.loads(self._ask("keys"))
        return counts

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._ask("quit")
                self._process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()


class _LLMock:
    """llmock, started fresh (buckets full), drained when the scenario asks."""

    def __init__(self, scenario: Scenario, keys: list[str]) -> None:
        assert scenario.llmock is not None
        self._stack = ExitStack()
        self._server = self._stack.enter_context(
            thirdparty_mock.run_llmock(keys=keys, latency=LLMOCK_LATENCY, **scenario.llmock)
        )
        if scenario.drain:
            self._server.drain()
        self.base_url = self._server.base_url

    def counters(self) -> dict[str, int]:
        counts = self._server.counts()
        return {
            "requests": sum(counts.values()),
            "rate_limited": sum(n for k, n in counts.items() if k.startswith("429 ratelimit")),
            "charged_tokens": 0,
        }

    def close(self) -> None:
        self._stack.close()


# -- orchestration --------------------------------------------------------------------------


def _start_pacer(
    scenario: Scenario, key: str, base_url: str, env: dict[str, str]
) -> subprocess.Popen[str]:
    rpm = float(scenario.server.get("rpm") or 600)
    config = {
        "key": key,
        "base_url": base_url,
        "rate": scenario.third_party * rpm / 60.0,
        "max_seconds": PACER_MAX_SECONDS,
    }
    pacer = subprocess.Popen(
        [sys.executable, __file__, "--pace", json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert pacer.stdout is not None
    pacer.stdout.readline()  # "ready": the loop is about to send its first request
    return pacer


def _stop_pacer(pacer: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        out, _ = pacer.communicate("stop\n", timeout=60)
    except subprocess.TimeoutExpired:
        pacer.kill()
        pacer.wait()
        raise RuntimeError("the third-party pacer did not stop") from None
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@contextmanager
def _clients(
    configs: list[dict[str, Any]], env: dict[str, str]
) -> Iterator[list[tuple[subprocess.Popen[str], IO[str]]]]:
    """One client process per config, each with a file for its stderr; killed on leaving."""
    with ExitStack() as stack:
        # stderr into files: a chatty client must not block on a full pipe while we wait.
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in configs]
        started: list[tuple[subprocess.Popen[str], IO[str]]] = []
        for config, log in zip(configs, logs, strict=True):
            process = subprocess.Popen(
                [sys.executable, __file__, "--client"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )
            stack.callback(_kill, process)
            assert process.stdin is not None
            process.stdin.write(json.dumps(config))  # the child reads it all first
            process.stdin.close()
            process.stdin = None  # so that communicate() does not touch it
            started.append((process, log))
        yield started


def _kill(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def _run_clients(configs: list[dict[str, Any]], env: dict[str, str]) -> list[dict[str, Any]]:
    """Start one client process per config at once; wait for all (bounded); their results."""
    with _clients(configs, env) as started:
        results = []
        deadline = time.monotonic() + CLIENT_TIMEOUT
        for process, log in started:
            try:
                out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"a client took longer than {CLIENT_TIMEOUT:.0f}s") from None
            if process.returncode != 0:
                log.seek(0)
                raise RuntimeError(f"a client failed:\n{log.read()[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _run_once(
    scenario: Scenario, method: str, keys: list[str], texts: list[str], env: dict[str, str]
) -> dict[str, Any]:
    """One method on a fresh server: the row of the table."""
    params = {"max_tokens": 256} if scenario.tokens else {"max_tokens": 16}
    share_of_items = scenario.shares.get(method, scenario.naive_share if method == "naive" else 1.0)
    if share_of_items < 1.0:
        texts = texts[: max(20, int(len(texts) * share_of_items))]
    server: _FakeServer | _LLMock
    server = _LLMock(scenario, keys) if scenario.llmock else _FakeServer(scenario, keys, env)
    pacer_result: dict[str, Any] | None = None
    try:
        share = -(-len(texts) // scenario.processes)
        configs = [
            {
                "method": method,
                "texts": texts[i * share : (i + 1) * share],
                "keys": keys,
                "base_url": server.base_url,
                "params": params,
                "entry": scenario.entry,
                "threads": scenario.in_flight or (32 if scenario.cpu else NAIVE_THREADS),
                "engine_threads": 32 if scenario.cpu else None,  # S5: the same pool size
                "in_flight": scenario.in_flight,
                "core": 1 if _pinned(scenario) else None,
            }
            for i in range(scenario.processes)
        ]
        pacer = (
            _start_pacer(scenario, keys[0], server.base_url, env) if scenario.third_party else None
        )
        try:
            measured = _run_clients(configs, env)
        finally:
            if pacer is not None:
                pacer_result = _stop_pacer(pacer)
        counters = server.counters()
    finally:
        server.close()
    elapsed = max(m["end"] for m in measured) - min(m["start"] for m in measured)
    failed = sum(m["failed"] for m in measured)
    done = len(texts) - failed
    requests, limited = counters["requests"], counters["rate_limited"]
    steady = scenario.ceiling
    if pacer_result is not None:  # what the third party took is not the engine's to use
        requests -= pacer_result["sent"]
        limited -= pacer_result["limited"]
        steady -= pacer_result["ok"] / max(1e-9, pacer_result["elapsed"])
    rate = counters["charged_tokens"] / elapsed if scenario.tokens else done / elapsed
    # What no engine can beat: send everything at the ceiling, then wait for the slowest of the
    # last answers (uniform jitter: among the many sent in the last second, one takes about
    # latency + jitter).
    latency = LLMOCK_LATENCY if scenario.llmock else float(scenario.server.get("latency", 0.0))
    latency += 0.0 if scenario.llmock else float(scenario.server.get("jitter", 0.0))
    ideal = float("nan")
    if not scenario.tokens and not scenario.cpu and steady > 0:
        ideal = max(0.0, done - scenario.initial) / steady + latency
    notes = []
    if len(texts) < scenario.items:
        notes.append(f"{len(texts)} items")
    if scenario.cpu and scenario.in_flight:
        notes.append(f"{scenario.in_flight} in flight")
    if _pinned(scenario):  # the client's own cost, whatever the shared server's speed in that run
        cpu = sum(m["cpu"] for m in measured) * 1000 / max(1, len(texts))
        notes.append(f"{cpu:.2f} ms CPU/request")
        if "cpu" in counters:
            notes.append(f"server {counters['cpu'] * 1000 / max(1, requests):.2f} ms")
    if scenario.processes > 1:
        notes.append(f"{scenario.processes} procs, combined")
    if pacer_result is not None:
        notes.append(f"3rd party {pacer_result['ok']} ok/{pacer_result['limited']} 429")
    return {
        "scenario": scenario.name,
        "title": scenario.title,
        "method": method,
        "rate": rate,
        "unit": "tok/s" if scenario.tokens else "req/s",
        "ceiling": (scenario.initial + steady * elapsed) / elapsed,
        "steady": steady,
        "share_429": limited / max(1, requests),
        "failed": failed,
        "peak_mb": max(m["peak_mb"] for m in measured),
        "elapsed": elapsed,
        "of_ideal": ideal / elapsed,
        "requests": requests,
        "notes": ", ".join(notes),
    }


TURN = 0.5  # A3: seconds a client runs alone before the next one's turn
WARM_UP = 2.0  # A3: seconds of each client's first turn, not counted
WINDOW = 10.0  # A3: seconds of turns counted per client at --scale 1


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process so far, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _take_turns(processes: list[subprocess.Popen[str]], seconds: float) -> list[float]:
    """Let each stopped process run alone for `seconds`, one after another; the time each ran."""
    ran = []
    for process in processes:
        if process.poll() is not None:
            raise RuntimeError("a client ran out of items inside the window: raise the items")
        process.send_signal(signal.SIGCONT)
        started = time.monotonic()
        time.sleep(seconds)
        process.send_signal(signal.SIGSTOP)
        ran.append(time.monotonic() - started)
    return ran


def _run_in_turns(
    scenario: Scenario,
    methods: list[str],
    keys: list[str],
    texts: list[str],
    env: dict[str, str],
    window: float,
) -> list[dict[str, Any]]:
    """Every method in a client process of its own, each with its own key, on the same core,
    taking turns: one runs alone for `TURN` seconds while the others are stopped (SIGSTOP).

    Each one's requests (counted by the server, per key) and CPU time (from /proc) are summed
    over `window` seconds of its turns, after a first turn of `WARM_UP` seconds. Turns this
    short spread any change of the machine's speed over every method alike, where runs one
    after another would each get a different machine; and each method has the core, and its
    caches, to itself while it runs.
    """
    if len(keys) < len(methods):
        raise RuntimeError(f"{scenario.name}: a key per method is needed")
    server = _FakeServer(scenario, keys, env)
    try:
        configs = [
            {
                "method": method,
                "texts": texts,
                "keys": [key],
                "base_url": server.base_url,
                "params": {"max_tokens": 16},
                "entry": scenario.entry,
                "threads": scenario.in_flight,
                "in_flight": scenario.in_flight,
                "core": 1,
            }
            for method, key in zip(methods, keys, strict=False)
        ]
        with _clients(configs, env) as started:
            processes = [process for process, _ in started]
            deadline = time.monotonic() + 120.0
            while not all(server.requests_by_key().get(k) for k in keys[: len(methods)]):
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise RuntimeError("a client did not start sending")
                time.sleep(0.1)
            for process in processes:
                process.send_signal(signal.SIGSTOP)
            _take_turns(processes, WARM_UP)
            before = server.requests_by_key(), [_process_cpu(p.pid) for p in processes]
            ran = [0.0] * len(processes)
            for turn in range(max(1, round(window / TURN))):
                order = list(range(len(processes)))
                order = order[turn % len(order) :] + order[: turn % len(order)]
                times = _take_turns([processes[i] for i in order], TURN)
                for i, seconds in zip(order, times, strict=True):
                    ran[i] += seconds
            after = server.requests_by_key(), [_process_cpu(p.pid) for p in processes]
            peaks = [_peak_mb(p.pid) for p in processes]
    finally:
        server.close()
    rows = []
    for i, method in enumerate(methods):
        requests = after[0][keys[i]] - before[0][keys[i]]
        cpu = after[1][i] - before[1][i]
        rows.append(
            {
                "scenario": scenario.name,
                "title": scenario.title,
                "method": method,
                "rate": requests / ran[i],
                "unit": "req/s",
                "ceiling": 0.0,
                "steady": 0.0,
                "share_429": 0.0,
                "failed": 0,
                "peak_mb": peaks[i],
                "elapsed": ran[i],
                "of_ideal": float("nan"),
                "requests": requests,
                "notes": (
                    f"{scenario.in_flight} in flight, "
                    f"{cpu * 1000 / max(1, requests):.2f} ms CPU/request"
                ),
            }
        )
    return rows


def _run_scenario(scenario: Scenario, scale: float, repeat: int) -> list[dict[str, Any]]:
    """`repeat` runs of every method; the worst run per method, with the best ratio added."""
    # Where the buckets start full, only the items beyond their capacity scale: a run smaller
    # than the capacity would measure concurrency, not limits.
    full = min(float(scenario.items), scenario.initial)
    scenario.items = max(20, int(full + (scenario.items - full) * scale))
    keys = _keys(scenario.keys)
    texts = _texts(scenario)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    methods = scenario.methods or (["raw", "engine"] if scenario.cpu else ["naive", "engine"])
    if not _installed("aiohttp"):  # what openai's DefaultAioHttpClient needs
        methods = [m for m in methods if "aiohttp" not in m and m != "control"]
    if not _installed("uvloop"):
        methods = [m for m in methods if not m.endswith("+uvloop")]
    runs: dict[str, list[dict[str, Any]]] = {method: [] for method in methods}
    for attempt in range(repeat):
        if scenario.in_turns:
            rows = _run_in_turns(scenario, methods, keys, texts, env, WINDOW * scale)
        else:
            rows = [_run_once(scenario, method, keys, texts, env) for method in methods]
        if scenario.cpu:  # the ceiling: the fastest raw client's rate in the same round
            for row in rows:  # ... on the same event loop ("+uvloop" rows against their kind)
                loop = row["method"].partition("+")[2]
                raw = [r for r in rows if r["method"].startswith("raw")]
                fastest = max(r["rate"] for r in raw if r["method"].partition("+")[2] == loop)
                row["ceiling"] = row["steady"] = fastest
        for row in rows:
            runs[row["method"]].append(row)
        ratios = " ".join(f"{r['method']} {_ratio(r):.0%}" for r in rows)
        print(f"{scenario.name} run {attempt + 1}/{repeat}: {ratios}", file=sys.stderr, flush=True)
    worst = []
    for method in methods:
        chosen: dict[str, Any] = min(runs[method], key=_ratio)
        row = dict(chosen)
        row["best"] = max(_ratio(r) for r in runs[method])
        row["runs"] = len(runs[method])
        worst.append(row)
    return worst


def _ratio(row: dict[str, Any]) -> float:
    return float(row["rate"] / row["ceiling"]) if row["ceiling"] else float("nan")


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'scenario':<37} {'method':<10} {'rate':>13} {'ceiling':>8} {'ratio':>6} {'best':>5} "
        f"{'r/rate':>6} {'ideal':>6} {'429s':>6} {'failed':>6} {'sent':>6} {'peak':>6} "
        f"{'time':>6}  notes"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        steady = row["rate"] / row["steady"] if row["steady"] else float("nan")
        print(
            f"{row['scenario'] + ' ' + row['title']:<37} {row['method']:<10} "
            f"{row['rate']:>7.1f} {row['unit']:<5} {row['ceiling']:>8.1f} {_ratio(row):>6.0%} "
            f"{row['best']:>5.0%} {steady:>6.0%} {row['of_ideal']:>6.0%} "
            f"{row['share_429']:>6.1%} {row['failed']:>6} "
            f"{row['requests']:>6} {row['peak_mb']:>4.0f}MB {row['elapsed']:>5.1f}s  "
            f"{row['notes']}"
        )


def _engine_fingerprint() -> str:
    """A short hash of the package's sources: which engine the figures belong to."""
    package = Path(__file__).resolve().parent.parent / "openai_parallel_toolkit"
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _wanted(scenario: Scenario, only: set[str] | None) -> bool:
    if only is None:
        return True
    return (
        scenario.name in only or scenario.group in only or ("new" in only and scenario.group != "S")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--only",
        help="comma-separated scenario names or groups: S J W P M C L X, or 'new' for all but S",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the item counts")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per scenario; the worst is shown (3)"
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pace", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(json.loads(args.serve))
        return 0
    if args.client:
        _client(json.loads(sys.stdin.read()))
        return 0
    if args.pace:
        _pace(json.loads(args.pace))
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    only = set(args.only.split(",")) if args.only else None
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    failures: list[str] = []
    engine = _engine_fingerprint()
    for scenario in SCENARIOS:
        if not _wanted(scenario, only):
            continue
        if scenario.llmock is not None and not thirdparty_mock.available():
            skipped.append(scenario.name)
            continue
        started = time.monotonic()
        try:
            rows.extend(_run_scenario(scenario, args.scale, args.repeat))
        except RuntimeError as error:  # one broken scenario must not lose the others' figures
            failures.append(f"{scenario.name}: {str(error).splitlines()[0]}")
            print(f"{scenario.name} FAILED: {error}", file=sys.stderr, flush=True)
            continue
        print(f"{scenario.name} done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    print(
        f"worst of {args.repeat} run(s) per scenario and method, --scale {args.scale}, "
        f"engine sources {engine}"
    )
    if _engine_fingerprint() != engine:
        print(f"warning: the engine's sources changed during the run (now {_engine_fingerprint()})")
    _print_table(rows)
    if skipped:
        print(f"skipped (llmock not installed): {', '.join(skipped)}")
    for failure in failures:
        print(f"failed: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
