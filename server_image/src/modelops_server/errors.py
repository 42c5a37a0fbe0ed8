"""The server's exceptions, and the tables that map them to HTTP and to gRPC status codes.

Every failure a caller can cause or observe is one of these, raised wherever it is detected (the
front end, a worker process, the job consumer) and carried across process boundaries as
``(kind, message)``; the endpoints turn it into ``{"error": message}`` with the status from
``HTTP_STATUS``; the gRPC front end aborts with the code from ``GRPC_STATUS`` and the same
message; the metrics count it by ``reason``::

    ServerError                  500  INTERNAL            internal
    ├── RequestError             400  INVALID_ARGUMENT    bad_request (malformed body, wrong tensor name/shape/dtype)
    │   ├── BodyTooLarge         413  INVALID_ARGUMENT    body_too_large
    │   ├── BodyTimeout          408  DEADLINE_EXCEEDED   body_timeout (no body within --body-timeout-s)
    │   ├── ImageTooLarge        413  INVALID_ARGUMENT    image_too_large (huge dimensions, too many pixels)
    │   ├── UnsupportedMediaType 415  INVALID_ARGUMENT    unsupported_media_type (content type, image format)
    │   └── CorruptImage         400  INVALID_ARGUMENT    corrupt_image (truncated or undecodable)
    ├── NotFound                 404  NOT_FOUND           not_found (unknown model, version, job)
    ├── ModelControlDisabled     403  PERMISSION_DENIED   model_control_disabled
    ├── Conflict                 409  FAILED_PRECONDITION conflict (a hot swap while an A/B experiment runs)
    ├── Unavailable              503  UNAVAILABLE         unavailable (not ready yet, draining, unloaded)
    │   ├── Overloaded           503  RESOURCE_EXHAUSTED  overloaded (queue or body budget full; Retry-After)
    │   └── WorkerCrashed        503  UNAVAILABLE         worker_crashed (its worker died)
    ├── InferenceTimeout         504  DEADLINE_EXCEEDED   timeout
    └── ModelLoadError                INTERNAL            model_load_failed (startup or hot swap)
        └── DigestMismatch            INTERNAL            digest_mismatch
"""

from __future__ import annotations


class ServerError(Exception):
    """Base class: an unexpected failure inside the server (HTTP 500)."""

    reason = "internal"


class RequestError(ServerError):
    """The request is malformed: bad JSON, wrong tensor name, shape or datatype (HTTP 400)."""

    reason = "bad_request"


class BodyTooLarge(RequestError):
    """The request body is larger than ``--max-body-bytes`` (HTTP 413)."""

    reason = "body_too_large"


class BodyTimeout(RequestError):
    """The client did not send its request body within ``--body-timeout-s``."""

    reason = "body_timeout"


class ImageTooLarge(RequestError):
    """An image's dimensions exceed ``--max-image-pixels``: a decompression bomb (HTTP 413)."""

    reason = "image_too_large"


class UnsupportedMediaType(RequestError):
    """The content type or the image format is not one the server accepts (HTTP 415)."""

    reason = "unsupported_media_type"


class CorruptImage(RequestError):
    """The image bytes are truncated or cannot be decoded (HTTP 400)."""

    reason = "corrupt_image"


class NotFound(ServerError):
    """No such model, model version or job (HTTP 404)."""

    reason = "not_found"


class ModelControlDisabled(ServerError):
    """The model repository API was called but ``--enable-model-control`` is off (HTTP 403)."""

    reason = "model_control_disabled"


class Conflict(ServerError):
    """The request conflicts with the server's state: a hot swap, load or unload while an A/B
    experiment serves its fixed variants (HTTP 409)."""

    reason = "conflict"


class Unavailable(ServerError):
    """The server cannot take the request now: not ready yet, or draining (HTTP 503)."""

    reason = "unavailable"


class Overloaded(Unavailable):
    """The request queue is full; the caller should retry after ``Retry-After`` (HTTP 503)."""

    reason = "overloaded"


class WorkerCrashed(Unavailable):
    """The worker process holding the request died before answering; safe to retry (HTTP 503)."""

    reason = "worker_crashed"


class InferenceTimeout(ServerError):
    """No answer within ``--request-timeout`` (HTTP 504)."""

    reason = "timeout"


class InvalidModelOutput(ServerError):
    """The model produced scores that are not finite numbers (NaN or infinity) for a real input:
    a broken model, answered as an error (HTTP 500) rather than as a confident wrong answer."""

    reason = "invalid_output"


class ModelLoadError(ServerError):
    """The model or its card could not be fetched, parsed or opened by ONNX Runtime."""

    reason = "model_load_failed"


class DigestMismatch(ModelLoadError):
    """The ONNX file's SHA-256 differs from the expected digest; the server refuses to load it."""

    reason = "digest_mismatch"


HTTP_STATUS: dict[type[ServerError], int] = {
    ServerError: 500,
    RequestError: 400,
    BodyTooLarge: 413,
    BodyTimeout: 408,
    ImageTooLarge: 413,
    UnsupportedMediaType: 415,
    CorruptImage: 400,
    NotFound: 404,
    ModelControlDisabled: 403,
    Conflict: 409,
    Unavailable: 503,
    Overloaded: 503,
    WorkerCrashed: 503,
    InferenceTimeout: 504,
    InvalidModelOutput: 500,
    ModelLoadError: 500,
    DigestMismatch: 500,
}
"""HTTP status per exception class: the single place where errors become status codes."""

GRPC_STATUS: dict[type[ServerError], str] = {
    ServerError: "INTERNAL",
    RequestError: "INVALID_ARGUMENT",
    BodyTimeout: "DEADLINE_EXCEEDED",
    NotFound: "NOT_FOUND",
    ModelControlDisabled: "PERMISSION_DENIED",
    Conflict: "FAILED_PRECONDITION",
    Unavailable: "UNAVAILABLE",
    Overloaded: "RESOURCE_EXHAUSTED",
    InferenceTimeout: "DEADLINE_EXCEEDED",
}
"""gRPC status code name (``grpc.StatusCode[name]``) per exception class; a class not listed takes its
nearest base class's. Names, not ``grpc`` objects, so that the worker processes need no grpc."""

_BY_NAME: dict[str, type[ServerError]] = {cls.__name__: cls for cls in HTTP_STATUS}


def http_status(exc: ServerError) -> int:
    """The status for ``exc``: its own class's entry, else the nearest base class's."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def grpc_status(exc: ServerError) -> str:
    """The gRPC status code name for `exc`: its own class's entry, else the nearest base class's."""
    for cls in type(exc).__mro__:
        if cls in GRPC_STATUS:
            return GRPC_STATUS[cls]
    return "INTERNAL"


def to_wire(exc: BaseException) -> tuple[str, str]:
    """``(class name, message)`` for sending an error from a worker process to the front end."""
    if isinstance(exc, ServerError):
        return type(exc).__name__, str(exc)
    return "ServerError", f"{type(exc).__name__}: {exc}"


def from_wire(kind: str, message: str) -> ServerError:
    """Rebuild an error sent by :func:`to_wire`; unknown kinds become a plain ``ServerError``."""
    return _BY_NAME.get(kind, ServerError)(message)
