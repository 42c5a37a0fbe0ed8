"""Trial backends: the one interface through which a TrainingRun's trial logic drives whichever
Kubeflow API runs its trials, so that it never asks which one it drives.

    PyTorchJob   the Kubeflow training operator v1 (`kubeflow.org/v1`), the legacy line
    TrainJob     Kubeflow Trainer v2 (`trainer.kubeflow.org/v1alpha1`), on a runtime

Each backend builds a trial's job from the same parts (`builders.trainingrun.trial_parts`), reads
its state, names the pod that holds rank 0 (its termination message is the trial's result, its
progress endpoint the trial's progress), finds the rank-0 container in a job body (MLflow
credentials), writes its suspend flag, and says what of a spec it cannot carry. A job's backend is
its `kind`, so jobs of a round started under the other backend are still followed to their end.

The default is the operator's `training_backend` setting, PyTorchJob: Trainer v2.0's API is
`v1alpha1`, its per-trial overrides carry no priority class, pull Secrets, pod labels or
annotations (`trainjob.unsupported`), and most clusters run the training operator today. A run
chooses TrainJob with `spec.workers.backend`, an operator with `MODELOPS_TRAINING_BACKEND`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelops_operator.api.names import PYTORCHJOB, TRAINJOB, ExternalAPI
from modelops_operator.api.trainingrun import TrainingRunSpec
from modelops_operator.builders import trainingrun as pytorchjob
from modelops_operator.builders import trainjob
from modelops_operator.settings import OperatorSettings


@dataclass(frozen=True)
class TrialBackend:
    """What the trial logic needs of the API that runs a trial."""

    api: ExternalAPI
    build: Callable[..., dict[str, Any]]
    """`(run, spec, settings, *, round_, index, parameters, dataset_uri, dataset_digest, suspend)`
    -> the trial's job."""
    state: Callable[[dict[str, Any], bool], tuple[str, str, str]]
    """`(job, master_running)` -> (`Succeeded` | `Failed` | `Suspended` | `Running` | `Pending`,
    reason, message)."""
    master_selector: Callable[[str], str]
    """A job's name -> the label selector of its rank-0 pod."""
    rank0_container: Callable[[dict[str, Any]], dict[str, Any]]
    """A job body -> its rank-0 container (or the template every node's container comes from)."""
    suspend_patch: Callable[[bool], dict[str, Any]]
    """The merge patch that suspends (True) or resumes (False) a job."""
    unsupported: Callable[[TrainingRunSpec, OperatorSettings], list[str]]
    """The fields of a spec this backend cannot carry (empty: it fits)."""
    kueue_framework: str
    """The name of Kueue's integration for this kind (`integrations.frameworks`)."""


PYTORCHJOB_BACKEND = TrialBackend(
    api=PYTORCHJOB,
    build=pytorchjob.build_pytorchjob,
    state=pytorchjob.pytorchjob_state,
    master_selector=pytorchjob.pytorchjob_master_selector,
    rank0_container=pytorchjob.pytorchjob_rank0_container,
    suspend_patch=lambda suspend: {"spec": {"runPolicy": {"suspend": suspend}}},
    unsupported=lambda spec, settings: [],
    kueue_framework="kubeflow.org/pytorchjob",
)

TRAINJOB_BACKEND = TrialBackend(
    api=TRAINJOB,
    build=trainjob.build_trainjob,
    state=trainjob.trainjob_state,
    master_selector=trainjob.master_selector,
    rank0_container=trainjob.trainjob_rank0_container,
    suspend_patch=lambda suspend: {"spec": {"suspend": suspend}},
    unsupported=trainjob.unsupported,
    kueue_framework="trainer.kubeflow.org/trainjob",
)

BACKENDS = {b.api.kind: b for b in (PYTORCHJOB_BACKEND, TRAINJOB_BACKEND)}
#: The kinds of trial jobs, for matching actions.
TRIAL_KINDS = frozenset(BACKENDS)


def chosen(spec: TrainingRunSpec, settings: OperatorSettings) -> TrialBackend:
    """The backend new trials of a run get: the spec's, else the operator's default."""
    return BACKENDS[spec.workers.backend or settings.training_backend]


def backend_of(job: dict[str, Any]) -> TrialBackend:
    """The backend of an existing job, by its kind (a job without one is a PyTorchJob, as listed
    before TrainJobs existed)."""
    return BACKENDS.get(str(job.get("kind") or ""), PYTORCHJOB_BACKEND)
