"""Imported by the fork server of `forked` only: work every forked child would otherwise repeat.

Loading a tiktoken encoding costs about a second of CPU; the fork server loads the two the tests
use once, and every child forked from it starts with them in memory.
"""

from __future__ import annotations

from openai_parallel_toolkit.tokens import encoding_for

for name in ("o200k_base", "cl100k_base"):
    encoding_for(name)
