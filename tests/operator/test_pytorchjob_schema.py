"""The PyTorchJobs the operator builds use only fields of the Kubeflow training operator's own CRD.

The builder writes plain dicts (not the `kubeflow-training` SDK's models: see CHANGELOG and
docs/development.md for why). The API server prunes fields its structural schema does not know
without a word, so a misspelt key (`nprocPerNodes`, `runPolicy.suspended`) would be dropped
silently in a cluster. This test walks every key of built jobs through the schema of the CRD the
local cluster installs (training-operator v1.8.1, read from the Go module cache that
hack/build-binaries.sh fills), pod template included, which the SDK's models would not check.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops_operator.api.trainingrun import TrainingRunSpec
from modelops_operator.builders.trainingrun import build_pytorchjob
from modelops_operator.settings import OperatorSettings
from tests.support.objects import DIGEST, search, training_run
from tests.support.tools import missing

ROOT = Path(__file__).resolve().parents[2]


def _crd_path() -> Path:
    versions = dict(line.split("=", 1) for line in (ROOT / "hack/versions.env").read_text().splitlines() if "=" in line)
    cache = Path(os.environ.get("GOMODCACHE") or Path.home() / "go/pkg/mod")
    module = cache / f"github.com/kubeflow/training-operator@{versions['TRAINING_OPERATOR_VERSION'].strip()}"
    return module / "manifests/base/crds/kubeflow.org_pytorchjobs.yaml"


@functools.cache
def _schema() -> dict[str, Any]:
    path = _crd_path()
    if not path.exists():
        missing(
            f"the training operator's CRD ({path})", "hack/build-binaries.sh training-operator downloads its module"
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(path.read_text(), Loader=loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in `value` that `schema` does not declare (and the API server would prune)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string"):
        return []
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        for key, sub in value.items():
            if props is not None:
                if key not in props:
                    out.append(f"{path}.{key}")
                    continue
                out += unknown_fields(sub, props[key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += unknown_fields(sub, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return out


FULL = {
    "search": search(),
    "workers": {
        "nodes": 3,
        "gpusPerNode": 2,
        "queueName": "team-a",
        "gangScheduling": True,
        "resources": {"requests": {"cpu": "4"}, "limits": {"memory": "16Gi"}},
        "placement": {
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "training",
        },
    },
    "runPolicy": {"activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 600},
    "checkpointing": {"pvc": "ckpt", "uri": "file:///mnt/ckpt"},
    "podSettings": {
        "serviceAccountName": "ml-train",
        "imagePullSecrets": [{"name": "regcred"}],
        "labels": {"team": "a"},
        "annotations": {"x/y": "z"},
        "env": [
            {"name": "NCCL_DEBUG", "value": "INFO"},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        ],
        "envFrom": [{"configMapRef": {"name": "proxy"}}, {"secretRef": {"name": "s3", "optional": True}}],
    },
}


@pytest.mark.parametrize(("spec", "suspend"), [({}, False), (FULL, True)], ids=["minimal", "every-field"])
def test_every_field_of_a_built_pytorchjob_is_in_the_training_operators_crd(spec, suspend):
    body = training_run("digits").obj()
    body["spec"].update(spec)
    body["metadata"].update(namespace="ml", uid="u-1", generation=1)
    job = build_pytorchjob(
        body,
        TrainingRunSpec.model_validate(body["spec"]),
        OperatorSettings(artifact_pvc="artifacts"),
        round_=1,
        index=0,
        parameters={"learningRate": "0.01"},
        dataset_uri="file:///var/lib/modelops/artifacts/datasets/ml/digits/v1",
        dataset_digest=DIGEST,
        suspend=suspend,
    )
    assert unknown_fields(job, _schema()) == []
    # The fields the SDK question turned on are there, and the schema knows them.
    assert job["spec"]["runPolicy"]["suspend"] is suspend
    if spec:
        assert job["spec"]["nprocPerNode"] == "2"
        assert job["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] == 3


def test_the_walk_finds_a_misspelt_field():
    schema = _schema()
    job = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "spec": {"runPolicy": {"suspended": True}}}
    assert unknown_fields(job, schema) == [".spec.runPolicy.suspended"]
    pod = {"spec": {"pytorchReplicaSpecs": {"Master": {"template": {"spec": {"serviceAcountName": "x"}}}}}}
    assert unknown_fields(pod, schema) == [".spec.pytorchReplicaSpecs.Master.template.spec.serviceAcountName"]
