"""Running an ASGI app with uvicorn in a background thread (tests, notebooks, embedding).

Needs the ``server`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import sys
import threading
import time
from typing import Any

import uvicorn

__all__ = ["BackgroundServer", "bind"]


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on `host`:`port` (0: any free port)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform != "win32":
            # A restart on a fixed port works while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def uvicorn_config(app: Any, **overrides: Any) -> uvicorn.Config:
    """Quiet, fast uvicorn settings for a library-run server."""
    options: dict[str, Any] = {
        "log_level": "warning",
        "log_config": None,
        "access_log": False,
        "lifespan": "off",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "server_header": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


class BackgroundServer:
    """`app` served by uvicorn on its own event loop in a daemon thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, name: str = "server"):
        self.app = app
        self.host = host
        self.port = port
        self.name = name
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._socket: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (valid after `start`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> BackgroundServer:
        """Start serving; returns once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already started")
        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn_config(self.app))
        self._server, self._socket = server, sock
        thread = threading.Thread(
            target=self._run, args=(server, sock), name=f"{self.name}:{self.port}", daemon=True
        )
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + 10.0
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} failed to start: {self._error!r}")
            time.sleep(0.002)
        return self

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        try:
            asyncio.run(serve())
        except BaseException as exc:  # uvicorn reports a failed start with SystemExit
            self._error = exc

    def stop(self) -> None:
        """Stop at once, cutting open connections; idempotent."""
        thread, server, loop = self._thread, self._server, self._loop
        if thread is None or server is None:
            return
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(_shutdown_now, server)
        server.should_exit = True
        thread.join(timeout=5.0)
        if self._socket is not None:
            self._socket.close()
        self._thread = self._server = self._loop = self._socket = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _shutdown_now(server: uvicorn.Server) -> None:
    # Skip uvicorn's graceful wait and cut in-flight requests, so clients see a closed
    # connection at once instead of waiting for their timeout.
    server.should_exit = True
    server.force_exit = True
    for connection in list(server.server_state.connections):
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.close()
