"""Settings: one object, filled from flags, then environment variables, then defaults.

Every field is a flag ``--field-name`` and an environment variable ``MODELOPS_FIELD_NAME`` (a flag
wins over the variable). The operator sets the variables in the pod template from the
ModelDeployment's ``spec.server``; a person on a terminal uses the flags. ``--help`` prints each
field's description below, with its variable and default.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelops_server.experiment import Experiment, parse_experiment

ENV_PREFIX = "MODELOPS_"


class Settings(BaseModel):
    """The inference server's configuration (see ``python -m modelops_server --help``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_uri: str = Field(
        description="The ONNX model to serve: a local path or a file://, s3:// or http(s):// URI. "
        "Its model card is read from <uri>.card.json beside it."
    )
    model_digest: str | None = Field(
        default=None, description="sha256:<64 hex> the ONNX file must have; the server refuses anything else."
    )
    model_name: str | None = Field(default=None, description="Name the model is served under; default: the card's.")
    model_version: str | None = Field(
        default=None, description="Version label (e.g. digits-resnet:v3); default: the digest's first 12 hex digits."
    )
    host: str = Field(
        default="",
        description="Address to listen on (REST and gRPC); empty: every address, IPv4 and IPv6, so that "
        "probes and clients reach the pod in IPv4, IPv6-only and dual-stack clusters alike.",
    )
    port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="TCP port (0 picks a free one and logs it; with no --host, on IPv4 only, since each "
        "family would pick another).",
    )
    grpc_port: int = Field(
        default=8081,
        ge=-1,
        le=65535,
        description="TCP port of the gRPC endpoint (the Open Inference Protocol's GRPCInferenceService and "
        "grpc.health.v1); 0 picks a free one and logs it, -1 turns gRPC off.",
    )
    workers: int = Field(default=1, ge=1, le=64, description="Worker processes, each running the model.")
    max_batch_size: int = Field(default=16, ge=1, le=1024, description="Most images ONNX Runtime runs at once.")
    max_batch_delay_ms: float = Field(
        default=5.0, ge=0, le=10_000, description="Longest a request waits for its batch to fill, in milliseconds."
    )
    batch_wait: Literal["adaptive", "window"] = Field(
        default="adaptive",
        description="When a batch runs. adaptive: as soon as no other request is on its way through the worker "
        "(a lone request runs at once; requests that arrive while a batch runs form the next one), waiting at "
        "most --max-batch-delay-ms for those being decoded. window: every batch waits until --max-batch-delay-ms "
        "after its first request, or until it is full.",
    )
    batch_shapes: Literal["auto", "exact", "pow2"] = Field(
        default="auto",
        description="The batch sizes ONNX Runtime runs. exact: each batch at the size it formed, 1 to "
        "--max-batch-size. pow2: padded with zero rows to the next power of two (or --max-batch-size), so the "
        "model sees at most log2(--max-batch-size) + 2 shapes, each warmed up at load: on a GPU every new shape "
        "costs cuDNN's algorithm choice and new allocations in the middle of a request. auto: pow2 on CUDA and "
        "TensorRT, exact on the CPU, where padded rows cost compute and a new shape little.",
    )
    queue_capacity: int = Field(
        default=256, ge=1, description="Requests admitted at once; beyond it the server answers 503 with Retry-After."
    )
    retry_after_s: int = Field(default=1, ge=0, description="Seconds in the Retry-After header of a 503.")
    decode_threads: int = Field(
        default=0,
        ge=0,
        description="Decode/preprocess threads per worker; 0: the cores the container may use (its CPU quota) "
        "divided by the workers.",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="ONNX Runtime threads per worker; 0: the cores the container may use (its CPU quota) "
        "divided by the workers.",
    )
    ort_spinning: Literal["off", "run", "always"] = Field(
        default="off",
        description="Whether ONNX Runtime's idle intra-op threads spin. off: never; they sleep, and leave "
        "shared or contended cores to decoding, HTTP and other processes. run: spin while a batch runs and "
        "sleep between batches, a little faster on cores of its own (0.6 ms per ResNet-18 image on 2) and much "
        "slower on busy ones. always: spin between batches too. true and false are read as always and off.",
    )
    device: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        default="auto", description="auto uses CUDA where a GPU is present, else the CPU."
    )
    reduced_decode: bool = Field(
        default=True, description="Decode JPEGs at reduced scale (1/2..1/8) when they are larger than the model needs."
    )
    max_body_bytes: int = Field(default=32 << 20, ge=1024, description="Largest request body accepted (413 above).")
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="Largest image (width x height) decoded; larger is a 413."
    )
    max_rows_per_request: int = Field(default=64, ge=1, description="Most images in one request.")
    max_request_pixels: int = Field(
        default=128_000_000,
        ge=1,
        description="Most pixels (width x height, all of a request's images together) decoded for one request; "
        "more is a 413, answered from the images' headers before any is decoded.",
    )
    max_inflight_body_bytes: int = Field(
        default=128 << 20,
        ge=1024,
        description="Bytes of request bodies being received at once, all connections together (a body counts "
        "its Content-Length from the start; a gRPC message its size, until answered); a request that would go past "
        "it is a 503 with Retry-After (gRPC: RESOURCE_EXHAUSTED).",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest a client may take to send a request body; a 408 after that."
    )
    request_timeout_s: float = Field(default=30.0, gt=0, description="Answer 504 when a request takes longer.")
    header_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest a connection may take to send a whole request head (request line and headers), "
        "counted from its opening and from each answer; it is closed after that. Also the idle time after "
        "which a keep-alive connection is closed.",
    )
    max_header_fields: int = Field(
        default=100, ge=8, le=10_000, description="Most header fields in one request (a 400 above)."
    )
    max_connections: int = Field(
        default=4096,
        ge=1,
        description="Client connections open at once; one more is answered 503 with Retry-After and closed.",
    )
    shutdown_delay_s: float = Field(
        default=0.0,
        ge=0,
        le=300,
        description="On SIGTERM, keep serving this long with readiness false before draining, so load balancers "
        "and endpoint lists stop sending traffic first (Kubernetes: a few seconds).",
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long to wait for in-flight requests before exiting."
    )
    enable_model_control: bool = Field(
        default=False,
        description="Allow the model repository's load and unload (REST POST /v2/repository/models/{name}/load|unload, "
        "gRPC RepositoryModelLoad/Unload) to hot-swap or unload the model; needs --model-control-token, and "
        "loading a new file needs its digest.",
    )
    model_control_token: str | None = Field(
        default=None,
        min_length=16,
        description="The bearer token a hot swap must carry (Authorization: Bearer <token>); set it from a Secret "
        "through the environment, not on the command line.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis for the asynchronous job API (redis://host:port/db); unset disables /v1/jobs."
    )
    job_workers: int = Field(default=1, ge=0, le=64, description="Job consumer processes (with --redis-url).")
    job_stream: str = Field(default="modelops:jobs", description="Redis stream holding submitted jobs.")
    job_ttl_s: int = Field(default=86_400, ge=60, description="How long job results are kept in Redis.")
    job_queue_capacity: int = Field(
        default=10_000, ge=1, description="Jobs waiting in the stream at most; beyond it a submission is a 503."
    )
    job_callback_hosts: str = Field(
        default="",
        description="Comma-separated hosts (host or host:port) a job's callbackUrl may name; empty refuses every "
        "callbackUrl. Callbacks follow no redirects: the server must not be made to POST to internal services.",
    )
    job_claim_idle_s: float = Field(
        default=30.0, gt=0, description="A job held this long by a consumer that died is taken over by another."
    )
    batch_roots: str = Field(
        default="",
        description="Comma-separated URI prefixes (e.g. s3://bucket/batch/,file:///data/) under which batch jobs "
        "(POST /v1/jobs with a source) may read their source and write their output; empty refuses every batch "
        "job. The server reads and writes there on a client's say-so: name only storage meant for it.",
    )
    batch_max_images: int = Field(
        default=100_000,
        ge=1,
        le=1_000_000,
        description="Most images one batch job may hold (a folder's images, or a Dataset version's chosen splits); "
        "a larger source is refused with a 400. Each image's result waits in Redis until the job ends.",
    )
    experiment: Experiment | None = Field(
        default=None,
        description='An A/B experiment, as JSON: {"name": …, "keyHeader": "x-user-id", "variants": [{"name", '
        '"uri", "digest", "version", "weight"}, …]} with 2 to 4 variants (the first is the control) whose weights '
        "sum to 100. Every variant is loaded, and each request is served by the one its key (the keyHeader header, "
        "or gRPC metadata) is assigned to; --model-uri/--model-digest/--model-version then name the control, and "
        "hot swaps are refused. Empty: no experiment. See the server README's section A/B experiments.",
    )
    cache_dir: str | None = Field(default=None, description="Where verified model files are kept; default: a temp dir.")
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="json in a pod; auto picks text on a terminal, JSON otherwise."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")

    @model_validator(mode="after")
    def _control_needs_a_token(self) -> Settings:
        if self.enable_model_control and not self.model_control_token:
            raise ValueError(
                "enable_model_control needs model_control_token (MODELOPS_MODEL_CONTROL_TOKEN): "
                "anyone who reaches the port could otherwise replace the model"
            )
        return self

    @field_validator("ort_spinning", mode="before")
    @classmethod
    def _spinning_from_a_boolean(cls, value: object) -> object:
        # --ort-spinning was a boolean before "run" existed: true spun always, false never.
        if isinstance(value, bool):
            return "always" if value else "off"
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return "always"
        if isinstance(value, str) and value.strip().lower() in ("false", "0", "no"):
            return "off"
        return value

    @field_validator("experiment", mode="before")
    @classmethod
    def _experiment_from_json(cls, value: object) -> object:
        return parse_experiment(value)

    @field_validator("batch_roots")
    @classmethod
    def _batch_roots_are_uris(cls, value: str) -> str:
        from modelops_server.batch import parse_roots  # noqa: PLC0415 - config stays import-light

        parse_roots(value)
        return value

    @property
    def callback_hosts(self) -> frozenset[str]:
        """``job_callback_hosts`` as a set of lower-case ``host`` or ``host:port`` entries."""
        return frozenset(h.strip().lower() for h in self.job_callback_hosts.split(",") if h.strip())

    @property
    def max_batch_delay_s(self) -> float:
        """``max_batch_delay_ms`` in seconds."""
        return self.max_batch_delay_ms / 1000.0


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per settings field, its environment variable named in the help."""
    parser = argparse.ArgumentParser(
        prog="python -m modelops_server",
        description=(
            "modelops' inference server: serves one ONNX image classifier (with its model card beside it)\n"
            "over HTTP: the Open Inference Protocol (KServe v2) under /v2 (and over gRPC on --grpc-port),\n"
            "POST /v1/models/<name>:classify for an image file, a web page on /, optional Redis-backed\n"
            "jobs under /v1/jobs, and Prometheus metrics on /metrics. Worker processes decode images and\n"
            "run ONNX Runtime, batching requests."
        ),
        epilog=(
            "example:\n"
            "  python -m modelops_server --model-uri /models/model.onnx --port 8080 --workers 2\n"
            "  curl -F file=@cat.jpg 'http://127.0.0.1:8080/v1/models/<name>:classify?top_k=3'\n"
            "  open http://127.0.0.1:8080/ in a browser to drop an image on the page\n\n"
            "Every flag can also be set with the environment variable shown in brackets; a flag wins.\n"
            "SIGTERM drains in-flight requests (up to --drain-timeout-s) before the process exits."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = _env_name(name)
        default = "required" if info.is_required() else f"default: {'unset' if info.default is None else info.default}"
        help_text = f"{info.description} [{env}; {default}]"
        annotation = info.annotation
        if annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif get_origin(annotation) is Literal:
            parser.add_argument(flag, dest=name, default=None, choices=get_args(annotation), help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=help_text)
    return parser


def load_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Parse flags and environment into :class:`Settings`; exits with a clear message when invalid."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        if args.get(name) is not None:
            values[name] = args[name]
        elif _env_name(name) in env:
            values[name] = env[_env_name(name)]
    try:
        return Settings.model_validate(values, strict=False)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        parser.error(problems)
