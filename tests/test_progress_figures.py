"""The JSONL job's status lines (stderr not a terminal): rates, 429s, key health, cost so far
and projected, the ceiling in use, and which limit binds."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import InProcessCli

from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = ["sk-status-aaaaaaaaaaaaaaa0001", "sk-status-aaaaaaaaaaaaaaa0002"]


def write_job(tmp_path: Path, server: FakeOpenAIServer, count: int) -> tuple[Path, Path]:
    config = tmp_path / "keys.json"
    config.write_text(json.dumps({"api_keys": KEYS, "api_base": server.base_url}))
    requests = tmp_path / "in.jsonl"
    body = {"model": "gpt-4o-mini", "max_tokens": 20}
    requests.write_text(
        "".join(
            json.dumps({**body, "messages": [{"role": "user", "content": f"q{i}"}]}) + "\n"
            for i in range(count)
        )
    )
    return config, requests


def status_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("status: ")]


def test_status_line_shows_rates_keys_cost_ceiling_and_the_binding_limit(
    run_cli: InProcessCli, tmp_path: Path
) -> None:
    # One request in flight at a time, each 0.1 s: the one worker is what holds the run back.
    with FakeOpenAIServer(keys=KEYS, latency=0.1) as slow:
        config, requests = write_job(tmp_path, slow, 4)
        result = run_cli("run", str(requests), "-o", str(tmp_path / "o.jsonl"),
                         "--config", str(config), "--threads", "1",
                         "--status-interval", "0.01")  # fmt: skip
    assert result.returncode == 0, result.stderr
    status = status_lines(result.stderr)
    final = status[-1]
    assert final.startswith("status: 4/4 requests finished, 0 failed, ")
    assert re.search(r"\d+\.\d req/s", final) and re.search(r"\d+ tokens/s", final)
    assert "0 rate-limited (429)" in final
    assert "keys 2 healthy / 0 cooling / 0 removed" in final
    spent = re.search(r"\$(\d+\.\d+) spent, \$(\d+\.\d+) projected", final)
    assert spent is not None and spent.group(1) == spent.group(2)  # all done: projected = spent
    assert re.search(r"ceiling (unknown|\d+% in use)", final)
    assert any("limited by too few workers (raise --threads)" in line for line in status[:-1])
    # Midway, the projection runs ahead of what was spent.
    midway = [
        match
        for line in status
        if line.startswith(("status: 1/4", "status: 2/4", "status: 3/4"))
        for match in [re.search(r"\$(\d+\.\d+) spent, \$(\d+\.\d+) projected", line)]
        if match is not None
    ]
    assert midway and all(float(m.group(2)) > float(m.group(1)) for m in midway)


def test_status_line_names_a_cooling_group(run_cli: InProcessCli, tmp_path: Path) -> None:
    # Every key's first request gets a 429 with retry-after 0.3 s: both groups cool meanwhile.
    with FakeOpenAIServer(keys=KEYS) as server:
        server.set_fault("*", "rate_limit", times=2)
        server.fault_retry_after = 0.3  # long enough for status lines every 0.01 s to see it
        config, requests = write_job(tmp_path, server, 2)
        result = run_cli("run", str(requests), "-o", str(tmp_path / "o.jsonl"),
                         "--config", str(config), "--threads", "2",
                         "--status-interval", "0.01")  # fmt: skip
    assert result.returncode == 0, result.stderr
    status = status_lines(result.stderr)
    assert "2 rate-limited (429)" in status[-1]
    cooling = [line for line in status if "limited by a cooling key group (429)" in line]
    assert cooling and re.search(r"keys \d healthy / [12] cooling / 0 removed", cooling[0])
