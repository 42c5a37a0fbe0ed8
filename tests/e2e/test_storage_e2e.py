"""A ModelDeployment serving an `s3://` model on the local cluster: a real S3 server (moto's, as a
host process on the node's address, which pods reach), the credentials in a Secret the admin
allowed (`settings.workloadSecrets`) given to the server pods through `spec.podSettings.envFrom`,
and a classification through the Service."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import requests

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import NODE_IP, ON_LOCAL_NODE, OperatorProcess, apply, get, status, wait_until
from tests.support.s3 import S3Server
from tests.support.serving import CLASSES, export_model, image_bytes, normalise, pixels_of, softmax

pytestmark = pytest.mark.localnode

SECRET = "s3-models"


@pytest.fixture
def s3() -> Iterator[S3Server]:
    """moto's S3 on the node's address (the pod bridge's gateway), on a free port."""
    server = S3Server(host=NODE_IP).start()
    yield server
    server.stop()


def ready(custom, namespace: str, name: str) -> dict | None:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", name)
    cond = next((x for x in (obj.get("status") or {}).get("conditions", []) if x["type"] == c.READY), None)
    return cond if cond and cond["status"] == "True" else None


def test_a_model_on_s3_is_served_with_credentials_from_an_allowed_secret(operator, custom, namespace, s3, tmp_path):
    model = export_model(tmp_path / "model", seed=3, name="digits")
    fs = s3.bucket("models")
    fs.put(str(model.path), "models/digits/v1/model.onnx")
    fs.put(f"{model.path}.card.json", "models/digits/v1/model.onnx.card.json")
    apply(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET},
            "type": "Opaque",
            "stringData": s3.env,  # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION
        },
    )
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "digits"},
        "spec": {
            "model": {"uri": "s3://models/digits/v1/model.onnx", "digest": model.digest},
            "server": {"placement": ON_LOCAL_NODE, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
            "podSettings": {"envFrom": [{"secretRef": {"name": SECRET}}]},
        },
    }
    operator.stop()  # the session's operator allows no Secret; this one allows the test's
    allowing = OperatorProcess(operator.kubeconfig, MODELOPS_WORKLOAD_SECRETS=SECRET)
    try:
        allowing.start()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", body)
        wait_until("the ModelDeployment to be Ready", lambda: ready(custom, namespace, "digits"), timeout=300)
        st = status(custom, namespace, "modeldeployments", "digits")
        assert st["stable"]["digest"] == model.digest and st["readyReplicas"] >= 1, st

        # Through the Service, as a client in the cluster would (this machine reaches Service
        # addresses; kube-proxy's rules follow a ready pod a moment later, so a refusal is retried).
        ip = get(namespace, "service", "digits")["spec"]["clusterIP"]
        img = image_bytes(11)

        def classify() -> list[requests.Response] | None:  # a list: a Response is falsy when not ok
            try:
                return [
                    requests.post(
                        f"http://{ip}/v1/models/digits:classify",
                        files={"file": ("x.png", img, "image/png")},
                        timeout=30,
                    )
                ]
            except requests.ConnectionError:
                return None

        [answer] = wait_until("a classification through the Service", classify, timeout=60)
        assert answer.status_code == 200, answer.text
        want = softmax(model.logits(normalise(pixels_of(img))[None])[0])
        top = answer.json()["predictions"][0]
        assert top["label"] == CLASSES[int(np.argmax(want))]
        assert top["score"] == pytest.approx(float(want.max()), abs=1e-5)
    finally:
        allowing.stop()
        operator.start()
