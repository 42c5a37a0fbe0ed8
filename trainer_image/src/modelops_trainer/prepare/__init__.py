"""The data-preparation program: sources -> cleaned, preprocessed, split, content-addressed dataset.

    python -m modelops_trainer.prepare --config prepare.json        # or MODELOPS_PREPARE_CONFIG

Stages, each its own module:

    config      the contract with the operator (`modelops.dev/prepare-config/v1`)
    sources     list and read images from ImageFolder trees, tar/zip archives, CSV/JSONL manifests
    images      per image, in worker processes: decode, clean, perceptual hash, resize, encode
    work        the work folder: each finished chunk's images, kept for a re-run, checked on reuse
    pipeline    dedupe, split, near-duplicates across splits, resumable shards, manifest, report

Failures a user can act on are `PrepareError`s with a reason the operator shows in the Dataset's
status (SourceUnreachable, InvalidSource, UnsafeArchive, EmptyClass, NoImagesLeft).
"""
