"""The input files of a `ParallelToolkit` run, where their outputs go, and outputs already there.

Inputs are listed lazily, one folder listing at a time (sorted within a folder), so a folder of
100,000 files is never held in memory at once.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ExistingOutputs", "InputFile", "list_inputs", "output_names"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InputFile:
    """One input of a run and the place of its outputs."""

    source: Path
    """The input file."""
    relative: str
    """Its path below the input root: the journal's key."""
    out_dir: Path
    """The folder its outputs go to."""
    out_name: str
    """The last component of ``output_file_without_ext``."""


def list_inputs(input_path: Path, output_path: Path, *, recursive: bool) -> Iterator[InputFile]:
    """Every input file below `input_path` (or `input_path` itself), lazily.

    Hidden files and folders are skipped, as is `output_path` when it lies inside the input
    folder; a symlink loop is followed once. Folders that cannot be listed are logged and left
    out.
    """
    if input_path.is_file():
        yield InputFile(input_path, input_path.name, output_path, input_path.stem)
        return
    output = output_path.resolve()
    seen: set[tuple[int, int]] = set()  # folders visited: a symlink loop ends here
    folders: list[tuple[Path, str]] = [(input_path, "")]
    while folders:
        folder, relative = folders.pop()
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            logger.warning("cannot list %s: %s", folder, exc)
            continue
        files, subfolders = [], []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_file():
                    files.append(entry)
                elif recursive and entry.is_dir() and Path(entry.path).resolve() != output:
                    subfolders.append(entry)
            except OSError as exc:
                logger.warning("skipping %s: %s", entry.path, exc)
        out_dir = output_path / relative
        names = output_names([entry.name for entry in files])
        for entry, out_name in zip(files, names, strict=True):
            rel = f"{relative}/{entry.name}" if relative else entry.name
            yield InputFile(Path(entry.path), rel, out_dir, out_name)
        for entry in reversed(subfolders):  # popped in sorted order
            sub = f"{relative}/{entry.name}" if relative else entry.name
            folders.append((Path(entry.path), sub))


def output_names(names: list[str]) -> list[str]:
    """`output_file_without_ext` names for one folder's files: the stem, unless that is shared.

    A stem shared by two files (``a.json``, ``a.txt``), or equal to another file's chosen name,
    gives way to the full file name, which is unique in the folder.
    """
    stems = Counter(Path(name).stem for name in names)
    chosen = [Path(n).stem if stems[Path(n).stem] == 1 else n for n in names]
    while True:
        counts = Counter(chosen)
        clashes = [i for i, name in enumerate(chosen) if counts[name] > 1]
        if not clashes:
            return chosen
        for i in clashes:
            chosen[i] = names[i]


class ExistingOutputs:
    """Files already in the output folders, as the original toolkit named its outputs.

    The original toolkit wrote ``<stem>.<ext>`` for an input and kept no other record, so such
    a file is the only trace of a finished input. One output folder's listing is held at a
    time (inputs come folder by folder), so memory stays bounded.
    """

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._names: frozenset[str] = frozenset()

    def of(self, task: InputFile) -> list[str]:
        """The visible files of `task`'s output folder named its `out_name` plus one extension."""
        if task.out_dir != self._folder:
            self._folder = task.out_dir
            try:
                self._names = frozenset(
                    e.name
                    for e in os.scandir(task.out_dir)
                    if not e.name.startswith(".") and e.is_file()
                )
            except OSError:
                self._names = frozenset()
        prefix = task.out_name + "."
        return sorted(
            name
            for name in self._names
            if name.startswith(prefix) and name[len(prefix) :] and "." not in name[len(prefix) :]
        )
