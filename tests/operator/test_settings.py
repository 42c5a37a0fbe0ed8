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
    assert s.event_loop == "uvloop"


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
    [
        ("MODELOPS_RESYNC_SECONDS", "0"),
        ("MODELOPS_LOG_FORMAT", "xml"),
        ("MODELOPS_HEALTH_PORT", "70000"),
        ("MODELOPS_ARTIFACT_URI", "gs://bucket/modelops"),
        ("MODELOPS_EVENT_LOOP", "trio"),
    ],
)
def test_bad_values_are_refused(var, value):
    with pytest.raises(ValidationError):
        OperatorSettings.from_env({var: value})


def test_workload_defaults_are_empty_and_nothing_else_is_allowed_by_default():
    s = OperatorSettings()
    assert s.workload_defaults.service_account_name is None
    assert s.workload_defaults.wire() == {
        "imagePullSecrets": [],
        "labels": {},
        "annotations": {},
        "env": [],
        "envFrom": [],
    }
    assert s.workload_service_accounts == [] and s.workload_secrets == []


def test_workload_defaults_are_read_as_json_the_way_the_chart_writes_them():
    chart = (
        '{"annotations":{},"env":[{"name":"AWS_REGION","value":"eu-west-1"}],"envFrom":[],'
        '"imagePullSecrets":[{"name":"corp-registry"}],"labels":{"team":"ml"},"serviceAccountName":""}'
    )
    s = OperatorSettings.from_env(
        {
            "MODELOPS_WORKLOAD_DEFAULTS": chart,
            "MODELOPS_WORKLOAD_SERVICE_ACCOUNTS": "ml-data, ml-train",
            "MODELOPS_WORKLOAD_SECRETS": "",
        }
    )
    assert s.workload_defaults.service_account_name is None  # "" is the chart's unset
    assert [r.name for r in s.workload_defaults.image_pull_secrets] == ["corp-registry"]
    assert s.workload_defaults.env[0].value == "eu-west-1"
    assert s.workload_defaults.labels == {"team": "ml"}
    assert s.workload_service_accounts == ["ml-data", "ml-train"] and s.workload_secrets == []
    assert OperatorSettings.from_env({"MODELOPS_WORKLOAD_DEFAULTS": ""}).workload_defaults.env == []
    with_account = OperatorSettings.from_env({"MODELOPS_WORKLOAD_DEFAULTS": '{"serviceAccountName": "wl"}'})
    assert with_account.workload_defaults.service_account_name == "wl"


@pytest.mark.parametrize(
    "value",
    ["{not json", '{"labels": {"app.kubernetes.io/name": "x"}}', '{"serviceAccount": "typo"}'],
)
def test_bad_workload_defaults_stop_the_operator_at_start(value):
    with pytest.raises(ValueError, match=r"workload_defaults"):
        OperatorSettings.from_env({"MODELOPS_WORKLOAD_DEFAULTS": value})


@pytest.mark.parametrize(
    ("environ", "host"),
    [
        ({}, "0.0.0.0"),
        ({"MODELOPS_POD_IP": "10.244.0.7"}, "0.0.0.0"),
        ({"MODELOPS_POD_IP": "fd00:10:244::7"}, "::"),
        ({"MODELOPS_POD_IP": "fd00:10:244::7", "MODELOPS_LISTEN_ADDRESS": "0.0.0.0"}, "0.0.0.0"),
        ({"MODELOPS_LISTEN_ADDRESS": "127.0.0.1"}, "127.0.0.1"),
    ],
)
def test_the_endpoints_listen_on_the_pods_ip_family(environ: dict[str, str], host: str):
    assert OperatorSettings.from_env(environ).listen_host == host
