"""Extracting a tar or zip source to scratch space, streamed and bounded.

An archive comes from outside (its author or whoever controls its URL), so it is read as hostile:

- **Streamed.** Members are copied to disk in blocks of `BLOCK` bytes: memory stays flat whatever
  the archive's size, and a large genuine archive needs disk, never RAM, for its size. A tar is
  read in one forward pass (`r|*`: gzip, bzip2 and xz streams too, from any fsspec file); a zip
  needs its central directory, so a zip that is not seekable where it lives is copied to scratch
  first (counted against the same byte limit).
- **Bounded.** `ArchiveLimits` caps the bytes extracted, the members and the ratio of extracted
  to compressed bytes (a bomb expands a few KiB to GiB); the count is of bytes actually written,
  not of sizes the archive declares. Past a limit the run fails with `ArchiveTooLarge`.
- **Checked.** Absolute names, `..` components, links, devices, a member that is the root itself
  (`.`) or that clashes with another member (a file where a folder is, twice the same file) make
  the archive refused (`UnsafeArchive`). Members are checked as they come; what was extracted
  before a refusal lives in a private temporary folder that is removed with the failed run.
"""

from __future__ import annotations

import posixpath
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from modelops_trainer.prepare.errors import (
    ArchiveTooLarge,
    InvalidSource,
    PrepareError,
    SourceUnreachable,
    UnsafeArchive,
)
from modelops_trainer.prepare.remote import SourceTimeout, open_source

#: Bytes copied at a time; also what one member may have in memory.
BLOCK = 1 << 20
#: The ratio limit applies once this many bytes have been extracted, so that a small archive of
#: small, compressible files (tar headers are mostly zeros) is not taken for a bomb.
RATIO_FLOOR = 8 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may expand to; the Dataset spec's `limits`, with its defaults."""

    max_bytes: int = 10 << 30
    max_members: int = 1_000_000
    max_ratio: int = 100


class _Source:
    """The archive's bytes as read forward: counts them (the compressed side of the ratio), and
    gives back the few bytes read ahead to tell a zip from a tar."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.count = raw, 0
        self.head = raw.read(4)
        self._pending = self.head

    def read(self, size: int = -1) -> bytes:
        pending, self._pending = self._pending, b""
        if size >= 0 and len(pending) >= size:
            self._pending = pending[size:]
            data = pending[:size]
        else:
            data = pending + self.raw.read(size - len(pending) if size >= 0 else -1)
        self.count += len(data)
        return data


class _Budget:
    """One archive's running totals against its limits, and the names it has placed so far."""

    def __init__(self, uri: str, limits: ArchiveLimits, into: Path) -> None:
        self.uri, self.limits, self.into = uri, limits, into
        self.written = self.members = 0
        self.files: set[str] = set()
        self.folders: set[str] = set()

    def too_large(self, what: str, field: str) -> ArchiveTooLarge:
        return ArchiveTooLarge(f"archive {self.uri} {what} (spec.limits.{field}); nothing was kept")

    def place(self, name: str, *, is_file: bool, ok_type: bool = True) -> Path:
        """Where member `name` goes, after counting it; UnsafeArchive when it may not go anywhere."""
        self.members += 1
        if self.members > self.limits.max_members:
            raise self.too_large(f"has more than {self.limits.max_members} members", "archiveMaxMembers")
        clean = posixpath.normpath(name)
        if not ok_type or name.startswith("/") or clean == ".." or clean.startswith("../"):
            raise _unsafe(name, "is a link, a device or escapes the archive's root")
        parts = clean.split("/")
        parents = {"/".join(parts[:i]) for i in range(1, len(parts))}
        if clean == "." or clean in self.files or (is_file and clean in self.folders) or parents & self.files:
            raise _unsafe(name, "is the archive's root, or clashes with another member of the same name")
        self.folders |= parents
        (self.files if is_file else self.folders).add(clean)
        return self.into / clean

    def copy(self, src: IO[bytes], target: Path, compressed: Callable[[], int] | int) -> None:
        """Copy one member to `target` in blocks, within the byte and ratio limits; `compressed` is
        the archive's bytes read so far (a count, or how to get it as the copy goes on)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            while block := src.read(BLOCK):
                self.written += len(block)
                if self.written > self.limits.max_bytes:
                    raise self.too_large(f"expands to more than {self.limits.max_bytes} bytes", "archiveMaxBytes")
                read = compressed if isinstance(compressed, int) else compressed()
                if self.written > RATIO_FLOOR and self.written > self.limits.max_ratio * max(read, 1):
                    raise self.too_large(
                        f"expands more than {self.limits.max_ratio} times ({self.written} bytes from {read}): "
                        "a compression bomb?",
                        "archiveMaxRatio",
                    )
                out.write(block)


def _unsafe(name: str, why: str) -> UnsafeArchive:
    return UnsafeArchive(f"archive member {name!r} {why}; nothing was kept")


def _extract_tar(source: _Source, budget: _Budget) -> None:
    with tarfile.open(fileobj=source, mode="r|*") as tar:  # type: ignore[call-overload]
        for m in tar:
            target = budget.place(m.name, is_file=not m.isdir(), ok_type=m.isfile() or m.isdir())
            extracted = tar.extractfile(m) if m.isfile() else None
            if extracted is not None:
                budget.copy(extracted, target, lambda: source.count)
            elif m.isdir():
                target.mkdir(parents=True, exist_ok=True)


def _extract_zip(f: IO[bytes], budget: _Budget) -> None:
    with zipfile.ZipFile(f) as z:
        infos = z.infolist()
        if len(infos) > budget.limits.max_members:  # known from the central directory: refuse at once
            budget.members = len(infos) - 1
            budget.place("", is_file=True)
        compressed = 0
        for info in infos:
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            target = budget.place(info.filename, is_file=not info.is_dir(), ok_type=not is_link)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            compressed += info.compress_size  # what zipfile reads for the member, whatever it claims
            with z.open(info) as member:
                budget.copy(member, target, compressed)


def _seekable(f: IO[bytes]) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _extract(f: IO[bytes], budget: _Budget) -> None:
    source = _Source(f)
    if source.head[:2] != b"PK":
        _extract_tar(source, budget)
    elif _seekable(f):
        f.seek(0)
        _extract_zip(f, budget)
    else:  # a zip needs its central directory, at the end: copied to scratch first, within the limit
        with tempfile.TemporaryFile(dir=budget.into.parent) as copy:
            copied = 0
            while block := source.read(BLOCK):
                copied += len(block)
                if copied > budget.limits.max_bytes:
                    raise budget.too_large(f"is larger than {budget.limits.max_bytes} bytes", "archiveMaxBytes")
                copy.write(block)
            copy.seek(0)
            _extract_zip(copy, budget)


def extract_archive(uri: str, into: Path, limits: ArchiveLimits) -> Path:
    """Extract the archive at `uri` into `into` within `limits`; the root of its class folders."""
    try:
        f = open_source(uri)
    except Exception as e:  # remote file systems raise their own types
        raise SourceUnreachable(f"source {uri} cannot be read: {type(e).__name__}: {e}") from e
    try:
        with f:
            _extract(f, _Budget(uri, limits, into))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise InvalidSource(f"source {uri} is not a readable tar or zip archive: {e}") from e
    except PrepareError:
        raise
    except SourceTimeout as e:  # the server stalled mid-archive: it is the source that failed
        raise SourceUnreachable(f"source {uri} cannot be read: {type(e).__name__}: {e}") from e
    except Exception as e:  # a full scratch volume, a name the file system refuses, a cut connection
        raise InvalidSource(f"archive {uri} cannot be extracted: {type(e).__name__}: {e}") from e
    entries = [p for p in into.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and all(p.is_dir() for p in entries[0].iterdir()):
        return entries[0]  # an archive of one folder that holds the class folders
    return into
