"""The messages between the front end and its worker processes, one typed tuple per kind.

Each worker reads its own pipe (``ToWorker``) and writes its answers into another (``FromWorker``;
see ``pipes``). They are NamedTuples: pickled as cheaply as plain tuples,
matched with ``isinstance``, and checked by mypy at every place one is built or read::

    front end ──Infer/Load/Unload/Stop──► worker ──Result/BatchRan/Loaded──► front end
"""

from __future__ import annotations

from typing import Any, NamedTuple

#: What an ``Infer`` payload is: an OIP REST body, an image for /v1 classify or for TorchServe's
#: ``/predictions``, a KServe V1 ``:predict`` body, or a serialized gRPC ``ModelInferRequest``.
KINDS = ("v2", "classify", "torchserve", "v1", "grpc")


class Infer(NamedTuple):
    """A request for a worker: ``payload`` is parsed there, never on the event loop."""

    req_id: int
    model_key: str
    kind: str
    payload: bytes
    meta: dict[str, Any]
    enqueued_at: float


class Load(NamedTuple):
    """Open and warm up a model beside the serving ones; acknowledged with :class:`Loaded`."""

    model_key: str
    local_path: str
    card_json: str
    name: str
    version: str


class Unload(NamedTuple):
    """Drop a model (no request holds it any more)."""

    model_key: str


class Stop(NamedTuple):
    """Finish the batch in hand and exit (sent after the front end drained)."""


class Result(NamedTuple):
    """A request's answer, ready to send: ``body`` is the REST body or the serialized gRPC response;
    an error has ``error_kind`` (its class name, see ``errors.to_wire``) and ``error_message``."""

    req_id: int
    status: int
    body: bytes
    headers: dict[str, str]
    batch_started_at: float | None
    error_kind: str = ""
    error_message: str = ""


class BatchRan(NamedTuple):
    """One ONNX Runtime run: for the batch size and inference time metrics."""

    model_key: str
    rows: int
    seconds: float


class Loaded(NamedTuple):
    """A worker's answer to :class:`Load`; ``error`` is ``(kind, message)`` when it failed."""

    worker_id: int
    model_key: str
    error: tuple[str, str] | None
    seconds: float
    facts: dict[str, Any]


ToWorker = Infer | Load | Unload | Stop
FromWorker = Result | BatchRan | Loaded
