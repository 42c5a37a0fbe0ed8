"""Experiment tracking in MLflow: one MLflow run per training run (trial), spoken over MLflow's
REST API with the standard library.

The trainer image does not install `mlflow` (mlflow-skinny alone is about 40 MB and pulls in
databricks-sdk, OpenTelemetry, FastAPI and uvicorn); a few endpoints are enough:

    experiments/get-by-name, experiments/create     the experiment, created when missing
    runs/create                                      the run, tagged with its trial and TrainingRun
    runs/get                                         the run of a resumed training run
    runs/log-batch                                   parameters once, metrics after every epoch
    runs/update                                      FINISHED, FAILED or KILLED at the end
    mlflow-artifacts/artifacts/<path> (PUT)          the model card, through the server's proxy

Settings come from the environment, under MLflow's own names, so the same pod spec works for
MLflow's client too: `MLFLOW_TRACKING_URI` (unset: no tracking), `MLFLOW_EXPERIMENT_NAME`
(default `Default`), `MLFLOW_TRACKING_TOKEN` (a bearer token) or `MLFLOW_TRACKING_USERNAME` and
`MLFLOW_TRACKING_PASSWORD` (basic authentication), `MLFLOW_TRACKING_SERVER_CERT_PATH` (a CA bundle
that replaces the system's trust store for this server). The operator sets them from
`spec.registry` and Secrets; nothing else reads them.

Tracking never fails training: the first call that fails (the server is down, refuses, times
out) logs a warning, stops tracking for the rest of the run, and the summary says why
(`mlflowRunId` null when no run was created, `mlflowReason` the message). Only rank 0 tracks.

A run that is preempted and resumed keeps its MLflow run: the run id and the last epoch logged
are kept in `<output>/mlflow-run.json` beside the checkpoint, so the resumed process logs the
epochs not yet logged to the same run (which went KILLED at the stop and RUNNING again).

The tracking server is chosen by the TrainingRun's author and treated as untrusted, as the
operator's client does: no redirect to another scheme, host or port (urllib would carry the
`Authorization` header along), only MLflow's own error answers are quoted, and the model card is
uploaded only through the tracking server's artifact proxy (`mlflow-artifacts:` artifact URIs).
Another artifact URI (`s3://…`, a server-local path) is not written to: the trainer's storage
credentials would otherwise write wherever the server says, another team's models included; the
summary's `mlflowReason` says the card was not uploaded and why.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelops_trainer import storage

log = logging.getLogger(__name__)

STATE_FILE = "mlflow-run.json"
"""Beside the checkpoint: the MLflow run of this output folder and the last epoch logged."""
TIMEOUT_S = 10.0
"""Each request's timeout: a server that hangs costs one timeout, then tracking stops."""
_API = "/api/2.0/mlflow/"
_ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts/"
_ERROR_CODE = re.compile(r"^[A-Z][A-Z_]{2,63}$")
_MAX_ANSWER = 1 << 20
_MAX_QUOTE = 300
#: MLflow's limits on one log-batch request.
_MAX_METRICS, _MAX_PARAMS = 1000, 100
#: Fields of an epoch record that are its position, not metrics.
_NOT_METRICS = frozenset({"epoch", "step"})


class TrackingError(Exception):
    """A tracking call failed; str() is one line without the server's body (unless MLflow's own error)."""


@dataclass(frozen=True)
class Settings:
    """Where and how to track, from the environment."""

    uri: str
    """The tracking server, without credentials or a trailing slash."""
    experiment: str
    authorization: str | None = field(default=None, repr=False)
    ca_path: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings | None:
        """The settings, or None when `MLFLOW_TRACKING_URI` is unset or empty."""
        raw = (env.get("MLFLOW_TRACKING_URI") or "").strip()
        if not raw:
            return None
        parts = urllib.parse.urlsplit(raw)
        netloc = parts.netloc.rpartition("@")[2]
        uri = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        authorization = None
        if token := (env.get("MLFLOW_TRACKING_TOKEN") or "").strip():
            authorization = f"Bearer {token}"
        elif env.get("MLFLOW_TRACKING_USERNAME") and env.get("MLFLOW_TRACKING_PASSWORD") is not None:
            pair = f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        elif parts.username is not None:
            pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return cls(
            uri=uri,
            experiment=(env.get("MLFLOW_EXPERIMENT_NAME") or "").strip() or "Default",
            authorization=authorization,
            ca_path=(env.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or "").strip() or None,
        )


class _Client:
    """Requests to one tracking server, under the rules in the module docstring."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings = settings
        self.timeout = timeout
        parts = urllib.parse.urlsplit(settings.uri)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise TrackingError(f"MLFLOW_TRACKING_URI {settings.uri!r} is not an http:// or https:// URL")
        self.netloc = parts.netloc
        handlers: list[Any] = [_SameServerRedirects()]
        if settings.ca_path:
            try:
                context = ssl.create_default_context(cafile=settings.ca_path)
            except (OSError, ssl.SSLError) as exc:
                # The file's content is never quoted: it may be a Secret's other data.
                raise TrackingError(
                    f"MLFLOW_TRACKING_SERVER_CERT_PATH {settings.ca_path} is not a readable PEM CA bundle "
                    f"({type(exc).__name__})"
                ) from None
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self.opener = urllib.request.build_opener(*handlers)

    def call(self, endpoint: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None) -> Any:
        """POST `body` (or GET with `params`) to `/api/2.0/mlflow/<endpoint>`; the JSON answer."""
        url = self.settings.uri + _API + endpoint
        if params is not None:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        return self._send("POST" if body is not None else "GET", url, endpoint, data, "application/json")

    def put_artifact(self, path: str, data: bytes) -> None:
        """Upload `data` to `path` of the server's artifact proxy."""
        url = self.settings.uri + _ARTIFACTS_API + urllib.parse.quote(path)
        self._send("PUT", url, "mlflow-artifacts", data, "application/octet-stream")

    def _send(self, method: str, url: str, endpoint: str, data: bytes | None, content_type: str) -> Any:
        headers = {"Accept": "application/json", "User-Agent": "modelops-trainer"}
        if data is not None:
            headers["Content-Type"] = content_type
        if self.settings.authorization:
            headers["Authorization"] = self.settings.authorization
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        where = f"MLflow at {self.settings.uri}"
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                raw = response.read(_MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            raise TrackingError(_refusal(where, endpoint, exc)) from None
        except urllib.error.URLError as exc:
            raise TrackingError(f"{where} unreachable: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise TrackingError(f"{where} unreachable: {str(exc) or type(exc).__name__}") from None
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise TrackingError(
                f"{where} answered {endpoint} with something that is not JSON (not shown): is it an MLflow server?"
            ) from None


def _refusal(where: str, endpoint: str, exc: urllib.error.HTTPError) -> str:
    """One line for an HTTP error: MLflow's error code and message, or only the status."""
    if isinstance(exc, _Redirected):
        return f"{where} {exc.msg}"
    try:
        answer = json.loads(exc.read(_MAX_ANSWER))
    except (ValueError, OSError, http.client.HTTPException):
        answer = None
    code = answer.get("error_code") if isinstance(answer, dict) else None
    if isinstance(answer, dict) and isinstance(code, str) and _ERROR_CODE.match(code):
        message = re.sub(r"\s+", " ", str(answer.get("message") or "(no message)")).strip()[:_MAX_QUOTE]
        return f"{where} refused {endpoint}: {code}: {message}"
    return f"{where} answered {endpoint} with HTTP {exc.code} {exc.reason} (not an MLflow error; its body is not shown)"


class _Redirected(urllib.error.HTTPError):
    """A redirect to another server, refused."""


class _SameServerRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same scheme, host and port."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        old = urllib.parse.urlsplit(req.full_url)
        new = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl))
        if (old.scheme, old.hostname, old.port) != (new.scheme, new.hostname, new.port):
            where = f"{new.scheme}://{new.hostname}" + (f":{new.port}" if new.port else "")
            raise _Redirected(
                req.full_url, code, f"redirected to another server ({where}); not followed", headers, None
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _metric_entries(record: Mapping[str, Any], step: int, stamp: int, prefix: str = "") -> list[dict[str, Any]]:
    """MLflow metrics of one record: its finite numbers (MLflow stores no NaN from JSON)."""
    out = []
    for key, value in sorted(record.items()):
        if key in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out.append({"key": prefix + key, "value": float(value), "timestamp": stamp, "step": step})
    return out


class Tracker:
    """The MLflow run of one training run; every method is a no-op once tracking has failed."""

    def __init__(self, settings: Settings, output_uri: str, *, timeout: float = TIMEOUT_S) -> None:
        self.settings = settings
        self.state_uri = storage.join(output_uri, STATE_FILE)
        self.timeout = timeout
        self.run_id: str | None = None
        self.artifact_uri: str | None = None
        self.experiment_id: str | None = None
        self.logged_epochs = 0
        self.reason: str | None = None
        self._client: _Client | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], output_uri: str) -> Tracker | None:
        """A tracker when `MLFLOW_TRACKING_URI` is set, else None."""
        settings = Settings.from_env(env)
        return None if settings is None else cls(settings, output_uri)

    @property
    def active(self) -> bool:
        return self.reason is None and self._client is not None and self.run_id is not None

    def _fail(self, exc: Exception) -> None:
        self.reason = str(exc)
        log.warning(
            "MLflow tracking stopped; training goes on",
            extra={"reason": self.reason, "mlflowRunId": self.run_id},
        )

    def start(self, *, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        """Create the run (or take up the one of a resumed run) and log its parameters."""
        try:
            self._client = _Client(self.settings, self.timeout)
            previous = self._load_state()
            if previous is not None:
                self.run_id = previous["runId"]
                self.logged_epochs = int(previous.get("loggedEpochs") or 0)
                info = self._client.call("runs/get", params={"run_id": self.run_id})["run"]["info"]
                self._client.call("runs/update", {"run_id": self.run_id, "status": "RUNNING"})
            else:
                self.experiment_id = self._experiment()
                body = {
                    "experiment_id": self.experiment_id,
                    "run_name": run_name,
                    "start_time": int(time.time() * 1000),
                    "tags": [{"key": k, "value": v} for k, v in sorted(tags.items())],
                }
                info = self._client.call("runs/create", body)["run"]["info"]
                self.run_id = str(info["run_id"])
                self._save_state()
                items = sorted(params.items())
                for i in range(0, len(items), _MAX_PARAMS):
                    chunk = [{"key": k, "value": v[:6000]} for k, v in items[i : i + _MAX_PARAMS]]
                    self._client.call("runs/log-batch", {"run_id": self.run_id, "params": chunk})
            self.experiment_id = str(info.get("experiment_id") or self.experiment_id)
            self.artifact_uri = str(info.get("artifact_uri") or "")
            log.info("MLflow run", extra={"mlflowRunId": self.run_id, "experiment": self.settings.experiment})
        except (TrackingError, KeyError, TypeError) as exc:
            self._fail(exc if isinstance(exc, TrackingError) else TrackingError(f"unexpected MLflow answer: {exc!r}"))

    def _experiment(self) -> str:
        assert self._client is not None
        name = self.settings.experiment
        try:
            return str(
                self._client.call("experiments/get-by-name", params={"experiment_name": name})["experiment"][
                    "experiment_id"
                ]
            )
        except TrackingError as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc):
                raise
        try:
            return str(self._client.call("experiments/create", {"name": name})["experiment_id"])
        except TrackingError as exc:  # created meanwhile by another trial
            if "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        return str(
            self._client.call("experiments/get-by-name", params={"experiment_name": name})["experiment"][
                "experiment_id"
            ]
        )

    def _load_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(storage.read_bytes(self.state_uri))
        except (FileNotFoundError, OSError, ValueError):
            return None
        if not isinstance(state, dict) or state.get("trackingUri") != self.settings.uri or not state.get("runId"):
            return None
        return state

    def _save_state(self) -> None:
        doc = {"trackingUri": self.settings.uri, "runId": self.run_id, "loggedEpochs": self.logged_epochs}
        storage.write_bytes_atomic(self.state_uri, json.dumps(doc).encode())

    def log_history(self, history: list[dict[str, Any]]) -> None:
        """Log the epochs of `history` not logged yet, each at step = its epoch number."""
        if not self.active:
            return
        assert self._client is not None
        stamp = int(time.time() * 1000)
        metrics = [
            m
            for r in history
            if int(r["epoch"]) > self.logged_epochs
            for m in _metric_entries(r, int(r["epoch"]), stamp)
        ]
        try:
            for i in range(0, len(metrics), _MAX_METRICS):
                self._client.call("runs/log-batch", {"run_id": self.run_id, "metrics": metrics[i : i + _MAX_METRICS]})
        except TrackingError as exc:
            self._fail(exc)
            return
        self.logged_epochs = max([self.logged_epochs, *(int(r["epoch"]) for r in history)])
        self._save_state()

    def finish(
        self,
        status: str,
        *,
        history: list[dict[str, Any]] | None = None,
        metrics: Mapping[str, float] | None = None,
        card_uri: str | None = None,
    ) -> None:
        """End the run with `status` (FINISHED, FAILED, KILLED): the epochs not logged yet, the best
        checkpoint's metrics as `best_<name>` (at step = the last epoch), the model card."""
        if not self.active:
            return
        assert self._client is not None
        if history:
            self.log_history(history)
        try:
            if metrics:
                last = history[-1]["epoch"] if history else 0
                entries = _metric_entries(metrics, int(last), int(time.time() * 1000), prefix="best_")
                if entries:
                    self._client.call("runs/log-batch", {"run_id": self.run_id, "metrics": entries})
            if card_uri is not None:
                self._upload(card_uri)
            body = {"run_id": self.run_id, "status": status, "end_time": int(time.time() * 1000)}
            self._client.call("runs/update", body)
        except TrackingError as exc:
            self._fail(exc)

    def _upload(self, uri: str) -> None:
        """The file at `uri` into the run's artifacts, through the server's proxy only."""
        assert self._client is not None
        where = urllib.parse.urlsplit(self.artifact_uri or "")
        if where.scheme != "mlflow-artifacts" or where.netloc not in ("", self._client.netloc):
            # Not a failure of the run: the card stays in the artifact store; say why it is not in MLflow.
            self.reason = (
                f"the model card was not uploaded: the run's artifact URI {self.artifact_uri or '(none)'} is not "
                "the tracking server's artifact proxy (mlflow-artifacts:); start the server with --serve-artifacts"
            )
            log.warning("MLflow artifact not uploaded", extra={"reason": self.reason})
            return
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        self._client.put_artifact(f"{where.path.strip('/')}/{name}", storage.read_bytes(uri))

    def report(self) -> dict[str, Any]:
        """What the summary says about tracking: the run id (or null) and, when something failed, why."""
        out: dict[str, Any] = {"mlflowRunId": self.run_id}
        if self.reason is not None:
            out["mlflowReason"] = self.reason[:300]
        return out
