"""Listing the images of each source as (reference, class) pairs, in a stable order.

- `imageFolder`: `root/<class>/.../<image>` on any fsspec file system; hidden files are skipped.
- `archive`: a tar (plain, gz, bz2, xz) or zip of such a tree, extracted to a private temporary
  folder, streamed and within `spec.limits` (`archives`); a single top-level folder is looked
  through.
- `csv` / `jsonl`: one row per image with its URI (absolute, or relative to the manifest) and
  class. A manifest is read up to `limits.manifestMaxBytes`. Its rows may only point where the
  Dataset's sources already do (`allowed`): the scheme and host of a source, and for local files a
  path under a source's folder, so a manifest cannot make the program read `/etc` or an internal
  service. An HTTP redirect from a public address to an internal one is not followed
  (`remote.redirect_problem`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import fsspec  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

from modelops_trainer.prepare.archives import ArchiveLimits, extract_archive
from modelops_trainer.prepare.config import Limits, Source
from modelops_trainer.prepare.errors import InvalidSource, SourceTooLarge, SourceUnreachable
from modelops_trainer.prepare.remote import read_capped

Item = tuple[str, str]  # (reference: a local path or fsspec URI, class name)


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ValueError, ImportError) as e:
        raise SourceUnreachable(f"cannot open source {uri}: {e}") from e
    return fs, str(path)


def _unreachable(uri: str, e: Exception) -> SourceUnreachable:
    return SourceUnreachable(f"source {uri} cannot be read: {type(e).__name__}: {e}")


def _local_files(root: str) -> list[str]:
    """What fsspec's `LocalFileSystem.find(root)` lists, in a tenth of the time (it stats every
    entry twice): every entry that is not a folder, symbolic links included and not followed."""
    files: list[str] = []
    folders = [root]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                (folders if entry.is_dir(follow_symlinks=False) else files).append(entry.path)
    return files


def image_folder(uri: str) -> list[Item]:
    """The images of an ImageFolder tree at `uri`."""
    fs, root = _fs(uri)
    try:
        if not fs.isdir(root):
            raise SourceUnreachable(f"source {uri} is not a folder (or does not exist)")
        files = sorted(_local_files(root) if isinstance(fs, LocalFileSystem) else fs.find(root))
    except SourceUnreachable:
        raise
    except Exception as e:  # remote file systems raise their own types (botocore, aiohttp, ...)
        raise _unreachable(uri, e) from e
    items = []
    prefix = root.rstrip("/") + "/"
    local = isinstance(fs, LocalFileSystem)
    for path in files:
        if local and path.startswith(prefix):  # split as PurePosixPath would, a tenth of the time
            parts = [part for part in path[len(prefix) :].split("/") if part not in ("", ".")]
        else:
            parts = list(PurePosixPath(path[len(prefix) :] if path.startswith(prefix) else path).parts)
        if len(parts) < 2 or any(part.startswith(".") for part in parts):
            continue  # a file at the root has no class; hidden files are not images
        items.append((f"file://{path}" if local else fs.unstrip_protocol(path), parts[0]))
    return items


def _rows(uri: str, text: str, fmt: str) -> list[dict[str, object]]:
    """The rows of a CSV or JSONL manifest; InvalidSource names the line that cannot be parsed."""
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            return list(reader)
        except csv.Error as e:
            raise InvalidSource(f"manifest {uri} cannot be parsed: line {reader.line_num}: {e}") from e
    rows = []
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):  # \n, \r\n or \r ends a line
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise InvalidSource(f"manifest {uri} cannot be parsed: line {number} column {e.colno}: {e.msg}") from e
    return rows


def allowed(sources: list[Source]) -> list[str]:
    """The prefixes a manifest row may start with: each source's `scheme://host/`, and for local
    sources its folder (a manifest's own folder, an image folder, an archive's folder)."""
    prefixes = []
    for source in sources:
        parts = urlsplit(source.uri)
        if parts.scheme in ("", "file"):
            folder = source.uri if source.format == "imageFolder" else source.uri.rsplit("/", 1)[0]
            prefixes.append("file://" + posixpath.normpath(folder.removeprefix("file://")).rstrip("/") + "/")
        else:
            prefixes.append(f"{parts.scheme}://{parts.netloc}/")
    return prefixes


def _row_uri(ref: str, base: str, prefixes: list[str]) -> str | None:
    """A manifest row's URI, absolute and normalised, or None when no source allows it."""
    if "://" not in ref and not ref.startswith("/"):
        ref = f"{base}/{ref}"
    parts = urlsplit(ref if "://" in ref else f"file://{ref}")
    if parts.scheme == "file":
        ref = "file://" + posixpath.normpath(parts.path)
    elif ".." in parts.path.split("/"):
        return None
    return ref if any(ref.startswith(p) for p in prefixes) else None


def manifest(source: Source, limits: Limits, prefixes: list[str]) -> list[Item]:
    """The images listed by a CSV or JSONL manifest (UTF-8, with or without a byte-order mark)."""
    uri = source.uri
    try:
        data = read_capped(uri, limits.manifest_max_bytes)
    except Exception as e:  # remote file systems raise their own types
        raise _unreachable(uri, e) from e
    if data is None:
        raise SourceTooLarge(
            f"manifest {uri} is larger than {limits.manifest_max_bytes} bytes (spec.limits.manifestMaxBytes)"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InvalidSource(
            f"manifest {uri} is not UTF-8 text: line {line}: {e.reason} (byte {data[e.start]:#04x}); save it as UTF-8"
        ) from e
    label_key = source.label_column or "label"
    rows = _rows(uri, text, source.format)
    base = uri.rsplit("/", 1)[0]
    items = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get(source.uri_column) or not row.get(label_key):
            raise InvalidSource(f"manifest {uri} row {number} lacks {source.uri_column!r} or {label_key!r}")
        ref = _row_uri(str(row[source.uri_column]), base, prefixes)
        if ref is None:
            raise InvalidSource(
                f"manifest {uri} row {number} points outside the Dataset's sources "
                f"({str(row[source.uri_column])[:200]!r}); rows may name only {', '.join(prefixes)}"
            )
        items.append((ref, str(row[label_key])))
    return items


def list_items(sources: list[Source], scratch: ExitStack, limits: Limits | None = None) -> list[Item]:
    """Every (reference, class) of every source, in a stable order. Temporary folders of extracted
    archives live until `scratch` closes."""
    limits = limits or Limits()
    bounds = ArchiveLimits(limits.archive_max_bytes, limits.archive_max_members, limits.archive_max_ratio)
    prefixes = allowed(sources)
    items: list[Item] = []
    for source in sources:
        if source.format == "imageFolder":
            items += image_folder(source.uri)
        elif source.format == "archive":
            into = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="modelops-archive-")))
            items += image_folder(str(extract_archive(source.uri, into, bounds)))
        else:
            items += manifest(source, limits, prefixes)
    return items


def iter_batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
