"""``GET /openapi.json``: a valid OpenAPI 3.1 document that lists every route the server answers,
and whose schemas the real answers of a running server satisfy."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from modelops_server import openapi
from modelops_server.config import Settings
from modelops_server.dataplane import DataPlane
from modelops_server.metrics import Metrics
from modelops_server.server import build_app
from tests.support.serving import ServerProcess, image_bytes

MODEL = "tiny-cnn"


@pytest.fixture(scope="module")
def served(server: ServerProcess) -> dict[str, Any]:
    r = requests.get(f"{server.url}/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    return dict(r.json())


def test_the_document_is_valid_openapi(served: dict[str, Any]):
    validate(served)  # raises on any fault
    ids = [op["operationId"] for methods in served["paths"].values() for op in methods.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique (client generators name methods by them)"


@pytest.mark.parametrize("redis", [False, True], ids=["without-jobs", "with-jobs"])
def test_every_registered_route_is_described(redis: bool):
    """Built from the app the server runs: a route added without a description fails here, and the
    job routes are listed only where --redis-url registers them."""
    settings = Settings(model_uri="/m.onnx", redis_url="redis://127.0.0.1:1" if redis else None)
    metrics = Metrics()
    app = build_app(settings, DataPlane(settings, metrics), metrics)
    routes = openapi.registered(app)
    doc = openapi.document(app)
    listed = {(m.upper(), path) for path, methods in doc["paths"].items() for m in methods}
    assert routes == listed, f"undescribed: {routes - listed}; described but absent: {listed - routes}"
    assert (("POST", "/v1/jobs") in listed) is redis


def _check(served: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """Validate `body` against the document's schema for (path, method, status)."""
    response = served["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        response = served["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": served["components"]})
    errors = [e.message for e in validator.iter_errors(body)]
    assert not errors, (path, method, status, errors, body)


def test_real_answers_match_their_schemas(server: ServerProcess, served: dict[str, Any]):
    png = image_bytes(8)
    b64 = base64.b64encode(png).decode()
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}
    calls: list[tuple[str, str, str, dict[str, Any]]] = [
        ("get", "/v2/health/live", "/v2/health/live", {}),
        ("get", "/v2/health/ready", "/v2/health/ready", {}),
        ("get", "/v2", "/v2", {}),
        ("get", "/v2/models/{name}", f"/v2/models/{MODEL}", {}),
        ("get", "/v2/models/{name}/ready", f"/v2/models/{MODEL}/ready", {}),
        ("post", "/v2/models/{name}/infer", f"/v2/models/{MODEL}/infer", {"json": {"inputs": [tensor]}}),
        ("post", "/v2/repository/index", "/v2/repository/index", {"json": {}}),
        ("post", "/v1/models/{name}:classify", f"/v1/models/{MODEL}:classify", {"data": png}),
        ("post", "/v1/models/{name}:predict", f"/v1/models/{MODEL}:predict", {"json": {"instances": [{"b64": b64}]}}),
        ("get", "/v1/models", "/v1/models", {}),
        ("get", "/v1/models/{name}", f"/v1/models/{MODEL}", {}),
        ("post", "/predictions/{name}", f"/predictions/{MODEL}", {"data": png}),
        ("post", "/invocations", "/invocations", {"data": png}),
        ("get", "/ping", "/ping", {}),
        ("get", "/", "/", {}),
        # Errors, each in the document's Error schema.
        ("get", "/v2/models/{name}", "/v2/models/nope", {}),
        ("post", "/v1/models/{name}:classify", f"/v1/models/{MODEL}:classify", {"data": b"not an image"}),
        ("post", "/v2/models/{name}/infer", f"/v2/models/{MODEL}/infer", {"json": {"inputs": []}}),
    ]
    for method, template, path, kwargs in calls:
        r = requests.request(method, f"{server.url}{path}", timeout=30, **kwargs)
        assert r.status_code < 500, (path, r.status_code, r.text)
        assert str(r.status_code) in served["paths"][template][method]["responses"], (path, r.status_code)
        _check(served, template, method, r.status_code, r.json())
    # The schema can fail: an answer missing a required field is caught.
    with pytest.raises(AssertionError):
        _check(served, "/v1/models/{name}:classify", "post", 200, {"model_name": MODEL, "predictions": []})
