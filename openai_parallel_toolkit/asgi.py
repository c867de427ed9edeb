"""Running an ASGI app with uvicorn: settings, guards against idle clients, a background thread.

Needs the ``server`` extra. uvicorn bounds how long an idle keep-alive connection stays open
(``timeout_keep_alive``) but not how long a client may take to send a request's headers, nor
(with httptools) how large they may grow, nor how many connections it holds: a client that
opens connections and never finishes its headers keeps them open for ever. `uvicorn_config`
therefore serves with `guarded_protocol`: uvicorn's own HTTP protocol plus a deadline and a size
bound for every request's headers and a cap on open connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import socket
import sys
import threading
import time
from typing import Any

import uvicorn

from .serving import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_HEADER_BYTES

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_HEADER_BYTES",
    "BackgroundServer",
    "bind",
    "default_max_connections",
    "guarded_protocol",
    "uvicorn_config",
]

# Connections that never finish their headers still hold a file descriptor each; and every
# proxied request needs a second one upstream. The default cap keeps both within the limit.
MAX_DEFAULT_CONNECTIONS = 4096
LISTEN_BACKLOG = 2048  # uvicorn's default


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host`:`port` (0: any free port).

    Raises `OSError` (e.g. address already in use) here, before anything is served.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform != "win32":
            # A restart on a fixed port works while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def default_max_connections() -> int:
    """The default connection cap: half the open-file limit (less a reserve), at most 4096."""
    try:
        import resource
    except ImportError:  # Windows
        return MAX_DEFAULT_CONNECTIONS
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_DEFAULT_CONNECTIONS
    return max(16, min(MAX_DEFAULT_CONNECTIONS, (soft - 64) // 2))


def _raw_response(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 answer with an OpenAI-style error body, closing the connection."""
    body = json.dumps(
        {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Guard:
    """Mixed into one of uvicorn's HTTP protocol classes by `guarded_protocol`.

    From the moment a connection opens, and again each time an answer is complete, the client
    has `header_timeout` seconds and `max_header_bytes` bytes to finish the next request's
    headers; past either the connection is answered (408 / 431) and closed. A connection
    opened while `max_connections` are already open is answered 503 and closed at once.
    Headers are complete when uvicorn starts a new request cycle (``self.cycle``), which both
    the httptools and the h11 protocols do.
    """

    header_timeout: float
    max_header_bytes: int
    max_connections: int
    # Provided by the uvicorn protocol class this is mixed into (hence the ignores on the
    # super() calls below: this class itself derives from object only).
    connections: set[Any]
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    _header_timer: asyncio.TimerHandle | None = None
    _header_cycle: Any = None
    _header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if len(self.connections) > self.max_connections:
            transport.write(
                _raw_response(
                    503, "Service Unavailable", "Too many open connections.", "too_many_connections"
                )
            )
            transport.close()
            return
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._header_timer is None:
            return
        if self.cycle is not self._header_cycle:  # the headers are complete
            self._stop_header_timer()
            return
        self._header_bytes += len(data)
        if self._header_bytes > self.max_header_bytes:
            self._refuse(
                431, "Request Header Fields Too Large", "The request headers are too large."
            )

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        # Idle again (no pipelined request started): the next request's headers are due.
        if self.cycle is not None and self.cycle.response_complete:
            self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _await_headers(self) -> None:
        self._stop_header_timer()
        if self.transport.is_closing():
            return
        self._header_cycle, self._header_bytes = self.cycle, 0
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_overdue)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if self._header_bytes:
            self._refuse(408, "Request Timeout", "The request headers took too long to arrive.")
        elif not self.transport.is_closing():  # nothing sent at all: just hang up
            self.transport.close()

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._stop_header_timer()
        if not self.transport.is_closing():
            code = "request_timeout" if status == 408 else "request_headers_too_large"
            self.transport.write(_raw_response(status, reason, message, code))
            self.transport.close()


def guarded_protocol(
    http: str = "auto",
    *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_connections: int | None = None,
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (`http`: "httptools", "h11" or "auto") with `_Guard`.

    `max_connections` None: `default_max_connections()`.
    """
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    base: type[asyncio.Protocol]
    if http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    elif http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    else:
        raise ValueError(f"http must be 'httptools', 'h11' or 'auto', not {http!r}")
    attributes = {
        "header_timeout": header_timeout,
        "max_header_bytes": max_header_bytes,
        "max_connections": max_connections or default_max_connections(),
        "__doc__": f"{base.__name__} with a header deadline and a connection cap.",
    }
    return type(f"Guarded{base.__name__}", (_Guard, base), attributes)


def uvicorn_config(
    app: Any,
    *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_connections: int | None = None,
    http: str = "auto",
    **overrides: Any,
) -> uvicorn.Config:
    """Quiet, fast uvicorn settings for a library-run server, with `guarded_protocol`.

    `overrides` are further `uvicorn.Config` arguments (e.g. ``access_log=True``).
    """
    protocol = guarded_protocol(
        http,
        header_timeout=header_timeout,
        max_header_bytes=max_header_bytes,
        max_connections=max_connections,
    )
    options: dict[str, Any] = {
        "log_level": "warning",
        "log_config": None,
        "access_log": False,
        "lifespan": "off",
        "http": protocol,
        "server_header": False,
        # X-Forwarded-For is not trusted: any local client could forge its address in the logs.
        "proxy_headers": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


class BackgroundServer:
    """`app` served by uvicorn on its own event loop in a daemon thread.

    `options` go to `uvicorn_config` (e.g. ``header_timeout=1.0``, ``max_connections=64``).
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "server",
        **options: Any,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.name = name
        self._options = options
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
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
        server = uvicorn.Server(uvicorn_config(self.app, **self._options))
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
            self._task = asyncio.current_task()
            self._loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        try:
            asyncio.run(serve())
        except asyncio.CancelledError:  # `stop` cancelled the serving task
            pass
        except BaseException as exc:  # uvicorn reports a failed start with SystemExit
            self._error = exc

    def stop(self) -> None:
        """Stop at once, cutting open connections; idempotent."""
        thread, server, loop, task = self._thread, self._server, self._loop, self._task
        if thread is None or server is None:
            return
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(_shutdown_now, server, task)
        server.should_exit = True
        thread.join(timeout=5.0)
        if self._socket is not None:
            self._socket.close()
        self._thread = self._server = self._loop = self._task = self._socket = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _shutdown_now(server: uvicorn.Server, task: asyncio.Task[None] | None) -> None:
    # Skip uvicorn's graceful wait and cut in-flight requests, so clients see a closed
    # connection at once instead of waiting for their timeout. Cancelling the serving task
    # also skips uvicorn's own shutdown, which polls `should_exit` every 0.1 s and then pauses
    # another 0.1 s: 0.2 s for every stop, which a test suite pays hundreds of times.
    server.should_exit = True
    server.force_exit = True
    for listener in server.servers:
        listener.close()
    for connection in list(server.server_state.connections):
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.close()
    if task is not None:
        task.cancel()
