"""The MLflow client against servers a TrainingRun's author controls: real HTTP servers on
loopback that redirect elsewhere, or answer with an internal service's data."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from modelops_operator.mlflow import (
    SECRET_URI_ANNOTATION,
    RegistryError,
    credentials_from_secret,
    register_model_version,
)

Handler = Callable[[http.server.BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes]]


class Server:
    """An HTTP server on loopback that answers every request with `handler` and records them."""

    def __init__(self, handler: Handler) -> None:
        seen: list[dict[str, Any]] = []

        class Answer(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
                code, headers, body = handler(self)
                self.send_response(code)
                for key, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.seen = seen
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[[Handler], Server]]:
    started: list[Server] = []

    def start(handler: Handler) -> Server:
        started.append(Server(handler))
        return started[-1]

    yield start
    for server in started:
        server.close()


def register(uri: str, **kwargs: Any) -> str:
    return register_model_version(uri, "m", "s3://models/m.onnx", digest="sha256:m", timeout=5, **kwargs)


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_to_another_server_is_not_followed_and_gets_no_credentials(servers, code):
    catcher = servers(lambda r: (200, {"Content-Type": "application/json"}, b"{}"))
    redirector = servers(lambda r: (code, {"Location": f"{catcher.url}/steal{r.path}"}, b""))
    uri = redirector.url.replace("http://", "http://alice:s3cret@")

    with pytest.raises(RegistryError) as caught:
        register(uri)

    assert catcher.seen == []
    host = catcher.url.removeprefix("http://")
    assert str(caught.value) == f"MLflow at {redirector.url} redirected to another server (http://{host}); not followed"
    assert "s3cret" not in str(caught.value)


def test_a_redirect_on_the_same_server_is_followed(servers):
    def answer(r: http.server.BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if r.command == "POST":
            body = {"error_code": "RESOURCE_ALREADY_EXISTS", "message": "exists"}
        elif r.path.startswith("/old/"):
            return 302, {"Location": r.path.replace("/old/", "/new/", 1)}, b""
        else:
            body = {"error_code": "PERMISSION_DENIED", "message": "who are you?"}
        return 400 if r.command == "POST" else 403, {"Content-Type": "application/json"}, json.dumps(body).encode()

    server = servers(answer)
    with pytest.raises(RegistryError, match="refused model-versions/search: PERMISSION_DENIED: who are you") as caught:
        register(f"{server.url}/old")
    assert [s["path"].split("?")[0] for s in server.seen] == [
        "/old/api/2.0/mlflow/registered-models/create",
        "/old/api/2.0/mlflow/model-versions/search",
        "/new/api/2.0/mlflow/model-versions/search",
    ]
    assert caught.value.error_code == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    ("code", "content_type", "body"),
    [
        (200, "application/json", b'{"AccessKeyId": "AKIA-INTERNAL", "Token": "internal-token"}'),
        (200, "text/html", b"<html>internal admin page: internal-token</html>"),
        (404, "application/json", b'{"detail": "internal-token"}'),
        (500, "text/plain", b"stack trace with internal-token"),
        (400, "application/json", b'{"error_code": "not an mlflow code", "message": "internal-token"}'),
    ],
)
def test_an_answer_that_is_not_mlflows_is_never_quoted(servers, code, content_type, body):
    internal = servers(lambda r: (code, {"Content-Type": content_type}, body))

    with pytest.raises(RegistryError) as caught:
        register(internal.url)

    message = str(caught.value)
    assert "internal-token" not in message and "AKIA" not in message
    assert message.startswith(f"MLflow at {internal.url} answered ")
    assert message.endswith(
        ("not shown): is it an MLflow tracking server?", "its body is not shown)", "without a version")
    )


def secret(annotation: str | None, **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "mlflow-creds", "namespace": "team-a"}
    if annotation is not None:
        meta["annotations"] = {SECRET_URI_ANNOTATION: annotation}
    return {"metadata": meta, "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_a_secrets_credentials_go_only_to_the_server_it_names(servers):
    seen_by_mlflow = servers(
        lambda r: (403, {"Content-Type": "application/json"}, b'{"error_code": "PERMISSION_DENIED", "message": "no"}')
    )
    auth = credentials_from_secret(secret(seen_by_mlflow.url + "/", token="t0k"), seen_by_mlflow.url)
    with pytest.raises(RegistryError, match="PERMISSION_DENIED"):
        register(seen_by_mlflow.url, authorization=auth)
    assert seen_by_mlflow.seen[0]["authorization"] == "Bearer t0k"

    basic = credentials_from_secret(secret(seen_by_mlflow.url, username="alice", password="pw"), seen_by_mlflow.url)
    assert basic == "Basic " + base64.b64encode(b"alice:pw").decode()


@pytest.mark.parametrize(
    ("annotation", "data", "words"),
    [
        (None, {"token": "t"}, "is not for http://evil.example: its annotation modelops.dev/mlflow-tracking-uri"),
        ("http://mlflow.team-a:5000", {"token": "t"}, "is not for http://evil.example"),
        ("http://evil.example", {"username": "alice"}, "holds neither `token` nor `username` and `password`"),
    ],
)
def test_a_secret_not_meant_for_the_server_is_refused(annotation, data, words):
    with pytest.raises(RegistryError) as caught:
        credentials_from_secret(secret(annotation, **data), "http://evil.example")
    assert words in str(caught.value)
    assert str(caught.value).startswith("Secret team-a/mlflow-creds ")
