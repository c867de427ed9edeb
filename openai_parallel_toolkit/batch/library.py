"""The library's ``mode=``: a list of requests sent online, on the flex tier, or as batches.

`SendMode` is what `multi_process_one` (``mode=``, ``fallback=``, ``batch_options=``) and the
openai-manager style calls (``opt_mode=``, ``opt_fallback=``, ``opt_batch_options=``) pass on.
`send_as_batch` runs a list of models through `run_batch_job` and hands back each one's
response, typed as the online call would return it, or its exception, in input order. The job
lives in a temporary folder and the call waits until every batch is done (up to 24 hours on
OpenAI): for a job to submit now and collect later, use `BatchJob` on files.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import RequestFailedError
from ..keys import APIKeyManager
from ..models import OpenAIModel, RawRequest
from .runner import BatchRunOptions, run_batch_job

__all__ = ["MODES", "SendMode", "send_as_batch"]

MODES = ("online", "flex", "batch")
"""How a list of requests may be sent."""

# What `OpenAIModel.describe` names each endpoint, to the JSONL job's endpoint names.
_ENDPOINTS = {
    "chat.completions": "chat",
    "/chat/completions": "chat",
    "completions": "completions",
    "/completions": "completions",
    "embeddings": "embeddings",
    "/embeddings": "embeddings",
    "responses": "responses",
    "/responses": "responses",
}


@dataclass(frozen=True, kw_only=True)
class SendMode:
    """How to send: `mode` ``"online"`` (the default), ``"flex"`` or ``"batch"``;
    `fallback` ``"standard"`` sends what flex or the batches could not answer on the standard
    tier; `batch_options` tunes the batch run (polling, retries, limits, clock)."""

    mode: str = "online"
    fallback: str = "none"
    batch_options: BatchRunOptions | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.fallback not in ("none", "standard"):
            raise ValueError(f"fallback must be 'none' or 'standard', not {self.fallback!r}")

    @property
    def standard_fallback(self) -> bool:
        """True when what the cheaper tier could not answer goes on the standard tier."""
        return self.fallback == "standard"

    def run_options(self) -> BatchRunOptions:
        """The batch run's options, the fallback included."""
        options = self.batch_options or BatchRunOptions()
        return replace(options, fallback=options.fallback or self.standard_fallback)


def _request(model: OpenAIModel) -> tuple[str, dict[str, Any]]:
    """(endpoint, body) of a model's request, from its description."""
    described = model.describe()
    endpoint = _ENDPOINTS.get(str((described or {}).get("endpoint")))
    if described is None or endpoint is None:
        raise TypeError(
            f"{type(model).__name__} does not describe its request (describe() gives no known "
            "endpoint), so it cannot go into a batch file: use mode='online'"
        )
    body = {k: v for k, v in described.items() if k != "endpoint"}
    return endpoint, body


def _typed(endpoint: str, body: Any) -> Any:
    """An answer's JSON as the client's response object, as the online call returns it."""
    import openai.types
    import openai.types.chat

    kinds: dict[str, Any] = {
        "chat": openai.types.chat.ChatCompletion,
        "completions": openai.types.Completion,
        "embeddings": openai.types.CreateEmbeddingResponse,
    }
    kind = kinds.get(endpoint)
    return body if kind is None else kind.construct(**body)


def send_as_batch(
    models: Sequence[OpenAIModel],
    *,
    manager: APIKeyManager,
    options: BatchRunOptions | None = None,
) -> list[Any]:
    """Each model's response (or the exception of its failure) in input order, through the
    Batch API: the client's response object for chat, completion and embedding models, the
    JSON dict for a `RawRequest` (as online). All models must use one endpoint."""
    requests = [_request(model) for model in models]  # a model that cannot go fails first
    endpoints = {endpoint for endpoint, _ in requests}
    if len(endpoints) > 1:
        raise ValueError(f"one batch call sends to one endpoint, not {sorted(endpoints)}")
    if not requests:
        return []
    with tempfile.TemporaryDirectory(prefix="opt-batch-") as folder:
        source, output = Path(folder) / "requests.jsonl", Path(folder) / "results.jsonl"
        with open(source, "w", encoding="utf-8") as file:
            for _, body in requests:
                file.write(json.dumps(body) + "\n")
        run_batch_job(source, output, manager=manager, endpoint=endpoints.pop(), options=options)
        answers: dict[Any, dict[str, Any]] = {}
        with open(output, encoding="utf-8") as file:
            for line in file:
                record = json.loads(line)
                answers[record["id"]] = record
    results: list[Any] = []
    for number, (model, (endpoint, _)) in enumerate(zip(models, requests, strict=True), 1):
        record = answers.get(number, {})
        response = record.get("response")
        if response is not None:
            raw = isinstance(model, RawRequest)
            results.append(response if raw else _typed(endpoint, response))
            continue
        error = record.get("error") or {"message": "no answer from the batch"}
        results.append(
            RequestFailedError(
                f"batch request failed: {error.get('message')}",
                status_code=error.get("status_code"),
                attempts=1,
            )
        )
    return results
