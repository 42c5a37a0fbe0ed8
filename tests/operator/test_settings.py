"""OperatorSettings: documented defaults, and the environment read the way --help says."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelops_operator.settings import OperatorSettings


def test_defaults():
    s = OperatorSettings()
    assert s.namespaces == []  # cluster-wide
    assert s.resync_seconds == 60.0
    assert s.log_format == "json"
    assert s.health_port == 8080
    assert s.watch_client_timeout_seconds > s.watch_server_timeout_seconds
    assert s.artifact_uri.startswith("file://")


def test_every_setting_is_documented():
    for name, field in OperatorSettings.model_fields.items():
        assert field.description, name
        assert f"MODELOPS_{name.upper()}" in OperatorSettings.describe()


def test_from_env():
    s = OperatorSettings.from_env(
        {
            "MODELOPS_NAMESPACES": "ml, ml-staging ,",
            "MODELOPS_RESYNC_SECONDS": "2.5",
            "MODELOPS_LOG_FORMAT": "plain",
            "UNRELATED": "x",
        }
    )
    assert s.namespaces == ["ml", "ml-staging"]
    assert s.resync_seconds == 2.5
    assert s.log_format == "plain"


@pytest.mark.parametrize(
    ("var", "value"),
    [("MODELOPS_RESYNC_SECONDS", "0"), ("MODELOPS_LOG_FORMAT", "xml"), ("MODELOPS_HEALTH_PORT", "70000")],
)
def test_bad_values_are_refused(var, value):
    with pytest.raises(ValidationError):
        OperatorSettings.from_env({var: value})
