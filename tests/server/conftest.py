"""Session fixtures: the exported models and one shared server (two workers) for protocol tests;
module fixtures: a Redis and a server with the job API (test_jobs.py, test_batch.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.serving import ExportedModel, ServerProcess, export_model, redis_server


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


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's redis-server on loopback, for one test module."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module")
def job_server(
    model_v1: ExportedModel, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server with one job consumer, images run one at a time, callbacks to loopback allowed."""
    server = ServerProcess(
        model=model_v1.path,
        args=[
            *("--model-version", "v1", "--redis-url", redis_url, "--job-workers", "1"),
            *("--max-batch-size", "1", "--job-callback-hosts", "127.0.0.1"),
        ],
    ).start(tmp_path_factory.mktemp("job-server"))
    yield server
    assert server.stop() == 0, server.logs()
