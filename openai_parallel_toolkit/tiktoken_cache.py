"""Make tiktoken's encoding files available without network access.

tiktoken downloads ``https://openaipublic.blob.core.windows.net/encodings/<name>.tiktoken`` on
first use and keeps it in its cache folder (``$TIKTOKEN_CACHE_DIR``, else ``$DATA_GYM_CACHE_DIR``,
else ``<tempdir>/data-gym-cache``) under the sha1 hex digest of that URL, checking the sha256 of
the contents. `seed_cache` writes those same files, verified, from a local source: by default
the gzipped copies shipped in the ``bpe-openai`` package (the ``offline`` extra:
``pip install 'openai-parallel-toolkit[offline]'``), or a folder of ``<name>.tiktoken`` /
``<name>.tiktoken.gz`` files obtained elsewhere.

`packaged_encoding` puts a ``bpe-openai`` file into tiktoken's own cache folder (as tiktoken does
with what it downloads) and loads it, which is how `openai_parallel_toolkit.tokens` finds the
offline extra's encodings without any environment variable; ``os.environ`` is left alone.

Command line::

    python -m openai_parallel_toolkit.tiktoken_cache [--cache-dir DIR] [--source DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import importlib.util
import logging
import os
import shlex
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import TokenizerUnavailableError

__all__ = [
    "DEFAULT_ENCODINGS",
    "ENCODING_SHA256",
    "SeedResult",
    "TiktokenSeedError",
    "cache_file_name",
    "default_cache_dir",
    "encoding_url",
    "is_cached",
    "main",
    "packaged_encoding",
    "packaged_encoding_names",
    "seed_cache",
    "seed_cache_report",
]

if TYPE_CHECKING:
    import tiktoken

logger = logging.getLogger(__name__)

DEFAULT_ENCODINGS: tuple[str, ...] = ("cl100k_base", "o200k_base")
"""The encodings seeded by default: every current OpenAI chat and embedding model uses one."""

# Copied from tiktoken_ext/openai_public.py (tiktoken 0.14); tiktoken rejects any other contents.
ENCODING_SHA256: dict[str, str] = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "p50k_base": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    "r50k_base": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
}
"""Expected sha256 of each ``<name>.tiktoken`` file this module can seed."""


_URL_TEMPLATE = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
_PACKAGE = "bpe_openai"


class TiktokenSeedError(TokenizerUnavailableError):
    """Seeding failed: unknown encoding, missing source, hash mismatch or unusable cache folder."""


@dataclass(frozen=True, slots=True)
class SeedResult:
    """What `seed_cache_report` did for one encoding.

    `action` is ``"present"`` (already cached with the right hash, left alone), ``"written"``
    (newly cached) or ``"replaced"`` (a cached file with a wrong hash was overwritten).
    `source` is the file the contents came from (None when nothing was read).
    """

    encoding: str
    path: Path
    action: str
    source: str | None = None


def encoding_url(name: str) -> str:
    """The URL tiktoken downloads encoding `name` from."""
    return _URL_TEMPLATE.format(name=name)


def cache_file_name(name: str) -> str:
    """The file name tiktoken gives encoding `name` in its cache: sha1 hex digest of its URL."""
    return hashlib.sha1(encoding_url(name).encode()).hexdigest()


def default_cache_dir() -> Path:
    """The folder tiktoken reads its cache from, resolved exactly as ``tiktoken.load`` does.

    Raises `TiktokenSeedError` when ``TIKTOKEN_CACHE_DIR`` is set to the empty string, which
    disables tiktoken's cache (so seeding could not help).
    """
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            value = os.environ[var]
            if value == "":
                raise TiktokenSeedError(
                    f"{var} is set to the empty string, which disables tiktoken's cache; "
                    "unset it or point it at a folder"
                )
            return Path(value)
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _package_data_dir() -> Path | None:
    """bpe-openai's data folder, found without importing the package.

    Importing ``bpe_openai`` loads its compiled extension (about half a second), which is why
    ``importlib.resources.files`` is not used here: only the data files are needed.
    """
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data"
        if candidate.is_dir():
            return candidate
    return None


def _candidates(folder: Path, name: str) -> list[Path]:
    # A copied tiktoken cache folder (files named by URL digest) works as a source too.
    return [
        folder / f"{name}.tiktoken",
        folder / f"{name}.tiktoken.gz",
        folder / cache_file_name(name),
    ]


def _read_source(name: str, source: Path | None) -> tuple[bytes, Path]:
    """The verified contents of encoding `name` and the file they came from."""
    if source is None:
        folder = _package_data_dir()
        if folder is None:
            raise TiktokenSeedError(
                f"no source for tiktoken encoding {name!r}: the bpe-openai package is not "
                "installed (pip install 'openai-parallel-toolkit[offline]') and no source folder "
                "was given (--source)"
            )
        where = f"the bpe-openai package data ({folder})"
    else:
        folder = source
        if not folder.is_dir():
            raise TiktokenSeedError(f"source folder {str(folder)!r} does not exist")
        where = f"source folder {str(folder)!r}"
    for path in _candidates(folder, name):
        if not path.is_file():
            continue
        try:
            raw = path.read_bytes()
            # Detect gzip by its magic bytes, not the suffix: a renamed file still works.
            data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise TiktokenSeedError(f"could not read {path}: {exc}") from exc
        expected = ENCODING_SHA256[name]
        actual = _sha256(data)
        if actual != expected:
            raise TiktokenSeedError(
                f"hash mismatch for tiktoken encoding {name!r} in {path}: "
                f"expected sha256 {expected}, got {actual}"
            )
        return data, path
    looked = ", ".join(p.name for p in _candidates(folder, name))
    raise TiktokenSeedError(
        f"tiktoken encoding {name!r} not found in {where} (looked for {looked})"
    )


def is_cached(name: str) -> bool:
    """True when tiktoken's own cache folder (`default_cache_dir`) holds encoding `name`.

    Only the file's presence is checked (tiktoken checks its hash when it reads it). False when
    the cache is disabled (``TIKTOKEN_CACHE_DIR=""``).
    """
    try:
        return (default_cache_dir() / cache_file_name(name)).is_file()
    except TiktokenSeedError:
        return False


def packaged_encoding_names() -> tuple[str, ...]:
    """The encodings the ``bpe-openai`` package ships here: none without it."""
    folder = _package_data_dir()
    if folder is None:
        return ()
    return tuple(
        name
        for name in ENCODING_SHA256
        if any(path.is_file() for path in _candidates(folder, name))
    )


def packaged_encoding(name: str) -> tiktoken.Encoding | None:
    """Encoding `name` from the files the ``bpe-openai`` package ships, or None.

    None when the package is not installed or does not ship `name` (it ships ``cl100k_base``
    and ``o200k_base``), or when tiktoken's cache folder cannot take the file. The file is
    checked against tiktoken's sha256 and put into tiktoken's own cache folder
    (`default_cache_dir`), exactly as tiktoken stores what it downloads; tiktoken then builds
    the encoding itself. No network, no environment variable.
    """
    if name not in packaged_encoding_names():
        return None
    try:
        seed_cache(encodings=[name])
    except TiktokenSeedError as exc:
        if "hash" in str(exc):
            raise  # a damaged package file: say so rather than fall back
        logger.debug("cannot seed tiktoken's cache with %s: %s", name, exc)
        return None
    import tiktoken  # local: only this path needs the tokenizer itself

    return tiktoken.get_encoding(name)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private; a cache folder may be shared, as tiktoken's files are.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def seed_cache_report(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    encodings: Iterable[str] = DEFAULT_ENCODINGS,
    source: str | os.PathLike[str] | None = None,
) -> tuple[Path, list[SeedResult]]:
    """Like `seed_cache`, and also return what was done for each encoding."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    source_dir = Path(source) if source is not None else None
    names = list(dict.fromkeys(encodings))
    unknown = [name for name in names if name not in ENCODING_SHA256]
    if unknown:
        raise TiktokenSeedError(
            f"cannot seed unknown tiktoken encoding(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(ENCODING_SHA256)}"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TiktokenSeedError(f"cannot create tiktoken cache folder {directory}: {exc}") from exc

    results: list[SeedResult] = []
    for name in names:
        target = directory / cache_file_name(name)
        action = "written"
        if target.is_file():
            try:
                if _sha256(target.read_bytes()) == ENCODING_SHA256[name]:
                    results.append(SeedResult(name, target, "present"))
                    logger.debug("tiktoken encoding %s already cached at %s", name, target)
                    continue
            except OSError:
                pass
            action = "replaced"
        data, origin = _read_source(name, source_dir)
        try:
            _write_atomically(target, data)
        except OSError as exc:
            raise TiktokenSeedError(f"cannot write {target}: {exc}") from exc
        results.append(SeedResult(name, target, action, str(origin)))
        logger.info("tiktoken encoding %s %s to %s from %s", name, action, target, origin)
    return directory, results


def seed_cache(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    encodings: Iterable[str] = DEFAULT_ENCODINGS,
    source: str | os.PathLike[str] | None = None,
) -> Path:
    """Write verified tiktoken encoding files into `cache_dir` and return that folder.

    `cache_dir` defaults to the folder tiktoken itself reads (`default_cache_dir`). Files already
    present with the right sha256 are left alone (without reading the source); others are written
    through a temporary file and ``os.replace``, so a concurrent reader never sees half a file.
    `source` is a folder holding ``<name>.tiktoken`` or ``<name>.tiktoken.gz`` files; by default
    the files shipped in the ``bpe-openai`` package are used.

    Raises `TiktokenSeedError` (a `TokenizerUnavailableError`) for an unknown encoding, a missing
    source file, a hash mismatch (naming the file and both hashes) or an unwritable folder.
    tiktoken only reads the folder if ``TIKTOKEN_CACHE_DIR`` points at it (or it is the default).
    """
    directory, _ = seed_cache_report(cache_dir, encodings=encodings, source=source)
    return directory


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command line entry point: seed the cache, print what was done and the export line."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m openai_parallel_toolkit.tiktoken_cache",
        description="Seed tiktoken's cache with verified encoding files so it works offline.",
        epilog="example: %(prog)s --cache-dir ~/.cache/tiktoken",
    )
    parser.add_argument(
        "--cache-dir",
        help="folder to seed (default: $TIKTOKEN_CACHE_DIR, else tiktoken's default folder)",
    )
    parser.add_argument(
        "--source",
        help="folder holding <name>.tiktoken or <name>.tiktoken.gz files "
        "(default: the files shipped in the bpe-openai package)",
    )
    parser.add_argument(
        "--encoding",
        action="append",
        choices=sorted(ENCODING_SHA256),
        help=f"encoding to seed; repeatable (default: {' '.join(DEFAULT_ENCODINGS)})",
    )
    args = parser.parse_args(argv)
    try:
        directory, results = seed_cache_report(
            args.cache_dir,
            encodings=args.encoding or DEFAULT_ENCODINGS,
            source=args.source,
        )
    except TiktokenSeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for result in results:
        if result.action == "present":
            print(f"{result.encoding}: already present in {result.path}")
        else:
            print(f"{result.encoding}: {result.action} {result.path} (from {result.source})")
    print("tiktoken will use these files when this is set in its environment:")
    print(f"export TIKTOKEN_CACHE_DIR={shlex.quote(str(directory.resolve()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
