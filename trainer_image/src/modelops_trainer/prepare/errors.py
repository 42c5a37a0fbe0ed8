"""The preparation program's own failures, each with the reason the Dataset's status will show.

TrainerError (modelops_trainer.errors)
└── PrepareError
    ├── SourceUnreachable   a source URI cannot be read
    ├── InvalidSource       it can be read but not understood
    ├── UnsafeArchive       an archive member escapes the archive's root, or clashes with another
    ├── ArchiveTooLarge     an archive expands past spec.limits (bytes, members, ratio)
    ├── SourceTooLarge      a manifest or an image it lists is larger than spec.limits allows
    ├── EmptyClass          a class has too few images after cleaning
    ├── SplitMissesClass    a split has no image of a class (too few images for the ratios)
    └── NoImagesLeft        the sources listed no image, or cleaning dropped every one
"""

from __future__ import annotations

from modelops_trainer.errors import TrainerError


class PrepareError(TrainerError):
    reason = "PreparationFailed"


class SourceUnreachable(PrepareError):
    reason = "SourceUnreachable"


class InvalidSource(PrepareError):
    reason = "InvalidSource"


class UnsafeArchive(PrepareError):
    reason = "UnsafeArchive"


class ArchiveTooLarge(PrepareError):
    reason = "ArchiveTooLarge"


class SourceTooLarge(PrepareError):
    reason = "SourceTooLarge"


class SplitMissesClass(PrepareError):
    reason = "SplitMissesClass"


class EmptyClass(PrepareError):
    reason = "EmptyClass"


class NoImagesLeft(PrepareError):
    reason = "NoImagesLeft"
