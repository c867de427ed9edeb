"""A shared-job worker for test_shared_jobs.py that cannot get past one line.

python poison_worker.py BASE_URL REDIS_URL INPUT OUTPUT LEASE MODE

The pool's client factory (`PoolOptions.client_factory`) stops the worker as the request of
any line containing ``POISON`` is about to go out, before it reaches the server: MODE ``kill``
sends this process SIGKILL (a worker that dies), ``raise`` raises an exception no request
handling catches (a worker whose processing fails). Exits 0 once the job's round is over.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import openai

from openai_parallel_toolkit import APIKeyManager, KeyConfig, PoolOptions
from openai_parallel_toolkit.jobs.distributed import run_shared_jsonl_job

KEY = "sk-jobs-" + "p" * 24


class WorkerCrash(BaseException):
    """Not an `Exception`: nothing on the way up takes it for a failed request."""


def factory(mode: str) -> Callable[[KeyConfig, Callable[[Any], None]], openai.OpenAI]:
    def stop_on_poison(request: Any) -> None:
        if b"POISON" in request.content:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise WorkerCrash("cannot process this line")

    def build(config: KeyConfig, on_response: Callable[[Any], None]) -> openai.OpenAI:
        hooks = {"request": [stop_on_poison], "response": [on_response]}
        return openai.OpenAI(
            api_key=config.api_key,
            base_url=config.api_base,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(event_hooks=hooks),
        )

    return build


def work(base_url: str, redis_url: str, source: str, target: str, lease: str, mode: str) -> None:
    """One worker's round of the job (in this process: the ``raise`` mode needs no other)."""
    options = PoolOptions(client_factory=factory(mode))
    with APIKeyManager(
        api_keys=[KEY], api_base=base_url, make_default=False, options=options
    ) as pool:
        run_shared_jsonl_job(
            source,
            target,
            manager=pool,
            redis_url=redis_url,
            threads=1,
            chunk_size=4,
            lease_seconds=float(lease),
            progress=False,
        )


if __name__ == "__main__":
    work(*sys.argv[1:7])
