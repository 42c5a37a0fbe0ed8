"""Real parts for the server tests: a small ONNX model with its card, a server process, images.

Nothing here is a mock: the model is a torch CNN exported with ``torch.onnx.export``, the server is
``python -m modelops_server`` in its own process on a free loopback port, Redis is Debian's
``redis-server``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

CLASSES = ["cat", "dog", "bird", "fish", "frog"]
SIZE = 32
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
LIVENESS_S = 90.0  # generous bound for a server to come up on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ExportedModel:
    path: Path
    digest: str
    torch_model: object  # torch.nn.Module; kept untyped so this module imports without torch

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import torch  # noqa: PLC0415

        with torch.no_grad():
            return self.torch_model(torch.from_numpy(batch)).numpy()  # type: ignore[operator]


def export_model(directory: Path, *, seed: int, name: str = "tiny-cnn", size: int = SIZE) -> ExportedModel:
    """A small CNN (conv-bn-relu ×2, pool, linear) with random weights, as ONNX + model card."""
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, len(CLASSES)),
    ).eval()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; it needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    write_card(path, digest, name=name, size=size)
    return ExportedModel(path=path, digest=digest, torch_model=model)


def write_card(path: Path, digest: str, *, name: str, size: int = SIZE, **overrides: object) -> None:
    card = {
        "format": "modelops.modelcard/v1",
        "name": name,
        "architecture": "tiny-cnn",
        "classes": CLASSES,
        "input": {
            "name": "input",
            "layout": "NCHW",
            "dtype": "float32",
            "imageSize": size,
            "colorMode": "RGB",
            "resizeMode": "shorterSideCrop",
            "mean": MEAN,
            "std": STD,
        },
        "output": {"name": "logits", "kind": "logits"},
        "onnx": {"file": path.name, "digest": digest, "opset": 17, "dynamicBatch": True},
        "metrics": {"val_top1": 0.5},
        "lineage": {"dataset": "synthetic", "trainingRun": name},
        "createdAt": "2026-11-29T20:00:00Z",
        **overrides,
    }
    Path(f"{path}.card.json").write_text(json.dumps(card))


def image_bytes(seed: int, size: int = SIZE, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A random image (PNG is lossless, so its pixels are exactly known)."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, size=(size, size, channels), dtype=np.uint8)
    img = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode=mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def normalise(pixels: np.ndarray) -> np.ndarray:
    """HWC uint8 → CHW float32, the contract's normalisation, written independently of the server."""
    x = pixels.astype(np.float32) / 255.0
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return x.transpose(2, 0, 1).astype(np.float32)


def pixels_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class ServerProcess:
    """``python -m modelops_server`` on a loopback port; stopped with SIGTERM. ``model`` is a local
    path or a URI (``s3://…``), passed as ``--model-uri``."""

    model: Path | str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, log_dir: Path, *, wait_ready: bool = True) -> ServerProcess:
        self.log_path = log_dir / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "modelops_server", "--model-uri", str(self.model), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--grpc-port", str(self.grpc_port), "--log-format", "json", *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + LIVENESS_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"server not ready within {LIVENESS_S} s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"server did not stop within {timeout} s:\n{self.logs()}") from None

    def worker_pids(self) -> list[int]:
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("message") == "ready":
                    return [int(p) for p in rec["pids"]]
        raise AssertionError("no 'ready' log line with worker pids")


def wait_for_depth(server: ServerProcess, depth: int) -> None:
    """Wait until the server has admitted `depth` requests that are not answered yet."""
    deadline = time.monotonic() + LIVENESS_S
    while time.monotonic() < deadline:
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        if metric_value(text, "modelops_queue_depth") >= depth:
            return
        time.sleep(0.02)
    raise AssertionError(f"queue depth never reached {depth}")


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


@contextlib.contextmanager
def redis_server(workdir: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Debian's redis-server on `host` at a free port, nothing persisted; yields its URL."""
    import redis  # noqa: PLC0415

    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    args = ["--port", str(port), "--bind", host, "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    if host != "127.0.0.1":
        args += ["--protected-mode", "no"]  # pods reach it over the node's bridge, without a password
    proc = subprocess.Popen(
        [redis_server_binary() or "redis-server", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = redis.Redis(host=host, port=port)
    deadline = time.monotonic() + LIVENESS_S
    try:
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"redis://{host}:{port}/0"
    finally:
        proc.terminate()
        proc.wait(30)


def poison_model(src: Path, dst: Path) -> str:
    """A copy of the ONNX model at `src` whose scores are NaN for every input (its output times NaN),
    with a model card naming its digest: it loads and warms up like a good one and fails on real
    requests — the "bad model" of rollout tests. Returns the new file's digest."""
    import onnx  # noqa: PLC0415
    from onnx import helper, numpy_helper  # noqa: PLC0415

    model = onnx.load(str(src))
    out = model.graph.output[0].name
    raw = f"{out}_before_poison"
    for node in model.graph.node:
        node.output[:] = [raw if o == out else o for o in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, dtype=np.float32), "modelops_nan"))
    model.graph.node.append(helper.make_node("Mul", [raw, "modelops_nan"], [out]))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    digest = "sha256:" + hashlib.sha256(dst.read_bytes()).hexdigest()
    card = json.loads(Path(f"{src}.card.json").read_text())
    card["onnx"] = {**card["onnx"], "file": dst.name, "digest": digest}
    Path(f"{dst}.card.json").write_text(json.dumps(card))
    return digest
