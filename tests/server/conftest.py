"""Session fixtures: the exported models and one shared server (two workers) for protocol tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.serving import ExportedModel, ServerProcess, export_model


@pytest.fixture(scope="session")
def model_v1(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    return export_model(tmp_path_factory.mktemp("model-v1"), seed=1)


@pytest.fixture(scope="session")
def model_v2(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    return export_model(tmp_path_factory.mktemp("model-v2"), seed=2)


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def server(model_v1: ExportedModel, logs_dir: Path) -> Iterator[ServerProcess]:
    """The shared server: two workers, batches of up to 8, a 20 ms batching window, small limits."""
    proc = ServerProcess(
        model=model_v1.path,
        args=[
            "--model-digest",
            model_v1.digest,
            "--model-version",
            "v1",
            "--workers",
            "2",
            "--max-batch-size",
            "8",
            "--max-batch-delay-ms",
            "20",
            "--max-body-bytes",
            str(4 << 20),
            "--max-image-pixels",
            str(4_000_000),
        ],
    ).start(logs_dir)
    yield proc
    assert proc.stop() == 0, proc.logs()
