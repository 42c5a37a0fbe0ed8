"""modelops' inference server, run by ModelDeployments: ONNX Runtime in worker processes behind an
async front end with dynamic batching, the Open Inference Protocol (KServe v2), a /v1 classify
endpoint and web page, Redis-backed jobs and Prometheus metrics. ``python -m modelops_server --help``
starts it; server_image/README.md describes it.
"""

__version__ = "0.1.0"
