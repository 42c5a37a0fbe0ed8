"""The preparation pipeline: from listed images to a published dataset version.

1. **Process** every image in worker processes (`images.process`), in chunks of input order.
   Each worker saves its finished chunk in a work folder beside the versions (module `work`: the
   encoded images' bytes and a JSON of their outcomes, checked by size and SHA-256 before
   reuse), so a re-run after a crash reuses the chunks it finished and processes only the rest.
2. **Clean** what needs all images at once: exact duplicates (same SHA-256; the first in input
   order is kept), classes not listed in `classes`.
3. **Split**: an image's split is a function of its content hash and the seed alone —
   `sha256(seed:sha256)` read as a number in [0, 1) against the cumulative ratios — so adding
   images never moves existing ones, and every class is split in the same proportions (stratified;
   exact in expectation, the counts per class are reported).
4. **Near-duplicates**: an image whose difference hash is within `nearDuplicateDistance` bits of
   an earlier image in another split is dropped, so the same picture never sits in train and
   test at once; near-duplicates within one split are kept.
5. **Write** shards per split (sorted by class, then key), one per worker task, reading the
   images' bytes back from the work folder, and publish them through `datasetfmt.DatasetWriter`:
   one fsync per shard, the manifest written atomically last. The version is content-addressed,
   so an unchanged input yields the same version.
6. **Report**: `report.json` beside the version lists every dropped image with its reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from modelops_trainer import cgroup, storage
from modelops_trainer.datasetfmt import (
    SPLITS,
    DatasetVersion,
    DatasetWriter,
    ImageFormat,
    ShardWriter,
    SplitName,
    WrittenShard,
)
from modelops_trainer.prepare import images, work
from modelops_trainer.prepare.config import PrepareConfig
from modelops_trainer.prepare.errors import EmptyClass, NoImagesLeft
from modelops_trainer.prepare.sources import Item, iter_batches, list_items

log = logging.getLogger(__name__)
#: Images per chunk: about 16 chunks, so every core has several, within [4, 256]. It depends on
#: the number of images only, so a re-run chunks the same input the same way. Down to 4: a chunk
#: of large photos takes seconds, and the cores stay evenly busy to the end only when a chunk is
#: a small part of the work; a chunk's own cost (two work files, a JSON) is under a millisecond.
MIN_CHUNK, MAX_CHUNK, CHUNKS = 4, 256, 16


#: Memory one worker may need: an image at the pixel cap decodes to ~360 MB, plus its resize.
WORKER_MEMORY = 512 << 20
#: Memory kept for the main process (the listing, the kept images' records) and the page cache.
MAIN_MEMORY = 512 << 20


def default_workers(cpus: int, memory: int | None) -> int:
    """Worker processes for `cpus` cores and `memory` bytes (None: unlimited): one per core, fewer
    when the memory limit cannot hold that many at their worst."""
    if memory is None:
        return cpus
    return max(1, min(cpus, (memory - MAIN_MEMORY) // WORKER_MEMORY))


def chunk_size(images: int) -> int:
    return max(MIN_CHUNK, min(MAX_CHUNK, -(-images // CHUNKS)))


@dataclass(frozen=True)
class Kept:
    """An image that survived cleaning: where its encoded bytes are, and what decides its fate."""

    ref: str
    label: str
    sha256: str
    dhash: int
    batch: int
    offset: int
    size: int
    """Where its encoded bytes are: chunk `batch`'s work file, `size` bytes at `offset`."""


@dataclass
class Result:
    version: DatasetVersion
    dropped: Counter[str] = field(default_factory=Counter)
    report_uri: str = ""
    reused_chunks: int = 0
    """Chunks of processed images taken over from an earlier, interrupted run."""
    missing: dict[str, list[str]] = field(default_factory=dict)
    """Classes with no image in a split whose ratio is above 0, by split: the dataset is published,
    and the operator shows these in a condition (a model cannot be validated on a class that its
    validation split lacks)."""


def config_hash(config: PrepareConfig) -> str:
    """Identifies the work of a config (not where its output goes): names the work folder."""
    doc = config.model_dump(mode="json", by_alias=True, exclude={"output", "workers", "dataset", "limits"})
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def split_of(sha256: str, seed: int, train: float, val: float) -> SplitName:
    """The split of an image: a function of its content hash and the seed only."""
    h = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return "train" if u < train else "val" if u < train + val else "test"


def _process_chunk(
    job: tuple[int, list[Item]], work_uri: str, cleaning: Any, pre: Any, max_bytes: int
) -> list[dict[str, Any]]:
    """In a worker: process one chunk of images and save it to the work folder; returns the
    outcomes (small: the encoded bytes stay in the work file)."""
    index, chunk = job
    data: list[bytes] = []
    offset = 0
    outcomes = []
    for ref, label in chunk:
        r = images.process(ref, label, cleaning, pre, max_bytes)
        outcomes.append(
            {
                "ref": r.ref,
                "label": r.label,
                "sha256": r.sha256,
                "dropped": r.dropped,
                "detail": r.detail,
                "dhash": r.dhash,
                "offset": offset,
                "size": len(r.data),
            }
        )
        data.append(r.data)
        offset += len(r.data)
    work.save_chunk(work_uri, index, chunk, outcomes, b"".join(data))
    return outcomes


ShardRows = list[tuple[str, int, int, int, int]]  # (sample key, label, chunk, offset, size) per image


def _write_shard(job: tuple[str, ShardRows, int], work_uri: str, ext: str, durable: bool) -> WrittenShard:
    """In a worker: one final shard from images kept in the work folder's chunk files."""
    uri, rows, num_classes = job
    with (
        work.ChunkData(work_uri) as chunks,
        ShardWriter(uri, extension=ext, num_classes=num_classes, durable=durable) as writer,
    ):
        for key, label, chunk, offset, size in rows:
            writer.write(key, chunks.read(chunk, offset, size), label)
    return writer.result


def cross_split_near_duplicates(kept: list[Kept], splits: dict[int, SplitName], distance: int) -> dict[int, Kept]:
    """Images (by index into `kept`) within `distance` bits of an earlier kept image of another
    split, mapped to that image. Pairs, not chains: similarity is not transitive.

    By the pigeonhole principle two hashes within `distance` bits agree exactly on at least one of
    `distance + 1` bands, so each image is compared only with earlier ones sharing a band.
    """
    if distance <= 0:
        return {}
    # distance + 1 bands of 64 // bands bits each (bits left over belong to no band, which the
    # pigeonhole argument does not need). At 64 every pair is within reach: one band, no bits.
    bands = distance + 1 if distance < 64 else 1
    width = 64 // bands if distance < 64 else 0
    mask = (1 << width) - 1
    index: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    clashes: dict[int, Kept] = {}
    for i, k in enumerate(kept):
        keys = [(k.dhash >> (b * width)) & mask for b in range(bands)]
        seen = {j for b, key in enumerate(keys) for j in index[b].get(key, [])}
        other = next(
            (j for j in sorted(seen) if splits[j] != splits[i] and bin(kept[j].dhash ^ k.dhash).count("1") <= distance),
            None,
        )
        if other is not None:
            clashes[i] = kept[other]
            continue
        for b, key in enumerate(keys):
            index[b].setdefault(key, []).append(i)
    return clashes


def run(
    config: PrepareConfig,
    *,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
    durable: bool = True,
) -> Result:
    """Prepare the dataset version `config` describes; returns it with the drop counts.

    `durable=False` publishes without any fsync (see `datasetfmt.DatasetWriter`): for tests and
    throwaway versions, never for a version a power loss must not tear.
    """
    out = config.output.uri.rstrip("/")
    work_uri = storage.join(out, f".work-{config_hash(config)}")
    dropped: Counter[str] = Counter()
    report: list[dict[str, str]] = []
    kept: list[Kept] = []
    workers = config.workers or default_workers(cgroup.cpu_limit(), cgroup.memory_limit())
    images.warm_up(config.preprocessing)  # before the workers fork: once here, not once in each
    with ExitStack() as scratch, ProcessPoolExecutor(max_workers=workers) as pool:
        items = list_items(config.sources, scratch, config.limits)
        log.info("listed %d images from %d sources", len(items), len(config.sources))
        if not items:
            uris = [s.uri for s in config.sources]
            named = ", ".join(uris[:5]) + (f" and {len(uris) - 5} more" if len(uris) > 5 else "")
            raise NoImagesLeft(
                f"the sources listed no images ({named}): an imageFolder or archive needs "
                "<class>/<image> files under its root, a manifest one row per image"
            )
        chunks = list(enumerate(iter_batches(items, chunk_size(len(items)))))
        done = {i: found for i, chunk in chunks if (found := work.load_chunk(work_uri, i, chunk)) is not None}
        todo = [(i, chunk) for i, chunk in chunks if i not in done]
        if done:
            log.info("reusing %d of %d finished chunks from an earlier run", len(done), len(chunks))
        reused = len(done)
        work_fn = partial(
            _process_chunk,
            work_uri=work_uri,
            cleaning=config.cleaning,
            pre=config.preprocessing,
            max_bytes=config.limits.image_max_bytes,
        )
        fresh: Iterable[list[dict[str, Any]]] = pool.map(work_fn, todo)
        if progress is not None:
            fresh = progress(fresh, len(todo))
        done.update(zip((i for i, _ in todo), fresh, strict=False))
        for index in sorted(done):
            for o in done[index]:
                if o["dropped"]:
                    dropped[o["dropped"]] += 1
                    report.append({"ref": o["ref"], "label": o["label"], "reason": o["dropped"], "detail": o["detail"]})
                else:
                    kept.append(Kept(o["ref"], o["label"], o["sha256"], o["dhash"], index, o["offset"], o["size"]))
        listed_classes = sorted({label for _, label in items})
        final, classes = _clean_and_split(config, listed_classes, kept, dropped, report)
        result = _publish(config, out, work_uri, final, classes, dropped, report, pool, durable)
    result.reused_chunks = reused
    return result


def missing_in_splits(
    final: list[tuple[Kept, SplitName]], classes: list[str], ratios: dict[str, float]
) -> dict[str, list[str]]:
    """Classes without an image in each split that should have some (ratio above 0)."""
    present: dict[str, set[str]] = {}
    for k, name in final:
        present.setdefault(name, set()).add(k.label)
    out: dict[str, list[str]] = {}
    for name in SPLITS:
        lacking = [c for c in classes if c not in present.get(name, set())]
        if ratios[name] > 0 and lacking:
            out[name] = lacking
    return out


def _clean_and_split(
    config: PrepareConfig, named: list[str], kept: list[Kept], dropped: Counter[str], report: list[dict[str, str]]
) -> tuple[list[tuple[Kept, SplitName]], list[str]]:
    """The images to publish, each with its split, and the classes (`config.classes`, else every
    class the sources `named`): unlisted classes, duplicates and near-duplicates across splits are
    dropped (counted in `dropped`, listed in `report`); raises when nothing is left or a class has
    too few images, one that cleaning emptied included."""

    def drop(k: Kept, reason: str, detail: str) -> None:
        dropped[reason] += 1
        report.append({"ref": k.ref, "label": k.label, "reason": reason, "detail": detail})

    listed = set(config.classes)
    seen: dict[str, Kept] = {}
    unique: list[Kept] = []
    for k in kept:
        if listed and k.label not in listed:
            drop(k, images.UNLISTED_CLASS, f"class {k.label!r} is not in spec.classes")
        elif config.cleaning.drop_duplicates and k.sha256 in seen:
            drop(k, images.DUPLICATE, f"same bytes as {seen[k.sha256].ref}")
        else:
            seen.setdefault(k.sha256, k)
            unique.append(k)
    split = config.split
    splits = {i: split_of(k.sha256, split.seed, split.train, split.val) for i, k in enumerate(unique)}
    clashes = cross_split_near_duplicates(unique, splits, config.cleaning.near_duplicate_distance)
    for i, first in clashes.items():
        drop(unique[i], images.NEAR_DUPLICATE, f"the same picture as {first.ref}, in another split")
    final = [(k, splits[i]) for i, k in enumerate(unique) if i not in clashes]
    if not final:
        raise NoImagesLeft(f"cleaning dropped every image ({dict(dropped)}); see the drop reasons")
    counts = Counter(k.label for k, _ in final)
    # Every class the sources named, so that one cleaning emptied is short, not silently gone.
    classes = list(config.classes) or named
    short = {c: counts.get(c, 0) for c in classes if counts.get(c, 0) < config.cleaning.min_images_per_class}
    if short:
        raise EmptyClass(
            f"classes with fewer than {config.cleaning.min_images_per_class} images after cleaning: "
            + ", ".join(f"{c} ({n})" for c, n in sorted(short.items())[:20])
        )
    return final, classes


def _sample_key(base: str, used: Counter[str]) -> str:
    """A sample's key in its shard: the first 32 hex digits of its SHA-256, and for a second copy of
    the same bytes in the shard (kept with `dropDuplicates: false`) that key with `-1`, `-2`...:
    a shard's keys must differ, and an image without such a copy keeps the key it always had."""
    n = used[base]
    used[base] += 1
    return base if n == 0 else f"{base}-{n}"


def _publish(
    config: PrepareConfig,
    out: str,
    work_uri: str,
    final: list[tuple[Kept, SplitName]],
    classes: list[str],
    dropped: Counter[str],
    report: list[dict[str, str]],
    pool: ProcessPoolExecutor,
    durable: bool,
) -> Result:
    """Write the version: its shards (in worker processes, from the finished chunks in `work_uri`), its
    manifest and `report.json`; then remove the work folder."""
    label_of = {c: i for i, c in enumerate(classes)}
    pre = config.preprocessing
    image = ImageFormat(
        size=pre.image_size, color_mode=pre.color_mode, encoding=pre.format, resize_mode=pre.resize_mode
    )
    with DatasetWriter(
        storage.join(out),
        classes=classes,
        image=image,
        augmentation=config.augmentation,
        shard_size=pre.shard_size,
        name=config.dataset.name,
        spec_hash=config.spec_hash,
        durable=durable,
    ) as writer:
        writer.dropped = dict(dropped)
        jobs: list[tuple[SplitName, tuple[str, ShardRows, int]]] = []
        for name in SPLITS:
            members = sorted((k for k, s in final if s == name), key=lambda k: (label_of[k.label], k.sha256))
            for n, start in enumerate(range(0, len(members), pre.shard_size)):
                used: Counter[str] = Counter()
                rows = [
                    (_sample_key(k.sha256[:32], used), label_of[k.label], k.batch, k.offset, k.size)
                    for k in members[start : start + pre.shard_size]
                ]
                jobs.append((name, (writer.shard_uri(name, n), rows, len(classes))))
        ext = images.FORMATS[pre.format][1]
        write = partial(_write_shard, work_uri=work_uri, ext=ext, durable=durable)
        written = list(pool.map(write, [job for _, job in jobs]))
        for name in SPLITS:
            writer.add_written(name, [w for (s, _), w in zip(jobs, written, strict=True) if s == name])
        version = writer.finish()
    report_uri = storage.join(version.uri, "report.json")
    doc = {"version": version.version, "dropped": dict(dropped), "images": report}
    storage.write_bytes_atomic(report_uri, json.dumps(doc, indent=1).encode(), durable=durable)
    storage.remove(work_uri, recursive=True)
    split = config.split
    ratios = {"train": split.train, "val": split.val, "test": split.test}
    missing = missing_in_splits(final, classes, ratios)
    for split_name, lacking in missing.items():
        log.warning("split %s has no image of %d classes: %s", split_name, len(lacking), ", ".join(lacking[:20]))
    return Result(version=version, dropped=dropped, report_uri=report_uri, missing=missing)
