"""A model that loads but produces non-finite scores is answered as a server error (500,
reason `invalid_output`), counted in metrics, and never as a confident wrong answer."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.support.serving import ExportedModel, ServerProcess, image_bytes, metric_value, poison_model


def test_non_finite_scores_are_a_500_and_counted(model_v1: ExportedModel, logs_dir: Path, tmp_path: Path):
    bad = tmp_path / "bad" / "model.onnx"
    digest = poison_model(model_v1.path, bad)
    server = ServerProcess(model=bad, args=["--model-digest", digest]).start(logs_dir)
    try:
        assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200  # it loads fine
        for seed in range(3):
            r = requests.post(
                f"{server.url}/v1/models/tiny-cnn:classify",
                files={"file": ("x.png", image_bytes(seed), "image/png")},
                timeout=30,
            )
            assert r.status_code == 500 and "non-finite" in r.json()["error"]
        metrics = requests.get(f"{server.url}/metrics", timeout=5).text
        assert metric_value(metrics, "modelops_errors_total", reason="invalid_output") == 3
        assert metric_value(metrics, "modelops_requests_total", code="500") == 3
    finally:
        server.stop()
