"""How the kube layer finds the API server and logs in, without the Kubernetes client library: the
ServiceAccount in a pod, else the kubeconfig's current context (files merged as kubectl merges
them); the client library only for exec plugins and auth-providers, and then only."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelops_operator.kube import credentials
from tests.support.web import self_signed


def _write(path: Path, config: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(autouse=True)
def outside_a_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(credentials, "SERVICE_ACCOUNT", tmp_path / "no-service-account")


def test_merged_kubeconfig_files_first_value_wins_and_paths_are_relative_to_their_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _write(
        tmp_path / "a" / "config",
        {
            "current-context": "dev",
            "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u", "namespace": "team"}}],
            "clusters": [{"name": "c", "cluster": {"server": "https://first:6443", "certificate-authority": "ca.crt"}}],
        },
    )
    (tmp_path / "b" / "creds").mkdir(parents=True)
    (tmp_path / "b" / "creds" / "token").write_text("s3cret\n")
    second = _write(
        tmp_path / "b" / "config",
        {
            "current-context": "other",
            "clusters": [{"name": "c", "cluster": {"server": "https://second:6443"}}],
            "users": [{"name": "u", "user": {"tokenFile": "creds/token", "client-certificate": "creds/u.crt"}}],
        },
    )
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(first), str(second)]))
    creds = credentials.load()
    assert creds.server == "https://first:6443"
    assert creds.ca_path == str(tmp_path / "a" / "ca.crt")
    assert creds.certificate_path == str(tmp_path / "b" / "creds" / "u.crt")
    assert creds.token == "s3cret" and creds.default_namespace == "team"
    assert creds.headers() == {"Authorization": "Bearer s3cret"}
    assert not credentials.needs_client()


def test_basic_auth_and_insecure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(
        tmp_path / "config",
        {
            "current-context": "x",
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "clusters": [{"name": "c", "cluster": {"server": "https://h:1", "insecure-skip-tls-verify": True}}],
            "users": [{"name": "u", "user": {"username": "ann", "password": "pw"}}],
        },
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    creds = credentials.load()
    assert creds.headers() == {"Authorization": "Basic " + base64.b64encode(b"ann:pw").decode()}
    context = creds.ssl_context()
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"clusters": []}, "no current-context"),
        ({"current-context": "gone", "contexts": []}, "'gone' is not among its contexts"),
        ({"current-context": "x", "contexts": [{"name": "x", "context": {"cluster": "nowhere"}}]}, "no known cluster"),
    ],
)
def test_a_kubeconfig_that_names_no_server_is_a_login_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, object], message: str
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_write(tmp_path / "config", config)))
    with pytest.raises(credentials.LoginError, match=message):
        credentials.load()


def test_in_a_pod_the_service_account_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("pod-token\n")
    (sa / "namespace").write_text("modelops-system")
    monkeypatch.setattr(credentials, "SERVICE_ACCOUNT", sa)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    creds = credentials.load()
    assert creds.server == "https://[fd00::1]:443"
    assert creds.token == "pod-token" and creds.ca_path is None and creds.default_namespace == "modelops-system"
    assert not credentials.needs_client()


def _pem_data(directory: Path) -> tuple[str, str]:
    """A self-signed CA certificate and its key, base64-encoded as a kubeconfig holds them."""
    directory.mkdir()
    cert, key = self_signed(directory)
    return base64.b64encode(cert.read_bytes()).decode(), base64.b64encode(key.read_bytes()).decode()


def test_client_certificate_and_ca_given_as_kubeconfig_data(tmp_path: Path) -> None:
    cert, key = _pem_data(tmp_path / "a")
    creds = credentials.Credentials(server="https://h:1", ca_data=cert, certificate_data=cert, private_key_data=key)
    context = creds.ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "modelops-test"),),)]
    _, other_key = _pem_data(tmp_path / "b")
    mismatched = credentials.Credentials(server="https://h:1", certificate_data=cert, private_key_data=other_key)
    with pytest.raises(ssl.SSLError):
        mismatched.ssl_context()


_PROBE = """
import json, sys
import modelops_operator.__main__
print(json.dumps({"kopf": "kopf" in sys.modules, "kubernetes": sys.modules.get("kubernetes") is not None}))
"""


def _user(user: dict[str, object]) -> dict[str, object]:
    return {
        "current-context": "x",
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://h:1"}}],
        "users": [{"name": "u", "user": user}],
    }


@pytest.mark.parametrize(
    ("user", "client_loaded"),
    [
        ({"token": "t"}, False),
        ({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "get-token"}}, True),
        ({"auth-provider": {"name": "oidc", "config": {}}}, True),
    ],
)
def test_the_operator_process_loads_the_client_library_only_for_exec_and_auth_providers(
    tmp_path: Path, user: dict[str, object], client_loaded: bool
) -> None:
    path = _write(tmp_path / "config", _user(user))
    env = {**os.environ, "KUBECONFIG": str(path)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"kopf": True, "kubernetes": client_loaded}


def test_an_exec_plugin_runs_through_the_client_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answer = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": "from-the-plugin"},
    }
    plugin = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": sys.executable,
        "args": ["-c", f"print({json.dumps(json.dumps(answer))})"],
        "interactiveMode": "Never",
    }
    monkeypatch.setenv("KUBECONFIG", str(_write(tmp_path / "config", _user({"exec": plugin}))))
    creds = credentials.load()
    assert creds.server == "https://h:1" and creds.token == "from-the-plugin"
