"""The fake Batch API's uploaded files, and the error and list shapes its replies share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

__all__ = ["BatchApiError", "FileStore", "StoredFile", "page"]

_PURPOSES = ("batch", "assistants", "fine-tune", "vision", "user_data")


class BatchApiError(Exception):
    """An error reply of the Batch API (``invalid_request_error``)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass
class StoredFile:
    """One uploaded (or written) file of a project."""

    id: str
    project: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def object(self) -> dict[str, Any]:
        """The file object as ``/v1/files`` shows it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class FileStore:
    """The files of every project; the caller holds the lock of the Batch API.

    `new_id` makes an id from a prefix; `unix` turns a clock time into a Unix timestamp.
    """

    def __init__(self, new_id: Callable[[str], str], unix: Callable[[float], int]) -> None:
        self._new_id = new_id
        self._unix = unix
        self._files: dict[str, StoredFile] = {}

    def __len__(self) -> int:
        return len(self._files)

    def find(self, file_id: str) -> StoredFile | None:
        """The file `file_id` of any project, or None."""
        return self._files.get(file_id)

    def get(self, file_id: str, project: str) -> StoredFile:
        """The file `file_id` of `project`; a 404 for any other."""
        found = self._files.get(file_id)
        if found is None or found.project != project:
            raise BatchApiError(404, f"No such File object: {file_id}", "id")
        return found

    def delete(self, file_id: str, project: str) -> None:
        """Delete the file `file_id` of `project`; a 404 for any other."""
        del self._files[self.get(file_id, project).id]

    def listing(self, project: str, purpose: str | None) -> list[dict[str, Any]]:
        """The objects of `project`'s files (of `purpose` only, when given), oldest first."""
        return [
            f.object()
            for f in self._files.values()
            if f.project == project and purpose in (None, f.purpose)
        ]

    def store(self, project: str, name: str, purpose: str, data: bytes, now: float) -> StoredFile:
        """Keep `data` as a new file of `project`."""
        stored = StoredFile(self._new_id("file-"), project, name, purpose, data, self._unix(now))
        self._files[stored.id] = stored
        return stored

    def upload(
        self, content_type: str, raw: bytes, project: str, now: float, max_bytes: int
    ) -> StoredFile:
        """Store a multipart upload (``file`` and ``purpose``); a 400 when it is not one."""
        fields = _multipart(content_type, raw)
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if "file" not in fields:
            raise BatchApiError(400, "Missing required parameter: 'file'.", "file")
        if purpose not in _PURPOSES:
            raise BatchApiError(400, f"Invalid value for 'purpose': {purpose!r}.", "purpose")
        name, data = fields["file"]
        if purpose == "batch" and len(data) > max_bytes:
            message = f"File is too large: at most {max_bytes} bytes for purpose 'batch'."
            raise BatchApiError(400, message)
        return self.store(project, name or "upload.jsonl", purpose, data, now)


def page(data: list[dict[str, Any]], params: Mapping[str, str] | None = None) -> Any:
    """A list reply: the items after ``after``, at most ``limit`` (20) of them."""
    params = params or {}
    after = params.get("after")
    if after is not None:
        ids = [item["id"] for item in data]
        data = data[ids.index(after) + 1 :] if after in ids else []
    limit = int(params.get("limit", "20") or 20)
    items, more = data[:limit], len(data) > limit
    first = items[0]["id"] if items else None
    last = items[-1]["id"] if items else None
    return {
        "object": "list",
        "data": items,
        "first_id": first,
        "last_id": last,
        "has_more": more,
    }


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name → (file name, bytes)."""
    if not content_type.startswith("multipart/form-data"):
        raise BatchApiError(400, "Expected a multipart/form-data body.")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields
