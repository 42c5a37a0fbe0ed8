"""The server's REST API as an OpenAPI 3.1 document, ``GET /openapi.json``.

For generating clients (openapi-generator, oapi-codegen), importing into Postman or Insomnia, and
reading in Swagger UI or Redoc: KServe's and MLServer's servers publish one, and TorchServe its own.
The document is built for the running app from the routes it has registered (the job routes only
with ``--redis-url``), so it never lists a path this server would answer with 404. The metadata
schemas come from the pydantic models the handlers answer with; ``tests/server/test_openapi.py``
checks the document against the OpenAPI schema, every registered route against it, and real answers
against their schemas.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from modelops_server import __version__
from modelops_server.protocol import ModelMetadata, ServerMetadata

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _object(required: list[str], description: str = "", **properties: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "object", "required": required, "properties": properties}
    if description:
        doc["description"] = description
    return doc


_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_NUMBER = {"type": "number"}
_PREDICTION = _object(
    ["label", "index", "score"],
    "One of the top-k classes: its label, its index in the model's output and its softmax probability.",
    label=_STR,
    index=_INT,
    score=_NUMBER,
)
_TENSOR = _object(
    ["name", "shape", "datatype"],
    "An Open Inference Protocol tensor; `data` holds its elements, flat or nested (absent when the "
    "binary data extension carries them).",
    name=_STR,
    shape={"type": "array", "items": _INT},
    datatype={"type": "string", "enum": ["FP32", "UINT8", "BYTES"]},
    parameters={"type": "object"},
    data={"type": "array"},
)

SCHEMAS: dict[str, Any] = {
    "Error": _object(["error"], "Every error, with the HTTP status that says its kind.", error=_STR),
    "Live": _object(["live"], live=_BOOL),
    "Ready": _object(["ready"], ready=_BOOL),
    "ModelReady": _object(["name", "ready"], name=_STR, version={"type": ["string", "null"]}, ready=_BOOL),
    "ServerMetadata": ServerMetadata.model_json_schema(),
    "ModelMetadata": ModelMetadata.model_json_schema(ref_template="#/components/schemas/{model}"),
    "InferenceRequest": _object(
        ["inputs"],
        "Open Inference Protocol request: one input, the model's FP32 tensor, UINT8 pixels or BYTES images.",
        id=_STR,
        parameters={"type": "object"},
        inputs={"type": "array", "items": _TENSOR, "minItems": 1},
        outputs={
            "type": "array",
            "items": _object(["name"], name=_STR, parameters={"type": "object"}),
        },
    ),
    "InferenceResponse": _object(
        ["model_name", "outputs"],
        model_name=_STR,
        model_version=_STR,
        id=_STR,
        parameters={"type": "object"},
        outputs={"type": "array", "items": _TENSOR},
    ),
    "Classification": _object(
        ["model_name", "model_version", "predictions"],
        "The top-k classes of one image; during an A/B experiment also the variant that answered and "
        "the request id to send its outcome to /v1/feedback with.",
        model_name=_STR,
        model_version=_STR,
        predictions={"type": "array", "items": _PREDICTION},
        variant=_STR,
        request_id=_STR,
    ),
    "PredictRequest": {
        "type": "object",
        "description": "KServe V1 (TF Serving's REST API): `instances` (or `inputs`), one per image: "
        '{"b64": "<base64>"}, an object with one such value under any key, {"data": "<base64>"}, '
        "a base64 string, or the normalised tensor nested as [C][S][S].",
        "properties": {"instances": {"type": "array", "minItems": 1}, "inputs": {"type": "array", "minItems": 1}},
        "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
    },
    "PredictResponse": _object(
        ["predictions", "model_name", "model_version"],
        predictions={"type": "array", "items": {"type": "array", "items": _PREDICTION}},
        model_name=_STR,
        model_version=_STR,
    ),
    "LabelScores": {
        "type": "object",
        "description": "TorchServe's image classifier answer: the top-k labels and their probabilities, "
        "in order of probability.",
        "additionalProperties": _NUMBER,
    },
    "Ping": _object(["status"], status={"type": "string", "enum": ["Healthy", "Unhealthy"]}),
    "RepositoryIndex": {
        "type": "array",
        "items": _object(
            ["name", "state"],
            name=_STR,
            version={"type": ["string", "null"]},
            state={"type": "string", "enum": ["READY", "UNAVAILABLE"]},
            reason={"type": ["string", "null"]},
        ),
    },
    "RepositoryChange": _object(
        ["name", "version"],
        name=_STR,
        version=_STR,
        digest=_STR,
        state={"type": "string", "enum": ["UNAVAILABLE"]},
    ),
    "Feedback": _object(
        ["requestId", "outcome"],
        requestId=_STR,
        outcome={"type": "string", "enum": ["success", "failure"]},
    ),
    "JobAccepted": _object(
        ["id", "status", "total", "url"],
        id=_STR,
        status={"type": "string", "enum": ["queued"]},
        total=_INT,
        url=_STR,
        source=_STR,
        output=_STR,
    ),
    "Job": _object(
        ["id", "status", "total", "done", "runs"],
        id=_STR,
        status={"type": "string", "enum": ["queued", "running", "completed", "failed"]},
        total=_INT,
        done=_INT,
        model_name={"type": ["string", "null"]},
        model_version={"type": ["string", "null"]},
        runs=_INT,
        error=_STR,
        kind={"type": "string", "enum": ["batch"]},
        source={"type": ["string", "null"]},
        output={"type": ["string", "null"]},
        results={"type": "array", "items": {"type": "object", "required": ["index"], "properties": {"index": _INT}}},
    ),
}
# pydantic puts a nested model's schema under $defs; the document keeps every schema in components.
SCHEMAS.update(SCHEMAS["ModelMetadata"].pop("$defs", {}))

_ERROR = {"$ref": "#/components/responses/Error"}
_ERRORS = {"400": _ERROR, "404": _ERROR, "503": {"$ref": "#/components/responses/Unavailable"}}
_IMAGE_BODY = {
    "required": True,
    "description": "The image's bytes (JPEG, PNG, WebP, BMP, GIF) as the body, or one file upload.",
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
        },
    },
}
_TOP_K = {
    "name": "top_k",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
    "description": "How many classes to answer with.",
}


def _op(summary: str, responses: dict[str, Any], tag: str, **more: Any) -> dict[str, Any]:
    return {"summary": summary, "tags": [tag], "responses": {**responses, **more.pop("errors", {})}, **more}


def _image_op(summary: str, answer: str, tag: str) -> dict[str, Any]:
    """An operation that takes one image and answers its top-k classes as the schema `answer`."""
    return _op(
        summary,
        {"200": _json(_ref(answer), "The top-k classes")},
        tag,
        requestBody=_IMAGE_BODY,
        parameters=[_TOP_K],
        errors={**_ERRORS, "413": _ERROR, "415": _ERROR},
    )


def _operations() -> dict[tuple[str, str], dict[str, Any]]:
    """Every operation the server can have, by (method, path)."""
    oip, v1, ts, ops = "Open Inference Protocol", "KServe V1", "TorchServe and SageMaker", "Operations"
    infer = _op(
        "Inference (JSON, or JSON plus binary data with Inference-Header-Content-Length)",
        {
            "200": {
                "description": "The outputs",
                "content": {
                    JSON: {"schema": _ref("InferenceResponse")},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
        oip,
        requestBody={
            "required": True,
            "content": {
                JSON: {"schema": _ref("InferenceRequest")},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        errors={**_ERRORS, "413": _ERROR},
    )
    metadata = _op("Model metadata", {"200": _json(_ref("ModelMetadata"), "The model's metadata")}, oip, errors=_ERRORS)
    model_ready = _op(
        "Model readiness (503 while not ready)", {"200": _json(_ref("ModelReady"), "Ready")}, oip, errors=_ERRORS
    )
    predictions = _image_op("TorchServe's inference API: one image → {label: probability}", "LabelScores", ts)
    classify = _image_op("One image → its top-k classes", "Classification", v1)
    control = {"403": _ERROR, **_ERRORS}
    return {
        ("GET", "/v2/health/live"): _op("Liveness", {"200": _json(_ref("Live"), "The process answers")}, oip),
        ("GET", "/v2/health/ready"): _op(
            "Readiness (503 while loading or draining)", {"200": _json(_ref("Ready"), "Ready")}, oip, errors=_ERRORS
        ),
        ("GET", "/v2"): _op("Server metadata", {"200": _json(_ref("ServerMetadata"), "The server")}, oip),
        ("GET", "/v2/models/{name}"): metadata,
        ("GET", "/v2/models/{name}/versions/{version}"): metadata,
        ("GET", "/v2/models/{name}/ready"): model_ready,
        ("GET", "/v2/models/{name}/versions/{version}/ready"): model_ready,
        ("POST", "/v2/models/{name}/infer"): infer,
        ("POST", "/v2/models/{name}/versions/{version}/infer"): infer,
        ("POST", "/v2/repository/index"): _op(
            "The model repository's index",
            {"200": _json(_ref("RepositoryIndex"), "The served model and its state")},
            oip,
            requestBody={"content": {JSON: {"schema": _object([], ready=_BOOL)}}},
        ),
        ("POST", "/v2/repository/models/{name}/load"): _op(
            "Load, hot-swap or reload the model (with --enable-model-control and its bearer token)",
            {"200": _json(_ref("RepositoryChange"), "The model now serving")},
            ops,
            requestBody={"content": {JSON: {"schema": _object([], parameters={"type": "object"})}}},
            errors=control,
        ),
        ("POST", "/v2/repository/models/{name}/unload"): _op(
            "Unload the model (with --enable-model-control and its bearer token)",
            {"200": _json(_ref("RepositoryChange"), "The model unloaded")},
            ops,
            errors=control,
        ),
        ("POST", "/v1/models/{name}:classify"): classify,
        ("POST", "/v1/models/{name}:predict"): _op(
            "KServe V1 predict: instances → one top-k list each",
            {"200": _json(_ref("PredictResponse"), "The top-k classes of each instance, in order")},
            v1,
            requestBody={"required": True, "content": {JSON: {"schema": _ref("PredictRequest")}}},
            parameters=[_TOP_K],
            errors=_ERRORS,
        ),
        ("GET", "/v1/models"): _op(
            "The models served",
            {"200": _json(_object(["models"], models={"type": "array", "items": _STR}), "Their names")},
            v1,
        ),
        ("GET", "/v1/models/{name}"): _op(
            "Model readiness (503 while not ready)",
            {"200": _json(_object(["name", "ready"], name=_STR, ready=_BOOL), "Ready")},
            v1,
            errors=_ERRORS,
        ),
        ("POST", "/predictions/{name}"): predictions,
        ("PUT", "/predictions/{name}"): predictions,
        ("POST", "/predictions/{name}/{version}"): predictions,
        ("PUT", "/predictions/{name}/{version}"): predictions,
        ("POST", "/invocations"): {**predictions, "summary": "SageMaker's invocations: as /predictions/{name}"},
        ("GET", "/ping"): _op(
            "Health (503 Unhealthy while no model is loaded or the server drains)",
            {"200": _json(_ref("Ping"), "Healthy")},
            ts,
            errors={"503": _json(_ref("Ping"), "Unhealthy")},
        ),
        ("POST", "/v1/feedback"): _op(
            "An A/B experiment's outcome of a prediction, by its request id",
            {"204": {"description": "Counted"}},
            v1,
            requestBody={"required": True, "content": {JSON: {"schema": _ref("Feedback")}}},
            errors=_ERRORS,
        ),
        ("POST", "/v1/jobs"): _op(
            "Submit an asynchronous job: images, or a batch over a folder or Dataset version",
            {"202": _json(_ref("JobAccepted"), "Queued")},
            v1,
            requestBody={
                "required": True,
                "content": {
                    JSON: {"schema": {"type": "object"}},
                    "multipart/form-data": {"schema": {"type": "object"}},
                },
            },
            errors=_ERRORS,
        ),
        ("GET", "/v1/jobs/{job_id}"): _op(
            "A job's status, progress and results",
            {"200": _json(_ref("Job"), "The job")},
            v1,
            parameters=[{"name": "results", "in": "query", "schema": {"type": "boolean"}}],
            errors=_ERRORS,
        ),
        ("GET", "/"): _op(
            "The web page to a browser (Accept: text/html); KServe V1 liveness to other clients",
            {
                "200": {
                    "description": "The page, or {status: alive}",
                    "content": {
                        "text/html": {"schema": _STR},
                        JSON: {"schema": _object(["status"], status={"type": "string", "enum": ["alive"]})},
                    },
                }
            },
            ops,
        ),
        ("GET", "/metrics"): _op(
            "Prometheus metrics",
            {"200": {"description": "The exposition", "content": {"text/plain": {"schema": _STR}}}},
            ops,
        ),
        ("GET", "/openapi.json"): _op(
            "This document", {"200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {}}}}}, ops
        ),
    }


def registered(app: web.Application) -> set[tuple[str, str]]:
    """The (method, path) pairs the app answers, paths as OpenAPI writes them (``{name}``, not
    aiohttp's ``{name:regex}``); HEAD, which aiohttp adds to every GET, left out."""
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method != "HEAD":
            out.add((route.method, re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)))
    return out


def document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document of `app`: the operations it has registered."""
    operations = _operations()
    paths: dict[str, dict[str, Any]] = {}
    for method, path in sorted(registered(app), key=lambda mp: (mp[1], mp[0])):
        operation = operations.get((method, path))
        if operation is None:
            continue
        names = re.findall(r"\{(\w+)\}", path)
        params = [{"name": n, "in": "path", "required": True, "schema": _STR} for n in names]
        op = {**operation, "operationId": _operation_id(method, path)}
        op["parameters"] = params + operation.get("parameters", [])
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelops inference server",
            "version": __version__,
            "description": "One ONNX image classifier over the Open Inference Protocol, KServe's V1 "
            "protocol, TorchServe's and SageMaker's inference APIs, and a one-call image endpoint. "
            'Every error is {"error": "<message>"}; 503s carry Retry-After.',
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                "Error": _json(_ref("Error"), "The request cannot be answered; the message says why"),
                "Unavailable": {
                    **_json(_ref("Error"), "Not ready, draining or overloaded: retry after the header's seconds"),
                    "headers": {"Retry-After": {"schema": _INT}},
                },
            },
        },
    }


def _operation_id(method: str, path: str) -> str:
    """``postV2ModelsNameInfer`` for ``POST /v2/models/{name}/infer``; ``getIndex`` for ``/``."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", path) if w] or ["index"]
    return method.lower() + "".join(w[:1].upper() + w[1:] for w in words)
