"""The preparation program's own failures, each with the reason the Dataset's status will show.

TrainerError (modelops_trainer.errors)
└── PrepareError
    ├── SourceUnreachable   a source URI cannot be read
    ├── InvalidSource       it can be read but not understood
    ├── UnsafeArchive       an archive member escapes the archive's root, or clashes with another
    ├── ArchiveTooLarge     an archive expands past spec.limits (bytes, members, ratio)
    ├── SourceTooLarge      a manifest or an image it lists is larger than spec.limits allows
    ├── EmptyClass          a class has too few images after cleaning
    └── NoImagesLeft        the sources listed no image, or cleaning dropped every one
"""

from __future__ import annotations

from modelops_trainer.errors import TrainerError


class PrepareError(TrainerError):
    """The preparation failed without a more specific reason; the message holds what went wrong."""

    reason = "PreparationFailed"


class SourceUnreachable(PrepareError):
    """A source URI cannot be read (missing, no permission, host unreachable); the message names it."""

    reason = "SourceUnreachable"


class InvalidSource(PrepareError):
    """A source can be read but not understood (a manifest without the columns, a corrupt archive)."""

    reason = "InvalidSource"


class UnsafeArchive(PrepareError):
    """An archive member escapes the archive's root (`../`, absolute, links) or clashes with another
    (the same name, a file where a folder is, the root itself); nothing was kept."""

    reason = "UnsafeArchive"


class ArchiveTooLarge(PrepareError):
    """An archive expands past `limits` (bytes, members, or ratio to its compressed size)."""

    reason = "ArchiveTooLarge"


class SourceTooLarge(PrepareError):
    """A manifest is larger than `limits.manifestMaxBytes`."""

    reason = "SourceTooLarge"


class EmptyClass(PrepareError):
    """A class has fewer images than `cleaning.minImagesPerClass` after cleaning."""

    reason = "EmptyClass"


class NoImagesLeft(PrepareError):
    """The sources listed no image, or cleaning dropped every one (the drop reasons say why)."""

    reason = "NoImagesLeft"
