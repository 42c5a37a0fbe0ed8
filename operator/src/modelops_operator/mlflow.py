"""Model versions in an MLflow Model Registry, through MLflow's REST API (the 2.0 endpoints).

The operator does not depend on the `mlflow` package (hundreds of megabytes with its
dependencies): three endpoints are enough, spoken with the standard library.

    registered-models/create   the registered model, once (RESOURCE_ALREADY_EXISTS is fine)
    model-versions/search      the versions of that model, to find one already registered
    model-versions/create      a new version: the ONNX file's URI, description and tags

Registering is idempotent: every version carries the tag `modelops.dev/digest` (the ONNX file's
SHA-256), and a version of the model that already carries the digest is returned instead of
creating another, so an operator that restarts between registering and recording the version in
status does not register it twice. The search filters on the name only (`name='…'`, which every
MLflow version understands) and compares tags here, page by page.

Which `source` URIs an MLflow server accepts (MLflow 3.x; checked against 3.17):

- Object-store URIs (`s3://`, `gs://`, `wasbs://`, …) and other non-host schemes: as given.
- Local paths and `file://` URIs: refused (INVALID_PARAMETER_VALUE). MLflow registers a local
  file only together with a `run_id` whose run's artifact directory contains the file — the
  tracking server would otherwise hand out its own disk. There is no server option to lift
  this, and a run does not help here: the server creates a run's artifact directory itself
  (`<experiment location>/<run id>/artifacts`), never around an existing file, and it does not
  see the operator's artifact volume anyway. Models meant for an MLflow registry must therefore
  be stored in an object store (the TrainingRun's or operator's artifact URI `s3://…`); the
  error for a `file://` source says so.
- `http://`, `https://`, `ftp://` and other host-addressed schemes: refused unless the server
  is started with `MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES` naming the scheme (e.g.
  `http,https`), or the URI points at the server's own artifact store.
- `runs:/` and `mlflow-artifacts:/` URIs: refused without a `run_id` (which is not sent).

Credentials: `user:password@` in the tracking URI is sent as HTTP basic authentication (what
MLflow's `basic-auth` app expects) and never appears in error messages.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

DIGEST_TAG = "modelops.dev/digest"
"""The model-version tag holding the ONNX file's digest: how a version is found again."""

_API_PREFIX = "/api/2.0/mlflow/"
_PAGE_SIZE = 1000
_MAX_MESSAGE = 1000
_TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED"})


class RegistryError(Exception):
    """MLflow answered with an error, or could not be reached; str() is one line a user can act on.

    `error_code` is MLflow's (`INVALID_PARAMETER_VALUE`, `RESOURCE_DOES_NOT_EXIST`, …) when it
    answered with one. `transient` is true when trying again later may succeed: the server was
    unreachable, timed out, answered 5xx or 429.
    """

    def __init__(self, message: str, *, error_code: str | None = None, transient: bool = False) -> None:
        super().__init__(_one_line(message))
        self.error_code = error_code
        self.transient = transient


def register_model_version(
    tracking_uri: str,
    name: str,
    source: str,
    *,
    digest: str,
    description: str = "",
    tags: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> str:
    """Register `source` (the ONNX file's URI) as a new version of registered model `name`; returns
    the MLflow version number as a string.

    Idempotent: if a version of `name` already carries the tag `modelops.dev/digest` == digest,
    that version is returned instead of creating another (an operator restart between registering
    and recording must not register twice). Creates the registered model when it does not exist
    (RESOURCE_ALREADY_EXISTS is fine). `tags` are added to the new version's tags; the digest tag
    always wins over one of the same key. `timeout` applies to each HTTP request (there are at
    least three). See the module docstring for the `source` URIs MLflow accepts.

    Raises RegistryError when MLflow answers with an error or cannot be reached.
    """
    client = _Client.for_uri(tracking_uri, timeout)
    try:
        client.call("POST", "registered-models/create", body={"name": name})
    except RegistryError as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise

    existing = _find_version(client, name, digest)
    if existing is not None:
        return existing

    all_tags = {**(tags or {}), DIGEST_TAG: digest}
    body = {
        "name": name,
        "source": source,
        "description": description,
        "tags": [{"key": key, "value": value} for key, value in all_tags.items()],
    }
    try:
        answer = client.call("POST", "model-versions/create", body=body)
    except RegistryError as error:
        if error.error_code == "INVALID_PARAMETER_VALUE" and _is_local(source):
            raise RegistryError(
                f"{error} — MLflow registers local files only from an MLflow run's artifact directory: "
                "store models in an object store (an s3:// or gs:// artifact URI) to register them in MLflow",
                error_code=error.error_code,
            ) from None
        raise
    model_version = answer.get("model_version")
    version = model_version.get("version") if isinstance(model_version, dict) else None
    if version is None:
        raise RegistryError(f"{client.display} answered model-versions/create without a version: {_snippet(answer)}")
    return str(version)


def _find_version(client: _Client, name: str, digest: str) -> str | None:
    """The version of `name` tagged with `digest`, if any: every page of the name's versions."""
    params = {"filter": f"name={_quote(name)}", "max_results": str(_PAGE_SIZE)}
    seen_tokens: set[str] = set()
    while True:
        answer = client.call("GET", "model-versions/search", params=params)
        versions = answer.get("model_versions", [])
        if not isinstance(versions, list):
            raise RegistryError(f"{client.display} answered model-versions/search with {_snippet(answer)}")
        for version in versions:
            if not isinstance(version, dict) or version.get("name") != name:
                continue
            tags = version.get("tags", [])
            if isinstance(tags, list) and any(
                isinstance(tag, dict) and tag.get("key") == DIGEST_TAG and tag.get("value") == digest for tag in tags
            ):
                return str(version["version"])
        token = answer.get("next_page_token")
        if not token or not isinstance(token, str) or token in seen_tokens:
            return None
        seen_tokens.add(token)
        params["page_token"] = token


def _quote(name: str) -> str:
    """`name` as a string literal of MLflow's search filter, which has no escapes for quotes."""
    if "'" not in name:
        return f"'{name}'"
    if '"' not in name:
        return f'"{name}"'
    raise RegistryError(
        f"registered model name {name!r} contains both ' and \", which MLflow's search filter cannot quote: "
        "choose spec.registry.modelName without one of them"
    )


@dataclass(frozen=True)
class _Client:
    """One tracking server: the API's base URL, credentials and the per-request timeout."""

    base: str
    """`<tracking URI without credentials>/api/2.0/mlflow/`."""
    display: str
    """`MLflow at <tracking URI without credentials>`, the start of error messages."""
    authorization: str | None
    timeout: float

    @classmethod
    def for_uri(cls, tracking_uri: str, timeout: float) -> _Client:
        """The client for an `http(s)://[user:password@]host[:port][/path]` tracking URI."""
        parts = urllib.parse.urlsplit(tracking_uri.strip())
        netloc = parts.netloc.rpartition("@")[2]
        public = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        if parts.scheme not in {"http", "https"} or not netloc:
            raise RegistryError(f"MLflow tracking URI {public or tracking_uri!r} is not an http:// or https:// URL")
        authorization = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return cls(
            base=public + _API_PREFIX, display=f"MLflow at {public}", authorization=authorization, timeout=timeout
        )

    def call(
        self, method: str, endpoint: str, *, params: dict[str, str] | None = None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One request to `endpoint` (e.g. `model-versions/create`); the JSON object answered."""
        url = self.base + endpoint
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json", "User-Agent": "modelops-operator"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.authorization:
            headers["Authorization"] = self.authorization
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise self._refusal(endpoint, error) from None
        except urllib.error.URLError as error:
            raise RegistryError(f"{self.display} unreachable: {error.reason}", transient=True) from error
        except (OSError, http.client.HTTPException) as error:  # timeouts and resets while reading
            raise RegistryError(
                f"{self.display} unreachable: {str(error) or type(error).__name__}", transient=True
            ) from error
        try:
            answer = json.loads(raw) if raw.strip() else {}
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise RegistryError(
                f"{self.display} answered {endpoint} with something that is not a JSON object "
                f"(is it an MLflow tracking server?): {_snippet(raw)}"
            )
        return answer

    def _refusal(self, endpoint: str, error: urllib.error.HTTPError) -> RegistryError:
        """The RegistryError for an HTTP error answer: MLflow's error_code and message when given."""
        try:
            raw = error.read()
        except (OSError, http.client.HTTPException):
            raw = b""
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        transient = error.code >= 500 or error.code == 429
        if isinstance(answer, dict) and isinstance(answer.get("error_code"), str):
            code = answer["error_code"]
            message = str(answer.get("message") or "(no message)")
            return RegistryError(
                f"{self.display} refused {endpoint}: {code}: {message}",
                error_code=code,
                transient=transient or code in _TRANSIENT_CODES,
            )
        detail = f": {_snippet(raw)}" if raw.strip() else ""
        return RegistryError(
            f"{self.display} answered {endpoint} with HTTP {error.code} {error.reason}{detail}", transient=transient
        )


def _is_local(source: str) -> bool:
    """Whether `source` is a local path or `file:` URI, which MLflow registers only from a run."""
    scheme = urllib.parse.urlsplit(source).scheme
    return scheme in {"", "file"} or len(scheme) == 1  # a one-letter scheme is a Windows drive


def _snippet(value: object) -> str:
    """A short one-line rendering of an unexpected answer, for error messages."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else json.dumps(value) if value else ""
    text = _one_line(text)
    return text if len(text) <= 200 else text[:199] + "…"


def _one_line(text: str) -> str:
    """`text` with runs of whitespace (newlines included) collapsed, at most _MAX_MESSAGE long."""
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
