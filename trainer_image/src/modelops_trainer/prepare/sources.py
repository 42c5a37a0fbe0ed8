"""Listing the images of each source as (reference, class) pairs, in a stable order.

- `imageFolder`: `root/<class>/.../<image>` on any fsspec file system; hidden files are skipped.
- `archive`: a tar (plain, gz, bz2, xz) or zip of such a tree. Every member is checked before
  anything is extracted: absolute names, `..` components, links and device files make the whole
  archive refused (`UnsafeArchive`), since the archive comes from outside. Regular files are
  extracted to a private temporary folder; a single top-level folder is looked through.
- `csv` / `jsonl`: one row per image with its URI (absolute, or relative to the manifest) and
  class.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path, PurePosixPath

import fsspec  # type: ignore[import-untyped]

from modelops_trainer.prepare.config import Source
from modelops_trainer.prepare.errors import InvalidSource, SourceUnreachable, UnsafeArchive

Item = tuple[str, str]  # (reference: a local path or fsspec URI, class name)


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ValueError, ImportError) as e:
        raise SourceUnreachable(f"cannot open source {uri}: {e}") from e
    return fs, str(path)


def _unreachable(uri: str, e: Exception) -> SourceUnreachable:
    return SourceUnreachable(f"source {uri} cannot be read: {type(e).__name__}: {e}")


def image_folder(uri: str) -> list[Item]:
    """The images of an ImageFolder tree at `uri`."""
    fs, root = _fs(uri)
    try:
        if not fs.isdir(root):
            raise SourceUnreachable(f"source {uri} is not a folder (or does not exist)")
        files = sorted(fs.find(root))
    except SourceUnreachable:
        raise
    except Exception as e:  # remote file systems raise their own types (botocore, aiohttp, ...)
        raise _unreachable(uri, e) from e
    items = []
    prefix = root.rstrip("/") + "/"
    for path in files:
        rel = PurePosixPath(path[len(prefix) :] if path.startswith(prefix) else path)
        if len(rel.parts) < 2 or any(part.startswith(".") for part in rel.parts):
            continue  # a file at the root has no class; hidden files are not images
        items.append((fs.unstrip_protocol(path), rel.parts[0]))
    return items


def _check_member(name: str, ok_type: bool) -> str:
    clean = posixpath.normpath(name)
    if not ok_type or name.startswith("/") or clean.startswith("../") or clean == ".." or "/../" in f"/{clean}/":
        raise UnsafeArchive(
            f"archive member {name!r} is a link, a device or escapes the archive's root; nothing was extracted"
        )
    return clean


def extract_archive(uri: str, into: Path) -> Path:
    """Extract the archive at `uri` into `into` after checking every member; the tree's root."""
    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read()
    except Exception as e:  # remote file systems raise their own types
        raise _unreachable(uri, e) from e
    names: list[tuple[str, bytes]] = []
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for info in z.infolist():
                    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                    clean = _check_member(info.filename, not is_link)
                    if not info.is_dir():
                        names.append((clean, z.read(info)))
        else:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as t:
                members = t.getmembers()
                for m in members:
                    _check_member(m.name, m.isfile() or m.isdir())
                for m in members:
                    if m.isfile():
                        extracted = t.extractfile(m)
                        names.append((posixpath.normpath(m.name), extracted.read() if extracted else b""))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise InvalidSource(f"source {uri} is not a readable tar or zip archive: {e}") from e
    for name, content in names:
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    entries = [p for p in into.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and all(p.is_dir() for p in entries[0].iterdir()):
        return entries[0]  # an archive of one folder that holds the class folders
    return into


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


def manifest(source: Source) -> list[Item]:
    """The images listed by a CSV or JSONL manifest (UTF-8, with or without a byte-order mark)."""
    uri = source.uri
    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read()
    except Exception as e:  # remote file systems raise their own types
        raise _unreachable(uri, e) from e
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
        ref = str(row[source.uri_column])
        if "://" not in ref and not ref.startswith("/"):
            ref = f"{base}/{ref}"
        items.append((ref, str(row[label_key])))
    return items


def list_items(sources: list[Source], scratch: ExitStack) -> list[Item]:
    """Every (reference, class) of every source, in a stable order. Temporary folders of extracted
    archives live until `scratch` closes."""
    items: list[Item] = []
    for source in sources:
        if source.format == "imageFolder":
            items += image_folder(source.uri)
        elif source.format == "archive":
            into = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="modelops-archive-")))
            items += image_folder(str(extract_archive(source.uri, into)))
        else:
            items += manifest(source)
    return items


def iter_batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
