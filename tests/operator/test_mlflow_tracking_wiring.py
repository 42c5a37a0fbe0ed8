"""MLflow experiment tracking in the operator's pure layers: the trial pods' environment and CA
volume, credentials only on the Master and only when asked, the trial's run id from its summary
to the registered model, the ModelDeployment's alias field, and the TrainingRun controller's part:
trials get the credentials only when the Secret names the tracking server."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from pydantic import ValidationError

from modelops_operator.api import conditions as c
from modelops_operator.api.modeldeployment import ModelDeploymentSpec
from modelops_operator.api.trainingrun import TrainingRunSpec
from modelops_operator.builders.trainingrun import MLFLOW_CA_DIR, pytorchjob_rank0_container, with_mlflow_credentials
from modelops_operator.controllers.trainingrun import with_trial_credentials
from modelops_operator.mlflow import SECRET_URI_ANNOTATION, RegistryError
from modelops_operator.reconcile.actions import Action
from tests.operator.test_trainingrun import LR, Sim, build, container, ok, pods, reported, run_obj, spec_of
from tests.support.objects import model_deployment

URI = "https://mlflow.team-a.svc:5000"


def env_of(job: dict[str, Any], replica: str = "Master") -> dict[str, Any]:
    """name -> value (or valueFrom) of the training container's environment."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job, replica)["env"]}


def registry(**fields: Any) -> dict[str, Any]:
    return {"registry": {"mlflowTrackingUri": URI, **fields}}


def test_without_a_tracking_uri_no_mlflow_variable_is_set():
    job = build()
    assert not [name for name in env_of(job) if name.startswith("MLFLOW_")]


@pytest.mark.parametrize(
    ("fields", "experiment"),
    [({}, "ns/digits"), ({"experimentName": "team-a/vision"}, "team-a/vision")],
)
def test_trial_pods_get_mlflows_own_tracking_variables(fields, experiment):
    job = build({**registry(**fields), "workers": {"nodes": 2}})

    for replica in ("Master", "Worker"):
        env = env_of(job, replica)
        assert env["MLFLOW_TRACKING_URI"] == URI
        assert env["MLFLOW_EXPERIMENT_NAME"] == experiment
        assert env["MODELOPS_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        # No credentials and no CA unless asked for.
        assert not {"MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_SERVER_CERT_PATH"} & set(env)


def test_track_trials_false_leaves_the_pods_alone():
    assert not [n for n in env_of(build(registry(trackTrials=False))) if n.startswith("MLFLOW_")]


def test_the_ca_secret_mounts_only_its_ca_crt_read_only():
    job = build(registry(caSecret="mlflow-ca"))
    pod, ctr = pods(job)["Master"], container(job)

    assert {
        "name": "mlflow-ca",
        "secret": {"secretName": "mlflow-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
    } in pod["volumes"]
    mount = next(m for m in ctr["volumeMounts"] if m["name"] == "mlflow-ca")
    assert mount == {"name": "mlflow-ca", "mountPath": MLFLOW_CA_DIR, "readOnly": True}
    assert env_of(job)["MLFLOW_TRACKING_SERVER_CERT_PATH"] == f"{mount['mountPath']}/ca.crt"


def test_credentials_go_to_the_master_only_as_optional_secret_refs():
    body = run_obj({**registry(credentialsSecret="mlflow-creds"), "workers": {"nodes": 3}})
    job = build({**registry(credentialsSecret="mlflow-creds"), "workers": {"nodes": 3}})
    before = copy.deepcopy(job)

    out = with_mlflow_credentials(job, spec_of(body), pytorchjob_rank0_container)

    assert job == before  # a copy
    refs = {
        k: v
        for k, v in env_of(out).items()
        if k in {"MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    }
    assert refs == {
        env: {"secretKeyRef": {"name": "mlflow-creds", "key": key, "optional": True}}
        for env, key in (
            ("MLFLOW_TRACKING_TOKEN", "token"),
            ("MLFLOW_TRACKING_USERNAME", "username"),
            ("MLFLOW_TRACKING_PASSWORD", "password"),
        )
    }
    assert "MLFLOW_TRACKING_TOKEN" not in env_of(out, "Worker")  # rank 0 alone tracks


@pytest.mark.parametrize("spec", [registry(), registry(credentialsSecret="c", trackTrials=False), {}])
def test_no_credentials_without_a_secret_or_tracking(spec):
    job = build(spec)
    assert with_mlflow_credentials(job, spec_of(run_obj(spec)), pytorchjob_rank0_container) == job


# --- the run id, from the trainer's summary to the registered model -----------------------------


def test_the_best_trials_mlflow_run_is_the_registered_models():
    sim = Sim({"search": {"parameters": [LR], "maxTrials": 2, "parallelism": 2, "earlyStopping": "none"}})
    sim.step()
    sim.set("digits-r1-t0", "Succeeded", result={**ok(0.80, trial="a"), "mlflowRunId": "run-a"})
    sim.set("digits-r1-t1", "Succeeded", result={**ok(0.95, trial="b"), "mlflowRunId": "run-b"})
    st = sim.step().status

    assert [t.mlflow_run_id for t in st.trials] == ["run-a", "run-b"]
    assert st.model is not None and (st.model.trial, st.model.mlflow_run_id) == ("digits-r1-t1", "run-b")


def test_an_untracked_trial_says_why_in_its_message():
    sim = Sim()
    sim.step()
    reason = "MLflow at http://mlflow:5000 unreachable: [Errno 111] Connection refused"
    sim.set("digits-r1-t0", "Succeeded", result={**ok(0.9), "mlflowRunId": None, "mlflowReason": reason})
    st = sim.step().status

    assert st.phase == "Succeeded" and st.model is not None and st.model.mlflow_run_id is None
    trial = sim.trial("digits-r1-t0")
    assert trial.message is not None and trial.message.endswith(f"; MLflow: {reason}")


# --- the ModelDeployment's alias ---------------------------------------------------------------


@pytest.mark.parametrize("alias", ["production", "Champion_2", "blue-green"])
def test_an_alias_is_accepted(alias):
    spec = ModelDeploymentSpec.model_validate(model_deployment().set("spec.model.mlflowAlias", alias).spec)
    assert spec.model.mlflow_alias == alias


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (
            {"trainingRunRef": {"name": "r"}, "mlflowAlias": "latest"},
            "MLflow reserves the aliases latest and v<number>",
        ),
        ({"trainingRunRef": {"name": "r"}, "mlflowAlias": "v3"}, "MLflow reserves the aliases latest and v<number>"),
        ({"trainingRunRef": {"name": "r"}, "mlflowAlias": "a b"}, "should match pattern"),
        (
            {"uri": "s3://m/model.onnx", "digest": "sha256:" + "a" * 64, "mlflowAlias": "production"},
            "needs model.trainingRunRef",
        ),
    ],
)
def test_a_bad_alias_is_refused(model, words):
    with pytest.raises(ValidationError, match=words):
        ModelDeploymentSpec.model_validate({"model": model})


# --- the controller: credentials on the trials it creates, only for the server the Secret names ----------


def secret(annotated_for: str | None, **data: str) -> dict[str, Any]:
    """A credentials Secret as the API server returns it (base64 `data`)."""
    annotations = {SECRET_URI_ANNOTATION: annotated_for} if annotated_for else {}
    return {
        "metadata": {"namespace": "ns", "name": "mlflow-creds", "annotations": annotations},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


class Secrets:
    """The Secrets of one namespace, as `controllers.common.secret_reader` serves them, with the
    reads counted."""

    def __init__(self, *found: dict[str, Any]) -> None:
        self.found = {s["metadata"]["name"]: s for s in found}
        self.reads: list[tuple[str, str]] = []

    def __call__(self, name: str, field: str) -> dict[str, Any]:
        self.reads.append((name, field))
        if name not in self.found:
            raise RegistryError(f"Secret ns/{name} ({field}) does not exist")
        return self.found[name]


def first_reconcile(spec: dict[str, Any]) -> tuple[list[Action], TrainingRunSpec]:
    """The actions of a new run's first reconcile: its first trial's create (and nothing else)."""
    sim = Sim(spec)
    out = sim.step()
    assert [a.verb for a in out.actions] == ["create"]
    return out.actions, spec_of(sim.run)


CREDENTIAL_VARS = {"MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}


def test_a_trial_gets_the_credentials_when_the_secret_names_the_server():
    actions, spec = first_reconcile(registry(credentialsSecret="mlflow-creds"))
    secrets = Secrets(secret(URI, token="t0ken"))

    out, events = with_trial_credentials(actions, spec, secrets)

    assert events == [] and secrets.reads == [("mlflow-creds", "spec.registry.credentialsSecret")]
    assert out[0].body is not None and actions[0].body is not None
    assert set(env_of(out[0].body)) >= CREDENTIAL_VARS
    assert not CREDENTIAL_VARS & set(env_of(actions[0].body))  # the pure reconcile's action is not changed
    assert env_of(out[0].body)["MLFLOW_TRACKING_TOKEN"] == {
        "secretKeyRef": {"name": "mlflow-creds", "key": "token", "optional": True}
    }


@pytest.mark.parametrize(
    ("secrets", "words"),
    [
        (Secrets(secret("http://evil.example", token="t")), f"is not for {URI}: its annotation"),
        (Secrets(secret(None, token="t")), f"is not for {URI}: its annotation"),
        (Secrets(secret(URI)), "holds neither `token` nor `username` and `password`"),
        (Secrets(), "Secret ns/mlflow-creds (spec.registry.credentialsSecret) does not exist"),
    ],
    ids=["another-server", "no-annotation", "no-keys", "missing"],
)
def test_a_secret_not_for_the_server_gives_the_trials_nothing_and_says_why(secrets, words):
    actions, spec = first_reconcile(registry(credentialsSecret="mlflow-creds"))

    out, events = with_trial_credentials(actions, spec, secrets)

    assert out == actions
    assert [(e.type, e.reason) for e in events] == [("Warning", c.MLFLOW_REGISTRATION_FAILED)]
    assert events[0].message.startswith("trials get no MLflow credentials: ") and words in events[0].message


@pytest.mark.parametrize(
    "spec",
    [registry(), registry(credentialsSecret="mlflow-creds", trackTrials=False), {}],
    ids=["no-secret", "not-tracked", "no-tracking-server"],
)
def test_no_secret_is_read_unless_tracked_trials_have_one(spec):
    actions, run_spec = first_reconcile(spec)
    secrets = Secrets(secret(URI, token="t"))

    assert with_trial_credentials(actions, run_spec, secrets) == (actions, [])
    assert secrets.reads == []


def test_no_secret_is_read_when_no_trial_is_created():
    sim = Sim(registry(credentialsSecret="mlflow-creds"))
    sim.step()
    sim.set("digits-r1-t0", "Running", progress=reported(0.5))
    out = sim.step()
    assert not [a for a in out.actions if a.verb == "create"]
    secrets = Secrets(secret(URI, token="t"))

    assert with_trial_credentials(out.actions, spec_of(sim.run), secrets) == (out.actions, [])
    assert secrets.reads == []


def test_the_registration_carries_the_best_trials_run_and_the_ca_secret():
    sim = Sim({**registry(caSecret="mlflow-ca"), "search": {"parameters": [LR], "maxTrials": 2, "parallelism": 2}})
    sim.step()
    sim.set("digits-r1-t0", "Succeeded", result={**ok(0.80, trial="a"), "mlflowRunId": "run-a"})
    sim.set("digits-r1-t1", "Succeeded", result={**ok(0.95, trial="b"), "mlflowRunId": "run-b"})
    out = sim.step(apply=False)  # the controller's to carry out

    registration = next(a.registration for a in out.actions if a.verb == "register")
    assert registration is not None
    assert (registration.run_id, registration.ca_secret, registration.tracking_uri) == ("run-b", "mlflow-ca", URI)
