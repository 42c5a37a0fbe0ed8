"""Every failure the programs report on purpose, as one typed hierarchy.

Each class carries a `reason`: a CamelCase word that lands in the pod's termination message, where
the operator matches on it (it becomes a condition reason on the TrainingRun or Dataset). The
message is for a person and says what to do.

    TrainerError                      reason            exit code
    ├── ConfigError                   InvalidConfig         2
    ├── DigestMismatch                DigestMismatch        1
    ├── DatasetError                  DatasetInvalid        1
    ├── WeightsError                  WeightsInvalid        1
    ├── CheckpointError               CheckpointInvalid     1
    ├── DistributedError              DistributedFailed     1
    ├── TrainingDiverged              TrainingDiverged      1
    └── ExportError                   ExportFailed          1
        └── ParityCheckFailed         ParityCheckFailed     1

A preempted run (SIGTERM) is not an error: it checkpoints and exits with 143, the status a
container killed by SIGTERM reports, so Kubernetes restarts it and it resumes.
"""

from __future__ import annotations


class TrainerError(Exception):
    """Base of the programs' own failures; anything else escaping is a bug (reason `InternalError`)."""

    reason = "TrainerError"
    exit_code = 1


class ConfigError(TrainerError):
    """The config (or the command line) cannot be used; the message lists every problem by field."""

    reason = "InvalidConfig"
    exit_code = 2


class DigestMismatch(TrainerError):
    """An artifact's bytes do not have the SHA-256 they were promised to have (manifest, shard, weights)."""

    reason = "DigestMismatch"


class DatasetError(TrainerError):
    """A dataset version does not follow `modelops.dataset/v1`, or cannot be read or written."""

    reason = "DatasetInvalid"


class WeightsError(TrainerError):
    """Initial weights cannot be read or do not fit the architecture."""

    reason = "WeightsInvalid"


class CheckpointError(TrainerError):
    """A checkpoint exists but cannot be resumed (a different config, or unreadable)."""

    reason = "CheckpointInvalid"


class DistributedError(TrainerError):
    """The distributed environment is incomplete or the process group cannot be formed."""

    reason = "DistributedFailed"


class TrainingDiverged(TrainerError):
    """The loss became NaN or infinite; lower the learning rate or turn on gradient clipping."""

    reason = "TrainingDiverged"


class ExportError(TrainerError):
    """The ONNX export or its validation failed."""

    reason = "ExportFailed"


class ParityCheckFailed(ExportError):
    """ONNX Runtime's outputs differ from PyTorch's beyond the tolerance, or their top-1 differs."""

    reason = "ParityCheckFailed"
