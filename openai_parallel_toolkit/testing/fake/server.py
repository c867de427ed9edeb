"""`FakeOpenAIServer`: the fake OpenAI API served by uvicorn from a background thread."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import Any

from starlette.routing import Router

from ...asgi import BackgroundServer
from ...clock import Clock, SystemClock
from ..fake_batches import FakeBatches
from ..fake_flex import FakeFlex
from .app import FakeApp
from .buckets import LimitBook
from .counters import KeyCounters
from .replies import DROP_FILTER
from .settings import LimitSettings, ServerSettings, check_limit

__all__ = ["FakeOpenAIServer"]


class FakeOpenAIServer:
    """A fake OpenAI API on a local port, served by uvicorn from a background thread.

    Use it as a context manager (``with FakeOpenAIServer(rpm=600) as server:``) and point a
    client at `base_url`. `keys` are the keys accepted (None: any). `rpm`/`tpm` are the limits of
    each key (or limit group) that `settings.limits` (`LimitSettings`: groups, per-key and
    per-group limits, bucket sizes) gives none of; `settings` (`ServerSettings`) also holds the
    Batch API's settings and the host and port.
    `latency`/`jitter` delay admitted requests only; auth errors, faults and 429s reply at once.
    `seed` fixes the jitter and the faults given with a probability.
    `clock` is the time source of the limits (default: the system clock); with a `FakeClock`
    the buckets refill only as the test moves that clock, while delays (`latency`, `jitter`,
    the ``slow`` fault) remain real waits: tests can observe them without the clock through
    `in_flight` and `peak_in_flight` (how many requests are held at once).
    Requests without a bearer key are recorded under the key ``""``. `app` is the ASGI
    application itself (a Starlette router), for serving it some other way.
    """

    def __init__(
        self,
        *,
        keys: Iterable[str] | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        latency: float = 0.0,
        jitter: float = 0.0,
        seed: int | None = None,
        clock: Clock | None = None,
        settings: ServerSettings | None = None,
    ) -> None:
        check_limit("rpm", rpm)
        check_limit("tpm", tpm)
        settings = settings or ServerSettings()
        clock = clock or SystemClock()
        self.settings = settings
        """The settings it was built with."""
        self.host = settings.host
        self.port = settings.port
        """The port it listens on (the one chosen after `start` when 0 was asked for)."""
        book = LimitBook(rpm, tpm, settings.limits, clock)
        self._app = FakeApp(keys, book, clock, random.Random(seed), settings.batches)
        self.latency = latency
        self.jitter = jitter
        self.batches: FakeBatches = self._app.batches
        """The Batch API's files and batches (`fake_batches`); its `settings` may be replaced."""
        self.flex: FakeFlex = self._app.flex
        """Flex processing (`fake_flex`): set its `unavailable_share` for capacity 429s."""
        self.app: Router = self._app.router
        self._runner: BackgroundServer | None = None
        self._base_url: str | None = None

    @property
    def keys(self) -> frozenset[str] | None:
        """The keys accepted (None: any key)."""
        return self._app.keys

    @property
    def limits(self) -> LimitSettings:
        """The limit groups and buckets (`settings.limits`)."""
        return self.settings.limits

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://HOST:PORT/v1``; valid after `start`."""
        if self._base_url is None:
            raise RuntimeError("FakeOpenAIServer is not started")
        return self._base_url

    def start(self) -> FakeOpenAIServer:
        """Start serving in a background thread; returns once connections are accepted."""
        if self._runner is not None:
            raise RuntimeError("FakeOpenAIServer is already started")
        logging.getLogger("uvicorn.error").addFilter(DROP_FILTER)
        self._app.stopping = False
        runner = BackgroundServer(self.app, self.host, self.port, name="FakeOpenAIServer")
        runner.start()
        self._runner, self.port = runner, runner.port
        self._base_url = f"{runner.url}/v1"
        return self

    def stop(self) -> None:
        """Stop at once, cutting open connections (their clients see them closed); idempotent."""
        if self._runner is None:
            return
        self._app.stopping = True
        self._runner.stop()
        self._runner = None
        self._base_url = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self._base_url or "stopped"
        return f"FakeOpenAIServer({state})"

    # ------------------------------------------------------------------ delays

    @property
    def latency(self) -> float:
        """Delay of admitted requests, in seconds; may be changed while serving (requests that
        already came in keep the delay they came in with)."""
        return self._app.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._app.latency = seconds

    @property
    def jitter(self) -> float:
        """± uniform jitter added to `latency`, in seconds; may be changed while serving."""
        return self._app.jitter

    @jitter.setter
    def jitter(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("jitter must be >= 0")
        self._app.jitter = seconds

    @property
    def slow_seconds(self) -> float:
        """Extra delay of the ``slow`` fault, in seconds (5); may be changed while serving."""
        return self._app.slow_seconds

    @slow_seconds.setter
    def slow_seconds(self, seconds: float) -> None:
        self._app.slow_seconds = seconds

    @property
    def fault_retry_after(self) -> float:
        """The seconds the ``rate_limit`` fault's ``retry-after`` asks for (1); may be changed
        while serving."""
        return self._app.fault_retry_after

    @fault_retry_after.setter
    def fault_retry_after(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError("fault_retry_after must be > 0")
        self._app.fault_retry_after = seconds

    # ------------------------------------------------------------------ faults

    def set_fault(
        self, key: str, fault: str, *, times: int | None = None, probability: float = 1.0
    ) -> None:
        """Inject `fault` into requests of `key` (``"*"``: every key), replacing its previous fault.

        `fault` is one of `FAULTS`. `times` limits how many requests get it (None: forever);
        `probability` is the chance per request. A key's own fault is tried before the ``"*"``
        one.
        """
        self._app.faults.set(key, fault, times=times, probability=probability)

    def clear_faults(self, key: str | None = None) -> None:
        """Remove the fault of `key` (``"*"`` included), or every fault when `key` is None."""
        self._app.faults.clear(key)

    # ------------------------------------------------------------------ counters

    def counters(self) -> dict[str, KeyCounters]:
        """A snapshot of the per-key counters, keyed by the raw API key."""
        return self._app.traffic.counters()

    def total(self) -> KeyCounters:
        """The counters summed over all keys."""
        return self._app.traffic.total()

    def reset_counters(self) -> None:
        """Zero every counter and empty the request log (limits and faults are kept).

        The peaks of `peak_in_flight` start again from the requests in flight now.
        """
        self._app.traffic.reset()

    def in_flight(self, key: str | None = None) -> int:
        """Requests of `key` (None: of every key) being handled right now.

        A request counts from its arrival until its reply is complete (or its connection cut);
        it no longer counts when its client has the whole reply.
        """
        return self._app.traffic.in_flight(key)

    def peak_in_flight(self, key: str | None = None) -> int:
        """The most requests of `key` (None: of any keys) handled at the same time, since the
        start or `reset_counters`: how concurrently clients sent, whatever the delays."""
        return self._app.traffic.peak_in_flight(key)

    def request_log(self) -> list[dict[str, Any]]:
        """The last 10,000 requests, oldest first: dicts of ``key``, ``method``, ``path``, ``body``.

        ``body`` is the parsed JSON body (None when absent or malformed); ``key`` is None
        when no bearer key was sent.
        """
        return self._app.traffic.log()
