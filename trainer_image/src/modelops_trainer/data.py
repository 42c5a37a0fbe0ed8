"""The input pipeline: verified shards → decoded, augmented, normalised batches.

Augmentation randomness is a pure function of (seed, epoch, sample): the training sampler hands
each sample index together with its own seed to the dataset, which seeds the generators before
transforming that one image. So the augmented batches do not depend on the number of loader
workers, and a run resumed in the middle of an epoch (the sampler skips what was already
trained on) sees exactly the images, crops and flips the uninterrupted run saw.

Preprocessing at evaluation is what the model card tells servers to do: the stored images are
already `size`×`size` in the manifest's colour mode, so it is scale to [0, 1] and normalise.
Workers produce uint8 tensors; `Preprocess` scales and normalises whole batches on the device.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.transforms import v2  # type: ignore[import-untyped]

from modelops_trainer.datasetfmt import AugmentationPolicy, ImageFormat, SplitIndex
from modelops_trainer.distributed import available_cpus

#: ImageNet statistics (what torchvision's weights expect); grayscale uses their average.
RGB_MEAN, RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)
_MASK64 = (1 << 64) - 1


def normalization(color_mode: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel for a colour mode."""
    return (RGB_MEAN, RGB_STD) if color_mode == "RGB" else (GRAY_MEAN, GRAY_STD)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample in one epoch (splitmix64 of the three)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def train_transform(policy: AugmentationPolicy, image: ImageFormat) -> v2.Transform:
    """The augmentation policy as torchvision transforms, ending in a normalised float tensor."""
    ops: list[v2.Transform] = []
    size = image.size
    if policy.random_resized_crop_scale:
        lo, hi = policy.random_resized_crop_scale
        ops.append(v2.RandomResizedCrop(size, scale=(lo, hi), antialias=True))
    if policy.horizontal_flip:
        ops.append(v2.RandomHorizontalFlip())
    if policy.vertical_flip:
        ops.append(v2.RandomVerticalFlip())
    if policy.rotation_degrees > 0:
        ops.append(v2.RandomRotation(policy.rotation_degrees))
    jitter = policy.color_jitter
    if any((jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)):
        saturation = jitter.saturation if image.color_mode == "RGB" else 0.0
        hue = jitter.hue if image.color_mode == "RGB" else 0.0
        ops.append(v2.ColorJitter(jitter.brightness, jitter.contrast, saturation, hue))
    if policy.auto_augment == "randAugment":
        ops.append(v2.RandAugment(num_ops=policy.rand_augment_ops, magnitude=policy.rand_augment_magnitude))
    elif policy.auto_augment == "trivialAugment":
        ops.append(v2.TrivialAugmentWide())
    elif policy.auto_augment == "autoAugment":
        ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
    ops.append(v2.PILToTensor())
    if policy.random_erasing > 0:
        # Erase to the mean colour: what erasing to 0 after normalisation would give.
        mean, _ = normalization(image.color_mode)
        ops.append(v2.RandomErasing(p=policy.random_erasing, value=[round(m * 255) for m in mean]))
    return v2.Compose(ops)


def eval_transform(image: ImageFormat) -> v2.Transform:
    """The stored image as a uint8 tensor (it already has the model's size and colour mode)."""
    return v2.Compose([v2.PILToTensor()])


class Preprocess:
    """uint8 NCHW batch → float32, scaled to [0, 1] and normalised, on the training device.

    Loader workers hand over uint8 images (a quarter of float32's bytes through shared memory
    and, on GPUs, over PCIe); this finishes them where the model runs, in its memory format.
    """

    def __init__(self, color_mode: str, device: torch.device, *, channels_last: bool) -> None:
        mean, std = normalization(color_mode)
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * s)).to(device)
        self.shift = (m / s).to(device)
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float32 images on the device."""
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x.float().mul_(self.scale).sub_(self.shift)

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return self.images(x), torch.as_tensor(y).to(self.device, non_blocking=True)


class ImageSamples(Dataset[tuple[torch.Tensor, int]]):
    """One split's samples, decoded and transformed; keyed by index or by (index, seed)."""

    def __init__(self, index: SplitIndex, image: ImageFormat, transform: v2.Transform) -> None:
        self.index = index
        self.image = image
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(key, tuple):
            i, seed = key
            return self._seeded(i, seed)
        return self._load(key)

    def _load(self, i: int) -> tuple[torch.Tensor, int]:
        data, label = self.index.read(i)
        with Image.open(io.BytesIO(data)) as img:
            pil = img.convert(self.image.color_mode)
        return self.transform(pil), label

    def _seeded(self, i: int, seed: int) -> tuple[torch.Tensor, int]:
        if torch.utils.data.get_worker_info() is not None:
            # A loader worker: its generators serve nothing else, seed them directly.
            torch.manual_seed(seed)
            random.seed(seed)
            return self._load(i)
        # The training process itself (workers=0): do not disturb its generators (dropout etc.).
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            out = self._load(i)
        random.setstate(state)
        return out

    def labels(self) -> torch.Tensor:
        """The labels of all samples, in order."""
        return torch.as_tensor(self.index.labels)


class TrainSampler(DistributedSampler[tuple[int, int]]):
    """torch's DistributedSampler (per-epoch shuffle, equal shares per process) that yields
    `(index, augmentation seed)` and can start an epoch part-way through, for exact resumption."""

    def __init__(self, length: int, *, rank: int, world_size: int, seed: int) -> None:
        super().__init__(
            cast("Dataset[Any]", _Sized(length)),
            num_replicas=world_size,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
        self.start = 0
        """Samples of this process's share to skip in the current epoch (set by a resume)."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = cast("list[int]", list(super().__iter__()))  # the parent yields plain indices
        for i in indices[self.start :]:
            yield (i, sample_seed(self.seed, self.epoch, i))

    def __len__(self) -> int:
        return self.num_samples - self.start


class EvalSampler(Sampler[int]):
    """Every process takes every `world_size`-th sample, in order, without padding: summed over
    processes each sample counts exactly once."""

    def __init__(self, length: int, *, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _Sized:
    """A stand-in with `len()` for DistributedSampler, which only measures its dataset."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True)
class LoaderSettings:
    """How loaders are built on this process."""

    batch_size: int
    workers: int
    prefetch_factor: int
    pin_memory: bool


def default_workers(local_world_size: int, *, cuda: bool) -> int:
    """CPUs per process minus one (the training loop keeps one), at most 8; none on a single CPU."""
    cpus = available_cpus() // max(1, local_world_size)
    if not cuda:
        # On CPU the model competes with the decoders for the same cores: keep them few.
        return max(0, min(2, cpus - 1))
    return max(0, min(8, cpus - 1))


def make_loader(
    samples: ImageSamples, sampler: Sampler[Any], settings: LoaderSettings, *, drop_last: bool
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A DataLoader with workers, pinned memory, persistent workers and prefetch where useful."""
    workers = settings.workers
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=settings.prefetch_factor)
    return DataLoader(
        samples,
        batch_size=settings.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=settings.pin_memory,
        drop_last=drop_last,
        # A loader of its own, so creating iterators never draws from the global generator.
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )


def batches_per_epoch(train_len: int, world_size: int, batch_size: int) -> int:
    """Full micro-batches each process sees per epoch (the last partial one is dropped)."""
    return math.ceil(train_len / world_size) // batch_size
