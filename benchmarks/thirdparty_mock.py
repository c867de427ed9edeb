"""Run `llmock` (a third-party OpenAI mock from PyPI) as a rate-limited server for benchmarks.

llmock lives in a virtualenv of its own so that it cannot disturb the project's dependencies:

    python3 -m venv .venv-llmock && .venv-llmock/bin/pip install llmock

`LLMOCK_PYTHON` may name another interpreter that has llmock installed. Benchmarks only: the
test suite never uses this module. What llmock does (read from its 0.2.2 source):

- Limits are RPM/TPM token buckets per (provider, Authorization header): every distinct key a
  client sends gets its own buckets. llmock has no list of keys and accepts any key.
- Buckets START FULL (capacity = the per-minute limit) and refill continuously at limit/60 per
  second. A fresh server therefore lets each key burst a whole minute's quota at once; call
  `LLMockServer.drain()` to start a measurement from empty buckets instead.
- TPM charges `max(1, len(raw request body) // 4) + max_tokens` up front and never adjusts it.
  A request charging more than the TPM limit gets 429 forever.
- Every request to a non-admin path is charged, 404s and 422s included.
- Latency is fixed (`--latency-ms`), without jitter, and applies to 429s as well.
- Random 429s (`--error-rate 429=P`) carry `retry-after: 1` and `retry-after-ms: 1000` but no
  `x-ratelimit-*` headers, and charge nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = ROOT / ".venv-llmock"
ENV_VAR = "LLMOCK_PYTHON"
HOST = "127.0.0.1"
DRAIN_PATH = "/v1/_bench_drain"  # no such route: a 404 that llmock still charges to the key


def _command() -> list[str] | None:
    """How to run `llmock`, or None when it is not installed where we look."""
    python = os.environ.get(ENV_VAR)
    if python:
        return [python, "-m", "llmock.cli"] if Path(python).is_file() else None
    executable = DEFAULT_VENV / "bin" / "llmock"
    return [str(executable)] if executable.is_file() else None


def available() -> bool:
    """Whether llmock can be started (its virtualenv, or `LLMOCK_PYTHON`, exists)."""
    return _command() is not None


def bench_keys(count: int) -> list[str]:
    """Key strings in the same shape as benchmarks/bench_throughput.py uses."""
    return [f"sk-bench-{'x' * 24}{i:04d}" for i in range(count)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read()


@dataclass
class LLMockServer:
    """A running llmock process. `base_url` ends in /v1, ready for `openai.OpenAI(base_url=)`."""

    root_url: str
    keys: list[str]
    rpm: int | None
    tpm: int | None
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def requests(self) -> list[dict[str, Any]]:
        """llmock's journal: one record per request (status, fault, timing), oldest first.

        The journal keeps the last 10,000 requests only.
        """
        _, _, body = _http("GET", f"{self.root_url}/_llmock/requests")
        records: list[dict[str, Any]] = json.loads(body)["requests"]
        return records

    def counts(self) -> Counter[str]:
        """Requests by outcome: '200', '429 ratelimit:requests', '429 chaos:429', ..."""
        return Counter(
            f"{r['status']} {r['fault']}" if r.get("fault") else str(r["status"])
            for r in self.requests()
        )

    def clear_journal(self) -> None:
        """Forget recorded requests; the buckets keep their level."""
        _http("DELETE", f"{self.root_url}/_llmock/requests")

    def reset(self) -> None:
        """Forget requests and scripted behaviours AND refill every bucket to full."""
        _http("POST", f"{self.root_url}/_llmock/reset")

    def drain(self, threads: int = 64, rounds: int = 4) -> None:
        """Spend (almost) all of every key's RPM and TPM, so that a run starts from empty.

        Sends charged 404s per key (one of them with a large `max_tokens` to empty the token
        bucket), then tops up what refilled meanwhile, reading the remaining quota from the
        headers, and clears the journal. What refills during the last round stays.
        """
        if self.rpm is None and self.tpm is None:
            return
        url = f"{self.root_url}{DRAIN_PATH}"
        remaining = {key: (self.rpm, self.tpm) for key in self.keys}

        def send(job: tuple[bytes, dict[str, str]]) -> tuple[int, dict[str, str]]:
            status, headers, _ = _http("POST", url, job[0], job[1])
            return status, {k.lower(): v for k, v in headers.items()}

        with ThreadPoolExecutor(threads) as pool:
            for _ in range(rounds):
                jobs: list[tuple[bytes, dict[str, str]]] = []
                for key, (requests, tokens) in remaining.items():
                    jobs.extend(_drain_jobs(key, requests, tokens))
                if not jobs:
                    break
                list(pool.map(send, jobs))
                probes = list(pool.map(send, [(b"x", _small(key)) for key in self.keys]))
                remaining = {
                    key: (
                        _header_int(headers, "x-ratelimit-remaining-requests"),
                        _header_int(headers, "x-ratelimit-remaining-tokens"),
                    )
                    for key, (_, headers) in zip(self.keys, probes, strict=True)
                }
        self.clear_journal()


def _small(key: str) -> dict[str, str]:
    # Not parsed as JSON: llmock charges one request and one token.
    return {"authorization": f"Bearer {key}", "content-type": "text/plain"}


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    return int(value) if value is not None else None


def _drain_jobs(
    key: str, requests: int | None, tokens: int | None
) -> list[tuple[bytes, dict[str, str]]]:
    """Requests that spend `requests` requests and about `tokens` tokens of one key."""
    if requests == 0 or tokens == 0 or (requests is None and tokens is None):
        return []
    count = requests if requests is not None else 1
    jobs: list[tuple[bytes, dict[str, str]]] = []
    if tokens is not None and tokens - (count - 1) > 1:
        # One JSON request charges what the count - 1 small ones (1 token each) leave over.
        headers = {**_small(key), "content-type": "application/json"}
        jobs.append((_token_body(tokens - (count - 1)), headers))
        count -= 1
    jobs.extend((b"x", _small(key)) for _ in range(count))
    return jobs


def _token_body(tokens: int) -> bytes:
    """A JSON body that llmock charges `tokens` tokens for (or a little less)."""

    def body(budget: int) -> bytes:
        return json.dumps({"max_tokens": budget}).encode()

    def charge(budget: int) -> int:
        return max(1, len(body(budget)) // 4) + budget

    guess = max(0, tokens - len(body(tokens)) // 4)
    fitting = [b for b in range(max(0, guess - 3), guess + 4) if charge(b) <= tokens]
    return body(max(fitting, default=0))


@contextmanager
def run_llmock(
    keys: int | Sequence[str] = 4,
    rpm: int | None = None,
    tpm: int | None = None,
    latency: float = 0.0,
    random_429: float = 0.0,
    error_rates: Mapping[int, float] | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 30.0,
) -> Iterator[LLMockServer]:
    """Start llmock on 127.0.0.1 and a free port; stop it on exit.

    keys: a count (bench-style keys are made up) or the key strings. llmock itself does not
      know them: it keeps buckets for whatever keys clients send.
    rpm, tpm: per-key limits (None: unlimited).
    latency: seconds added to every response, fixed (llmock has no jitter).
    random_429: probability of a 429 that is not the quota's (chaos), with retry-after 1s.
    error_rates: other random errors, {status: probability}; the sum must be <= 1.
    extra_args: more `llmock serve` flags, e.g. ("--context-window", "8000").
    """
    command = _command()
    if command is None:
        raise RuntimeError(
            f"llmock not found: create {DEFAULT_VENV} (python3 -m venv {DEFAULT_VENV} && "
            f"{DEFAULT_VENV}/bin/pip install llmock) or set {ENV_VAR}"
        )
    key_list = bench_keys(keys) if isinstance(keys, int) else list(keys)
    flags = ["--log-level", "warning", "--latency-ms", str(round(latency * 1000))]
    if rpm is not None:
        flags += ["--rpm", str(rpm)]
    if tpm is not None:
        flags += ["--tpm", str(tpm)]
    rates = dict(error_rates or {})
    if random_429:
        rates[429] = random_429
    for status, rate in sorted(rates.items()):
        flags += ["--error-rate", f"{status}={rate}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOCK_", "OPENAI_"))}
    env.update({"NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})

    with tempfile.TemporaryFile() as log:
        process, root_url = _start(command, flags, env, log, startup_timeout)
        try:
            yield LLMockServer(root_url, key_list, rpm, tpm, process)
        finally:
            _stop(process)


def _start(
    command: list[str],
    flags: list[str],
    env: dict[str, str],
    log: IO[bytes],
    timeout: float,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start llmock and wait for /health; retry on another port if the chosen one was taken."""
    for _attempt in range(3):
        port = _free_port()
        args = [*command, "serve", "--host", HOST, "--port", str(port), *flags]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        root_url = f"http://{HOST}:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if _http("GET", f"{root_url}/health", timeout=1.0)[0] == 200:
                    return process, root_url
            except OSError:
                pass
            time.sleep(0.1)
        exited_early = process.poll() is not None and time.monotonic() < deadline
        _stop(process)
        if not exited_early:  # timed out: another port will not help
            break
    log.seek(0)
    tail = log.read()[-2000:].decode(errors="replace")
    raise RuntimeError(f"llmock did not start ({' '.join(args)}):\n{tail}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- smoke check ----------------------------------------------------------------------------

RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "retry-after",
    "retry-after-ms",
)


def _fire(server: LLMockServer, count: int, threads: int = 8) -> None:
    """Send `count` chat requests with the official client, keys round-robin, no retries."""
    import openai

    clients = [
        openai.OpenAI(api_key=k, base_url=server.base_url, max_retries=0, timeout=30.0)
        for k in server.keys
    ]

    def send(index: int) -> tuple[int, dict[str, str], Any]:
        client = clients[index % len(clients)]
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"item {index}: say something short"}],
                max_tokens=16,
            )
        except openai.APIStatusError as error:
            return error.status_code, dict(error.response.headers), error.body
        return raw.status_code, dict(raw.headers), raw.parse().usage

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(send, range(count)))
    elapsed = time.perf_counter() - started
    statuses = Counter(status for status, _, _ in results)
    print(
        f"  {count} requests in {elapsed:.2f}s, client statuses: {dict(sorted(statuses.items()))}"
    )
    print(f"  server journal: {dict(server.counts())}")
    seen: set[int] = set()
    for status, headers, extra in results:
        if status in seen:
            continue
        seen.add(status)
        shown = {h: headers[h] for h in RATE_HEADERS if h in headers}
        print(f"  first {status}: headers {shown}")
        print(f"       {'usage' if status == 200 else 'body'}: {extra}")


def main() -> int:
    if not available():
        print(f"llmock is not installed ({DEFAULT_VENV} missing and {ENV_VAR} unset)")
        return 1
    with run_llmock(keys=4, rpm=600) as server:
        print(f"llmock at {server.base_url}: 4 keys x 600 RPM")
        print("fresh server (buckets start full):")
        _fire(server, 50)
        server.clear_journal()
        server.drain()
        print("after drain() (buckets near empty, refill 10 requests/s per key):")
        _fire(server, 50)
    with run_llmock(keys=4, rpm=600, latency=0.05, random_429=0.3) as server:
        print("random 429 with p=0.3, latency 50ms:")
        _fire(server, 50)
    return 0


if __name__ == "__main__":
    sys.exit(main())
