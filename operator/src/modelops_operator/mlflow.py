"""Model versions in an MLflow Model Registry, through MLflow's REST API (the 2.0 endpoints).

The operator does not depend on the `mlflow` package (hundreds of megabytes with its
dependencies): four endpoints are enough, spoken with the standard library.

    registered-models/create   the registered model, once (RESOURCE_ALREADY_EXISTS is fine)
    model-versions/search      the versions of that model, to find one already registered
    model-versions/create      a new version: the ONNX file's URI, description, tags, and the
                               MLflow run of the trial that trained it (`run_id`)
    registered-models/alias    an alias (`production`) moved to the version a ModelDeployment promoted

Lineage: the trainer logs each trial as an MLflow run (trainer_image's `tracking.py`) and reports
its id; the version registered from the best trial carries that `run_id` (MLflow's UI links the
two) and the tag `modelops.dev/mlflow-run` = `runs:/<run id>`.

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

A private CA: `ssl_context_from_secret` makes the TLS context from a Secret's `ca.crt` (PEM), which
then replaces the system's trust store for that server (as MLflow's
`MLFLOW_TRACKING_SERVER_CERT_PATH` does); a key that is not a certificate is refused without
quoting it.

Credentials come from a Secret (`spec.registry.credentialsSecret`: keys `username` and
`password`, sent as HTTP basic authentication as MLflow's `basic-auth` app expects, or `token`,
sent as a bearer token). The Secret must name the tracking server it is for in its annotation
`modelops.dev/mlflow-tracking-uri` (`credentials_from_secret`): the TrainingRun's author chooses
the URL, and without that check could have the operator send another team's credentials to a
server of their own. `user:password@` in the tracking URI still works (plain text in the spec;
discouraged). Credentials never appear in error messages.

The tracking URI is chosen by a tenant, so the client treats the server as untrusted:

- **No redirects to another host.** A redirect to another scheme, host or port is refused
  (urllib would follow it with the `Authorization` header); one on the same server is followed.
- **No echo of foreign answers.** Only an MLflow error (JSON with an `error_code` of capital
  letters) is quoted in messages, shortened. Anything else is described by its HTTP status and
  content type, never by its body, so status cannot be used to read an internal endpoint.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelops_operator.api import conditions as c
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.modeldeployment import MlflowAliasStatus, ModelDeploymentSpec, ModelDeploymentStatus
from modelops_operator.api.trainingrun import Registry, TrainingRunSpec

DIGEST_TAG = "modelops.dev/digest"
"""The model-version tag holding the ONNX file's digest: how a version is found again."""
RUN_TAG = "modelops.dev/mlflow-run"
"""The model-version tag `runs:/<run id>`: the MLflow run of the trial that trained it."""
CA_KEY = "ca.crt"
"""The key of a CA Secret holding the PEM bundle (cert-manager's name for it)."""

_API_PREFIX = "/api/2.0/mlflow/"
_PAGE_SIZE = 1000
_MAX_MESSAGE = 1000
_TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED"})
#: An MLflow error code (`RESOURCE_ALREADY_EXISTS`): only answers with one are quoted.
_ERROR_CODE = re.compile(r"^[A-Z][A-Z_]{2,63}$")
#: Characters of MLflow's own error message quoted in status.
_MAX_QUOTE = 300
#: Bytes of an answer read at most: MLflow's answers here are small (a page of versions is the largest).
_MAX_ANSWER = 16 << 20
#: The annotation by which a credentials Secret names the one tracking server it is for.
SECRET_URI_ANNOTATION = "modelops.dev/mlflow-tracking-uri"


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
    authorization: str | None = None,
    run_id: str | None = None,
    context: ssl.SSLContext | None = None,
) -> str:
    """Register `source` (the ONNX file's URI) as a new version of registered model `name`; returns
    the MLflow version number as a string.

    Idempotent: if a version of `name` already carries the tag `modelops.dev/digest` == digest,
    that version is returned instead of creating another (an operator restart between registering
    and recording must not register twice). Creates the registered model when it does not exist
    (RESOURCE_ALREADY_EXISTS is fine). `tags` are added to the new version's tags; the digest tag
    always wins over one of the same key. `timeout` applies to each HTTP request (there are at
    least three). `authorization` (from `credentials_from_secret`) replaces credentials in the URI.
    `run_id` links the new version to the MLflow run that trained it (and tags it `runs:/<id>`);
    `context` (from `ssl_context_from_secret`) verifies an https server against a private CA.
    See the module docstring for the `source` URIs MLflow accepts.

    Raises RegistryError when MLflow answers with an error or cannot be reached.
    """
    client = _Client.for_uri(tracking_uri, timeout, authorization=authorization, context=context)
    try:
        client.call("POST", "registered-models/create", body={"name": name})
    except RegistryError as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise

    existing = _find_version(client, name, digest)
    if existing is not None:
        return existing

    all_tags = {**(tags or {}), DIGEST_TAG: digest}
    if run_id:
        all_tags[RUN_TAG] = f"runs:/{run_id}"
    body = {
        "name": name,
        "source": source,
        "description": description,
        "tags": [{"key": key, "value": value} for key, value in all_tags.items()],
    }
    if run_id:
        body["run_id"] = run_id
    try:
        answer = client.call("POST", "model-versions/create", body=body)
    except RegistryError as error:
        if error.error_code == "INVALID_PARAMETER_VALUE" and _is_local(source):
            raise RegistryError(
                f"{error} — MLflow registers local files only from an MLflow run's artifact directory: "
                "store models in an object store (an s3:// artifact URI) to register them in MLflow",
                error_code=error.error_code,
            ) from None
        raise
    model_version = answer.get("model_version")
    version = model_version.get("version") if isinstance(model_version, dict) else None
    if version is None:
        raise RegistryError(f"{client.display} answered model-versions/create without a version")
    return str(version)


def set_alias(
    tracking_uri: str,
    name: str,
    alias: str,
    version: str,
    *,
    timeout: float = 10.0,
    authorization: str | None = None,
    context: ssl.SSLContext | None = None,
) -> None:
    """Point alias `alias` of registered model `name` at `version` (MLflow moves it from the
    version it was on). Idempotent: setting it to where it already points changes nothing.
    Raises RegistryError as `register_model_version` does."""
    client = _Client.for_uri(tracking_uri, timeout, authorization=authorization, context=context)
    client.call("POST", "registered-models/alias", body={"name": name, "alias": alias, "version": version})


def _find_version(client: _Client, name: str, digest: str) -> str | None:
    """The version of `name` tagged with `digest`, if any: every page of the name's versions."""
    params = {"filter": f"name={_quote(name)}", "max_results": str(_PAGE_SIZE)}
    seen_tokens: set[str] = set()
    while True:
        answer = client.call("GET", "model-versions/search", params=params)
        versions = answer.get("model_versions", [])
        if not isinstance(versions, list):
            raise RegistryError(f"{client.display} answered model-versions/search without a list of versions")
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
    context: ssl.SSLContext | None = None
    """Trust for https: None is the system's trust store."""

    @classmethod
    def for_uri(
        cls,
        tracking_uri: str,
        timeout: float,
        *,
        authorization: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> _Client:
        """The client for an `http(s)://[user:password@]host[:port][/path]` tracking URI;
        `authorization`, when given, replaces credentials in the URI."""
        parts = urllib.parse.urlsplit(tracking_uri.strip())
        netloc = parts.netloc.rpartition("@")[2]
        public = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        if parts.scheme not in {"http", "https"} or not netloc:
            raise RegistryError(f"MLflow tracking URI {public or tracking_uri!r} is not an http:// or https:// URL")
        authorization_header = authorization
        authorization = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return cls(
            base=public + _API_PREFIX,
            display=f"MLflow at {public}",
            authorization=authorization_header or authorization,
            timeout=timeout,
            context=context,
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
            opener = _OPENER if self.context is None else _opener(self.context)
            with opener.open(request, timeout=self.timeout) as response:
                raw = response.read(_MAX_ANSWER + 1)
                kind = response.headers.get_content_type()
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
        if not isinstance(answer, dict) or len(raw) > _MAX_ANSWER:
            raise RegistryError(
                f"{self.display} answered {endpoint} with something that is not an MLflow answer ({kind}, "
                f"{'over ' if len(raw) > _MAX_ANSWER else ''}{min(len(raw), _MAX_ANSWER)} bytes, not shown): "
                "is it an MLflow tracking server?"
            )
        return answer

    def _refusal(self, endpoint: str, error: urllib.error.HTTPError) -> RegistryError:
        """The RegistryError for an HTTP error answer: MLflow's error_code and message when given."""
        if isinstance(error, _Redirected):
            return RegistryError(f"{self.display} {error.msg}")
        try:
            raw = error.read(_MAX_ANSWER)
        except (OSError, http.client.HTTPException):
            raw = b""
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        transient = error.code >= 500 or error.code == 429
        if (
            isinstance(answer, dict)
            and isinstance(answer.get("error_code"), str)
            and _ERROR_CODE.match(answer["error_code"])
        ):
            code = answer["error_code"]
            message = _one_line(str(answer.get("message") or "(no message)"))[:_MAX_QUOTE]
            return RegistryError(
                f"{self.display} refused {endpoint}: {code}: {message}",
                error_code=code,
                transient=transient or code in _TRANSIENT_CODES,
            )
        return RegistryError(
            f"{self.display} answered {endpoint} with HTTP {error.code} {error.reason} (not an MLflow error; "
            "its body is not shown)",
            transient=transient,
        )


class _Redirected(urllib.error.HTTPError):
    """A redirect to another server, refused."""


class _SameServerRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same scheme, host and port: urllib would otherwise send the
    request, `Authorization` header included, wherever the tracking server points it."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        old, new = (
            urllib.parse.urlsplit(req.full_url),
            urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl)),
        )
        if (old.scheme, old.hostname, old.port) != (new.scheme, new.hostname, new.port):
            where = f"{new.scheme}://{new.hostname}" + (f":{new.port}" if new.port else "")
            raise _Redirected(
                req.full_url, code, f"redirected to another server ({where}); not followed", headers, None
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SameServerRedirects)


def _opener(context: ssl.SSLContext) -> urllib.request.OpenerDirector:
    """An opener like _OPENER that verifies https servers with `context`."""
    return urllib.request.build_opener(_SameServerRedirects, urllib.request.HTTPSHandler(context=context))


def ssl_context_from_secret(secret: dict[str, Any], key: str = CA_KEY) -> ssl.SSLContext:
    """A TLS context trusting only the PEM CA bundle in `key` of a Secret. RegistryError when the key
    is missing or not a certificate; the Secret's content is never quoted (it may be a real secret)."""
    meta = secret.get("metadata") or {}
    name = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    pem = _secret_text(secret, key)
    if not pem:
        raise RegistryError(f"Secret {name} has no key {key} (a PEM CA certificate)")
    try:
        return ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError):
        raise RegistryError(f"Secret {name} key {key} is not a PEM certificate (its content is not shown)") from None


def _secret_text(secret: dict[str, Any], key: str) -> str | None:
    """A key of a Secret as the API returns it (`data`, base64) or as written (`stringData`)."""
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        return None
    try:
        return base64.b64decode(raw, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def credentials_from_secret(secret: dict[str, Any], tracking_uri: str) -> str:
    """The `Authorization` header from a credentials Secret: `token` (bearer) or `username` and
    `password` (basic). RegistryError when the Secret does not name `tracking_uri` in its
    annotation `modelops.dev/mlflow-tracking-uri`, or holds neither."""
    meta = secret.get("metadata") or {}
    name = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    public = _Client.for_uri(tracking_uri, 0).base.removesuffix(_API_PREFIX)
    named = ((meta.get("annotations") or {}).get(SECRET_URI_ANNOTATION) or "").strip().rstrip("/")
    if named != public:
        raise RegistryError(
            f"Secret {name} is not for {public}: its annotation {SECRET_URI_ANNOTATION} must be exactly that URL "
            "(a Secret's owner says which server may receive it)"
        )
    token = _secret_text(secret, "token")
    if token:
        return f"Bearer {token.strip()}"
    user, password = _secret_text(secret, "username"), _secret_text(secret, "password")
    if user is None or password is None:
        raise RegistryError(f"Secret {name} holds neither `token` nor `username` and `password`")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _is_local(source: str) -> bool:
    """Whether `source` is a local path or `file:` URI, which MLflow registers only from a run."""
    scheme = urllib.parse.urlsplit(source).scheme
    return scheme in {"", "file"} or len(scheme) == 1  # a one-letter scheme is a Windows drive


def _one_line(text: str) -> str:
    """`text` with runs of whitespace (newlines included) collapsed, at most _MAX_MESSAGE long."""
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


# --- what the operator asks of MLflow for its objects ---------------------------------------------

SecretReader = Callable[[str, str], dict[str, Any]]
"""(Secret name, the spec field naming it) -> the Secret, from the object's namespace; raises
RegistryError when it does not exist or the operator may not read it (the controller's part)."""


@dataclass(frozen=True)
class Connection:
    """How to reach one tracking server: its URI, the Authorization header and the TLS trust."""

    tracking_uri: str
    authorization: str | None = None
    context: ssl.SSLContext | None = None


def connect(registry: Registry, read_secret: SecretReader) -> Connection:
    """The connection `spec.registry` of a TrainingRun describes: credentials from
    `credentialsSecret` (only when the Secret names this server, see `credentials_from_secret`),
    a private CA from `caSecret`. RegistryError when a Secret cannot be used."""
    uri = registry.mlflow_tracking_uri
    if not uri:
        raise RegistryError("spec.registry.mlflowTrackingUri is not set")
    authorization = context = None
    if registry.credentials_secret:
        secret = read_secret(registry.credentials_secret, "spec.registry.credentialsSecret")
        authorization = credentials_from_secret(secret, uri)
    if registry.ca_secret:
        context = ssl_context_from_secret(read_secret(registry.ca_secret, "spec.registry.caSecret"))
    return Connection(uri, authorization, context)


def apply_alias(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    training_run: dict[str, Any] | None,
    read_secret: SecretReader,
    at: datetime | None = None,
) -> ModelDeploymentStatus:
    """`status` after pointing `spec.model.mlflowAlias` at the MLflow version of the stable model.

    Called at every reconcile; calls MLflow only when the stable model (or the alias, or the
    registered model's name) differs from what `status.mlflowAlias` records, that is after a
    promotion, so an alias someone moves by hand in MLflow stays where they put it until the next
    one. A failure sets the `MLflowAlias` condition to False with its reason and is retried at the
    next reconcile; serving never waits for it. Without an alias in the spec, the record and the
    condition are dropped.
    """
    generation = status.observed_generation
    if spec.model.mlflow_alias is None:
        if status.mlflow_alias is None and not any(x.type == c.MLFLOW_ALIAS for x in status.conditions):
            return status
        kept = [x for x in status.conditions if x.type != c.MLFLOW_ALIAS]
        return status.model_copy(update={"mlflow_alias": None, "conditions": kept})
    target = _alias_target(spec, status, training_run)
    if target is None:
        return status
    if isinstance(target, tuple):
        registry, wanted = target
        if status.mlflow_alias == wanted and any(
            x.type == c.MLFLOW_ALIAS and x.status == ConditionStatus.TRUE for x in status.conditions
        ):
            return status
        try:
            conn = connect(registry, read_secret)
            set_alias(
                conn.tracking_uri,
                wanted.model_name,
                wanted.alias,
                wanted.version,
                authorization=conn.authorization,
                context=conn.context,
            )
        except RegistryError as error:
            target = f'alias "{wanted.alias}" of "{wanted.model_name}": {error}'
        else:
            msg = (
                f'alias "{wanted.alias}" of "{wanted.model_name}" in MLflow points at version {wanted.version} '
                f"({wanted.served})"
            )
            conds = c.set_condition(
                status.conditions, c.MLFLOW_ALIAS, ConditionStatus.TRUE, c.MLFLOW_ALIAS_MOVED, msg, generation, at
            )
            return status.model_copy(update={"mlflow_alias": wanted, "conditions": conds})
    conds = c.set_condition(
        status.conditions, c.MLFLOW_ALIAS, ConditionStatus.FALSE, c.MLFLOW_ALIAS_FAILED, target, generation, at
    )
    return status.model_copy(update={"conditions": conds})


def _alias_target(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, training_run: dict[str, Any] | None
) -> tuple[Registry, MlflowAliasStatus] | str | None:
    """Where the alias should point (with the TrainingRun's registry settings), why it cannot be
    known (a message), or None while nothing of the TrainingRun is stable."""
    alias, ref, stable = spec.model.mlflow_alias, spec.model.training_run_ref, status.stable
    if alias is None or ref is None or stable is None or training_run is None:
        return None
    if not (stable.version or "").startswith(f"{ref.name}:v"):
        return None
    try:
        run_spec = TrainingRunSpec.model_validate(training_run.get("spec") or {})
    except ValueError:
        return f'TrainingRun "{ref.name}" has a spec the operator cannot read (see its Ready condition)'
    registry = run_spec.registry
    if not registry.mlflow_tracking_uri:
        return f'TrainingRun "{ref.name}" does not register in MLflow: set its spec.registry.mlflowTrackingUri'
    number = (stable.version or "").rpartition(":v")[2]
    run_status = training_run.get("status") or {}
    entries = [*(run_status.get("models") or []), run_status.get("model") or {}]
    entry = next((m for m in entries if str(m.get("version")) == number and m.get("digest") == stable.digest), None)
    mlflow_version = (entry or {}).get("mlflowVersion")
    if not mlflow_version:
        return f"{stable.version} has no MLflow version yet; the TrainingRun's MLflowRegistered condition says why"
    name = registry.model_name or ref.name
    return registry, MlflowAliasStatus(alias=alias, model_name=name, version=str(mlflow_version), served=stable.version)
