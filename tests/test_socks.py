"""SOCKS proxies: requests really go through a real SOCKS5 proxy (pproxy) on 127.0.0.1, and
without the ``socks`` extra the config is refused at load time with a one-line error."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import forked
import pproxy  # type: ignore[import-untyped]  # no type hints
import pytest

from openai_parallel_toolkit import (
    APIKeyManager,
    ChatModel,
    ConfigError,
    KeyConfig,
    config_from_env,
    request_openai_api,
)
from openai_parallel_toolkit.testing import FakeOpenAIServer

KEY = "sk-socks-" + "s" * 30 + "0001"
# Runs the command line with socksio unimportable, as in an install without the socks extra.
WITHOUT_SOCKSIO = (
    "import sys; sys.modules['socksio'] = None; "
    "from openai_parallel_toolkit.__main__ import main; raise SystemExit(main(sys.argv[1:]))"
)


@dataclass
class SocksProxy:
    """A pproxy SOCKS5 server on its own event loop; `connections` lists what it relayed."""

    url: str
    connections: list[str] = field(default_factory=list)

    def relayed_to(self, port: int) -> int:
        """How many connections the proxy opened to 127.0.0.1:`port`."""
        return sum(line.endswith(f"-> 127.0.0.1:{port}") for line in self.connections)


@pytest.fixture
def socks_proxy() -> Iterator[SocksProxy]:
    loop = asyncio.new_event_loop()
    connections: list[str] = []
    # pproxy calls `verbose` with "socks5 CLIENT -> HOST:PORT" before it connects onwards,
    # so a request that got its answer has been logged.
    server = loop.run_until_complete(
        pproxy.Server("socks5://127.0.0.1:0").start_server(
            {"rserver": [], "verbose": connections.append}
        )
    )
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, name="socks-proxy", daemon=True)
    thread.start()
    try:
        yield SocksProxy(f"socks5://127.0.0.1:{port}", connections)
    finally:

        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


def _config(tmp_path: Path, server: FakeOpenAIServer, proxy: str) -> Path:
    path = tmp_path / "keys.json"
    entry = {"api_key": KEY, "api_base": server.base_url, "proxy": proxy}
    path.write_text(json.dumps({"api_keys": [entry]}), encoding="utf-8")
    return path


def _cli(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own (forked: `openai` is imported already there)."""
    command = ["-c", code, *args] if code else ["-m", "openai_parallel_toolkit", *args]
    return forked.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_pool_requests_go_through_the_socks_proxy(
    socks_proxy: SocksProxy, fake_server: FakeOpenAIServer, scheme: str
) -> None:
    proxy = socks_proxy.url.replace("socks5://", f"{scheme}://")
    with APIKeyManager(
        [{"api_key": KEY, "api_base": fake_server.base_url, "proxy": proxy}],
        make_default=False,
    ) as pool:
        answers = [
            request_openai_api(ChatModel(content=f"via {i}"), manager=pool) for i in range(3)
        ]
    assert answers == ["echo: via 0", "echo: via 1", "echo: via 2"]
    assert fake_server.counters()[KEY].requests == 3
    assert socks_proxy.relayed_to(fake_server.port) >= 1


def test_keys_check_goes_through_the_socks_proxy(
    socks_proxy: SocksProxy, fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    result = _cli("keys", "check", "--config", str(_config(tmp_path, fake_server, socks_proxy.url)))
    assert result.returncode == 0, result.stderr
    assert "works" in result.stdout and "Traceback" not in result.stderr
    assert fake_server.counters()[KEY].requests == 1
    assert socks_proxy.relayed_to(fake_server.port) == 1


def test_run_goes_through_the_socks_proxy(
    socks_proxy: SocksProxy, fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    requests = tmp_path / "requests.jsonl"
    lines = [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}
        for i in range(4)
    ]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    results = tmp_path / "results.jsonl"
    config = _config(tmp_path, fake_server, socks_proxy.url)
    result = _cli(
        "run", str(requests), "-o", str(results), "--config", str(config), "--no-progress"
    )
    assert result.returncode == 0, result.stderr
    assert len(results.read_text(encoding="utf-8").splitlines()) == 4
    assert fake_server.counters()[KEY].requests == 4
    assert socks_proxy.relayed_to(fake_server.port) >= 1


@pytest.mark.parametrize("command", [["keys", "check"], ["run", "in.jsonl", "-o", "out.jsonl"]])
def test_without_the_socks_extra_a_one_line_config_error(
    tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "in.jsonl").write_text('{"messages": []}\n', encoding="utf-8")
    config = tmp_path / "keys.json"
    entry = {"api_key": KEY, "proxy": "socks5://user:pw@127.0.0.1:1080"}
    config.write_text(json.dumps({"api_keys": [entry]}), encoding="utf-8")
    args = [*command, "--config", str(config)]
    args = [str(tmp_path / a) if a.endswith(".jsonl") else a for a in args]
    result = _cli(*args, code=WITHOUT_SOCKSIO)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0] and "api_keys[0].proxy" in lines[0]
    assert "install the socks extra" in lines[0] and '".[socks]"' in lines[0]
    assert "pw" not in lines[0] and KEY not in lines[0]


def test_without_the_socks_extra_every_loader_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import system report the package as not installed.
    monkeypatch.setitem(sys.modules, "socksio", None)
    with pytest.raises(ConfigError, match=r"\[socks\]") as info:
        config_from_env({"OPENAI_API_KEY": KEY, "OPENAI_API_PROXY": "socks5h://127.0.0.1:1"})
    assert info.value.field == "OPENAI_API_PROXY"
    with pytest.raises(ConfigError, match=r"\[socks\]"):
        KeyConfig(api_key=KEY, proxy="socks5://127.0.0.1:1080")
    with pytest.raises(ConfigError, match=r"\[socks\]"):
        APIKeyManager([{"api_key": KEY, "proxy": "socks5://127.0.0.1:1080"}], make_default=False)
    # http proxies need nothing more
    assert KeyConfig(api_key=KEY, proxy="http://127.0.0.1:3128").proxy == "http://127.0.0.1:3128"
