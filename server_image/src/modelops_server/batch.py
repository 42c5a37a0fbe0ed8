"""Batch inference: a folder of images or a Dataset version in, predictions out as JSONL.

A batch job is a job like any other (``jobs.py``: same endpoint, stream, consumers, results hash
and takeover), submitted as ``POST /v1/jobs`` with ``{"source": "<URI>", "output": "<folder URI>",
"split": "train|val|test", "topK": 5, "callbackUrl": ...}`` instead of images. This module holds
what is particular to it:

- **Where**: the server reads and writes only under ``--batch-roots`` (URI prefixes; none by
  default, which refuses every batch job). URIs are normalised first: ``..`` segments, queries and
  fragments are refused, and a ``file://`` path must also resolve (symbolic links followed) inside
  a root, so a link cannot lead out of it.
- **What** (``plan``, at submission, so that each image has a fixed index before any consumer
  starts): a folder is listed recursively through fsspec (png, jpg, jpeg, webp, bmp; sorted by
  path; hidden files and folders and links to folders skipped); a Dataset version (a folder with
  ``manifest.json`` of format ``modelops.dataset/v1``) is read from its manifest, with the stdlib
  only (the server does not import the trainer): each shard covers a range of indices, and the
  consumer reads its tar after checking its SHA-256 against the manifest. Beyond
  ``--batch-max-images`` images the job is refused.
- **Output** (``write_output``): one JSON line per image in index order, from the results hash,
  written to a temporary name in the output folder and then moved to ``<job id>.jsonl``, once the
  job is complete. The default output folder is ``<source>.predictions/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import tarfile
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec  # type: ignore[import-untyped]
import orjson

from modelops_server import errors

#: Largest manifest.json read.
MAX_MANIFEST_BYTES = 16 << 20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DATASET_FORMAT = "modelops.dataset/v1"
SPLITS = ("train", "val", "test")
_SHARD_NAME = re.compile(r"^(train|val|test)-[0-9]{5}\.tar$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
BATCH_FIELDS = frozenset({"source", "output", "split", "topK", "callbackUrl"})


@dataclass(frozen=True)
class Location:
    """A normalised URI: ``scheme://netloc/path`` with a clean absolute path."""

    scheme: str
    netloc: str
    path: str  # absolute, no trailing slash (except the root "/"), no "." or ".." segments

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"

    def child(self, name: str) -> Location:
        return Location(self.scheme, self.netloc, posixpath.join(self.path, name))

    def within(self, root: Location) -> bool:
        if (self.scheme, self.netloc) != (root.scheme, root.netloc):
            return False
        return root.path in ("/", self.path) or self.path.startswith(root.path + "/")


def parse_location(uri: str, what: str) -> Location:
    """`uri` normalised; RequestError for what cannot be made safe (``..``, queries, no scheme)."""
    if not isinstance(uri, str) or not uri or len(uri) > 4096:
        raise errors.RequestError(f"{what} must be a URI string (at most 4096 characters)")
    if "\x00" in uri or "\\" in uri:
        raise errors.RequestError(f"{what} {uri!r} holds a NUL or a backslash")
    if uri.startswith("/"):
        uri = "file://" + uri
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme or "://" not in uri:
        raise errors.RequestError(f"{what} {uri!r} must be a URI such as file:///data/images or s3://bucket/images")
    if parts.query or parts.fragment or "?" in uri or "#" in uri:
        raise errors.RequestError(f"{what} {uri!r} must not hold a query or fragment (? or #)")
    if scheme == "file" and parts.netloc not in ("", "localhost"):
        raise errors.RequestError(f"{what} {uri!r}: a file:// URI names no host (file:///path)")
    segments = [s for s in parts.path.split("/") if s not in ("", ".")]
    if ".." in segments or any(urllib.parse.unquote(s) == ".." for s in segments):
        raise errors.RequestError(f"{what} {uri!r} must not hold '..' segments")
    netloc = "" if scheme == "file" else parts.netloc
    if scheme != "file" and not netloc:
        raise errors.RequestError(f"{what} {uri!r} names no bucket or host")
    return Location(scheme, netloc, "/" + "/".join(segments))


def parse_roots(text: str) -> tuple[Location, ...]:
    """``--batch-roots`` as locations; ValueError naming a bad entry."""
    roots = []
    for raw in (r.strip() for r in text.split(",")):
        if raw:
            try:
                roots.append(parse_location(raw, "a --batch-roots entry"))
            except errors.RequestError as exc:
                raise ValueError(str(exc)) from exc
    return tuple(roots)


def confine(location: Location, roots: Iterable[Location], what: str) -> Location:
    """`location` when it lies under one of `roots` (for file://, also once links are resolved)."""
    roots = tuple(roots)
    if not roots:
        raise errors.RequestError(
            "batch jobs are off on this server: it reads and writes only under --batch-roots "
            "(MODELOPS_BATCH_ROOTS), which is empty"
        )
    allowed = ", ".join(r.uri for r in roots)
    for root in roots:
        if location.within(root):
            if location.scheme == "file" and not _real_within(location.path, root.path):
                raise errors.RequestError(
                    f"{what} {location.uri} leads outside --batch-roots through a symbolic link ({allowed})"
                )
            return location
    raise errors.RequestError(f"{what} {location.uri} is outside --batch-roots ({allowed})")


def _real_within(path: str, root: str) -> bool:
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


# --- planning (at submission) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a batch job will classify: ``items`` (index → JSON) in index order, and their count."""

    kind: str  # "folder" or "dataset"
    total: int
    items: list[bytes]  # folder: one per image; dataset: one per shard


def plan(source: Location, split: str | None, cap: int) -> Plan:
    """List the source (blocking I/O: run it in a thread); RequestError when it cannot be used."""
    fs, root = fsspec.core.url_to_fs(source.uri)
    fs.invalidate_cache(root)  # an object store's listing cache may predate files added since
    manifest_path = posixpath.join(root, "manifest.json")
    try:
        is_dataset = fs.isfile(manifest_path)
        is_folder = is_dataset or fs.isdir(root)
    except OSError as exc:
        raise errors.RequestError(f"cannot read source {source.uri}: {exc}") from exc
    if is_dataset:
        return _plan_dataset(fs, source, manifest_path, split, cap)
    if split is not None:
        raise errors.RequestError("split applies to a Dataset version source only (a folder holding manifest.json)")
    if not is_folder:
        raise errors.RequestError(f"source {source.uri} is not a folder (or does not exist)")
    return _plan_folder(fs, source, root, cap)


def _plan_folder(fs: Any, source: Location, root: str, cap: int) -> Plan:
    found: list[str] = []
    try:
        for folder, dirs, files in fs.walk(root, detail=True):
            for name, info in list(dirs.items()):  # pruned in place: hidden folders, links to folders
                if name.startswith(".") or info.get("islink"):
                    del dirs[name]
            for name in files:
                if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                    found.append(posixpath.join(folder, name))
            if len(found) > cap:
                raise errors.RequestError(
                    f"source {source.uri} holds more than {cap} images, the most one batch job takes; "
                    "split it into several sources"
                )
    except OSError as exc:
        raise errors.RequestError(f"cannot list source {source.uri}: {exc}") from exc
    if not found:
        raise errors.RequestError(
            f"source {source.uri} holds no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)} files) "
            "and no manifest.json"
        )
    prefix = root.rstrip("/") + "/"
    items = []
    for path in sorted(found):
        rel = path[len(prefix) :] if path.startswith(prefix) else posixpath.basename(path)
        items.append(orjson.dumps({"uri": fs.unstrip_protocol(path), "path": rel}))
    return Plan("folder", len(items), items)


def _plan_dataset(fs: Any, source: Location, manifest_path: str, split: str | None, cap: int) -> Plan:
    where = source.child("manifest.json").uri
    try:
        with fs.open(manifest_path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise errors.RequestError(f"cannot read {where}: {exc}") from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise errors.RequestError(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.RequestError(f"{where} is not JSON: {exc}") from exc
    try:
        return _dataset_items(doc, source, split, cap)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise errors.RequestError(f"{where} is not a valid {DATASET_FORMAT} manifest: {problem}") from exc


def _dataset_items(doc: Any, source: Location, split: str | None, cap: int) -> Plan:
    if doc.get("format") != DATASET_FORMAT:
        raise ValueError(f"format is {doc.get('format')!r}, not {DATASET_FORMAT!r}")
    classes = doc["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise TypeError("classes must be a list of names")
    extension = _EXTENSIONS[doc["image"]["encoding"]]
    if split is not None and split not in SPLITS:
        raise errors.RequestError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    splits = doc["splits"]
    chosen = [split] if split is not None else [s for s in SPLITS if s in splits]
    items: list[bytes] = []
    total = 0
    for name in chosen:
        entry = splits.get(name) or {"shards": []}
        for shard in entry["shards"]:
            file, sha256, count = shard["file"], shard["sha256"], shard["count"]
            if not isinstance(file, str) or not _SHARD_NAME.match(file) or not file.startswith(f"{name}-"):
                raise ValueError(f"shard file {file!r} is not <split>-<NNNNN>.tar of split {name}")
            if not isinstance(sha256, str) or not _SHA256_HEX.match(sha256):
                raise ValueError(f"shard {file}: sha256 must be 64 lowercase hex digits")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"shard {file}: count must be a positive integer")
            items.append(
                orjson.dumps(
                    {
                        "uri": source.child(file).uri,
                        "file": file,
                        "split": name,
                        "sha256": sha256,
                        "first": total,
                        "count": count,
                        "extension": extension,
                        "classes": classes,
                    }
                )
            )
            total += count
            if total > cap:
                raise errors.RequestError(
                    f"source {source.uri} holds more than {cap} images in the chosen splits, the most one batch "
                    "job takes; choose a split"
                )
    if total == 0:
        raise errors.RequestError(f"source {source.uri} holds no images in split(s) {', '.join(chosen) or '(none)'}")
    return Plan("dataset", total, items)


# --- reading (in the consumer) ---------------------------------------------------------------------


@dataclass
class Sample:
    """One image to classify: its index, the fields its JSON line starts with, and its bytes or error."""

    index: int
    fields: dict[str, Any]
    data: bytes | None = None
    error: errors.ServerError | None = None


def read_folder_image(item: dict[str, Any], index: int, confined_to: str | None, max_bytes: int) -> Sample:
    """The image of a folder item, at most `max_bytes`; a failure is the sample's error, not an exception."""
    sample = Sample(index, {"path": item["path"]})
    try:
        fs, path = fsspec.core.url_to_fs(item["uri"])
        if confined_to is not None and not _real_within(path, confined_to):
            raise errors.RequestError("the file leads outside the source folder through a symbolic link")
        with fs.open(path, "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise errors.BodyTooLarge(f"the file is larger than {max_bytes} bytes (--max-body-bytes)")
        sample.data = data
    except errors.ServerError as exc:
        sample.error = exc
    except Exception as exc:  # whatever the store raises, an unreadable file fails only itself
        sample.error = errors.RequestError(f"cannot read the file: {type(exc).__name__}: {exc}")
    return sample


def iter_shard(shard: dict[str, Any], wanted: set[int], max_bytes: int) -> Iterator[Sample]:
    """The samples of one Dataset shard whose indices are in `wanted`, after checking its SHA-256.

    A shard that cannot be read, or differs from the manifest, gives every wanted index an error.
    """
    first, count, file = int(shard["first"]), int(shard["count"]), shard["file"]
    with tempfile.TemporaryFile() as local:
        try:
            digest = hashlib.sha256()
            fs, path = fsspec.core.url_to_fs(shard["uri"])
            with fs.open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    local.write(chunk)
            if digest.hexdigest() != shard["sha256"]:
                raise errors.RequestError(f"shard {file} has SHA-256 {digest.hexdigest()}, the manifest says another")
            local.seek(0)
            members = _shard_members(local, shard)
            if len(members) != count:
                raise errors.RequestError(f"shard {file} holds {len(members)} images, the manifest says {count}")
        except Exception as exc:  # whatever the store raises, an unreadable shard fails only its images
            error = exc if isinstance(exc, errors.ServerError) else errors.RequestError(f"cannot read {file}: {exc}")
            for index in sorted(wanted):
                yield Sample(index, {"split": shard["split"], "shard": file}, error=error)
            return
        local.seek(0)
        with tarfile.open(fileobj=local, mode="r:") as tar:
            for ordinal, (key, member, label) in enumerate(members):
                index = first + ordinal
                if index not in wanted:
                    continue
                fields: dict[str, Any] = {"key": key, "split": shard["split"], "shard": file}
                classes = shard["classes"]
                if label is not None and 0 <= label < len(classes):
                    fields["datasetLabel"] = classes[label]
                sample = Sample(index, fields)
                if member.size > max_bytes:
                    sample.error = errors.BodyTooLarge(f"the image is larger than {max_bytes} bytes (--max-body-bytes)")
                else:
                    raw = tar.extractfile(member)
                    sample.data = raw.read() if raw is not None else b""
                yield sample


def _shard_members(local: Any, shard: dict[str, Any]) -> list[tuple[str, tarfile.TarInfo, int | None]]:
    """(key, image member, class index) in stored order."""
    images: list[tuple[str, tarfile.TarInfo]] = []
    labels: dict[str, int] = {}
    with tarfile.open(fileobj=local, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if ext == shard["extension"]:
                images.append((key, member))
            elif ext == "cls":
                raw = tar.extractfile(member)
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    labels[key] = int((raw.read(32) if raw else b"").decode("ascii").strip())
    return [(key, member, labels.get(key)) for key, member in images]


# --- output ----------------------------------------------------------------------------------------


def default_output(source: Location) -> Location:
    """``<source>.predictions``, beside the source."""
    if source.path == "/":
        raise errors.RequestError(f"source {source.uri} is a root: name an output folder")
    return Location(source.scheme, source.netloc, source.path + ".predictions")


def write_output(folder_uri: str, job_id: str, lines: Iterable[bytes]) -> str:
    """Write the JSONL to a temporary name in `folder_uri`, then move it to ``<job id>.jsonl``; its URI."""
    fs, folder = fsspec.core.url_to_fs(folder_uri)
    with contextlib.suppress(FileExistsError):
        fs.makedirs(folder, exist_ok=True)
    final = posixpath.join(folder, f"{job_id}.jsonl")
    temp = posixpath.join(folder, f".{job_id}.jsonl.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with fs.open(temp, "wb") as f:
            for line in lines:
                f.write(line)
                f.write(b"\n")
        fs.mv(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.rm(temp)
        raise
    return str(fs.unstrip_protocol(final))
