"""The proxy under hostile or unlucky conditions (issue 13): big bodies, odd routes, idle
connections, bad options, secret keys, an unreachable upstream. Real sockets on 127.0.0.1, the
bundled fake server upstream; no sleeping for time, only polling with deadlines."""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import forked
import httpx2
import openai
import pytest
from conftest import openai_client

from openai_parallel_toolkit import APIKeyManager, PoolOptions, RetryPolicy, server
from openai_parallel_toolkit.asgi import BackgroundServer
from openai_parallel_toolkit.serving import KEY_ENV_VAR, main
from openai_parallel_toolkit.testing import FakeClock, FakeOpenAIServer

KEYS = [f"sk-upstream-{'h' * 28}-{i:04d}" for i in range(2)]
CLIENT_KEY = "proxy-client-key-5678"
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Proxy:
    upstream: FakeOpenAIServer
    manager: APIKeyManager
    url: str  # http://127.0.0.1:PORT
    port: int

    def client(self) -> openai.OpenAI:
        return openai_client(api_key=CLIENT_KEY, base_url=self.url + "/v1")


def _manager(api_base: str) -> APIKeyManager:
    return APIKeyManager(
        api_keys=[{"api_key": k, "api_base": api_base} for k in KEYS],
        make_default=False,
        options=PoolOptions(timeout=30.0),
    )


@pytest.fixture
def upstream() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS) as fake:
        yield fake


def _serve(upstream: FakeOpenAIServer, **options: Any) -> Callable[..., Any]:
    """A context manager factory: the proxy over `upstream`, served with `options`."""
    manager = _manager(upstream.base_url)

    class Serving:
        def __enter__(self) -> Proxy:
            proxy = server.ProxyServer(manager, CLIENT_KEY, max_body_bytes=8 * 2**20)
            self.running = BackgroundServer(proxy.app, name="proxy", **options).start()
            return Proxy(upstream, manager, self.running.url, self.running.port)

        def __exit__(self, *exc_info: object) -> None:
            self.running.stop()

    return Serving


def _poll(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- nothing CPU-heavy on the event loop ------------------------------------------------------


def test_health_answers_while_a_big_body_is_estimated(
    upstream: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The estimate of a big body runs off the loop: other clients are served meanwhile.

    The estimate is held at a gate until /health has answered, so the test depends on order
    only: with the estimate on the event loop, /health could not answer and would time out.
    """
    started, gate = threading.Event(), threading.Event()
    real = server.estimate_request_tokens

    def gated(path: str, body: dict[str, Any]) -> int:
        started.set()
        gate.wait(timeout=20.0)
        return real(path, body)

    monkeypatch.setattr(server, "estimate_request_tokens", gated)
    big = {**CHAT, "messages": [{"role": "user", "content": "word " * 400_000}], "max_tokens": 5}
    answers: dict[str, Any] = {}
    with _serve(upstream)() as proxy:

        def send_big() -> None:
            answers["big"] = httpx2.post(
                proxy.url + "/v1/chat/completions", json=big, headers=AUTH, timeout=60.0
            )

        sender = threading.Thread(target=send_big)
        sender.start()
        try:
            assert started.wait(timeout=20.0), "the big body never reached the estimate"
            health = httpx2.get(proxy.url + "/health", timeout=5.0)
            assert health.status_code == 200
            assert "big" not in answers  # answered while the big request was still in hand
        finally:
            gate.set()
            sender.join(timeout=30.0)
        assert answers["big"].status_code == 200
        assert answers["big"].json()["usage"]["prompt_tokens"] > 100_000


# -- routes: no redirects, OpenAI-style 404 / 405, authentication first -----------------------


def test_trailing_slash_with_forged_host_is_not_redirected(upstream: FakeOpenAIServer) -> None:
    with _serve(upstream)() as proxy:
        url = proxy.url + "/v1/chat/completions/"
        forged = {"host": "evil.example"}
        anonymous = httpx2.post(url, json=CHAT, headers=forged)
        assert anonymous.status_code == 401 and "location" not in anonymous.headers
        known = httpx2.post(url, json=CHAT, headers={**forged, **AUTH})
        assert known.status_code == 404 and "location" not in known.headers
        assert known.json()["error"]["type"] == "invalid_request_error"
        assert upstream.total().requests == 0


def test_unknown_routes_and_methods_answer_openai_errors(upstream: FakeOpenAIServer) -> None:
    with _serve(upstream)() as proxy:
        probe = httpx2.get(proxy.url + "/v1/secret-route")
        assert probe.status_code == 401  # not 404: routes cannot be probed without the key
        assert set(probe.json()["error"]) == {"message", "type", "param", "code"}
        missing = httpx2.get(proxy.url + "/v1/secret-route", headers=AUTH)
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "/v1/secret-route" in error["message"]
        wrong = httpx2.get(proxy.url + "/v1/chat/completions", headers=AUTH)
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
        assert set(wrong.json()["error"]) == {"message", "type", "param", "code"}
        assert httpx2.post(proxy.url + "/health").status_code == 401
        assert httpx2.get(proxy.url + "/health").status_code == 200  # the one public route
        assert httpx2.get(proxy.url + "/stats").status_code == 401
        with pytest.raises(openai.NotFoundError):
            proxy.client().post("/nothing-here", cast_to=object, body={})


# -- idle and half-open connections -----------------------------------------------------------


def _read_until_closed(sock: socket.socket, seconds: float = 10.0) -> bytes | None:
    """All the server sent on `sock` until it closed it; None if it is still open."""
    sock.settimeout(0.0)
    received = b""

    def closed() -> bool:
        nonlocal received
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except BlockingIOError:
            return False
        except ConnectionResetError:
            pass
        return True

    return received if _poll(closed, seconds) else None


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port))


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_half_open_connections_are_cut_off_and_others_are_served(
    upstream: FakeOpenAIServer, http: str
) -> None:
    with _serve(upstream, header_timeout=0.5, http=http)() as proxy:
        silent = [_connect(proxy.port) for _ in range(20)]
        partial = [_connect(proxy.port) for _ in range(20)]
        try:
            for sock in partial:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            # A normal client is served while those connections hang.
            reply = proxy.client().chat.completions.create(**CHAT)
            assert reply.choices[0].message.content == "echo: hi"
            assert [_read_until_closed(sock) for sock in silent] == [b""] * 20  # just hung up
            for sock in partial:
                answer = _read_until_closed(sock)
                assert answer is not None and answer.startswith(b"HTTP/1.1 408")
            # A kept-alive connection has the same deadline for its next request's headers
            # (the next request begun after the answer, which stops uvicorn's keep-alive timer).
            with _connect(proxy.port) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                first = b""
                while not first.endswith(b"}"):
                    first += sock.recv(65536)
                assert first.startswith(b"HTTP/1.1 200")
                sock.sendall(b"GET /health HTTP/1.1\r\n")
                answer = _read_until_closed(sock)
                assert answer is not None and answer.startswith(b"HTTP/1.1 408")
        finally:
            for sock in silent + partial:
                sock.close()


def test_connection_cap_and_header_size_bound(upstream: FakeOpenAIServer) -> None:
    with _serve(upstream, max_connections=4, max_header_bytes=8192)() as proxy:
        held = [_connect(proxy.port) for _ in range(4)]
        try:
            with _connect(proxy.port) as extra:
                answer = _read_until_closed(extra)
            assert answer is not None and answer.startswith(b"HTTP/1.1 503")
            error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
            assert error["code"] == "too_many_connections"
        finally:
            for sock in held:
                sock.close()

        def served() -> bool:
            try:
                return httpx2.get(proxy.url + "/health").status_code == 200
            except httpx2.HTTPError:
                return False

        assert _poll(served)  # the cap frees up as connections close
        with _connect(proxy.port) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
            answer = _read_until_closed(sock)
            assert answer is not None and answer.startswith(b"HTTP/1.1 431")


# -- /health reflects the upstream ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_health_says_503_when_the_upstream_is_unreachable() -> None:
    manager = _manager(f"http://127.0.0.1:{_free_port()}/v1")  # nothing listens there
    proxy = server.ProxyServer(
        manager, CLIENT_KEY, policy=RetryPolicy(max_retries=3, backoff_base=0.001)
    )
    with BackgroundServer(proxy.app, name="proxy") as running:
        assert httpx2.get(running.url + "/health").json()["status"] == "ok"
        failed = httpx2.post(running.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
        assert failed.status_code == 502
        health = httpx2.get(running.url + "/health")
        assert health.status_code == 503
        assert health.json()["status"] == "upstream unreachable"
        assert "ConnectError" in health.json()["reason"]


def test_health_says_503_when_no_key_is_usable(upstream: FakeOpenAIServer) -> None:
    upstream.set_fault("*", "invalid_api_key")
    with _serve(upstream)() as proxy:
        for _ in KEYS:  # each request removes at least one key
            with pytest.raises(openai.APIStatusError):
                proxy.client().chat.completions.create(**CHAT)
        health = httpx2.get(proxy.url + "/health")
        assert health.status_code == 503
        assert health.json()["status"] == "no usable keys" and health.json()["active_keys"] == 0


def test_upstream_health_recovers_and_goes_stale() -> None:
    clock = FakeClock()
    health = server.UpstreamHealth(failures=3, stale_after=60.0, clock=clock)
    assert health.problem() is None
    for _ in range(2):
        health.unreachable("ConnectError: refused")
    assert health.problem() is None  # two failures may be bad luck
    health.unreachable("ConnectError: refused")
    assert "ConnectError: refused" in (health.problem() or "")
    health.reached()
    assert health.problem() is None  # any answer from the upstream clears it
    for _ in range(3):
        health.unreachable("ReadTimeout")
    clock.advance(59.0)
    assert health.problem() is not None
    clock.advance(1.0)
    assert health.problem() is None  # no recent evidence either way


# -- the command: options, the client key, start-up errors ------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        ["--max-body-bytes", "-5"],
        ["--max-body-bytes", "0"],
        ["--max-body-bytes", "1.5"],
        ["--port", "-1"],
        ["--port", "65536"],
        ["--port", "http"],
        ["--timeout", "0"],
        ["--timeout", "nan"],
        ["--max-wait", "-1"],
        ["--max-wait", "inf"],
        ["--header-timeout", "0"],
        ["--max-connections", "0"],
        ["--host", ""],
        ["--api-key-file", "/nonexistent/key"],
        ["--api_key", "k", "--api-key-file", "/nonexistent/key"],
    ],
)
def test_bad_option_values_exit_2_with_one_line(
    option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*option, "--no-auth"])
    assert info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "argument --" in errors[0]


def test_address_in_use_names_the_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "keys.json"
    config.write_text(json.dumps({"api_keys": KEYS, "api_base": "http://127.0.0.1:9/v1"}))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["--port", str(port), "--api_key", CLIENT_KEY, "--config", str(config)])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def _run_serving(args: list[str], env: dict[str, str]) -> tuple[forked.Popen, str, list[str]]:
    """Start the command in a process of its own (forked: see `forked`); its base URL and the
    lines it writes to stderr (filled as it runs)."""
    process = forked.Popen(
        [sys.executable, "-m", "openai_parallel_toolkit.serving", "--port", "0", *args],
        stdout=forked.PIPE,
        stderr=forked.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    assert process.stdout is not None and process.stderr is not None
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(process.stderr or ()), daemon=True).start()
    line = process.stdout.readline()
    match = re.search(r"(http://\S+)/v1", line)
    if match is None:
        process.kill()
        raise AssertionError(f"the proxy did not start: {line!r} {errors}")
    return process, match.group(1), errors


def _logged(lines: list[str], path: str) -> bool:
    return any(f'"POST {path} HTTP/1.1" 401' in line for line in lines)


def test_client_key_from_a_file_or_the_environment_and_access_log(
    upstream: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = tmp_path / "keys.json"
    config.write_text(json.dumps({"api_keys": KEYS, "api_base": upstream.base_url}))
    key_file = tmp_path / "client-key"
    key_file.write_text(CLIENT_KEY + "\n")
    runs = [
        (["--api-key-file", str(key_file), "--access-log"], {}),
        ([], {KEY_ENV_VAR: CLIENT_KEY}),
    ]
    for args, env in runs:
        process, url, errors = _run_serving(["--config", str(config), *args], env)
        try:
            assert CLIENT_KEY not in " ".join(process.args)
            good = httpx2.post(url + "/v1/chat/completions", json=CHAT, headers=AUTH)
            assert good.status_code == 200
            bad = httpx2.post(url + "/v1/chat/completions", json=CHAT)
            assert bad.status_code == 401
            if "--access-log" in args:
                assert _poll(functools.partial(_logged, errors, "/v1/chat/completions")), errors
        finally:
            process.terminate()
            process.wait(timeout=10)
        if "--access-log" not in args:
            assert not any("/v1/chat/completions" in line for line in errors)  # off by default
