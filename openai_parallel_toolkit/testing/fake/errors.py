"""OpenAI's error bodies as the fake server sends them, and the markers that ask for errors.

Markers inside a prompt trigger permanent errors: ``[[context_length_exceeded]]`` gives a 400,
``[[server_error]]`` a 500.
"""

from __future__ import annotations

import json

__all__ = [
    "CONTEXT_LENGTH_MARKER",
    "QUOTA_BODY",
    "SERVER_ERROR_BODY",
    "SERVER_ERROR_MARKER",
    "ApiError",
    "context_length_body",
    "error_body",
    "invalid_key_body",
    "marker",
]

CONTEXT_LENGTH_MARKER = "[[context_length_exceeded]]"
SERVER_ERROR_MARKER = "[[server_error]]"


class ApiError(Exception):
    """An OpenAI-style error reply, raised while validating a request."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type_, param, code)


def _mask(key: str) -> str:
    # Short keys would be revealed whole by their last 4 characters.
    return "sk-..." + (key[-4:] if len(key) > 8 else "")


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    """The JSON body of an OpenAI error reply."""
    error = {"message": message, "type": type_, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


def marker(text: str) -> str | None:
    """The error marker `text` asks for, if any."""
    if "[[" not in text:
        return None
    if CONTEXT_LENGTH_MARKER in text:
        return CONTEXT_LENGTH_MARKER
    if SERVER_ERROR_MARKER in text:
        return SERVER_ERROR_MARKER
    return None


SERVER_ERROR_BODY = error_body(
    "The server had an error while processing your request. Sorry about that!", "server_error"
)
QUOTA_BODY = error_body(
    "You exceeded your current quota, please check your plan and billing details.",
    "insufficient_quota",
    None,
    "insufficient_quota",
)


def context_length_body(param: str, detail: str = "") -> bytes:
    """The 400 body of a request over the context length; `detail` follows the first sentence."""
    message = "This model's maximum context length is 128000 tokens." + detail
    return error_body(message, "invalid_request_error", param, "context_length_exceeded")


def invalid_key_body(key: str) -> bytes:
    """The 401 body for a key the server does not accept (the key masked)."""
    message = (
        f"Incorrect API key provided: {_mask(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return error_body(message, "invalid_request_error", None, "invalid_api_key")
