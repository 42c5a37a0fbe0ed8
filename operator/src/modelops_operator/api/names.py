"""Every name modelops shares with the cluster, defined once: label and annotation keys, the names of
children, and the other projects' API groups, versions and plurals the operator talks to.

Builders, reconcilers, the kube layer and the handlers read them from here, and so does the docs
generator (hack/docgen.py), which turns each documented key below into a row of
docs/reference/labels.md. Keys are part of the API: users select on them and scripts annotate
with them, so add new ones, never rename.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from modelops_operator.api.common import GROUP

#: Kubernetes' limit on a label value, and on the names that become label values (Job names do).
MAX_NAME = 63


def child_name(owner: str, role: str, suffix: str = "") -> str:
    """`<owner>-<role>[-<suffix>]`, the owner truncated (and stripped of a trailing `-`) so the whole
    fits 63 characters. The one naming rule for children: builders name objects with it and alert
    rules select them with it, so both agree for every owner name."""
    tail = f"-{role}" + (f"-{suffix}" if suffix else "")
    return owner[: MAX_NAME - len(tail)].rstrip("-") + tail


def label_value(name: str) -> str:
    """An object name as a label value (names of our kinds may be longer than 63 characters)."""
    return name[:MAX_NAME]


def owner_label(kind: str) -> str:
    """`modelops.dev/<kind in lower case>`: the label naming a child's owner of that kind."""
    return f"{GROUP}/{kind.lower()}"


def prometheus_label(key: str) -> str:
    """The name Prometheus gives a Kubernetes label (its `labelmap`): `modelops.dev/track` is
    `modelops_dev_track`."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


# Labels on the children.
DATASET_LABEL = owner_label("Dataset")
"""On a Dataset's preparation Job (and its pods): the Dataset's name. The operator lists the
Jobs of a Dataset with it."""
TRAINING_RUN_LABEL = owner_label("TrainingRun")
"""On a TrainingRun's PyTorchJobs (and their pods): the run's name. The operator lists a run's
trials with it, also after a restart."""
MODEL_DEPLOYMENT_LABEL = owner_label("ModelDeployment")
"""On every child of a ModelDeployment, server pods included: its name. Services, the
PodDisruptionBudget, canary analysis and the alert rules select server pods with it
(`modelops_dev_modeldeployment` in Prometheus)."""
SPEC_HASH_LABEL = f"{GROUP}/spec-hash"
"""On a preparation Job: the hash of the Dataset spec fields that change the data. The Job of
the current spec is found by it, so an unchanged spec never runs twice."""
ROUND_LABEL = f"{GROUP}/round"
"""On a trial's PyTorchJob: the TrainingRun's round (a new round starts when the spec fields
that change the model change)."""
TRIAL_LABEL = f"{GROUP}/trial"
"""On a trial's PyTorchJob: the trial's name, `<run>-r<round>-t<n>`."""
TRACK_LABEL = f"{GROUP}/track"
"""On a server Deployment's pods: `stable` or `canary`. The per-track Services (with an
HTTPRoute), canary analysis and alert rules select on it (`modelops_dev_track` in Prometheus)."""

# Annotations the operator writes.
PARAMETERS_ANNOTATION = f"{GROUP}/parameters"
"""On a trial's PyTorchJob: its hyper-parameters (JSON), so a job whose status write was
lost is adopted with the right parameters after an operator restart."""
MODEL_DIGEST_ANNOTATION = f"{GROUP}/model-digest"
"""On a server Deployment's pod template: the SHA-256 of the model it serves; the
operator reads which model a track runs from it."""
APPLIED_ANNOTATION = f"{GROUP}/applied"
"""On every child the operator applies (a server Deployment, its Services, PDB, HPA, monitoring
objects): a hash of the body last applied. A reconcile whose desired body hashes the same, and
whose fields all still hold in the object, sends nothing (`reconcile.ownership.claim`)."""
DEPENDENCY_CHANGED_ANNOTATION = f"{GROUP}/dependency-changed"
"""On a TrainingRun or ModelDeployment: `<Kind>/<name>@<fingerprint>` of the dependency
whose change woke it (a Dataset for a run, a TrainingRun for a deployment). Written by the operator;
its change makes the object reconcile at once."""

# Annotations a person writes: commands to a ModelDeployment's rollout.
PROMOTE_ANNOTATION = f"{GROUP}/promote"
"""On a ModelDeployment, set to `true` (or `yes`, `1`; any other value is no command): leave the
current pause or analysis step. Removed once acted on."""
ABORT_ANNOTATION = f"{GROUP}/abort"
"""On a ModelDeployment, set to `true` (or `yes`, `1`): roll the canary back now. Removed once acted
on."""
RETRY_ANNOTATION = f"{GROUP}/retry"
"""On a ModelDeployment, set to `true` (or `yes`, `1`): start an aborted rollout again from step 0.
Removed once acted on."""
PROMOTE_VARIANT_ANNOTATION = f"{GROUP}/promote-variant"
"""On a ModelDeployment with `spec.experiment`, set to a variant's name: end the experiment and make
that variant the stable model, whatever the test found. Removed once acted on."""

# Keys kopf keeps its bookkeeping under.
FINALIZER = f"{GROUP}/finalizer"
"""On a TrainingRun: its PyTorchJobs are deleted before it goes (given up after five
failed attempts, so it never blocks a deletion)."""
LAST_HANDLED_ANNOTATION = f"{GROUP}/last-handled-configuration"
"""On every object of the three kinds: the spec kopf last handled, to tell spec changes
from other writes. kopf also keeps handler progress in `modelops.dev/*` annotations while a handler
retries."""

# Tags on an MLflow model version.
MLFLOW_TRAINING_RUN_TAG = f"{GROUP}/trainingrun"
"""`<namespace>/<name>` of the TrainingRun that registered the model version."""
MLFLOW_VERSION_TAG = f"{GROUP}/version"
"""The model version number in the TrainingRun's `status.models`."""
MLFLOW_DATASET_TAG = f"{GROUP}/dataset"
"""`<dataset>@<version>` the model was trained on."""
MLFLOW_TRIAL_TAG = f"{GROUP}/trial"
"""The trial whose model was registered."""

# Labels on the CustomResourceDefinitions.
BUNDLE_VERSION_LABEL = f"{GROUP}/bundle-version"
"""On each of the three CRDs: the modelops release (operator, CRDs and images, released together)
whose models generated it. `kubectl get crd -l app.kubernetes.io/part-of=modelops -L
modelops.dev/bundle-version` shows which version's API the cluster serves."""

# Keys of other projects.
APP_NAME_LABEL = "app.kubernetes.io/name"
APP_INSTANCE_LABEL = "app.kubernetes.io/instance"
APP_COMPONENT_LABEL = "app.kubernetes.io/component"
APP_MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
#: The `app.kubernetes.io/managed-by` value of every child the operator creates.
MANAGED_BY = "modelops-operator"
#: Labels the Kubeflow training operator puts on a PyTorchJob's pods.
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
#: Labels JobSet puts on the pods of a TrainJob (Kubeflow Trainer v2 runs a TrainJob as a JobSet
#: of the same name; rank 0 is completion index 0 of its `node` Job).
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
JOB_COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
#: The label that puts a PyTorchJob in a Kueue LocalQueue.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: The label that gives a job a Kueue WorkloadPriorityClass.
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
#: The label Kueue puts on the Workload it makes for a job: the job's uid.
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
#: On a Kueue Workload: the operator deactivated it (`spec.active: false`) for `spec.suspend`, and
#: only a Workload carrying it is activated again by the operator.
DEACTIVATED_ANNOTATION = "modelops.dev/deactivated"
#: The extended resource of NVIDIA GPUs (the device plugin's), also the usual taint on GPU nodes.
GPU = "nvidia.com/gpu"


class ExternalAPI(NamedTuple):
    """A kind of another project the operator creates, reads or patches."""

    kind: str
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        """`<group>/<version>`, as an object's `apiVersion` writes it."""
        return f"{self.group}/{self.version}"

    @property
    def crd(self) -> str:
        """The name of its CustomResourceDefinition, `<plural>.<group>`."""
        return f"{self.plural}.{self.group}"


PYTORCHJOB = ExternalAPI("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs")
TRAINJOB = ExternalAPI("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs")
CLUSTER_TRAINING_RUNTIME = ExternalAPI(
    "ClusterTrainingRuntime", "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes"
)
TRAINING_RUNTIME = ExternalAPI("TrainingRuntime", "trainer.kubeflow.org", "v1alpha1", "trainingruntimes")
HTTPROUTE = ExternalAPI("HTTPRoute", "gateway.networking.k8s.io", "v1", "httproutes")
SERVICEMONITOR = ExternalAPI("ServiceMonitor", "monitoring.coreos.com", "v1", "servicemonitors")
PROMETHEUSRULE = ExternalAPI("PrometheusRule", "monitoring.coreos.com", "v1", "prometheusrules")
WORKLOAD = ExternalAPI("Workload", "kueue.x-k8s.io", "v1beta2", "workloads")
EXTERNAL_APIS = (
    PYTORCHJOB,
    TRAINJOB,
    CLUSTER_TRAINING_RUNTIME,
    TRAINING_RUNTIME,
    HTTPROUTE,
    SERVICEMONITOR,
    PROMETHEUSRULE,
    WORKLOAD,
)

PROGRESS_PORT = 9400
"""The trainer's progress port (rank 0 serves GET /progress and /metrics on it)."""
PROGRESS_PORT_NAME = "progress"
"""The name of that container port on trial pods."""
PROGRESS_PORT_ENV = "MODELOPS_PROGRESS_PORT"
"""The trainer's environment variable that sets it."""
