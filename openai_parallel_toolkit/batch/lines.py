"""Fetching a batch job's input lines by number, without reading the whole input each time.

A job uploads and collects many chunks; reading the input from the top for each of them made a
job of n chunks read it 2n times. `InputLines` reads it once for the byte offset of every line
(8 bytes a line, never the bodies) and then seeks to the lines a chunk holds. It reads the file
again only when the file changed (appended lines), which its size and modification time tell.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..jobs.source import Item, read_item

__all__ = ["InputLines"]

_BOM = b"\xef\xbb\xbf"


class InputLines:
    """The lines of a JSONL input by number (1-based, as the job numbers them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offsets: array[int] = array("q")
        self._stamp: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"InputLines({str(self.path)!r}, {len(self._offsets)} lines indexed)"

    def _index(self) -> None:
        stat = os.stat(self.path)
        stamp = (stat.st_size, stat.st_mtime_ns)
        if stamp == self._stamp:
            return
        offsets: array[int] = array("q")
        with open(self.path, "rb") as file:
            offset = 0
            for raw in file:
                offsets.append(offset)
                offset += len(raw)
        self._offsets, self._stamp = offsets, stamp

    def raw(self, numbers: Iterable[int]) -> Iterator[tuple[int, bytes]]:
        """(number, raw line) for each of `numbers` that the input has, in ascending order."""
        self._index()
        with open(self.path, "rb") as file:
            for number in sorted(numbers):
                if not 1 <= number <= len(self._offsets):
                    continue
                file.seek(self._offsets[number - 1])
                raw = file.readline()
                if number == 1:
                    raw = raw.removeprefix(_BOM)
                yield number, raw

    def items(self, numbers: Iterable[int], endpoint: str | None) -> Iterator[Item]:
        """The requests on `numbers` (lines that are no longer requests are left out)."""
        for number, raw in self.raw(numbers):
            item = read_item(number, raw, endpoint)
            if isinstance(item, Item):
                yield item
