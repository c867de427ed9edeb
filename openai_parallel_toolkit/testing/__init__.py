"""Offline test helpers: a fake OpenAI server, its settings and a manual clock.

`FakeOpenAIServer` needs the ``server`` extra (``pip install ".[server]"`` in the project folder);
it is imported on first use so that `FakeClock` and the settings (`LimitSettings`,
`ServerSettings`) work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .clock import FakeClock
from .fake.settings import LimitSettings, ServerSettings

if TYPE_CHECKING:
    from .fake_server import FakeOpenAIServer

__all__ = ["FakeClock", "FakeOpenAIServer", "LimitSettings", "ServerSettings"]


def __getattr__(name: str) -> Any:
    if name == "FakeOpenAIServer":
        from .fake_server import FakeOpenAIServer

        return FakeOpenAIServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
