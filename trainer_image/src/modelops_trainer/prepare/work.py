"""The work folder of a run: its finished chunks of processed images, so that a re-run resumes.

`<output>/.work-<config hash>/` holds, per chunk of the input (in input order):

    batch-NNNNN.bin    the kept images' encoded bytes, one after another
    batch-NNNNN.json   the chunk's inputs, every image's outcome (with its offset and size in the
                       .bin), and the .bin's size and SHA-256; written after the .bin

Both are written atomically (a temporary file renamed) but not fsynced: that was one fsync per
chunk file for files nobody needs after a power loss. Instead a chunk is reused only when its
JSON parses, lists the same inputs, and its .bin has the recorded size and SHA-256; a chunk torn
by a crash is processed again, never trusted. What must survive a crash is the published version,
and that is durable on its own: each shard fsynced, then the manifest written atomically last
(`datasetfmt.DatasetWriter`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

from modelops_trainer import storage
from modelops_trainer.prepare.sources import Item


def _uri(work: str, index: int, ext: str) -> str:
    return storage.join(work, f"batch-{index:05d}.{ext}")


def save_chunk(work: str, index: int, inputs: Sequence[Item], outcomes: list[dict[str, Any]], data: bytes) -> None:
    """Record a finished chunk: its images' bytes, then the JSON that commits them."""
    storage.write_bytes_atomic(_uri(work, index, "bin"), data, durable=False)
    doc = {
        "inputs": [list(i) for i in inputs],
        "outcomes": outcomes,
        "data": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
    }
    storage.write_bytes_atomic(_uri(work, index, "json"), json.dumps(doc).encode(), durable=False)


def load_chunk(work: str, index: int, inputs: Sequence[Item]) -> list[dict[str, Any]] | None:
    """The outcomes of chunk `index` from an earlier run, or None when it must be processed
    (absent, of other inputs, or torn: its JSON unreadable or its .bin not the one recorded)."""
    uri = _uri(work, index, "json")
    if not storage.exists(uri):
        return None
    try:
        doc = json.loads(storage.read_bytes(uri))
        if doc["inputs"] != [list(i) for i in inputs]:
            return None
        data = storage.read_bytes(_uri(work, index, "bin"))
        recorded = doc["data"]
        if len(data) != recorded["size"] or hashlib.sha256(data).hexdigest() != recorded["sha256"]:
            return None
        return list(doc["outcomes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ChunkData:
    """Reads images back from the chunks' .bin files by (chunk, offset, size): `pread` on a local
    disk (one open file per chunk), elsewhere (an object store) each chunk read whole once rather
    than one request per image. Close it (or use `with`)."""

    def __init__(self, work: str) -> None:
        self.work = work
        self.local = storage.is_local(work)
        self._fds: dict[int, int] = {}
        self._remote: dict[int, bytes] = {}

    def __enter__(self) -> ChunkData:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def read(self, chunk: int, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` of chunk `chunk`'s .bin."""
        if self.local:
            fd = self._fds.get(chunk)
            if fd is None:
                fd = self._fds[chunk] = os.open(storage.local_path(_uri(self.work, chunk, "bin")), os.O_RDONLY)
            data = os.pread(fd, size, offset)
        else:
            if chunk not in self._remote:
                self._remote[chunk] = storage.read_bytes(_uri(self.work, chunk, "bin"))
            data = self._remote[chunk][offset : offset + size]
        if len(data) != size:
            raise OSError(f"work file batch-{chunk:05d}.bin ends before offset {offset + size}")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._remote.clear()
