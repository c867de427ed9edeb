"""The results file of a JSONL job: what it answers, and the only changes the runner makes to it.

Every line is ``{"id", "request_hash", "metadata", "response" | "error"}``, with ``"cost"``
(USD) beside a response whose price is known. Before a run the
file is read whole and checked: a file with any complete line that is not such a result (the
input itself, some other file, results of an older format) or that is not UTF-8 is refused and
left exactly as it is. Only a file that passed is ever changed, and only in these ways: a torn
last line left by a crash is cut, lines of items about to be sent again are dropped (through a
temporary file and an atomic rename), new lines are appended, and the part files of shared
workers are merged in (`parts`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import ResultsFileError

__all__ = [
    "ExistingResults",
    "ResultsFileError",
    "check_ordered_target",
    "read_results",
    "replacement",
    "result_line",
    "scan_results",
    "write_ordered",
]

ItemId = int | str
# json.dumps of a result record starts so: a torn line that does not is no crash of ours.
_RECORD_PREFIX = '{"id": '


def result_line(
    item_id: ItemId,
    request_hash: str,
    metadata: Any,
    outcome: str,
    value: Any,
    cost: float | None = None,
) -> str:
    """One result line (with its newline); `outcome` is ``"response"`` or ``"error"``.

    `cost` (USD, of the response's usage at its model's price) is written beside the
    response when known, and left out when not.
    """
    record = {"id": item_id, "request_hash": request_hash, "metadata": metadata, outcome: value}
    if cost is not None:
        record["cost"] = cost
    return json.dumps(record, ensure_ascii=False) + "\n"


def _result_id(record: Any) -> tuple[ItemId, str, bool] | None:
    """(id, request hash, answered) of a valid result record, else None."""
    if not isinstance(record, dict):
        return None
    item_id, digest = record.get("id"), record.get("request_hash")
    answered, failed = "response" in record, "error" in record
    if isinstance(item_id, bool) or not isinstance(item_id, int | str):
        return None
    if not isinstance(digest, str) or answered == failed:
        return None
    return item_id, digest, answered


@dataclass
class ExistingResults:
    """What a results file already holds: the request hash of each id, and which ids failed."""

    path: Path
    hashes: dict[ItemId, str] = field(default_factory=dict)
    failed: set[ItemId] = field(default_factory=set)
    lines: int = 0
    torn_at: int | None = None  # byte offset of a torn last line to cut

    def __len__(self) -> int:
        return self.lines

    def repair_and_drop(self, drop: set[ItemId]) -> None:
        """Cut a torn last line and remove the lines of `drop`, keeping everything else."""
        if drop:
            _rewrite_without(self.path, drop)
        elif self.torn_at is not None:
            with open(self.path, "rb+") as file:
                file.truncate(self.torn_at)
                file.flush()
                os.fsync(file.fileno())


def _refuse(path: Path, why: str) -> ResultsFileError:
    return ResultsFileError(f"{path}: {why}; it was left unchanged (choose another output file)")


def scan_results(path: Path) -> Iterator[tuple[int, bytes, tuple[ItemId, str, bool] | None]]:
    """(byte offset, raw line, (id, request hash, answered)) for each line of a results file.

    A torn last line (a crash mid-write) comes last, with None; any other line that is not a
    result line, or not UTF-8, raises `ResultsFileError`.
    """
    with open(path, "rb") as file:
        offset = 0
        for number, raw in enumerate(file, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.endswith(b"\n"):
                if raw.decode("utf-8", "replace").startswith(_RECORD_PREFIX[: len(raw)]):
                    yield start, raw, None  # a crash mid-write: the line is cut on resume
                    return
                raise _refuse(path, f"line {number} is not a result line of this tool")
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise _refuse(path, f"line {number} is not valid UTF-8") from None
            except ValueError:
                record = None
            parsed = _result_id(record)
            if parsed is None:
                raise _refuse(path, f"line {number} is not a result line of this tool")
            yield start, raw, parsed


def read_results(path: Path) -> ExistingResults:
    """Read and check an existing results file (absent: empty). Raises `ResultsFileError`."""
    results = ExistingResults(path)
    if not path.exists():
        return results
    if not path.is_file():
        raise _refuse(path, "is not a regular file")
    for start, _, parsed in scan_results(path):
        if parsed is None:
            results.torn_at = start
            break
        item_id, digest, answered = parsed
        results.hashes[item_id] = digest
        if answered:
            results.failed.discard(item_id)
        else:
            results.failed.add(item_id)
        results.lines += 1
    return results


@contextlib.contextmanager
def replacement(path: Path, mode: str) -> Iterator[IO[Any]]:
    """A temporary file beside `path` that replaces it atomically when the block ends."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            shutil.copymode(path, name)
        else:  # as `open` would have made it (mkstemp's files are private to their owner)
            os.chmod(name, 0o666 & ~_umask())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _rewrite_without(path: Path, drop: set[ItemId]) -> None:
    with open(path, "rb") as source, replacement(path, "wb") as out:
        for raw in source:
            if not raw.endswith(b"\n"):
                break  # the torn last line
            if json.loads(raw)["id"] not in drop:
                out.write(raw)


def _sort_key(item_id: ItemId) -> tuple[int, int, str]:
    return (0, item_id, "") if isinstance(item_id, int) else (1, 0, item_id)


def check_ordered_target(path: Path) -> None:
    """Refuse now, before any request, an ordered-copy path that holds something not ours."""
    read_results(path)


def write_ordered(path: Path, ordered: Path) -> Path:
    """Write `ordered`: the lines of `path` sorted by id (line numbers, then custom ids)."""
    index: list[tuple[tuple[int, int, str], int]] = []
    with open(path, "rb") as file:
        offset = 0
        for line in file:
            index.append((_sort_key(json.loads(line)["id"]), offset))
            offset += len(line)
    index.sort()
    with open(path, "rb") as source, replacement(ordered, "wb") as out:
        for _, position in index:
            source.seek(position)
            out.write(source.readline())
    return ordered
