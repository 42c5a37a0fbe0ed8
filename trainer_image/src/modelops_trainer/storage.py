"""Artifact storage over fsspec URIs: atomic writes, SHA-256 digests, verified local copies.

Every artifact the programs exchange (dataset shards and manifests, weights, checkpoints, ONNX
files) lives at an fsspec URI (`file://` on a volume, `s3://`, `http(s)://` to read, or a plain
local path; the configs refuse other schemes, whose file systems the image lacks) and is
identified by a digest, `sha256:` + 64 lowercase hex digits.

Writes are atomic: a reader sees either the old file or the whole new one, never a torn one. On a
local file system that is a temporary file in the same directory, fsynced and renamed over the
target; object stores publish an object only when its upload completes, so a local temporary file
is uploaded in one piece.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

from modelops_trainer.errors import DigestMismatch

DIGEST_PREFIX = "sha256:"
CHUNK = 4 << 20
#: The schemes the image has file systems for: fsspec's local and HTTP ones, and s3fs. The
#: operator's API accepts the same; `gs://` (gcsfs) and Azure (`az://`, `abfs://`: adlfs) are not
#: installed, so a config naming them is refused rather than failing at the first read.
SUPPORTED_SCHEMES = ("file", "s3", "http", "https")


def check_scheme(uri: str) -> str:
    """`uri` when it is a plain path or its scheme is supported; else ValueError naming the supported ones."""
    scheme, sep, _ = uri.partition("://")
    if sep and scheme not in SUPPORTED_SCHEMES:
        raise ValueError(
            f"{scheme}:// is not supported: the URI's scheme must be file://, s3://, http:// or https:// "
            "(gs://, gcs://, az:// and abfs:// are not: the image has no Google Cloud Storage or Azure client)"
        )
    return uri


def url_to_fs(uri: str) -> tuple[Any, str]:
    """The fsspec file system of `uri` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, str(path)


def is_local(uri: str) -> bool:
    """Whether `uri` is on the local file system (a `file://` URI or a plain path)."""
    fs, _ = url_to_fs(uri)
    return isinstance(fs, LocalFileSystem)


def local_path(uri: str) -> Path:
    """The local path of a `file://` URI or plain path; ValueError for remote URIs."""
    fs, path = url_to_fs(uri)
    if not isinstance(fs, LocalFileSystem):
        raise ValueError(f"{uri} is not a local path")
    return Path(path)


def join(base: str, *parts: str) -> str:
    """`base` with `parts` appended as path segments (URIs keep their scheme)."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def exists(uri: str) -> bool:
    """Whether a file or folder exists at `uri`."""
    fs, path = url_to_fs(uri)
    return bool(fs.exists(path))


def read_bytes(uri: str) -> bytes:
    """The whole content of `uri`."""
    fs, path = url_to_fs(uri)
    with fs.open(path, "rb") as f:
        data: bytes = f.read()
    return data


def make_dirs(uri: str) -> None:
    """Create the folder `uri` (and parents) where the file system has folders."""
    fs, path = url_to_fs(uri)
    fs.makedirs(path, exist_ok=True)


def remove(uri: str, *, recursive: bool = False) -> None:
    """Delete `uri` if it exists."""
    fs, path = url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def move(src: str, dst: str) -> None:
    """Move a file (a rename on local disks; copy and delete on object stores)."""
    fs, src_path = url_to_fs(src)
    _, dst_path = url_to_fs(dst)
    if isinstance(fs, LocalFileSystem):
        Path(dst_path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(src_path, dst_path)
    else:
        fs.mv(src_path, dst_path)


def format_digest(hex_digest: str) -> str:
    """`sha256:<hex>` from 64 hex digits."""
    return DIGEST_PREFIX + hex_digest


def digest_hex(digest: str) -> str:
    """The 64 hex digits of a `sha256:<hex>` digest (ValueError when it is not one)."""
    hex_part = digest.removeprefix(DIGEST_PREFIX)
    if not digest.startswith(DIGEST_PREFIX) or len(hex_part) != 64 or not _is_hex(hex_part):
        raise ValueError(f"not a sha256 digest: {digest!r} (expected sha256:<64 lowercase hex digits>)")
    return hex_part


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def sha256_bytes(data: bytes) -> str:
    """`sha256:<hex>` of `data`."""
    return format_digest(hashlib.sha256(data).hexdigest())


def sha256_file(uri: str) -> str:
    """`sha256:<hex>` of the file at `uri`, read in chunks."""
    fs, path = url_to_fs(uri)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return format_digest(h.hexdigest())


class HashingWriter:
    """A binary file wrapper that hashes and counts what passes through it (no seeking)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        """Write `data` to the wrapped file and add it to the digest."""
        self._hash.update(data)
        self.size += len(data)
        return self._raw.write(data)

    def flush(self) -> None:
        """Flush the wrapped file."""
        self._raw.flush()

    @property
    def digest(self) -> str:
        """`sha256:<hex>` of everything written so far."""
        return format_digest(self._hash.hexdigest())


@contextlib.contextmanager
def atomic_writer(uri: str, *, durable: bool = True) -> Iterator[IO[bytes]]:
    """A binary file that appears at `uri` complete, or not at all when the block raises.

    `durable=False` skips the fsync before the rename on a local disk: the file still appears
    whole to other processes, but after a power loss it may be empty or torn, so only files whose
    reader checks them (a size and digest recorded elsewhere) should be written so.
    """
    fs, path = url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return
    with tempfile.NamedTemporaryFile(prefix="modelops-upload-", delete=True) as tmp_file:
        yield tmp_file
        tmp_file.flush()
        fs.put_file(tmp_file.name, path)


def write_bytes_atomic(uri: str, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `uri` atomically (`durable`: see `atomic_writer`)."""
    with atomic_writer(uri, durable=durable) as f:
        f.write(data)


def default_cache_dir() -> Path:
    """Where verified copies of remote artifacts are kept: `$MODELOPS_CACHE_DIR` or a temp folder."""
    return Path(os.environ.get("MODELOPS_CACHE_DIR") or Path(tempfile.gettempdir()) / "modelops-cache")


def fetch_verified(uri: str, digest: str, *, what: str, cache_dir: Path | None = None) -> Path:
    """A local path holding the bytes of `uri`, checked against `digest` (`sha256:<hex>`).

    Local files are hashed where they are. Remote files are downloaded into `cache_dir` under
    their digest while being hashed, so a second use (a restarted pod with the same volume) only
    re-hashes the cached copy. Raises DigestMismatch, naming `what`, when the bytes differ.
    """
    expected = digest_hex(digest)
    if is_local(uri):
        local = local_path(uri)
        actual = sha256_file(str(local))
        if actual != digest:
            raise DigestMismatch(f"{what} {uri} has digest {actual}, expected {digest}: it changed or is corrupt")
        return local
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / expected
    if cached.exists():
        if sha256_file(str(cached)) == digest:
            return cached
        cached.unlink()
    fs, path = url_to_fs(uri)
    tmp = cache / f".{expected}.{uuid.uuid4().hex[:8]}.part"
    try:
        with fs.open(path, "rb") as src, open(tmp, "wb") as dst:
            writer = HashingWriter(dst)
            while chunk := src.read(CHUNK):
                writer.write(chunk)
        if writer.digest != digest:
            raise DigestMismatch(
                f"{what} {uri} has digest {writer.digest}, expected {digest}: it changed or is corrupt"
            )
        os.replace(tmp, cached)
    finally:
        tmp.unlink(missing_ok=True)
    return cached
