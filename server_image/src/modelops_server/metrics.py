"""Prometheus metrics, served on ``/metrics``: what canary analysis and alert rules query.

Names follow Prometheus conventions (``modelops_`` prefix, base units, ``_total`` for counters,
``_seconds`` for durations). Each server owns its registry, so several servers can live in one
process (the tests do). Labels: ``model`` and ``version`` are the served model's name and version
(the ModelDeployment's ``<trainingrun>:v<N>`` or the digest prefix); ``endpoint`` is the route
template (``infer``, ``classify``, ``metadata``, …), never the raw path, so cardinality stays fixed.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# The `_created` series double every counter and histogram for no use in our dashboards.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


#: The endpoints that answer inference, as the `endpoint` label names them.
INFERENCE_ENDPOINTS = (
    "classify",
    "predict",
    "predictions",
    "predictions_version",
    "invocations",
    "infer",
    "infer_version",
    "grpc_ModelInfer",
)


class Metrics:
    """Every metric the server exports; see server_image/README.md for their meanings."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "modelops_requests",
            "Requests answered, by model, version, endpoint and HTTP status code.",
            ["model", "version", "endpoint", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "modelops_request_duration_seconds",
            "Time from receiving a request to having its answer, by model, version and endpoint.",
            ["model", "version", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "modelops_queue_wait_seconds",
            "Time a request spent queued, parsed and preprocessed before its batch started running.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "modelops_inference_duration_seconds",
            "ONNX Runtime time per batch.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "modelops_batch_size",
            "Images per batch run by ONNX Runtime (dynamic batching groups requests).",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "modelops_queue_depth",
            "Requests admitted to the worker queues and not yet answered.",
            registry=r,
        )
        self.queue_capacity = Gauge(
            "modelops_queue_capacity",
            "Requests the queues admit before answering 503 with Retry-After.",
            registry=r,
        )
        self.inflight = Gauge(
            "modelops_inflight_requests",
            "HTTP requests being handled now (all endpoints); the autoscaler's default custom metric.",
            registry=r,
        )
        self.errors = Counter(
            "modelops_errors",
            "Failed requests by model and reason (bad_request, corrupt_image, overloaded, timeout, ...).",
            ["model", "reason"],
            registry=r,
        )
        self.model_load_duration = Gauge(
            "modelops_model_load_duration_seconds",
            "Seconds the last load of this model version took: fetch, digest check, open and warm-up.",
            ["model", "version"],
            registry=r,
        )
        self.model_info = Gauge(
            "modelops_model_info",
            "1 for each model version being served, with its digest and architecture as labels.",
            ["model", "version", "digest", "architecture"],
            registry=r,
        )
        self.model_loads = Counter(
            "modelops_model_loads",
            "Model loads by result (success, failure).",
            ["model", "result"],
            registry=r,
        )
        self.connections_refused = Counter(
            "modelops_connections_refused",
            "Client connections closed at once because --max-connections were open.",
            registry=r,
        )
        self.worker_restarts = Counter(
            "modelops_worker_restarts",
            "Worker processes restarted after dying.",
            registry=r,
        )
        self.experiment_requests = Counter(
            "modelops_experiment_requests",
            "Inference requests answered during an A/B experiment, by experiment, variant and whether the request "
            "carried the experiment's key (keyed=false: assigned by a random key).",
            ["experiment", "variant", "keyed"],
            registry=r,
        )
        self.experiment_outcomes = Counter(
            "modelops_experiment_outcomes",
            "Outcomes reported with POST /v1/feedback, by experiment, variant and outcome (success, failure).",
            ["experiment", "variant", "outcome"],
            registry=r,
        )
        self.jobs = Counter(
            "modelops_jobs",
            "Asynchronous jobs accepted by this replica (event=submitted); progress is in GET /v1/jobs/{id}.",
            ["event"],
            registry=r,
        )

    def declare_inference_series(self, model: str, version: str) -> None:
        """Create, at 0, the request counter and latency series of `version`'s inference endpoints
        (answered 200) as soon as it serves. Prometheus' increase() needs two samples of a series;
        a series born with the first request has one sample until the next scrape, so an A/B
        experiment that ended within a scrape or two of its traffic found no error rate or latency
        for a variant (two CI runs in five)."""
        for endpoint in INFERENCE_ENDPOINTS:
            self.requests.labels(model, version, endpoint, "200")
            self.request_duration.labels(model, version, endpoint)
