"""Where the workers of a shared JSONL job write, and how their lines reach the results file.

Each worker appends to a part file of its own, ``.<output name>.parts/<worker>.jsonl`` beside
the output; the worker that finishes a round merges every part into the output at once (a
temporary file beside it, fsync, rename) and removes the parts.

Why part files rather than many writers appending to the output: a file with one writer
needs nothing from the file system but what a single process needs. On NFS, ``O_APPEND`` is
not atomic between machines (each client writes at the end of the file as it last saw it, so
two machines overwrite each other's lines), and locks depend on a lock service that many
mounts run without (``nolock``) or that other shared file systems (SMB, FUSE mounts of object
stores) lack. Here no two writers ever share a file; visibility between machines comes from
close-to-open consistency: a worker fsyncs its part before acknowledging a chunk, so when the
last chunk is acknowledged, every acknowledged line is on the server for the merging worker
to read; the merge's rename is atomic on the server. The output is only replaced whole, so a
reader never sees it half merged.

A chunk taken over from a worker that stopped may have been partly answered: the new holder
reads the parts first and sends only what has no line yet (`answered`). A worker that only
seemed dead (frozen past its lease) may still add an answer for an item sent again by
another: the merge keeps one line per id (an answer before an error, else the first), so
every id appears once in the output.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import IO

from .results import ItemId, read_results, replacement, scan_results

__all__ = ["PartWriter", "answered", "merge_parts", "parts_folder"]


def parts_folder(target: Path) -> Path:
    """The folder of the part files of the results file `target`."""
    return target.with_name(f".{target.name}.parts")


def _parts(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix == ".jsonl")


class PartWriter:
    """The part file of one worker (named by `worker`), created with its first line.

    Created only when there is something to write: a worker that claimed nothing leaves no
    file that the merging worker might be reading while it is removed.
    """

    def __init__(self, folder: Path, worker: str) -> None:
        self._folder = folder
        self.path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '-', worker)}.jsonl"
        self._file: IO[str] | None = None

    def write(self, text: str) -> int:
        """Append `text` (the caller writes whole lines, from one thread at a time)."""
        if self._file is None:
            self._folder.mkdir(exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - see close()
        return self._file.write(text)

    def flush(self) -> None:
        """Hand what was written to the operating system."""
        if self._file is not None:
            self._file.flush()

    def sync(self) -> None:
        """Put every line flushed so far on disk (on the server, for NFS)."""
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file (its lines stay for the merge)."""
        if self._file is not None:
            self._file.close()


def answered(folder: Path) -> set[ItemId]:
    """The ids that have a complete line, answer or error, in any part file of `folder`."""
    found: set[ItemId] = set()
    for part in _parts(folder):
        for _, _, parsed in scan_results(part):
            if parsed is not None:
                found.add(parsed[0])
    return found


def merge_parts(target: Path, folder: Path) -> int:
    """Append the lines of every part file in `folder` to `target`, one per id; remove them.

    Ids `target` already holds keep their line (a merge cut short after its rename is done
    again without doubling anything). `target` is checked as on resume (`read_results`: a file
    that is not results of this tool is refused and left as it is) and replaced atomically;
    it is created, empty, when absent. Returns the number of lines added.
    """
    existing = read_results(target)
    parts = _parts(folder)
    # id -> (part index, offset, answered): an answer wins over an error, else the first
    chosen: dict[ItemId, tuple[int, int, bool]] = {}
    for index, part in enumerate(parts):
        for offset, _, parsed in scan_results(part):
            if parsed is None:
                break  # a torn last line: its worker died writing it
            item_id, _, ok = parsed
            if item_id in existing.hashes:
                continue
            before = chosen.get(item_id)
            if before is None or (ok and not before[2]):
                chosen[item_id] = (index, offset, ok)
    picks = sorted(chosen.values())  # part by part, in file order: sequential reads
    with replacement(target, "wb") as out:
        if target.exists():
            for _, raw, parsed in scan_results(target):
                if parsed is not None:
                    out.write(raw)
        with contextlib.ExitStack() as stack:
            files: dict[int, IO[bytes]] = {}
            for index, offset, _ in picks:
                if index not in files:
                    stack.close()
                    files = {index: stack.enter_context(open(parts[index], "rb"))}
                files[index].seek(offset)
                out.write(files[index].readline())
    for part in parts:
        part.unlink(missing_ok=True)  # a second merger (the first one's lease ran out) was first
    with contextlib.suppress(OSError):
        folder.rmdir()
    return len(picks)
