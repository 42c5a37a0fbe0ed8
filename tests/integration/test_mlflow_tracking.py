"""The trainer's experiment tracking against a real MLflow server: one MLflow run per trial with its
hyper-parameters, every epoch's metrics and the model card; a server that is down never fails
training; a server behind TLS with a private CA (a real `mlflow server` serving https)."""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelops_operator.api import conditions as c
from modelops_operator.api.trainingrun import RegisteredModel, TrainingRunSpec, TrainingRunStatus
from modelops_operator.controllers import trainingrun as controller
from modelops_operator.mlflow import RUN_TAG, RegistryError, register_model_version, ssl_context_from_secret
from modelops_operator.reconcile import trainingrun as rt
from modelops_trainer import train
from modelops_trainer.datasetfmt import DatasetVersion
from modelops_trainer.tracking import Tracker
from tests.integration.mlflow_server import free_port, mlflow_server
from tests.support.digits import write_digits
from tests.support.trainconfig import make_config

HYPERPARAMETERS = {"epochs": 2, "learningRate": 0.002}


def get(uri: str, endpoint: str, context: ssl.SSLContext | None = None, **params: str) -> dict[str, Any]:
    """A GET on MLflow's REST API with plain urllib (not the code under test)."""
    url = f"{uri}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        answer: dict[str, Any] = json.load(response)
    return answer


def artifact(uri: str, run: dict[str, Any], name: str, context: ssl.SSLContext | None = None) -> bytes:
    """A run's artifact, downloaded through the server's artifact proxy."""
    path = run["info"]["artifact_uri"].removeprefix("mlflow-artifacts:").strip("/")
    with urllib.request.urlopen(f"{uri}/api/2.0/mlflow-artifacts/artifacts/{path}/{name}", context=context) as r:
        return bytes(r.read())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> DatasetVersion:
    return write_digits((tmp_path_factory.mktemp("data") / "tiny").as_uri(), size=8, mode="RGB", limit=30)


@pytest.fixture(scope="module")
def tracked(tiny: DatasetVersion, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real two-epoch trial of a TrainingRun, tracked in the MLflow server."""
    out = tmp_path_factory.mktemp("runs") / "trial"
    config = make_config(
        tiny,
        out,
        hyperparameters=HYPERPARAMETERS,
        trial={"name": "digits-r1-t0", "parameters": {"batchSize": "16"}},
        lineage={"dataset": "digits", "trainingRun": "digits"},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "team-a/digits")
        mp.setenv("MODELOPS_NAMESPACE", "team-a")
        summary = train.run(config)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"summary": summary, "history": history, "out": out}


def test_a_trial_becomes_one_finished_mlflow_run(tracked, tracking_uri):
    summary = tracked["summary"]
    run = get(tracking_uri, "runs/get", run_id=summary["mlflowRunId"])["run"]

    assert summary["status"] == "Succeeded" and "mlflowReason" not in summary
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["run_name"] == "digits-r1-t0"
    experiment = get(tracking_uri, "experiments/get", experiment_id=run["info"]["experiment_id"])["experiment"]
    assert experiment["name"] == "team-a/digits"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["modelops.dev/trial"] == "digits-r1-t0"
    assert tags["modelops.dev/trainingrun"] == "team-a/digits"
    assert tags["modelops.dev/namespace"] == "team-a"
    assert tags["modelops.dev/dataset"] == f"digits@{summary['datasetVersion']}"
    # summary.json on disk says the same as the termination message.
    assert json.loads((tracked["out"] / "summary.json").read_text())["mlflowRunId"] == summary["mlflowRunId"]


def test_the_parameters_are_the_hyperparameters_the_trial_trained_with(tracked, tracking_uri):
    run = get(tracking_uri, "runs/get", run_id=tracked["summary"]["mlflowRunId"])["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    used = json.loads((tracked["out"] / "config.json").read_text())

    assert params["batchSize"] == "16"  # the trial's value, over the spec's
    assert params["learningRate"] == "0.002" and params["epochs"] == "2"
    assert {k: params[k] for k in used["hyperparameters"]} == {k: str(v) for k, v in used["hyperparameters"].items()}
    assert params["architecture"] == "resnet18"
    assert params["datasetVersion"] == tracked["summary"]["datasetVersion"]


@pytest.mark.parametrize("key", ["val_accuracy", "val_loss", "train_loss", "lr"])
def test_every_epochs_metric_is_logged_at_its_epoch(tracked, tracking_uri, key):
    history = get(tracking_uri, "metrics/get-history", run_id=tracked["summary"]["mlflowRunId"], metric_key=key)

    logged = sorted((m["step"], m["value"]) for m in history["metrics"])
    assert logged == [(r["epoch"], r[key]) for r in tracked["history"]]
    assert len(logged) == HYPERPARAMETERS["epochs"]


def test_the_best_checkpoints_metrics_are_logged_once(tracked, tracking_uri):
    run = get(tracking_uri, "runs/get", run_id=tracked["summary"]["mlflowRunId"])["run"]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}

    assert metrics["best_test_accuracy"] == tracked["summary"]["metrics"]["test_accuracy"]
    assert metrics["best_val_accuracy"] == tracked["summary"]["metrics"]["val_accuracy"]


def test_the_model_card_is_a_downloadable_artifact(tracked, tracking_uri):
    run = get(tracking_uri, "runs/get", run_id=tracked["summary"]["mlflowRunId"])["run"]

    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:")
    card = tracked["out"] / "model.onnx.card.json"
    assert artifact(tracking_uri, run, "model.onnx.card.json") == card.read_bytes()


def test_a_registered_version_links_to_the_trials_run(tracked, tracking_uri):
    run_id = tracked["summary"]["mlflowRunId"]
    version = register_model_version(
        tracking_uri, "tracked-digits", "s3://models/digits/model.onnx", digest="sha256:t", run_id=run_id
    )

    got = get(tracking_uri, "model-versions/get", name="tracked-digits", version=version)["model_version"]
    assert got["run_id"] == run_id
    assert {t["key"]: t["value"] for t in got["tags"]}[RUN_TAG] == f"runs:/{run_id}"


def test_the_controller_registers_the_best_trials_run(tracked, tracking_uri):
    """The trainer's summary, read by the TrainingRun's reconcile, registered by its controller:
    the version links to the trial's run."""
    run_id = tracked["summary"]["mlflowRunId"]
    summary = rt.parse_summary(json.dumps(tracked["summary"]))
    assert summary is not None and summary.mlflow_run_id == run_id
    body = {"metadata": {"namespace": "team-a", "name": "controller-digits"}}
    spec = TrainingRunSpec.model_validate(
        {"datasetRef": {"name": "digits"}, "registry": {"mlflowTrackingUri": tracking_uri}}
    )
    model = RegisteredModel(
        version=1,
        uri="s3://models/controller-digits/model.onnx",
        digest="sha256:" + "c" * 64,
        trial="digits-r1-t0",
        mlflow_run_id=summary.mlflow_run_id,
    )
    status = TrainingRunStatus(model=model, models=[model])
    registration = rt.registration_of(body, spec, status)
    assert registration is not None

    done, events = controller.register("team-a", status, registration, datetime.datetime.now(datetime.UTC))

    assert done.model is not None and done.model.mlflow_version == "1", done.conditions
    assert [e.reason for e in events] == [c.MLFLOW_VERSION_CREATED]
    got = get(tracking_uri, "model-versions/get", name="controller-digits", version="1")["model_version"]
    assert got["run_id"] == run_id


def test_training_goes_on_when_the_tracking_server_is_down(tiny, tmp_path, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = make_config(tiny, tmp_path / "run", hyperparameters={"epochs": 1})

    summary = train.run(config)

    assert summary["status"] == "Succeeded" and summary["model"]["digest"].startswith("sha256:")
    assert summary["mlflowRunId"] is None
    assert summary["mlflowReason"].startswith(f"MLflow at {uri} unreachable: ")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["mlflowRunId"] is None


def test_a_resumed_run_logs_to_the_same_mlflow_run(tracking_uri, tmp_path):
    """The stop and the resume of a preempted trial: the run goes KILLED, then RUNNING again, and the
    resumed process logs only the epochs not logged before (real epoch records of a history)."""
    epochs = [{"epoch": 1, "step": 10, "val_accuracy": 0.5}, {"epoch": 2, "step": 20, "val_accuracy": 0.75}]
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_NAME": "resumed"}
    first = Tracker.from_env(env, tmp_path.as_uri())
    assert first is not None
    first.start(run_name="t0", params={"epochs": "2"}, tags={})
    first.log_history(epochs[:1])
    first.finish("KILLED", history=epochs[:1])
    assert get(tracking_uri, "runs/get", run_id=first.run_id)["run"]["info"]["status"] == "KILLED"

    again = Tracker.from_env(env, tmp_path.as_uri())
    assert again is not None
    again.start(run_name="t0", params={"epochs": "2"}, tags={})
    assert again.run_id == first.run_id
    assert get(tracking_uri, "runs/get", run_id=again.run_id)["run"]["info"]["status"] == "RUNNING"
    again.finish("FINISHED", history=epochs)

    history = get(tracking_uri, "metrics/get-history", run_id=again.run_id, metric_key="val_accuracy")["metrics"]
    assert sorted((m["step"], m["value"]) for m in history) == [(1, 0.5), (2, 0.75)]
    assert again.report() == {"mlflowRunId": first.run_id}


# --- authentication and TLS ---------------------------------------------------------------------


class Recorder:
    """A stand-in for an MLflow server that checks a bearer token (mlflow's own basic-auth app
    checks only basic credentials, and needs Flask-WTF, which mlflow-skinny does not bring): answers
    401 without the token, else minimal MLflow answers; `artifact_uri` is what runs/create says."""

    def __init__(self, token: str, artifact_uri: str = "") -> None:
        seen: list[tuple[str, str, str | None]] = []

        class Answer(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen.append((self.command, self.path.split("?")[0], self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Bearer {token}":
                    code, body = 401, {"error_code": "UNAUTHENTICATED", "message": "a bearer token is required"}
                elif "get-by-name" in self.path:
                    code, body = 200, {"experiment": {"experiment_id": "7"}}
                elif "runs/create" in self.path:
                    info = {"run_id": "r1", "experiment_id": "7", "artifact_uri": artifact_uri}
                    code, body = 200, {"run": {"info": info}}
                else:
                    code, body = 200, {}
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.seen = seen
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder("t0ken")
    yield server
    server.close()


def test_the_tracker_sends_the_token(recorder, tmp_path):
    tracker = Tracker.from_env({"MLFLOW_TRACKING_URI": recorder.url, "MLFLOW_TRACKING_TOKEN": "t0ken"}, str(tmp_path))
    assert tracker is not None
    tracker.start(run_name="t", params={"a": "1"}, tags={})
    tracker.finish("FINISHED", history=[{"epoch": 1, "val_loss": 0.5}])

    assert tracker.report() == {"mlflowRunId": "r1"}
    assert [path.rsplit("/", 2)[-2:] for _, path, _ in recorder.seen] == [
        ["experiments", "get-by-name"],
        ["runs", "create"],
        ["runs", "log-batch"],  # the parameters
        ["runs", "log-batch"],  # epoch 1
        ["runs", "update"],
    ]
    assert {auth for _, _, auth in recorder.seen} == {"Bearer t0ken"}


@pytest.mark.parametrize("artifact_uri", ["s3://another-teams-bucket/runs/x", "/var/lib/mlflow/1/r1/artifacts"])
def test_the_card_goes_only_through_the_servers_artifact_proxy(tmp_path, artifact_uri):
    server = Recorder("t", artifact_uri)
    card = tmp_path / "model.onnx.card.json"
    card.write_text("{}")
    try:
        tracker = Tracker.from_env({"MLFLOW_TRACKING_URI": server.url, "MLFLOW_TRACKING_TOKEN": "t"}, str(tmp_path))
        assert tracker is not None
        tracker.start(run_name="t", params={}, tags={})
        tracker.finish("FINISHED", history=[{"epoch": 1, "val_loss": 0.5}], card_uri=card.as_uri())
    finally:
        server.close()

    assert not [s for s in server.seen if s[0] == "PUT"]
    assert server.seen[-1][1].endswith("/runs/update")  # the run still finishes
    report = tracker.report()
    assert report["mlflowRunId"] == "r1"
    assert report["mlflowReason"].startswith(f"the model card was not uploaded: the run's artifact URI {artifact_uri}")


def test_a_redirect_to_another_server_is_not_followed(tmp_path):
    catcher = Recorder("t")

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(307)
            self.send_header("Location", f"{catcher.url}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    redirector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{redirector.server_address[1]}"
    try:
        tracker = Tracker.from_env({"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_TOKEN": "secret"}, str(tmp_path))
        assert tracker is not None
        tracker.start(run_name="t", params={}, tags={})
    finally:
        redirector.shutdown()
        redirector.server_close()
        catcher.close()

    assert catcher.seen == []
    host = catcher.url.removeprefix("http://")
    assert tracker.report() == {
        "mlflowRunId": None,
        "mlflowReason": f"MLflow at {uri} redirected to another server (http://{host}); not followed",
    }


def test_a_wrong_token_stops_tracking_with_mlflows_answer(recorder, tmp_path):
    tracker = Tracker.from_env({"MLFLOW_TRACKING_URI": recorder.url, "MLFLOW_TRACKING_TOKEN": "wrong"}, str(tmp_path))
    assert tracker is not None
    tracker.start(run_name="t", params={}, tags={})
    tracker.log_history([{"epoch": 1, "val_loss": 0.5}])

    assert tracker.report()["mlflowRunId"] is None
    assert "UNAUTHENTICATED: a bearer token is required" in tracker.report()["mlflowReason"]
    assert len(recorder.seen) == 1  # no call after the first failure


def _certificate(subject: str, key: Any, issuer: x509.Name, signer: Any, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    """A real MLflow server serving https with a certificate of a CA made here: (URI, CA PEM)."""
    tmp = tmp_path_factory.mktemp("mlflow-tls")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelops test CA")])
    ca = _certificate("modelops test CA", ca_key, ca_name, ca_key, ca=True)
    cert = _certificate("127.0.0.1", key, ca_name, ca_key, ca=False)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    (tmp / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(cadata=ca_pem.decode())
    with mlflow_server(tmp, tls=(tmp / "tls.crt", tmp / "tls.key"), context=context) as uri:
        yield uri, ca_pem


def test_the_tracker_trusts_a_private_ca(tls_server, tmp_path):
    uri, ca_pem = tls_server
    (tmp_path / "ca.crt").write_bytes(ca_pem)
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_SERVER_CERT_PATH": str(tmp_path / "ca.crt")}
    card = tmp_path / "model.onnx.card.json"
    card.write_text('{"format": "modelops.modelcard/v1"}\n')
    tracker = Tracker.from_env(env, tmp_path.as_uri())
    assert tracker is not None

    tracker.start(run_name="tls", params={"epochs": "1"}, tags={})
    tracker.finish("FINISHED", history=[{"epoch": 1, "val_accuracy": 0.9}], card_uri=card.as_uri())

    assert tracker.report() == {"mlflowRunId": tracker.run_id}
    context = ssl.create_default_context(cadata=ca_pem.decode())
    run = get(uri, "runs/get", context, run_id=str(tracker.run_id))["run"]
    assert run["info"]["status"] == "FINISHED"
    assert artifact(uri, run, "model.onnx.card.json", context) == card.read_bytes()


def test_without_the_ca_the_tracker_stops_and_says_why(tls_server, tmp_path):
    uri, _ = tls_server
    tracker = Tracker.from_env({"MLFLOW_TRACKING_URI": uri}, tmp_path.as_uri())
    assert tracker is not None
    tracker.start(run_name="tls", params={}, tags={})

    assert tracker.report()["mlflowRunId"] is None
    assert "CERTIFICATE_VERIFY_FAILED" in tracker.report()["mlflowReason"]


def test_the_operator_registers_through_a_private_ca_from_a_secret(tls_server):
    uri, ca_pem = tls_server
    secret = {
        "metadata": {"name": "mlflow-ca", "namespace": "team-a"},
        "data": {"ca.crt": base64.b64encode(ca_pem).decode()},
    }
    context = ssl_context_from_secret(secret)

    version = register_model_version(uri, "tls-model", "s3://models/tls.onnx", digest="sha256:tls", context=context)
    assert version == "1"
    with pytest.raises(RegistryError, match="CERTIFICATE_VERIFY_FAILED"):
        register_model_version(uri, "tls-model", "s3://models/tls.onnx", digest="sha256:tls")


def test_a_ca_secret_without_a_certificate_is_refused_without_quoting_it():
    secret = {"metadata": {"name": "not-a-ca", "namespace": "team-a"}, "stringData": {"ca.crt": "password=hunter2"}}
    with pytest.raises(RegistryError) as caught:
        ssl_context_from_secret(secret)
    assert "hunter2" not in str(caught.value)
    assert str(caught.value).startswith("Secret team-a/not-a-ca key ca.crt is not a PEM certificate")
