"""The peer baseline: KServe's Python model server serving the same ONNX model the documented way.

Run by ``bench/server_bench.py`` inside its own virtualenv (``build/bench-venv``, with PyPI
``kserve`` and ``onnxruntime``), never in the project's ``.venv``. One uvicorn worker, a
``kserve.Model`` subclass with ``load()`` and a synchronous ``predict()`` that decodes each image
with Pillow, resizes it as the model card says (shorter side, centre crop, bilinear), normalises it
and runs ONNX Runtime: the pattern of KServe's custom-model documentation.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import uuid

import kserve
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse
from PIL import Image


class Classifier(kserve.Model):
    """KServe custom model: Pillow decode + preprocess + ONNX Runtime, one request at a time."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        with open(path + ".card.json") as f:
            self.card = json.load(f)
        spec = self.card["input"]
        self.size = int(spec["imageSize"])
        self.mean = np.array(spec["mean"], dtype=np.float32)
        self.std = np.array(spec["std"], dtype=np.float32)
        self.session: ort.InferenceSession | None = None
        self.ready = False

    def load(self) -> bool:
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    def _preprocess(self, data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = img.size
        scale = self.size / min(w, h)
        img = img.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BILINEAR)
        left, top = (img.width - self.size) // 2, (img.height - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        x = (np.asarray(img, dtype=np.float32) / 255.0 - self.mean) / self.std
        return x.transpose(2, 0, 1)

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        # BYTES elements arrive as base64 strings in the v2 JSON (KServe's binary path cannot carry
        # non-UTF-8 bytes: it fails with "Failed to encode ... using UTF-8").
        images = [base64.b64decode(e) for e in payload.inputs[0].data]
        batch = np.stack([self._preprocess(b) for b in images]).astype(np.float32)
        assert self.session is not None
        (logits,) = self.session.run(None, {self.card["input"]["name"]: batch})
        output = InferOutput(name="logits", shape=list(logits.shape), datatype="FP32")
        output.set_data_from_numpy(logits.astype(np.float32), binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id or str(uuid.uuid4()))


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--served_name", default="resnet18")
    args, _ = parser.parse_known_args()
    model = Classifier(args.served_name, args.model_path)
    model.load()
    server = kserve.ModelServer(http_port=args.http_port, workers=1, enable_grpc=False)
    # No per-request access log (modelops_server writes none at INFO either): measure serving, not logging.
    logging.getLogger("uvicorn.access").addFilter(lambda record: False)
    server.start([model])


if __name__ == "__main__":
    main()
