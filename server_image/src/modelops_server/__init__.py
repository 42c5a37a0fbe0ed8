"""modelops' inference server, run by ModelDeployments: ONNX Runtime behind an async front end
with dynamic batching, the Open Inference Protocol (KServe v2) and Prometheus metrics.

The server arrives with the inference-server issue; this package fixes its home and
dependencies (ONNX Runtime, aiohttp).
"""

__version__ = "0.1.0"
