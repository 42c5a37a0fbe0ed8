"""Pod settings: a spec's `podSettings` over the operator-wide `workloadDefaults`, laid on every pod the
operator builds; what is refused (reserved keys, variables, accounts and Secrets not allowed); and a pod
that cannot be created or cannot pull its image reported with what to do about it.

The events and conditions below have the shape the Job controller, the training operator and the
Deployment controller write (kube-controller-manager v1.34, training-operator v1.8.1) when the API
server's ServiceAccount admission refuses a pod."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from modelops_operator import crdgen
from modelops_operator.api import conditions as c
from modelops_operator.api.common import PodSettings
from modelops_operator.api.dataset import DatasetSpec, DatasetStatus
from modelops_operator.api.kinds import KINDS
from modelops_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus, ServedModel
from modelops_operator.api.trainingrun import TrainingRunSpec
from modelops_operator.builders.common import pod_settings
from modelops_operator.builders.dataset import CONFIG_ENV, build_prepare_job
from modelops_operator.builders.modeldeployment import build_deployment
from modelops_operator.builders.trainingrun import build_pytorchjob
from modelops_operator.reconcile.dataset import DatasetObserved, reconcile_dataset
from modelops_operator.reconcile.modeldeployment import pods_blocked
from modelops_operator.reconcile.pods import creation_problem, pod_problem, refused_pod_settings, replica_failure
from modelops_operator.settings import OperatorSettings
from tests.support.objects import DIGEST, dataset, model_deployment, training_run

NS = "ml"
IRSA = {
    "serviceAccountName": "ml-data",
    "imagePullSecrets": [{"name": "regcred"}],
    "labels": {"team": "vision", "cost-centre": "cc-42"},
    "annotations": {"sidecar.istio.io/inject": "false"},
    "env": [
        {"name": "AWS_REGION", "value": "eu-west-1"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
    ],
    "envFrom": [{"configMapRef": {"name": "proxy"}}],
}


def _meta(body: dict[str, Any]) -> dict[str, Any]:
    body["metadata"].update(namespace=NS, uid="uid-1", generation=1)
    return body


def prepare_pod(pod: dict[str, Any] | None = None, settings: OperatorSettings | None = None) -> dict[str, Any]:
    """The pod template of a Dataset's preparation Job."""
    body = _meta(dataset().set("spec.podSettings", pod or {}).obj())
    job = build_prepare_job(body, DatasetSpec.model_validate(body["spec"]), settings or OperatorSettings())
    return job["spec"]["template"]


def trial_pods(pod: dict[str, Any] | None = None, settings: OperatorSettings | None = None) -> list[dict[str, Any]]:
    """The pod templates of a 2-node trial's PyTorchJob (Master, Worker)."""
    body = _meta(training_run().set("spec.podSettings", pod or {}).set("spec.workers", {"nodes": 2}).obj())
    job = build_pytorchjob(
        body,
        TrainingRunSpec.model_validate(body["spec"]),
        settings or OperatorSettings(),
        round_=1,
        index=0,
        parameters={},
        dataset_uri="s3://b/datasets/ml/digits/v1",
        dataset_digest=DIGEST,
    )
    return [job["spec"]["pytorchReplicaSpecs"][r]["template"] for r in ("Master", "Worker")]


def server_pod(pod: dict[str, Any] | None = None, settings: OperatorSettings | None = None) -> dict[str, Any]:
    body = _meta(model_deployment().set("spec.podSettings", pod or {}).obj())
    model = ServedModel(version="v1", uri="s3://b/model.onnx", digest=DIGEST)
    spec = ModelDeploymentSpec.model_validate(body["spec"])
    return build_deployment(body, spec, model, "canary", settings or OperatorSettings(), 1)["spec"]["template"]


def every_pod(pod: dict[str, Any] | None = None, settings: OperatorSettings | None = None) -> list[dict[str, Any]]:
    return [prepare_pod(pod, settings), *trial_pods(pod, settings), server_pod(pod, settings)]


# --- the built pods ---------------------------------------------------------------------------------


def test_without_pod_settings_the_pods_are_as_before():
    for template in every_pod():
        spec = template["spec"]
        assert "serviceAccountName" not in spec and "imagePullSecrets" not in spec
        assert spec["automountServiceAccountToken"] is False
        assert "team" not in template["metadata"]["labels"]


@pytest.mark.parametrize("where", ["prepare", "master", "worker", "server"])
def test_every_pod_gets_the_identity_labels_annotations_and_environment(where):
    template = dict(zip(["prepare", "master", "worker", "server"], every_pod(IRSA), strict=True))[where]
    spec, container = template["spec"], template["spec"]["containers"][0]
    assert spec["serviceAccountName"] == "ml-data"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["automountServiceAccountToken"] is False  # IRSA and GKE inject their own token
    assert template["metadata"]["labels"]["team"] == "vision"
    assert template["metadata"]["labels"]["cost-centre"] == "cc-42"
    assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in container["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in container["env"]
    assert container["envFrom"][0] == {"configMapRef": {"name": "proxy"}}
    # The operator's own variables come first and are still there.
    assert container["env"][0]["name"].startswith("MODELOPS_")


def test_the_operators_labels_and_annotations_are_kept():
    template = server_pod({"labels": {"team": "vision"}, "annotations": {"prometheus.io/port": "9999"}})
    labels = template["metadata"]["labels"]
    assert labels["modelops.dev/modeldeployment"] == "digits" and labels["modelops.dev/track"] == "canary"
    assert labels["app.kubernetes.io/managed-by"] == "modelops-operator"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "8080"  # the server's port wins
    assert template["metadata"]["annotations"]["modelops.dev/model-digest"] == DIGEST


def test_a_datasets_credentials_secret_comes_after_the_settings_sources():
    body = _meta(
        dataset()
        .set("spec.sources.0", {"uri": "s3://bucket/digits", "credentialsSecret": "s3-datasets"})
        .set("spec.podSettings", {"envFrom": [{"secretRef": {"name": "proxy-auth"}}]})
        .obj()
    )
    settings = OperatorSettings(dataset_credentials_secrets=["s3-datasets"])
    job = build_prepare_job(body, DatasetSpec.model_validate(body["spec"]), settings)
    container = job["spec"]["template"]["spec"]["containers"][0]
    # A later source wins a shared key: the credentials the admin listed for datasets.
    assert container["envFrom"] == [{"secretRef": {"name": "proxy-auth"}}, {"secretRef": {"name": "s3-datasets"}}]
    assert container["env"][0]["name"] == CONFIG_ENV


def test_the_operator_wide_defaults_apply_when_the_spec_sets_nothing():
    settings = OperatorSettings(
        workload_defaults=PodSettings.model_validate(
            {"serviceAccountName": "modelops-workloads", "imagePullSecrets": [{"name": "corp-registry"}]}
        )
    )
    for template in every_pod(None, settings):
        assert template["spec"]["serviceAccountName"] == "modelops-workloads"
        assert template["spec"]["imagePullSecrets"] == [{"name": "corp-registry"}]


# --- precedence -------------------------------------------------------------------------------------

DEFAULTS = PodSettings.model_validate(
    {
        "serviceAccountName": "modelops-workloads",
        "imagePullSecrets": [{"name": "corp-registry"}],
        "labels": {"team": "platform", "env": "prod"},
        "annotations": {"a": "1"},
        "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}, {"name": "AWS_REGION", "value": "us-east-1"}],
        "envFrom": [{"configMapRef": {"name": "cluster-env"}}],
    }
)


@pytest.mark.parametrize(
    ("own", "field", "expected"),
    [
        ({}, "service_account_name", "modelops-workloads"),
        ({"serviceAccountName": "ml-data"}, "service_account_name", "ml-data"),
        ({"labels": {"team": "vision"}}, "labels", {"team": "vision", "env": "prod"}),
        ({"annotations": {"b": "2"}}, "annotations", {"a": "1", "b": "2"}),
        (
            {"env": [{"name": "AWS_REGION", "value": "eu-west-1"}, {"name": "X", "value": "y"}]},
            "env",
            [("HTTPS_PROXY", "http://proxy:3128"), ("AWS_REGION", "eu-west-1"), ("X", "y")],
        ),
        (
            {"imagePullSecrets": [{"name": "team-registry"}, {"name": "corp-registry"}]},
            "image_pull_secrets",
            ["corp-registry", "team-registry"],
        ),
        (
            {"envFrom": [{"configMapRef": {"name": "cluster-env"}}, {"secretRef": {"name": "s"}}]},
            "env_from",
            [("configMapRef", "cluster-env"), ("secretRef", "s")],
        ),
    ],
)
def test_the_spec_overrides_or_adds_to_the_defaults(own, field, expected):
    merged = pod_settings(DEFAULTS, PodSettings.model_validate(own))
    value = getattr(merged, field)
    if field == "env":
        value = [(v.name, v.value) for v in value]
    elif field == "image_pull_secrets":
        value = [r.name for r in value]
    elif field == "env_from":
        value = [next(iter(s.wire().items())) for s in value]
        value = [(k, v["name"]) for k, v in value]
    assert value == expected


# --- refused ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pod", "message"),
    [
        ({"labels": {"modelops.dev/track": "stable"}}, "podSettings.labels may not use"),
        ({"labels": {"app.kubernetes.io/name": "x"}}, "podSettings.labels may not use"),
        ({"labels": {"training.kubeflow.org/replica-type": "master"}}, "podSettings.labels may not use"),
        ({"labels": {"job-name": "x"}}, "podSettings.labels may not use"),
        ({"labels": {"pod-template-hash": "x"}}, "podSettings.labels may not use"),
        ({"labels": {"team": "a b"}}, "is not a label value"),
        ({"labels": {"-team": "a"}}, "is not a label key"),
        ({"annotations": {"modelops.dev/model-digest": DIGEST}}, "podSettings.annotations may not use"),
        ({"env": [{"name": "MODELOPS_DEVICE", "value": "cuda"}]}, "podSettings.env may not set MODELOPS_*"),
        ({"env": [{"name": "A=B", "value": "x"}]}, "String should match pattern"),
        ({"env": [{"name": "A", "value": "x", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}, "not both"),
        ({"env": [{"name": "A", "valueFrom": {}}]}, "valueFrom names exactly one"),
        ({"envFrom": [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]}, "names one configMapRef"),
        ({"envFrom": [{"configMapRef": {"name": "a"}, "prefix": "MODELOPS_"}]}, "MODELOPS_"),
        ({"serviceAccountName": "Not_A_Name"}, "String should match pattern"),
    ],
)
def test_bad_pod_settings_are_refused_with_what_to_change(pod, message):
    for spec_model, builder in ((DatasetSpec, dataset), (TrainingRunSpec, training_run)):
        with pytest.raises(ValidationError, match=re.escape(message)):
            spec_model.model_validate(builder().set("spec.podSettings", pod).spec)


def test_the_same_keys_are_refused_in_the_operator_wide_defaults():
    with pytest.raises(ValidationError, match=re.escape("podSettings.env may not set")):
        OperatorSettings.from_env({"MODELOPS_WORKLOAD_DEFAULTS": '{"env": [{"name": "MODELOPS_X", "value": "1"}]}'})


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_the_api_server_refuses_them_too(kind):
    """The CEL rules in each CRD carry the same messages (the cluster test test_admission applies them)."""
    node = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    pod = node["properties"]["podSettings"]
    messages = {rule["message"] for rule in pod["x-kubernetes-validations"]}
    assert any(m.startswith("podSettings.labels may not use") for m in messages)
    assert any(m.startswith("podSettings.annotations may not use") for m in messages)
    assert any(m.startswith("podSettings.env may not set MODELOPS_*") for m in messages)
    rules = " ".join(rule["rule"] for rule in pod["x-kubernetes-validations"])
    for prefix in ("'modelops.dev/'", "'app.kubernetes.io/'", "'training.kubeflow.org/'", "'MODELOPS_'"):
        assert prefix in rules
    assert pod["properties"]["labels"]["maxProperties"] == 64  # bounds the rules' CEL cost


def assert_refused(why: str | None, refused: str | None) -> None:
    """`why` names `refused` and what to do, or is None when nothing should be refused."""
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why and "ask the admin" in why


@pytest.mark.parametrize(
    ("pod", "settings", "refused"),
    [
        ({}, {}, None),
        ({"serviceAccountName": "ml-data"}, {}, "serviceAccountName: ml-data is not one"),
        ({"serviceAccountName": "ml-data"}, {"workload_service_accounts": ["ml-data"]}, None),
        ({"serviceAccountName": "ml-data"}, {"workload_service_accounts": ["*"]}, None),
        ({"serviceAccountName": "wl"}, {"workload_defaults": PodSettings(service_account_name="wl")}, None),
        ({}, {"workload_defaults": PodSettings(service_account_name="wl")}, None),
        ({"envFrom": [{"secretRef": {"name": "team-aws"}}]}, {}, "Secrets team-aws are not ones"),
        (
            {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "k"}}}]},
            {"workload_secrets": ["hf"]},
            None,
        ),
        ({"envFrom": [{"secretRef": {"name": "a"}}]}, {"workload_secrets": ["*"]}, None),
        ({"envFrom": [{"configMapRef": {"name": "proxy"}}]}, {}, None),  # ConfigMaps are not secret
        ({"imagePullSecrets": [{"name": "regcred"}]}, {}, None),  # only for pulling the admin's images
    ],
)
def test_accounts_and_secrets_need_the_admins_leave(pod, settings, refused):
    spec = DatasetSpec.model_validate(dataset().set("spec.podSettings", pod).spec)
    why = refused_pod_settings(spec, OperatorSettings(**settings))
    assert_refused(why, refused)


# --- pods that cannot be created or started ----------------------------------------------------------

REFUSED = 'pods "{pod}" is forbidden: error looking up service account ml/missing: serviceaccount "missing" not found'


def event(reason: str, message: str, kind: str, name: str, component: str, last: str) -> dict[str, Any]:
    """A core/v1 Event as the API returns it (through the client's sanitize_for_serialization)."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.1879a3c2b1d0e4f5", "namespace": NS},
        "involvedObject": {"apiVersion": "batch/v1", "kind": kind, "name": name, "namespace": NS, "uid": "uid-9"},
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "firstTimestamp": "2026-12-03T19:00:00Z",
        "lastTimestamp": last,
        "count": 4,
        "type": "Warning",
    }


def test_a_job_whose_pod_the_api_server_refused_says_why_and_what_to_do():
    events = [
        event(
            "SuccessfulCreate", "Created pod: x", "Job", "digits-prepare-1a2b", "job-controller", "2026-12-03T18:00Z"
        ),
        event(
            "FailedCreate",
            "Error creating: " + REFUSED.format(pod="digits-prepare-1a2b-"),
            "Job",
            "digits-prepare-1a2b",
            "job-controller",
            "2026-12-03T19:00:40Z",
        ),
    ]
    events[0]["type"] = "Normal"
    problem = creation_problem(events)
    assert problem.startswith('no pod could be created: pods "digits-prepare-1a2b-" is forbidden: error looking up')
    assert "create that ServiceAccount in this namespace" in problem
    assert "spec.podSettings.serviceAccountName" in problem
    body = _meta(dataset().obj())
    job = build_prepare_job(body, DatasetSpec.model_validate(body["spec"]), OperatorSettings())
    out = reconcile_dataset(
        body,
        DatasetSpec.model_validate(body["spec"]),
        DatasetStatus(),
        DatasetObserved(jobs=[job], pod_problem=problem),
        OperatorSettings(),
    )
    ready = c.get_condition(out.status.conditions, c.READY)
    assert (ready.reason, out.status.phase) == (c.POD_PENDING, "Running")
    assert 'serviceaccount "missing" not found' in ready.message


def test_a_pytorchjob_whose_pods_were_refused_says_why():
    events = [
        event(
            "FailedCreatePod",
            "Error creating: " + REFUSED.format(pod="digits-r1-t0-master-0"),
            "PyTorchJob",
            "digits-r1-t0",
            "pytorchjob-controller",
            "2026-12-03T19:00:40Z",
        )
    ]
    problem = creation_problem(events)
    assert 'pods "digits-r1-t0-master-0" is forbidden' in problem
    assert "create that ServiceAccount" in problem


def test_a_trainjob_whose_jobset_trainer_v2_could_not_create_says_why():
    refused = (
        'TrainJob resources reconciliation failed: admission webhook "vjobset.kb.io" denied the request: '
        "invalid failure policy rule name 'program-error'"
    )
    events = [event("TrainJobResourcesCreationFailed", refused, "TrainJob", "t-r1-t0", "trainjob-controller", "t")]
    assert creation_problem(events) == f"no pod could be created: {refused}"


def test_other_refusals_are_quoted_without_the_service_account_hint():
    quota = 'pods "x-" is forbidden: exceeded quota: compute, requested: limits.memory=4Gi, used: 8Gi, limited: 10Gi'
    problem = creation_problem([event("FailedCreate", "Error creating: " + quota, "Job", "x", "job-controller", "t")])
    assert problem == f"no pod could be created: {quota}"


def test_no_failure_event_no_problem():
    assert creation_problem([]) is None
    normal = event("SuccessfulCreate", "Created pod: x-abc", "Job", "x", "job-controller", "t")
    normal["type"] = "Normal"
    assert creation_problem([normal]) is None


def deployment_with(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "digits-stable", "namespace": NS, "generation": 1},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 1, "replicas": 0, "unavailableReplicas": 2, "conditions": conditions},
    }


def test_a_deployment_whose_replicaset_cannot_create_pods_says_why():
    failing = deployment_with(
        [
            {
                "type": "Available",
                "status": "False",
                "reason": "MinimumReplicasUnavailable",
                "message": "Deployment does not have minimum availability.",
            },
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": REFUSED.format(pod="digits-stable-6d9f8b7c5d-"),
            },
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "message": "progressing"},
        ]
    )
    problem = replica_failure([failing, None])
    assert problem.startswith("Deployment digits-stable: no pod could be created: pods")
    assert "create that ServiceAccount" in problem
    assert replica_failure([deployment_with([]), None]) is None
    status = pods_blocked(ModelDeploymentStatus(), 1, problem)
    ready = c.get_condition(status.conditions, c.READY)
    assert (ready.status, ready.reason) == ("False", c.POD_PENDING) and "serviceaccount" in ready.message


def test_an_image_that_cannot_be_pulled_points_at_the_pull_secrets():
    pod = {
        "metadata": {"name": "digits-prepare-1a2b-x7k2p"},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "prepare",
                    "ready": False,
                    "restartCount": 0,
                    "image": "registry.corp/modelops/trainer:0.1.0",
                    "imageID": "",
                    "state": {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": 'Back-off pulling image "registry.corp/modelops/trainer:0.1.0": ErrImagePull: '
                            "failed to pull and unpack image: failed to authorize: 401 Unauthorized",
                        }
                    },
                }
            ],
        },
    }
    problem = pod_problem([pod])
    assert problem.startswith("pod digits-prepare-1a2b-x7k2p: ImagePullBackOff: Back-off pulling image")
    assert "401 Unauthorized" in problem
    assert "spec.podSettings.imagePullSecrets" in problem


# --- the job queue's Redis Secret ------------------------------------------------------------------

JOBS = {"redisSecretRef": {"name": "redis"}}


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({}, "spec.jobs.redisSecretRef: Secret redis is not one"),
        ({"workload_secrets": ["redis"]}, None),
        ({"workload_secrets": ["*"]}, None),
        ({"workload_defaults": PodSettings.model_validate({"envFrom": [{"secretRef": {"name": "redis"}}]})}, None),
    ],
)
def test_the_job_queues_secret_needs_the_admins_leave_too(settings, refused):
    spec = ModelDeploymentSpec.model_validate(model_deployment().set("spec.jobs", JOBS).spec)
    why = refused_pod_settings(spec, OperatorSettings(**settings))
    assert_refused(why, refused)


def test_without_jobs_the_server_has_no_queue_and_with_them_one_stream_per_object():
    def env(body: dict[str, Any], track: str) -> list[dict[str, Any]]:
        model = ServedModel(version="v1", uri="s3://b/model.onnx", digest=DIGEST)
        spec = ModelDeploymentSpec.model_validate(body["spec"])
        dep = build_deployment(body, spec, model, track, OperatorSettings(), 1)
        return list(dep["spec"]["template"]["spec"]["containers"][0]["env"])

    plain = env(_meta(model_deployment().obj()), "stable")
    assert not [e for e in plain if e["name"].startswith(("MODELOPS_JOB", "MODELOPS_REDIS", "MODELOPS_BATCH"))]
    streams = set()
    for name in ("a", "b"):
        for track in ("stable", "canary"):
            jobs = {**JOBS, "redisSecretRef": {"name": "r", "key": "u"}}
            body = _meta(model_deployment(name).set("spec.jobs", jobs).obj())
            variables = {e["name"]: e for e in env(body, track)}
            # The URL is never written into the pod spec: the kubelet reads it from the Secret.
            assert variables["MODELOPS_REDIS_URL"] == {
                "name": "MODELOPS_REDIS_URL",
                "valueFrom": {"secretKeyRef": {"name": "r", "key": "u"}},
            }
            streams.add((name, variables["MODELOPS_JOB_STREAM"]["value"]))
    # Both tracks of one object share a stream (one consumer group); two objects never do.
    assert len({stream for _, stream in streams}) == 2
