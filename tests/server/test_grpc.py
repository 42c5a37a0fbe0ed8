"""The gRPC endpoint with the project's own generated stub (grpcio in .venv): health, limits,
overload, metrics and the repository's effect on health. Other projects' gRPC clients are in
test_clients.py."""

from __future__ import annotations

import time
from concurrent.futures import Future
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelops_server.grpc_server import SERVICE, route
from modelops_server.proto import grpc_predict_v2_pb2 as pb
from modelops_server.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.support.serving import (
    LIVENESS_S,
    SIZE,
    ExportedModel,
    ServerProcess,
    image_bytes,
    metric_value,
    wait_for_depth,
)

MODEL = "tiny-cnn"
TOKEN = "t0ken-for-the-grpc-health-tests"
Tensor = pb.ModelInferRequest.InferInputTensor


def stub(server: ServerProcess) -> pb_grpc.GRPCInferenceServiceStub:
    channel = grpc.insecure_channel(
        server.grpc_target, options=[("grpc.max_send_message_length", -1), ("grpc.enable_retries", 0)]
    )
    return pb_grpc.GRPCInferenceServiceStub(channel)


def health_of(server: ServerProcess, service: str) -> int:
    with grpc.insecure_channel(server.grpc_target) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        )


def fp32_request(batch: np.ndarray, **fields) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[Tensor(name="input", datatype="FP32", shape=list(batch.shape))],
        raw_input_contents=[batch.tobytes()],
        **fields,
    )


def test_route_reads_the_model_name_and_version_from_the_wire():
    batch = np.zeros((1, 3, SIZE, SIZE), dtype=np.float32)
    msg = fp32_request(batch, model_version="v7", id="x")
    assert route(msg.SerializeToString()) == (MODEL, "v7")
    assert route(pb.ModelInferRequest(id="only-an-id").SerializeToString()) == ("", "")
    with pytest.raises(Exception, match="malformed ModelInferRequest"):
        route(msg.SerializeToString()[:-10])  # a length-delimited field cut short


def test_health_liveness_and_readiness(server: ServerProcess):
    assert health_of(server, "") == health_pb2.HealthCheckResponse.SERVING
    assert health_of(server, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        health_of(server, "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_typed_contents_fp32_and_uint8(server: ServerProcess, model_v1: ExportedModel):
    from tests.support.serving import normalise, pixels_of  # noqa: PLC0415

    batch = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    request = pb.ModelInferRequest(
        model_name=MODEL,
        id="typed-1",
        inputs=[
            Tensor(
                name="input",
                datatype="FP32",
                shape=list(batch.shape),
                contents=pb.InferTensorContents(fp32_contents=batch.ravel().tolist()),
            )
        ],
    )
    response = stub(server).ModelInfer(request, timeout=60)
    assert response.id == "typed-1" and len(response.raw_output_contents) == 0
    got = np.array(response.outputs[0].contents.fp32_contents, dtype=np.float32).reshape(2, -1)
    np.testing.assert_allclose(got, model_v1.logits(batch), rtol=1e-4, atol=1e-4)
    pixels = pixels_of(image_bytes(61))[None]
    request = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[
            Tensor(
                name="pixels",
                datatype="UINT8",
                shape=list(pixels.shape),
                contents=pb.InferTensorContents(uint_contents=pixels.ravel().tolist()),
            )
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")],
    )
    response = stub(server).ModelInfer(request, timeout=60)
    got = np.array(response.outputs[0].contents.fp32_contents, dtype=np.float32).reshape(1, -1)
    np.testing.assert_allclose(got, model_v1.logits(normalise(pixels[0])[None]), rtol=1e-4, atol=1e-4)


def test_a_message_over_the_limit_gets_invalid_argument_with_rests_words(server: ServerProcess):
    limit = 4 << 20  # the shared server's --max-body-bytes
    rows = limit // (3 * SIZE * SIZE * 4) + 1
    batch = np.zeros((rows, 3, SIZE, SIZE), dtype=np.float32)
    message = fp32_request(batch).SerializeToString()
    with pytest.raises(grpc.RpcError) as err:
        stub(server).ModelInfer(fp32_request(batch), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f"the request body of {len(message)} bytes is above the limit of {limit}"
    rest = requests.post(f"{server.url}/v2/models/{MODEL}/infer", data=b"{" + b" " * len(message), timeout=60)
    assert rest.status_code == 413
    assert rest.json()["error"] == f"the request body of {len(message) + 1} bytes is above the limit of {limit}"
    # Beyond twice the limit gRPC itself refuses the message before it is read whole.
    huge = np.zeros((3 * rows, 3, SIZE, SIZE), dtype=np.float32)
    with pytest.raises(grpc.RpcError) as err:
        stub(server).ModelInfer(fp32_request(huge), timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (pb.ModelInferRequest(model_name=MODEL), "invalid inference request: inputs: List should have at least 1 item"),
        (
            pb.ModelInferRequest(
                model_name=MODEL,
                inputs=[
                    Tensor(
                        name="input",
                        datatype="FP32",
                        shape=[1, 3, SIZE, SIZE],
                        contents=pb.InferTensorContents(fp32_contents=[0.0], int_contents=[1]),
                    )
                ],
            ),
            "input 'input' has elements in int_contents and fp32_contents; use one contents field",
        ),
        (
            pb.ModelInferRequest(
                model_name=MODEL, inputs=[Tensor(name="input", datatype="FP32", shape=[1, 3, SIZE, SIZE])]
            ),
            "input 'input' has no contents and the request no raw_input_contents",
        ),
        (
            pb.ModelInferRequest(
                model_name=MODEL,
                inputs=[Tensor(name="input", datatype="FP32", shape=[1, 3, SIZE, SIZE])],
                raw_input_contents=[b"", b""],
            ),
            "raw_input_contents has 2 entries for 1 inputs; send one per input",
        ),
        (
            pb.ModelInferRequest(
                model_name=MODEL,
                model_version="v9",
                inputs=[Tensor(name="input", datatype="FP32", shape=[1, 3, SIZE, SIZE])],
            ),
            "version 'v9' of 'tiny-cnn' is not served; the served version is 'v1'",
        ),
    ],
    ids=["no-inputs", "two-contents-fields", "no-contents", "raw-count", "unknown-version"],
)
def test_malformed_grpc_requests(server: ServerProcess, request_: pb.ModelInferRequest, words: str):
    with pytest.raises(grpc.RpcError) as err:
        stub(server).ModelInfer(request_, timeout=60)
    want = grpc.StatusCode.NOT_FOUND if "not served" in words else grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.code() == want and words in err.value.details()


def test_rest_refuses_a_model_name_in_the_body_that_is_not_the_urls(server: ServerProcess):
    body = {
        "model_name": "other",
        "inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": [0.0] * 3 * SIZE * SIZE}],
    }
    r = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"] == "model_name 'other' in the request is not the model it was sent to ('tiny-cnn')"


def concurrent_calls(server: ServerProcess, n: int) -> list[tuple[str, str, str]]:
    """`n` ModelInfer calls of one zero row sent at once: (status code name, details, retry-after)
    of each, in the order sent ("OK", "", "" for an answer)."""
    batch = np.zeros((1, 3, SIZE, SIZE), dtype=np.float32)
    client = stub(server)
    calls: list[Future] = [client.ModelInfer.future(fp32_request(batch), timeout=LIVENESS_S) for _ in range(n)]
    outcomes = []
    for call in calls:
        try:
            call.result()
            outcomes.append(("OK", "", ""))
        except grpc.RpcError as exc:
            retry = dict(exc.trailing_metadata() or ()).get("retry-after", "")
            outcomes.append((exc.code().name, exc.details() or "", retry))
    return outcomes


def test_overload_is_resource_exhausted_with_a_retry_hint_never_a_hang(tmp_path: Path, model_v1: ExportedModel):
    server = ServerProcess(
        model=model_v1.path,
        args=[
            "--queue-capacity",
            "2",
            "--max-batch-size",
            "64",
            "--max-batch-delay-ms",
            "1500",
            "--batch-wait",
            "window",
            "--retry-after-s",
            "3",
        ],
    ).start(tmp_path)
    try:
        outcomes = [(code, retry) for code, _, retry in concurrent_calls(server, 10)]
        text = requests.get(f"{server.url}/metrics", timeout=10).text
    finally:
        assert server.stop() == 0, server.logs()
    assert outcomes.count(("OK", "")) >= 2
    refused = [o for o in outcomes if o[0] != "OK"]
    assert refused and all(o == ("RESOURCE_EXHAUSTED", "3") for o in refused), outcomes
    labels = {"model": MODEL, "endpoint": "grpc_ModelInfer"}
    assert metric_value(text, "modelops_requests_total", code="503", **labels) == len(refused)
    assert metric_value(text, "modelops_requests_total", code="200", **labels) == 10 - len(refused)
    assert metric_value(text, "modelops_errors_total", model=MODEL, reason="overloaded") == len(refused)


def test_grpc_messages_count_against_the_bodies_budget_until_answered(tmp_path: Path, model_v1: ExportedModel):
    # One message is 12,288 bytes of tensor (plus a few of framing): three fit in 40,000, a fourth does not
    # while the first three wait (1.5 s) for their batch to fill.
    server = ServerProcess(
        model=model_v1.path,
        args=[
            *("--max-inflight-body-bytes", "40000"),
            *("--max-batch-size", "64", "--max-batch-delay-ms", "1500", "--batch-wait", "window"),
        ],
    ).start(tmp_path)
    batch = np.zeros((1, 3, SIZE, SIZE), dtype=np.float32)
    try:
        outcomes = [code if code == "OK" else f"{code}: {details}" for code, details, _ in concurrent_calls(server, 6)]
        # Answered messages give their bytes back: one at a time, every call fits again.
        later = [stub(server).ModelInfer(fp32_request(batch), timeout=LIVENESS_S) for _ in range(4)]
    finally:
        assert server.stop() == 0, server.logs()
    assert 1 <= outcomes.count("OK") <= 3, outcomes
    refused = [o for o in outcomes if o != "OK"]
    assert refused and all(o.startswith("RESOURCE_EXHAUSTED: ") and "bytes of request bodies" in o for o in refused)
    assert len(later) == 4 and all(r.outputs for r in later)


def test_unload_turns_grpc_readiness_off_and_load_on(tmp_path: Path, model_v1: ExportedModel):
    server = ServerProcess(
        model=model_v1.path,
        args=["--model-digest", model_v1.digest, "--enable-model-control"],
        env={"MODELOPS_MODEL_CONTROL_TOKEN": TOKEN},
    ).start(tmp_path)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    try:
        client = stub(server)
        with pytest.raises(grpc.RpcError) as err:
            client.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL), timeout=30)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        client.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL), metadata=auth, timeout=30)
        assert health_of(server, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health_of(server, "") == health_pb2.HealthCheckResponse.SERVING  # alive: not to be restarted
        assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 503
        assert client.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=10).ready is False
        # KServe's RepositoryModelLoadRequest has the name in field 1 (Triton's repository_name).
        client.RepositoryModelLoad(pb.RepositoryModelLoadRequest(repository_name=MODEL), metadata=auth, timeout=120)
        deadline = time.monotonic() + 10
        while health_of(server, SERVICE) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "readiness did not come back"
            time.sleep(0.05)
        assert client.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=10).ready is True
    finally:
        assert server.stop() == 0, server.logs()


def test_sigterm_finishes_admitted_grpc_calls_and_refuses_new_ones(tmp_path: Path, model_v1: ExportedModel):
    import signal  # noqa: PLC0415

    server = ServerProcess(
        model=model_v1.path, args=["--max-batch-size", "64", "--max-batch-delay-ms", "1500", "--batch-wait", "window"]
    ).start(tmp_path)
    batch = np.random.default_rng(9).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    try:
        calls = [stub(server).ModelInfer.future(fp32_request(batch), timeout=LIVENESS_S) for _ in range(3)]
        wait_for_depth(server, 3)  # all three admitted, waiting for their batch
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        answers = [call.result() for call in calls]
        with pytest.raises(grpc.RpcError) as err:
            stub(server).ModelInfer(fp32_request(batch), timeout=30)
        assert server.proc.wait(LIVENESS_S) == 0, server.logs()
    finally:
        server.stop()
    for answer in answers:
        got = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(1, -1)
        np.testing.assert_allclose(got, model_v1.logits(batch), rtol=1e-4, atol=1e-4)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_reflection_lets_a_client_without_our_proto_list_and_call(server: ServerProcess, model_v1: ExportedModel):
    """Server reflection, as grpcurl and Postman use it: the services are listed, and ModelInfer is
    called with message classes built only from what the server described (a pool of its own, not
    the generated module this test imports)."""
    from google.protobuf import descriptor_pool, message_factory  # noqa: PLC0415
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # noqa: PLC0415
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(server.grpc_target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName(SERVICE).FindMethodByName("ModelInfer")
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        assert request_type is not pb.ModelInferRequest
        batch = np.random.default_rng(31).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
        request = request_type(model_name=MODEL, raw_input_contents=[batch.tobytes()])
        request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
        call = channel.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        response = call(request, timeout=30)
    logits = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, -1)
    np.testing.assert_allclose(logits, model_v1.logits(batch), rtol=1e-4, atol=1e-4)
