"""``python -m openai_parallel_toolkit.testing``: run the fake OpenAI server in the foreground."""

from __future__ import annotations

from .fake_server import main

if __name__ == "__main__":
    raise SystemExit(main())
