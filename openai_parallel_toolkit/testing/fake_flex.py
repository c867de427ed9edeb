"""Flex processing on the fake server: ``service_tier="flex"`` on chat and responses requests.

A flex request is answered like any other, with ``"service_tier": "flex"`` in its response (OpenAI
reports the tier it applied), except that a share of them (`FakeFlex.unavailable_share`, chosen
at random) gets OpenAI's capacity refusal instead: a 429 whose error has code and type
``resource_unavailable`` and no rate-limit headers, decided before the request is charged to any
limit (OpenAI does not bill it). Other tiers are left alone. The server keeps one `FakeFlex` as
``server.flex``; tests set its share (and count the refusals) there.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["FLEX_KINDS", "UNAVAILABLE_CODE", "FakeFlex"]

FLEX_KINDS: frozenset[str] = frozenset({"chat", "responses"})
"""The endpoints that take ``service_tier="flex"`` (OpenAI offers it on these two only)."""

UNAVAILABLE_CODE = "resource_unavailable"
"""The ``error.code`` (and ``error.type``) of a flex request refused for want of capacity."""

_UNAVAILABLE_MESSAGE = (
    "Resource Unavailable: flex processing has no capacity for this request right now. "
    "Please try again later, or use service_tier='auto'."
)

Render = Callable[[str], "bytes | list[bytes]"]


class FakeFlex:
    """The fake server's flex tier: which flex requests are refused, and the tier answers name.

    `unavailable_share` (0 to 1) of flex requests get the ``resource_unavailable`` 429;
    `refused` and `answered` count flex requests so far. `rng` picks which are refused (the
    server's seeded generator; None: a fresh one).
    """

    def __init__(self, unavailable_share: float = 0.0, *, rng: random.Random | None = None) -> None:
        self.unavailable_share = unavailable_share
        self.refused = 0
        self.answered = 0
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"FakeFlex(unavailable_share={self.unavailable_share}, refused={self.refused}, "
            f"answered={self.answered})"
        )

    def refusal(self, kind: str, body: Mapping[str, Any]) -> bytes | None:
        """The 429 body refusing this request, or None to answer it (not flex, or lucky)."""
        if kind not in FLEX_KINDS or body.get("service_tier") != "flex":
            return None
        with self._lock:
            if self._rng.random() >= self.unavailable_share:
                self.answered += 1
                return None
            self.refused += 1
        error = {
            "message": _UNAVAILABLE_MESSAGE,
            "type": UNAVAILABLE_CODE,
            "param": None,
            "code": UNAVAILABLE_CODE,
        }
        return json.dumps({"error": error}).encode()

    @staticmethod
    def render(kind: str, body: Mapping[str, Any], render: Render) -> Render:
        """`render` with ``"service_tier": "flex"`` added to a flex request's whole-body answer
        (a streamed answer is left as it is)."""
        if kind not in FLEX_KINDS or body.get("service_tier") != "flex":
            return render

        def flex_render(request_id: str) -> bytes | list[bytes]:
            rendered = render(request_id)
            if not isinstance(rendered, bytes):
                return rendered
            payload = json.loads(rendered)
            payload["service_tier"] = "flex"
            return json.dumps(payload).encode()

        return flex_render
