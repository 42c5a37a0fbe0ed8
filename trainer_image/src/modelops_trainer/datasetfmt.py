"""The dataset-version format `modelops.dataset/v1` (docs/contracts.md): models, writer, reader.

A version is a folder holding `manifest.json` and WebDataset shards `<split>-<NNNNN>.tar`; in
each shard every image is two members, `<key>.<ext>` (the encoded bytes, ext png/jpg/webp) and
`<key>.cls` (its class index as decimal text). The version's digest is `sha256:` + the SHA-256
of the manifest's bytes and its name the first 12 hex digits, so a version is content-addressed:
the manifest lists every shard's SHA-256, and the same images in the same order give the same
shards (tar headers carry no times or owners) and therefore the same version.

Writing (the data-preparation program), lowest level first:

- `ShardWriter` streams one shard to any fsspec URI, hashing it on the way.
- `write_manifest(folder, manifest)` writes `manifest.json` atomically and returns the digest.
  Write it last: a folder without a manifest is not a version.
- `DatasetWriter` does all of it under `<root>/<version>/`: shards roll over every
  `shard_size` images into a staging folder, and `finish()` moves them into the version folder
  and writes the manifest.

Reading (the trainer): `DatasetReader(uri, digest=...)` checks the manifest's digest, then each
shard's SHA-256 before its first use, and gives per split either a sequential iterator of
`(image bytes, label)` or a `SplitIndex` for random access (what a DataLoader needs).
"""

from __future__ import annotations

import contextlib
import json
import tarfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, Literal, Self, get_args

import numpy as np
from pydantic import Field, ValidationError, model_validator

from modelops_trainer import storage
from modelops_trainer.errors import DatasetError, DigestMismatch
from modelops_trainer.wire import WireModel as _Model

FORMAT = "modelops.dataset/v1"
MANIFEST_FILE = "manifest.json"
SplitName = Literal["train", "val", "test"]
SPLITS: tuple[SplitName, ...] = get_args(SplitName)
Encoding = Literal["png", "jpeg", "webp"]
#: The member extension of each encoding.
EXTENSIONS: dict[str, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
#: Sample keys: no dots (WebDataset splits a member name at its first dot) and no slashes.
KEY_PATTERN = r"^[A-Za-z0-9_-]{1,80}$"
_SHA256_HEX = r"^[0-9a-f]{64}$"
_SHARD_NAME = r"^(train|val|test)-[0-9]{5}\.tar$"
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class ColorJitter(_Model):
    """Random changes of brightness, contrast, saturation and hue (torchvision's ColorJitter)."""

    brightness: float = Field(default=0.0, ge=0, le=1)
    """How much to jitter brightness (0 turns it off)."""
    contrast: float = Field(default=0.0, ge=0, le=1)
    """How much to jitter contrast (0 turns it off)."""
    saturation: float = Field(default=0.0, ge=0, le=1)
    """How much to jitter saturation (0 turns it off)."""
    hue: float = Field(default=0.0, ge=0, le=0.5)
    """How much to jitter hue (0 turns it off)."""


class AugmentationPolicy(_Model):
    """The augmentation policy recorded with a version and applied by the trainer at training time.

    Field for field the operator's `Augmentation` (same camelCase names, bounds and defaults), so
    the Dataset's `spec.augmentation` can be copied in as it is.
    """

    horizontal_flip: bool = True
    """Flip images left-right with probability 0.5."""
    vertical_flip: bool = False
    """Flip images upside down with probability 0.5."""
    random_resized_crop_scale: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.08, 1.0], max_length=2
    )
    """Area range `[min, max]` of random resized crops; empty turns cropping off."""
    rotation_degrees: float = Field(default=0.0, ge=0, le=180)
    """Rotate by a random angle in `[-d, d]` degrees."""
    color_jitter: ColorJitter = Field(default_factory=ColorJitter)
    """Colour jitter; all zero turns it off."""
    auto_augment: Literal["none", "randAugment", "trivialAugment", "autoAugment"] = "none"
    """An automatic augmentation policy applied after the others."""
    rand_augment_ops: int = Field(default=2, ge=1, le=10)
    """RandAugment: operations per image."""
    rand_augment_magnitude: int = Field(default=9, ge=0, le=30)
    """RandAugment: magnitude of each operation."""
    random_erasing: float = Field(default=0.0, ge=0, le=1)
    """Probability of erasing a random rectangle (cutout); 0 turns it off."""

    @model_validator(mode="after")
    def _crop_scale_is_a_range(self) -> Self:
        scale = self.random_resized_crop_scale
        if scale and (len(scale) != 2 or not scale[0] < scale[1]):
            raise ValueError("randomResizedCropScale must be [min, max] with min < max (or empty)")
        return self


class ImageFormat(_Model):
    """How every stored image was preprocessed and encoded (the server repeats the preprocessing)."""

    size: int = Field(ge=8, le=4096)
    """Side of the square stored images, in pixels."""
    color_mode: Literal["RGB", "L"] = "RGB"
    """`RGB` (3 channels) or `L` (grayscale, 1 channel)."""
    encoding: Encoding = "jpeg"
    """The encoding of the stored bytes."""
    resize_mode: Literal["shorterSideCrop", "pad", "stretch"] = "shorterSideCrop"
    """How source images were brought to `size`×`size`."""

    @property
    def extension(self) -> str:
        """The shard member extension of `encoding` (png, jpg, webp)."""
        return EXTENSIONS[self.encoding]


class ShardEntry(_Model):
    """One shard file of a split."""

    file: str = Field(pattern=_SHARD_NAME)
    """File name inside the version folder: `<split>-<NNNNN>.tar`."""
    sha256: str = Field(pattern=_SHA256_HEX)
    """SHA-256 of the file, 64 lowercase hex digits."""
    count: int = Field(ge=1)
    """Images in the shard."""


class SplitEntry(_Model):
    """One split: its shards and how many images of each class it holds."""

    count: int = Field(ge=0)
    """Images in the split; the sum of the shards' counts and of `perClass`."""
    per_class: dict[str, int] = Field(default_factory=dict)
    """Images by class name (every class of the manifest, zeros included)."""
    shards: list[ShardEntry] = Field(default_factory=list)
    """The shard files, in order."""

    @model_validator(mode="after")
    def _counts_agree(self) -> Self:
        if sum(s.count for s in self.shards) != self.count:
            raise ValueError(f"count {self.count} differs from the sum of the shard counts")
        if sum(self.per_class.values()) != self.count:
            raise ValueError(f"count {self.count} differs from the sum of perClass")
        if any(v < 0 for v in self.per_class.values()):
            raise ValueError("perClass counts cannot be negative")
        return self


class DatasetManifest(_Model):
    """`manifest.json` of a dataset version (format `modelops.dataset/v1`)."""

    format: Literal["modelops.dataset/v1"] = "modelops.dataset/v1"
    """The format and its version."""
    name: str | None = Field(default=None, max_length=253)
    """The Dataset this version belongs to (informational)."""
    classes: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(min_length=1, max_length=100_000)
    """Class names in label order: label `i` is `classes[i]`."""
    image: ImageFormat
    """Size, colour mode, encoding and resize mode of the stored images."""
    augmentation: AugmentationPolicy = Field(default_factory=AugmentationPolicy)
    """The augmentation policy the trainer applies."""
    splits: dict[SplitName, SplitEntry]
    """The splits present (train is required; val and test may be absent or empty)."""
    spec_hash: str | None = Field(default=None, max_length=128)
    """Hash of the Dataset spec that produced this version (informational, for the operator)."""
    dropped: dict[str, int] = Field(default_factory=dict)
    """Images dropped while cleaning, by reason (informational)."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be unique")
        train = self.splits.get("train")
        if train is None or train.count == 0:
            raise ValueError("a dataset version needs a non-empty train split")
        known = set(self.classes)
        seen_files: set[str] = set()
        for split, entry in self.splits.items():
            unknown = set(entry.per_class) - known
            if unknown:
                raise ValueError(f"splits.{split}.perClass names unknown classes: {sorted(unknown)[:5]}")
            for shard in entry.shards:
                if not shard.file.startswith(f"{split}-"):
                    raise ValueError(f"splits.{split} lists shard {shard.file} of another split")
                if shard.file in seen_files:
                    raise ValueError(f"shard {shard.file} is listed twice")
                seen_files.add(shard.file)
        return self

    def split(self, name: SplitName) -> SplitEntry:
        """The split `name`; an absent split reads as empty."""
        return self.splits.get(name) or SplitEntry(count=0)

    def to_bytes(self) -> bytes:
        """The canonical JSON (sorted keys, 2-space indent, UTF-8, final newline) that is hashed."""
        doc = self.model_dump(by_alias=True, mode="json", exclude_none=True)
        return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "manifest.json") -> DatasetManifest:
        """Parse and validate a manifest; DatasetError lists every problem by field."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors())
            raise DatasetError(f"{source} is not a valid {FORMAT} manifest: {problems}") from exc


def shard_file_name(split: SplitName, index: int) -> str:
    """`<split>-<NNNNN>.tar`, the name of a split's `index`-th shard."""
    return f"{split}-{index:05d}.tar"


def version_name(digest: str) -> str:
    """The version name of a digest: its first 12 hex digits."""
    return storage.digest_hex(digest)[:12]


def check_key(key: str) -> None:
    """ValueError unless `key` is a valid sample key (1–80 of `A-Za-z0-9_-`)."""
    if not 1 <= len(key) <= 80 or not set(key) <= _KEY_CHARS:
        raise ValueError(f"sample key {key!r} must be 1-80 characters of A-Z a-z 0-9 _ - (no dots or slashes)")


@dataclass(frozen=True)
class WrittenShard:
    """A finished shard: its manifest entry and how many images of each class index it holds."""

    entry: ShardEntry
    label_counts: tuple[int, ...]


#: tar's block and record sizes: members start on a block, the archive ends on a record.
BLOCK, RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
#: The fixed fields of every member header after the name: mode 0644, uid and gid 0, then size,
#: mtime 0, the checksum (spaces while it is summed), a regular file, no link, ustar, no owner
#: names, no device, no prefix. No times, owners or modes from the machine: the same samples
#: always give the same bytes.
_MODE_IDS = b"0000644\0" + b"0000000\0" * 2
_AFTER_SIZE = b"00000000000\0"
_AFTER_CHECKSUM = tarfile.REGTYPE + bytes(100) + tarfile.POSIX_MAGIC + bytes(32 + 32 + 8 + 8 + 155 + 12)
_FIXED_SUM = sum(_MODE_IDS) + sum(_AFTER_SIZE) + sum(b" " * 8) + sum(_AFTER_CHECKSUM)


def tar_member(name: str, size: int) -> bytes:
    """The USTAR header block of a regular file `name` of `size` bytes, byte for byte what
    `tarfile` writes for it (mode 0644, owner 0, mtime 0; `test_datasetfmt` compares them), built
    directly: the `tarfile` module takes ~20 µs a member, which was a large part of preparing
    small images. `name` is ASCII and at most 100 bytes (a sample key and its extension)."""
    raw = name.encode("ascii")
    if len(raw) > 100 or not 0 <= size < 8**11:
        raise ValueError(f"tar member {name!r} of {size} bytes does not fit a USTAR header")
    size_field = b"%011o\0" % size
    checksum = sum(raw) + sum(size_field) + _FIXED_SUM
    return b"".join(
        (raw, bytes(100 - len(raw)), _MODE_IDS, size_field, _AFTER_SIZE, b"%06o\0 " % checksum, _AFTER_CHECKSUM)
    )


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


class ShardWriter:
    """Writes one WebDataset shard to an fsspec URI, hashing it as it streams.

    Usage: `with ShardWriter(uri, extension="png", num_classes=10) as w: w.write(key, data, label)`,
    then `w.result`. The file appears atomically when the writer closes without an error, after an
    fsync unless `durable=False` (`storage.atomic_writer`). The tar is written directly in blocks
    of about `FLUSH` bytes (USTAR, the layout `tarfile`'s stream mode gives).
    """

    FLUSH = 1 << 20

    def __init__(self, uri: str, *, extension: str, num_classes: int, durable: bool = True) -> None:
        if extension not in EXTENSIONS.values():
            raise ValueError(f"extension must be one of {sorted(EXTENSIONS.values())}, not {extension!r}")
        self.uri = uri
        self._extension = extension
        self._counts = [0] * num_classes
        self._keys: set[str] = set()
        self._opened = storage.atomic_writer(uri, durable=durable)
        self._hashing = storage.HashingWriter(self._opened.__enter__())
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._aborted = False
        self._result: WrittenShard | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def count(self) -> int:
        """Images written so far."""
        return sum(self._counts)

    def write(self, key: str, image: bytes, label: int) -> None:
        """Add one image (already encoded) with its class index."""
        check_key(key)
        if key in self._keys:
            raise ValueError(f"sample key {key!r} is already in shard {self.uri}")
        if not 0 <= label < len(self._counts):
            raise ValueError(f"label {label} is outside 0..{len(self._counts) - 1}")
        if not image:
            raise ValueError(f"sample {key!r} has no image bytes")
        self._keys.add(key)
        cls = str(label).encode()
        parts = (
            tar_member(f"{key}.{self._extension}", len(image)),
            image,
            _padding(len(image)),
            tar_member(f"{key}.cls", len(cls)),
            cls,
            _padding(len(cls)),
        )
        self._pending += parts
        self._pending_size += sum(len(p) for p in parts)
        self._counts[label] += 1
        if self._pending_size >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        self._hashing.write(b"".join(self._pending))
        self._pending.clear()
        self._pending_size = 0

    def close(self) -> WrittenShard:
        """Finish the tar, publish the file, and return its manifest entry (idempotent)."""
        if self._result is None:
            if not self.count:
                self.abort()
                raise ValueError(f"shard {self.uri} is empty; a manifest cannot list an empty shard")
            self._flush()
            end = self._hashing.size + 2 * BLOCK  # two zero blocks, then zeros to the record's end
            self._hashing.write(bytes(2 * BLOCK + (-end % RECORD)))
            self._hashing.flush()
            self._opened.__exit__(None, None, None)
            name = self.uri.rstrip("/").rsplit("/", 1)[-1]
            entry = ShardEntry(file=name, sha256=storage.digest_hex(self._hashing.digest), count=self.count)
            self._result = WrittenShard(entry, tuple(self._counts))
        return self._result

    def abort(self) -> None:
        """Drop the shard: nothing appears at the URI."""
        if self._result is None and not self._aborted:
            self._aborted = True
            self._pending.clear()
            with contextlib.suppress(RuntimeError):
                self._opened.__exit__(RuntimeError, RuntimeError("shard aborted"), None)

    @property
    def result(self) -> WrittenShard:
        """The finished shard (after close)."""
        if self._result is None:
            raise RuntimeError("the shard is not closed yet")
        return self._result


def build_split(shards: Sequence[WrittenShard], classes: Sequence[str]) -> SplitEntry:
    """The manifest entry of a split made of `shards` (in order)."""
    totals = [0] * len(classes)
    for shard in shards:
        if len(shard.label_counts) != len(classes):
            raise ValueError(f"shard {shard.entry.file} counts {len(shard.label_counts)} classes, not {len(classes)}")
        totals = [a + b for a, b in zip(totals, shard.label_counts, strict=True)]
    return SplitEntry(
        count=sum(totals),
        per_class=dict(zip(classes, totals, strict=True)),
        shards=[s.entry for s in shards],
    )


def write_manifest(folder_uri: str, manifest: DatasetManifest, *, durable: bool = True) -> str:
    """Write `<folder_uri>/manifest.json` atomically and return the version digest (`sha256:<hex>`).

    The manifest is the commit point of a version: write it after every shard it lists.
    """
    data = manifest.to_bytes()
    storage.write_bytes_atomic(storage.join(folder_uri, MANIFEST_FILE), data, durable=durable)
    return storage.sha256_bytes(data)


@dataclass(frozen=True)
class DatasetVersion:
    """A written version: where it is and what identifies it."""

    uri: str
    digest: str
    version: str
    manifest: DatasetManifest


class DatasetWriter:
    """Writes a dataset version under `<root_uri>/<version>/` (root: `<artifacts>/datasets/<name>`).

    `add(split, key, image, label)` appends encoded images; every `shard_size` images of a split
    close a shard. `finish()` publishes: shards move from `<root>/.staging-<id>/` into the version
    folder and the manifest is written last. When that version exists already (same content),
    the staged copy is discarded. Leaving the `with` block with an error removes the staging folder.
    Shards and manifest are fsynced before they are renamed into place; `durable=False` skips
    that (tests and throwaway versions: a power loss may then leave a torn version).
    """

    def __init__(
        self,
        root_uri: str,
        *,
        classes: Sequence[str],
        image: ImageFormat,
        augmentation: AugmentationPolicy | None = None,
        shard_size: int = 1000,
        name: str | None = None,
        spec_hash: str | None = None,
        durable: bool = True,
    ) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be at least 1")
        if not classes or len(set(classes)) != len(classes):
            raise ValueError("classes must be a non-empty list of unique names")
        self.root_uri = root_uri.rstrip("/")
        self.classes = list(classes)
        self.image = image
        self.augmentation = augmentation or AugmentationPolicy()
        self.shard_size = shard_size
        self.name = name
        self.spec_hash = spec_hash
        self.durable = durable
        self.dropped: dict[str, int] = {}
        """Images dropped by cleaning, by reason; recorded in the manifest."""
        self.staging_uri = storage.join(self.root_uri, f".staging-{uuid.uuid4().hex[:12]}")
        self._open: dict[SplitName, ShardWriter] = {}
        self._done: dict[SplitName, list[WrittenShard]] = {s: [] for s in SPLITS}
        self._keys: dict[SplitName, set[str]] = {s: set() for s in SPLITS}
        self._finished: DatasetVersion | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()

    def add(self, split: SplitName, key: str, image: bytes, label: int) -> None:
        """Append one encoded image (in `image.encoding`) with its class index to `split`."""
        if self._finished is not None:
            raise RuntimeError("the version is finished")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        if key in self._keys[split]:
            raise ValueError(f"sample key {key!r} appears twice in split {split}")
        writer = self._open.get(split)
        if writer is None:
            index = len(self._done[split])
            uri = storage.join(self.staging_uri, shard_file_name(split, index))
            writer = ShardWriter(
                uri, extension=self.image.extension, num_classes=len(self.classes), durable=self.durable
            )
            self._open[split] = writer
        writer.write(key, image, label)
        self._keys[split].add(key)
        if writer.count >= self.shard_size:
            self._done[split].append(writer.close())
            del self._open[split]

    def shard_uri(self, split: SplitName, index: int) -> str:
        """Where the `index`-th shard of `split` is staged, for shards written by other processes."""
        return storage.join(self.staging_uri, shard_file_name(split, index))

    def add_written(self, split: SplitName, shards: Sequence[WrittenShard]) -> None:
        """Register shards written elsewhere (at `shard_uri(split, i)`, in order) instead of `add`ing
        their images one by one: how a parallel writer hands its work over."""
        if self._finished is not None or self._open.get(split) is not None or self._done[split]:
            raise RuntimeError(f"split {split} already has shards")
        for index, shard in enumerate(shards):
            if shard.entry.file != shard_file_name(split, index):
                raise ValueError(f"shard {index} of {split} is named {shard.entry.file}")
        self._done[split] = list(shards)

    def finish(self) -> DatasetVersion:
        """Close the open shards, publish the version and return it (idempotent)."""
        if self._finished is not None:
            return self._finished
        for split, writer in list(self._open.items()):
            self._done[split].append(writer.close())
            del self._open[split]
        manifest = DatasetManifest(
            name=self.name,
            classes=self.classes,
            image=self.image,
            augmentation=self.augmentation,
            splits={s: build_split(self._done[s], self.classes) for s in SPLITS},
            spec_hash=self.spec_hash,
            dropped=dict(self.dropped),
        )
        digest = storage.sha256_bytes(manifest.to_bytes())
        version = version_name(digest)
        final_uri = storage.join(self.root_uri, version)
        manifest_uri = storage.join(final_uri, MANIFEST_FILE)
        if storage.exists(manifest_uri) and storage.sha256_file(manifest_uri) == digest:
            storage.remove(self.staging_uri, recursive=True)  # the same version was published before
        else:
            for split in SPLITS:
                for shard in self._done[split]:
                    file = shard.entry.file
                    storage.move(storage.join(self.staging_uri, file), storage.join(final_uri, file))
            write_manifest(final_uri, manifest, durable=self.durable)
            storage.remove(self.staging_uri, recursive=True)
        self._finished = DatasetVersion(uri=final_uri, digest=digest, version=version, manifest=manifest)
        return self._finished

    def abort(self) -> None:
        """Discard everything written so far (nothing is published)."""
        for writer in self._open.values():
            writer.abort()
        self._open.clear()
        if self._finished is None:
            storage.remove(self.staging_uri, recursive=True)


# --- reading -----------------------------------------------------------------------------------


class SplitIndex:
    """Random access to the samples of one split, over verified local shard files.

    Holds per sample the shard, byte offset, length and label (numpy arrays, cheap to send to
    DataLoader workers); file handles are opened lazily in each process.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        shard_ids: np.ndarray[Any, Any],
        offsets: np.ndarray[Any, Any],
        sizes: np.ndarray[Any, Any],
        labels: np.ndarray[Any, Any],
    ) -> None:
        self.paths = list(paths)
        self.shard_ids = shard_ids
        self.offsets = offsets
        self.sizes = sizes
        self.labels = labels
        self._files: dict[int, IO[bytes]] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def read(self, i: int) -> tuple[bytes, int]:
        """The encoded image bytes and label of sample `i`."""
        shard = int(self.shard_ids[i])
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.paths[shard], "rb")  # noqa: SIM115 - kept open for reuse
        f.seek(int(self.offsets[i]))
        return f.read(int(self.sizes[i])), int(self.labels[i])

    def close(self) -> None:
        """Close the open shard files."""
        for f in self._files.values():
            f.close()
        self._files.clear()


def _index_shard(path: Path, entry: ShardEntry, extension: str, num_classes: int) -> list[tuple[int, int, int]]:
    """(offset, size, label) per sample of one verified shard, checking its layout."""
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                if (ext == extension and key in images) or (ext == "cls" and key in labels):
                    raise DatasetError(f"shard {entry.file} holds sample {key} twice")
                if ext == extension:
                    images[key] = (member.offset_data, member.size)
                    order.append(key)
                elif ext == "cls":
                    raw = tar.extractfile(member)
                    text = raw.read().decode("ascii").strip() if raw else ""
                    labels[key] = int(text)
                else:
                    raise DatasetError(
                        f"shard {entry.file} holds {member.name}: expected .{extension} and .cls members"
                    )
    except (tarfile.TarError, ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"shard {entry.file} is not a readable WebDataset tar: {exc}") from exc
    if set(images) != set(labels):
        missing = sorted(set(images) ^ set(labels))[:3]
        raise DatasetError(f"shard {entry.file}: samples without both an image and a .cls member: {missing}")
    if len(order) != entry.count:
        raise DatasetError(f"shard {entry.file} holds {len(order)} images, the manifest says {entry.count}")
    out = []
    for key in order:
        label = labels[key]
        if not 0 <= label < num_classes:
            raise DatasetError(f"shard {entry.file}: sample {key} has label {label}, outside 0..{num_classes - 1}")
        offset, size = images[key]
        out.append((offset, size, label))
    return out


class DatasetReader:
    """A dataset version opened for reading: the manifest, checked against its digest.

    Shards are checked when first used: a local shard is hashed in place, a remote one is
    downloaded into `cache_dir` (default `storage.default_cache_dir()`) while being hashed.
    """

    def __init__(self, uri: str, *, digest: str | None, cache_dir: Path | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.cache_dir = cache_dir
        manifest_uri = storage.join(self.uri, MANIFEST_FILE)
        try:
            data = storage.read_bytes(manifest_uri)
        except (FileNotFoundError, OSError) as exc:
            raise DatasetError(f"cannot read the dataset manifest {manifest_uri}: {exc}") from exc
        actual = storage.sha256_bytes(data)
        if digest is not None and actual != digest:
            raise DigestMismatch(
                f"dataset manifest {manifest_uri} has digest {actual}, expected {digest}: "
                "the version changed or the config names another version"
            )
        self.digest = actual
        self.version = version_name(actual)
        self.manifest = DatasetManifest.from_bytes(data, source=manifest_uri)
        self._local: dict[str, Path] = {}

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        return self.manifest.classes

    def shard_uri(self, entry: ShardEntry) -> str:
        """Where a shard lives."""
        return storage.join(self.uri, entry.file)

    def local_shard(self, entry: ShardEntry) -> Path:
        """A verified local copy of a shard (hashed once per reader)."""
        path = self._local.get(entry.file)
        if path is None:
            path = storage.fetch_verified(
                self.shard_uri(entry),
                storage.format_digest(entry.sha256),
                what="dataset shard",
                cache_dir=self.cache_dir,
            )
            self._local[entry.file] = path
        return path

    def index(self, split: SplitName) -> SplitIndex:
        """Random access to `split` (verifying its shards and their per-class counts)."""
        entry = self.manifest.split(split)
        paths: list[Path] = []
        rows: list[tuple[int, int, int, int]] = []
        for shard_id, shard in enumerate(entry.shards):
            path = self.local_shard(shard)
            paths.append(path)
            extension = self.manifest.image.extension
            rows.extend((shard_id, *r) for r in _index_shard(path, shard, extension, len(self.classes)))
        table = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
        counts = np.bincount(table[:, 3], minlength=len(self.classes)) if len(table) else np.zeros(len(self.classes))
        expected = [entry.per_class.get(c, 0) for c in self.classes]
        if [int(c) for c in counts] != expected:
            raise DatasetError(f"split {split}: the shards' per-class counts differ from the manifest's perClass")
        return SplitIndex(paths, table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy(), table[:, 3].copy())

    def iter_split(self, split: SplitName) -> Iterator[tuple[bytes, int]]:
        """`(image bytes, label)` for every sample of `split`, in stored order."""
        index = self.index(split)
        try:
            for i in range(len(index)):
                yield index.read(i)
        finally:
            index.close()


def manifest_summary(manifest: DatasetManifest) -> Mapping[str, int]:
    """Image counts per split (for logs)."""
    return {s: manifest.split(s).count for s in SPLITS}
