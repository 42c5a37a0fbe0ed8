"""A/B experiments on real server processes: two ONNX models exported with different seeds served
side by side, sticky assignment by the contract's hash rule, routing (REST and gRPC), the variant
headers and request ids, feedback and the experiment counters, and refusals at start.

The assignment rule is written here again from the contract (``expected_variant``), independently
of the server's code, so that a server that assigns differently fails these tests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
import requests

from modelops_server.config import load_settings
from modelops_server.proto import grpc_predict_v2_pb2 as pb
from modelops_server.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.support.serving import (
    CLASSES,
    LIVENESS_S,
    SIZE,
    ExportedModel,
    ServerProcess,
    export_model,
    image_bytes,
    metric_value,
    normalise,
    pixels_of,
    write_card,
)

MODEL = "tiny-cnn"
EXPERIMENT = "checkout-2026-12"
KEY_HEADER = "X-User-Id"  # mixed case: REST headers are case-insensitive, gRPC metadata is lower case
WEIGHTS = {"control": 70, "b": 30}
VERSIONS = {"control": "digits:v1", "b": "digits:v2"}
REQUEST_ID = re.compile(r"^(control|b)\.[0-9a-f]{32}$")
TOKEN = "t0ken-for-the-experiment-tests"
PNG = image_bytes(5)


def experiment_json(control: ExportedModel, b: ExportedModel, *, name: str = EXPERIMENT) -> str:
    variants = [
        {"name": "control", "uri": str(control.path), "digest": control.digest, "version": VERSIONS["control"]},
        {"name": "b", "uri": str(b.path), "digest": b.digest, "version": VERSIONS["b"]},
    ]
    for v in variants:
        v["weight"] = WEIGHTS[v["name"]]
    return json.dumps({"name": name, "keyHeader": KEY_HEADER, "variants": variants})


def expected_variant(key: str, name: str = EXPERIMENT) -> str:
    """The contract's rule, written independently of the server."""
    bucket = int(hashlib.sha256(f"{name}\0{key}".encode()).hexdigest()[:8], 16) % 100
    return "control" if bucket < WEIGHTS["control"] else "b"


def key_for(variant: str) -> str:
    return next(k for k in (f"user-{i}" for i in range(1000)) if expected_variant(k) == variant)


def start_ab_server(log_dir: Path, control: ExportedModel, b: ExportedModel) -> ServerProcess:
    return ServerProcess(
        model=control.path,
        args=[
            *("--model-digest", control.digest, "--model-version", VERSIONS["control"]),
            *("--experiment", experiment_json(control, b), "--enable-model-control"),
        ],
        env={"MODELOPS_MODEL_CONTROL_TOKEN": TOKEN},
    ).start(log_dir)


@pytest.fixture(scope="module")
def ab(model_v1: ExportedModel, model_v2: ExportedModel, tmp_path_factory: pytest.TempPathFactory):
    server = start_ab_server(tmp_path_factory.mktemp("ab-server"), model_v1, model_v2)
    yield server
    assert server.stop() == 0, server.logs()


def classify(server: ServerProcess, key: str | None = None) -> requests.Response:
    headers = {"Content-Type": "image/png", **({KEY_HEADER: key} if key is not None else {})}
    return requests.post(f"{server.url}/v1/models/{MODEL}:classify?top_k=5", data=PNG, headers=headers, timeout=60)


def log_messages(server: ServerProcess) -> list[str]:
    return [json.loads(line)["message"] for line in server.logs().splitlines() if line.startswith("{")]


def metrics(server: ServerProcess) -> str:
    return requests.get(f"{server.url}/metrics", timeout=10).text


# --- the setting -------------------------------------------------------------------------------------


def _exp(**change: object) -> str:
    doc: dict[str, object] = {
        "name": "e",
        "keyHeader": "x-user-id",
        "variants": [
            {"name": "control", "uri": "/m1.onnx", "version": "v1", "weight": 50},
            {"name": "b", "uri": "/m2.onnx", "version": "v2", "weight": 50},
        ],
    }
    return json.dumps({**doc, **change})


def _variants(*weights: int, names: tuple[str, ...] = ("control", "b", "c", "d", "e"), same_version: bool = False):
    return [
        {"name": n, "uri": f"/m{i}.onnx", "version": "v" if same_version else f"v{i}", "weight": w}
        for i, (n, w) in enumerate(zip(names, weights, strict=False))
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("{not json", "the experiment is not valid JSON"),
        ("[1, 2]", "the experiment is a JSON object"),
        (_exp(variants=_variants(100)), "List should have at least 2 items"),
        (_exp(variants=_variants(20, 20, 20, 20, 20)), "List should have at most 4 items"),
        (_exp(variants=_variants(60, 30)), "the variants' weights must sum to 100, not 90"),
        (_exp(variants=_variants(100, 0)), "Input should be greater than 0"),
        (_exp(variants=_variants(50, 50, names=("b", "b"))), "the variants' names must be unique; repeated: b"),
        (_exp(variants=_variants(50, 50, same_version=True)), "the variants' versions must be unique; repeated: v"),
        (_exp(variants=_variants(50, 50, names=("Control", "b"))), "String should match pattern"),
        (_exp(keyHeader="x-key-bin"), "keyHeader must not end in -bin"),
        (_exp(keyHeader="x user"), "String should match pattern"),
        (_exp(keyHeaders="x"), "Extra inputs are not permitted"),
    ],
    ids=[
        "not-json",
        "not-object",
        "one-variant",
        "five-variants",
        "weights-90",
        "weight-0",
        "same-names",
        "same-versions",
        "bad-name",
        "bin-header",
        "space-in-header",
        "misspelt-field",
    ],
)
def test_a_malformed_experiment_exits_2_naming_the_flag(capsys: pytest.CaptureFixture[str], value: str, problem: str):
    with pytest.raises(SystemExit) as exit_:
        load_settings(["--model-uri", "x", "--experiment", value], environ={})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--experiment" in err and problem in err, err


def test_the_server_process_exits_2_on_a_malformed_experiment_from_the_environment(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "modelops_server", "--model-uri", str(tmp_path / "m.onnx")],
        env={**os.environ, "MODELOPS_EXPERIMENT": _exp(variants=_variants(60, 30))},
        capture_output=True,
        text=True,
        timeout=LIVENESS_S,
        check=False,
    )
    assert done.returncode == 2
    assert "--experiment" in done.stderr and "the variants' weights must sum to 100, not 90" in done.stderr


def test_an_empty_experiment_is_none():
    assert load_settings(["--model-uri", "x"], environ={"MODELOPS_EXPERIMENT": ""}).experiment is None


# --- refusals at start -------------------------------------------------------------------------------


@pytest.mark.parametrize("difference", ["classes", "input-size"])
def test_variants_whose_cards_disagree_refuse_to_start(
    tmp_path: Path, model_v1: ExportedModel, model_v2: ExportedModel, difference: str
):
    if difference == "input-size":
        other = export_model(tmp_path / "big", seed=3, size=48)
        words = "input.imageSize: 32 vs 48"
    else:
        path = tmp_path / "other" / "model.onnx"
        path.parent.mkdir()
        path.write_bytes(model_v2.path.read_bytes())
        write_card(path, model_v2.digest, name=MODEL, classes=[*CLASSES[:-1], "newt"])
        other = ExportedModel(path, model_v2.digest, model_v2.torch_model)
        words = 'classes: ["cat","dog","bird","fish","frog"] vs ["cat","dog","bird","fish","newt"]'
    server = ServerProcess(model=model_v1.path, args=["--experiment", experiment_json(model_v1, other)])
    server.start(tmp_path, wait_ready=False)
    assert server.proc is not None and server.proc.wait(LIVENESS_S) == 1
    logs = "\n".join(log_messages(server))
    assert "experiment variants 'control' and 'b' disagree on their model cards" in logs, logs
    assert words in logs, logs


@pytest.mark.parametrize("failure", ["wrong-digest", "not-onnx"])
def test_a_variant_that_cannot_load_is_named_and_nothing_serves(
    tmp_path: Path, model_v1: ExportedModel, model_v2: ExportedModel, failure: str
):
    doc = json.loads(experiment_json(model_v1, model_v2))
    if failure == "wrong-digest":
        doc["variants"][1]["digest"] = "sha256:" + "0" * 64
        words = "refusing to load it"
    else:  # a file ONNX Runtime cannot open, beside a card that names its digest: the workers refuse it
        path = tmp_path / "broken" / "model.onnx"
        path.parent.mkdir()
        path.write_bytes(b"not an onnx model")
        digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        write_card(path, digest, name=MODEL)
        doc["variants"][1].update(uri=str(path), digest=digest)
        words = "experiment variant 'b': "
    server = ServerProcess(model=model_v1.path, args=["--experiment", json.dumps(doc)]).start(
        tmp_path, wait_ready=False
    )
    assert server.proc is not None
    ready_seen = False
    while server.proc.poll() is None:
        try:
            ready_seen |= requests.get(f"{server.url}/v2/health/ready", timeout=2).status_code == 200
        except requests.RequestException:
            time.sleep(0.05)
    assert server.proc.returncode == 1 and not ready_seen
    failed = [m for m in log_messages(server) if m.startswith("cannot serve the model: experiment variant 'b': ")]
    assert failed and words in failed[0], server.logs()


# --- assignment ----------------------------------------------------------------------------------------


def test_assignment_is_sticky_and_the_same_on_two_server_processes(
    ab: ServerProcess, model_v1: ExportedModel, model_v2: ExportedModel, tmp_path: Path
):
    other = start_ab_server(tmp_path, model_v1, model_v2)
    try:
        keys = [f"sticky-{i}" for i in range(40)]
        seen = {
            server.port: [classify(server, key).headers["x-modelops-variant"] for key in keys]
            for server in (ab, other, ab)
        }
        again = [classify(ab, key).headers["x-modelops-variant"] for key in keys]
    finally:
        assert other.stop() == 0, other.logs()
    expected = [expected_variant(k) for k in keys]
    assert seen[ab.port] == again == seen[other.port] == expected
    assert set(expected) == {"control", "b"}


def test_the_split_over_2000_random_keys_is_within_3_points_of_the_weights(ab: ServerProcess):
    rng = np.random.default_rng(2026)
    keys = [rng.bytes(12).hex() for _ in range(2000)]
    before = metrics(ab)

    async def run() -> list[tuple[int, str]]:
        limit = asyncio.Semaphore(16)
        url = f"{ab.url}/v1/models/{MODEL}:classify?top_k=1"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

            async def one(key: str) -> tuple[int, str]:
                async with (
                    limit,
                    session.post(url, data=PNG, headers={"Content-Type": "image/png", KEY_HEADER: key}) as r,
                ):
                    await r.read()
                    return r.status, r.headers["x-modelops-variant"]

            return await asyncio.gather(*(one(k) for k in keys))

    results = asyncio.run(run())
    assert all(status == 200 for status, _ in results)
    variants = [v for _, v in results]
    assert variants == [expected_variant(k) for k in keys]
    share = variants.count("control") / len(variants)
    assert abs(share - 0.70) <= 0.03, share
    after = metrics(ab)
    for variant in ("control", "b"):  # the existing series are per variant, by its version
        labels = {"model": MODEL, "version": VERSIONS[variant], "endpoint": "classify", "code": "200"}
        answered = metric_value(after, "modelops_requests_total", **labels)
        assert answered - metric_value(before, "modelops_requests_total", **labels) == variants.count(variant)
    for variant in ("control", "b"):
        grown = metric_value(after, "modelops_experiment_requests_total", variant=variant, keyed="true") - metric_value(
            before, "modelops_experiment_requests_total", variant=variant, keyed="true"
        )
        assert grown == variants.count(variant)


def test_requests_without_a_key_are_served_and_counted_unkeyed(ab: ServerProcess):
    before = metric_value(metrics(ab), "modelops_experiment_requests_total", experiment=EXPERIMENT, keyed="false")
    answers = [classify(ab) for _ in range(12)]
    assert [r.status_code for r in answers] == [200] * 12
    assert all(r.headers["x-modelops-variant"] in WEIGHTS for r in answers)
    after = metric_value(metrics(ab), "modelops_experiment_requests_total", experiment=EXPERIMENT, keyed="false")
    assert after - before == 12


# --- routing and answers -------------------------------------------------------------------------------


def test_each_variant_answers_with_its_own_models_top_class(
    ab: ServerProcess, model_v1: ExportedModel, model_v2: ExportedModel
):
    batch = np.random.default_rng(11).standard_normal((16, 3, SIZE, SIZE)).astype(np.float32)
    own = {"control": model_v1.logits(batch).argmax(1), "b": model_v2.logits(batch).argmax(1)}
    assert (own["control"] != own["b"]).any()  # the two models differ on this batch, so routing shows
    body = {
        "inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}]
    }
    for variant in ("control", "b"):
        r = requests.post(
            f"{ab.url}/v2/models/{MODEL}/infer", json=body, headers={KEY_HEADER: key_for(variant)}, timeout=60
        )
        assert r.status_code == 200, r.text
        doc = r.json()
        assert r.headers["x-modelops-variant"] == variant and doc["model_version"] == VERSIONS[variant]
        logits = np.array(doc["outputs"][0]["data"], dtype=np.float32).reshape(16, -1)
        assert (logits.argmax(1) == own[variant]).all()
    # A version asked for by name is served by that variant, whatever the key.
    r = requests.post(
        f"{ab.url}/v2/models/{MODEL}/versions/{VERSIONS['b']}/infer",
        json=body,
        headers={KEY_HEADER: key_for("control")},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["x-modelops-variant"] == "b" and r.json()["model_version"] == "digits:v2"
    image = normalise(pixels_of(PNG))[None]
    for variant, model in (("control", model_v1), ("b", model_v2)):
        doc = classify(ab, key_for(variant)).json()
        assert doc["predictions"][0]["label"] == CLASSES[int(model.logits(image).argmax())]


def test_answers_carry_the_variant_and_a_fresh_request_id(ab: ServerProcess):
    answers = [classify(ab, key_for("b")) for _ in range(3)] + [classify(ab, key_for("control"))]
    ids = [r.headers["x-modelops-request-id"] for r in answers]
    assert all(REQUEST_ID.match(i) for i in ids) and len(set(ids)) == 4
    for r in answers:
        doc, variant = r.json(), r.headers["x-modelops-variant"]
        assert doc["variant"] == variant and doc["request_id"] == r.headers["x-modelops-request-id"]
        assert doc["request_id"].startswith(variant + ".") and doc["model_version"] == VERSIONS[variant]
    assert [r.headers["x-modelops-variant"] for r in answers] == ["b", "b", "b", "control"]


def test_grpc_routes_by_the_metadata_key_and_answers_with_metadata(
    ab: ServerProcess, model_v1: ExportedModel, model_v2: ExportedModel
):
    batch = np.random.default_rng(12).standard_normal((8, 3, SIZE, SIZE)).astype(np.float32)
    request = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="input",
                datatype="FP32",
                shape=list(batch.shape),
                contents=pb.InferTensorContents(fp32_contents=batch.ravel().tolist()),
            )
        ],
    )
    with grpc.insecure_channel(ab.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for variant, model in (("control", model_v1), ("b", model_v2)):
            response, call = stub.ModelInfer.with_call(
                request, metadata=((KEY_HEADER.lower(), key_for(variant)),), timeout=60
            )
            meta = dict(call.initial_metadata())
            assert meta["x-modelops-variant"] == variant and REQUEST_ID.match(meta["x-modelops-request-id"])
            assert meta["x-modelops-request-id"].startswith(variant + ".")
            assert response.model_version == VERSIONS[variant]
            got = np.array(response.outputs[0].contents.fp32_contents, dtype=np.float32).reshape(8, -1)
            np.testing.assert_allclose(got, model.logits(batch), rtol=1e-4, atol=1e-4)


def test_the_index_and_metadata_list_every_variant_and_hot_swaps_are_refused(
    ab: ServerProcess, model_v2: ExportedModel
):
    index = requests.post(f"{ab.url}/v2/repository/index", json={}, timeout=10).json()
    assert {(e["version"], e["state"]) for e in index} == {("digits:v1", "READY"), ("digits:v2", "READY")}
    assert requests.get(f"{ab.url}/v2/models/{MODEL}", timeout=10).json()["versions"] == ["digits:v1", "digits:v2"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    load = requests.post(
        f"{ab.url}/v2/repository/models/{MODEL}/load",
        json={"parameters": {"uri": str(model_v2.path), "digest": model_v2.digest}},
        headers=auth,
        timeout=60,
    )
    assert load.status_code == 409
    assert f"cannot load a model while the A/B experiment '{EXPERIMENT}' runs" in load.json()["error"]
    unload = requests.post(f"{ab.url}/v2/repository/models/{MODEL}/unload", json={}, headers=auth, timeout=60)
    assert unload.status_code == 409 and "cannot unload a model" in unload.json()["error"]
    with grpc.insecure_channel(ab.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name=MODEL), metadata=(("authorization", f"Bearer {TOKEN}"),)
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert classify(ab, "after-refusals").status_code == 200


# --- feedback ------------------------------------------------------------------------------------------


def test_feedback_counts_the_outcome_for_the_variant_its_id_names(ab: ServerProcess):
    outcomes = "modelops_experiment_outcomes_total"
    before = metrics(ab)
    b_id = classify(ab, key_for("b")).headers["x-modelops-request-id"]
    control_id = classify(ab, key_for("control")).headers["x-modelops-request-id"]
    for request_id, outcome in ((b_id, "success"), (b_id, "success"), (control_id, "failure")):
        r = requests.post(f"{ab.url}/v1/feedback", json={"requestId": request_id, "outcome": outcome}, timeout=10)
        assert r.status_code == 204, r.text
    after = metrics(ab)

    def grown(variant: str, outcome: str) -> float:
        labels = {"experiment": EXPERIMENT, "variant": variant, "outcome": outcome}
        return metric_value(after, outcomes, **labels) - metric_value(before, outcomes, **labels)

    assert (grown("b", "success"), grown("b", "failure"), grown("control", "success"), grown("control", "failure")) == (
        2,
        0,
        0,
        1,
    )


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "Invalid JSON"),
        (json.dumps({"requestId": "b.123", "outcome": "success"}).encode(), 400, "requestId must be <variant>.<32"),
        (json.dumps({"requestId": "b." + "0" * 32, "outcome": "clicked"}).encode(), 400, "outcome: Input should be"),
        (json.dumps({"requestId": "b." + "0" * 32}).encode(), 400, "outcome: Field required"),
        (json.dumps({"requestId": "zz." + "0" * 32, "outcome": "success"}).encode(), 404, "variant 'zz' is not in"),
    ],
    ids=["not-json", "malformed-id", "unknown-outcome", "no-outcome", "unknown-variant"],
)
def test_bad_feedback_is_refused_with_its_reason(ab: ServerProcess, body: bytes, status: int, words: str):
    before = metric_value(metrics(ab), "modelops_experiment_outcomes_total")
    r = requests.post(f"{ab.url}/v1/feedback", data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == status and words in r.json()["error"], r.text
    assert metric_value(metrics(ab), "modelops_experiment_outcomes_total") == before


def test_feedback_without_an_experiment_is_404(server: ServerProcess):
    r = requests.post(
        f"{server.url}/v1/feedback", json={"requestId": "control." + "a" * 32, "outcome": "success"}, timeout=10
    )
    assert r.status_code == 404 and "no A/B experiment runs on this server" in r.json()["error"]
    answer = requests.post(
        f"{server.url}/v1/models/{MODEL}:classify", data=PNG, headers={"Content-Type": "image/png"}, timeout=60
    )
    assert "x-modelops-variant" not in answer.headers and "variant" not in answer.json()


def test_feedback_is_json_only(ab: ServerProcess):
    body = base64.b64encode(b"requestId=b.x").decode()
    r = requests.post(f"{ab.url}/v1/feedback", data=body, headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 415 and "application/json" in r.json()["error"]


def test_a_restarted_worker_serves_every_variant_again(
    tmp_path: Path, model_v1: ExportedModel, model_v2: ExportedModel
):
    server = start_ab_server(tmp_path, model_v1, model_v2)
    try:
        (pid,) = server.worker_pids()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + LIVENESS_S
        while metric_value(metrics(server), "modelops_worker_restarts_total") < 1:
            assert time.monotonic() < deadline, server.logs()
            time.sleep(0.05)
        server.wait_ready()  # the replacement is ready once it holds every variant, not the control alone
        for variant in ("b", "control"):
            r = classify(server, key_for(variant))
            assert r.status_code == 200 and r.headers["x-modelops-variant"] == variant, r.text
    finally:
        assert server.stop() == 0, server.logs()
