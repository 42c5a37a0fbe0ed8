"""One real MLflow server for the integration tests of a session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.mlflow_server import mlflow_server


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri
