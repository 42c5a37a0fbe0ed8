"""What the operator puts on a container's command line and environment is what the program there
reads: every `MODELOPS_*` variable has a reader, every value parses, every required setting is set.

The programs read their settings from the environment, where an unknown variable is silently
ignored; so a variable the operator sets under a name the program does not know (a typo, a rename
on one side) would pass every other test and change nothing. Each builder's containers are fed,
exactly as the kubelet would hand them over (`$(VAR)` in the arguments expanded from the
environment), to the program's own parser.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from annotated_types import Ge, Le

from modelops_operator.api.dataset import DatasetSpec
from modelops_operator.api.modeldeployment import ModelDeploymentSpec, ServedModel, ServerSpec
from modelops_operator.api.trainingrun import TrainingRunSpec
from modelops_operator.builders.dataset import build_prepare_job
from modelops_operator.builders.modeldeployment import build_deployment
from modelops_operator.builders.trainingrun import build_pytorchjob
from modelops_operator.settings import OperatorSettings
from modelops_server.config import ENV_PREFIX, Settings, load_settings
from modelops_trainer import progress, storage, tracking, train
from modelops_trainer.config import parse_config
from modelops_trainer.prepare import __main__ as prepare_main
from modelops_trainer.prepare.config import CONFIG_ENV as PREPARE_CONFIG_ENV
from modelops_trainer.prepare.config import load_config
from tests.support.objects import DIGEST, dataset, model_deployment, training_run

SETTINGS = OperatorSettings(artifact_pvc="modelops-artifacts")
ARTIFACTS = "/var/lib/modelops/artifacts"
MODEL = ServedModel(version="digits:v3", uri=f"file://{ARTIFACTS}/runs/ns/digits/t/model.onnx", digest=DIGEST)


def with_meta(body: dict[str, Any]) -> dict[str, Any]:
    body["metadata"].update(namespace="ns", uid="u-1", generation=1)
    return body


#: The value of every Secret key the operator points a variable at, as the kubelet would fill it in.
SECRET_VALUE = "redis://:pw@redis.ns.svc:6379/0"


def env_of(container: dict[str, Any]) -> dict[str, str]:
    out = {}
    for e in container.get("env") or []:
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "secretKeyRef" in (e.get("valueFrom") or {}):
            out[e["name"]] = SECRET_VALUE
    return out


def downward_of(container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
    """The variables the kubelet fills from the pod's own fields (`fieldRef`), as it would."""
    out = {}
    for e in container.get("env") or []:
        if path := ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath"):
            node: Any = pod
            for part in path.split("."):
                node = node[part]
            out[e["name"]] = node
    return out


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """`$(VAR)` replaced by the variable's value, as the kubelet does for command and args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


# --- the server (ModelDeployment's Deployments) -----------------------------------------------


def server_bounds(bound: type) -> dict[str, Any]:
    """`spec.server` with every number at the least (`Ge`) or most (`Le`) the API admits: what
    admission lets through, the server must start with."""
    values = {}
    for name, info in ServerSpec.model_fields.items():
        for rule in info.metadata:
            if isinstance(rule, bound):
                values[info.alias or name] = rule.ge if bound is Ge else rule.le
    return {"server": values}


SERVER_SPECS = {
    "defaults": {},
    "tuned": {"server": {"workers": 3, "maxBatchSize": 64, "maxBatchDelayMs": 2.5, "queueCapacity": 40}},
    "gpu": {"server": {"gpus": 1}},
    "api-minimum": server_bounds(Ge),
    "api-maximum": server_bounds(Le),
    "jobs": {
        "jobs": {
            "redisSecretRef": {"name": "redis", "key": "url"},
            "consumersPerPod": 2,
            "claimIdleSeconds": 5,
            "callbackHosts": ["hooks.example.com", "ci.example.com:8443"],
            "batchRoots": ["s3://bucket/batch/", "file:///data/batch/"],
            "batchMaxImages": 5000,
        }
    },
}


def same(parsed: Any, value: str) -> bool:
    """Whether the setting the server parsed is the value the operator wrote."""
    if isinstance(parsed, bool):
        return parsed is (value.lower() == "true")
    if isinstance(parsed, int | float):
        return float(parsed) == float(value)
    return str(parsed) == value


def server_container(spec: dict[str, Any], track: str) -> dict[str, Any]:
    body = model_deployment("digits").obj()
    body["spec"].update(spec)
    body = with_meta(body)
    dep = build_deployment(body, ModelDeploymentSpec.model_validate(body["spec"]), MODEL, track, SETTINGS, 1)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return dict(container)


@pytest.mark.parametrize("track", ["stable", "canary"])
@pytest.mark.parametrize("spec", SERVER_SPECS.values(), ids=SERVER_SPECS.keys())
def test_the_server_reads_every_variable_the_operator_sets(spec, track):
    container = server_container(spec, track)
    env = env_of(container)
    fields = {ENV_PREFIX + name.upper(): name for name in Settings.model_fields}
    unknown = sorted(set(env) - set(fields))
    assert unknown == [], f"the server has no setting for {unknown}: the variables would be ignored"
    assert container["command"][:3] == ["python", "-m", "modelops_server"]
    settings = load_settings(expand(container["command"][3:] + container.get("args", []), env), environ=env)
    required = [name for name, info in Settings.model_fields.items() if info.is_required()]
    assert required and [r for r in required if ENV_PREFIX + r.upper() not in env] == []
    for variable, value in env.items():
        assert same(getattr(settings, fields[variable]), value), (variable, value, getattr(settings, fields[variable]))
    assert settings.model_uri == MODEL.uri and settings.model_digest == MODEL.digest
    assert settings.model_version == MODEL.version and settings.model_name == "digits"
    assert settings.device == ("cuda" if spec.get("server", {}).get("gpus") else "cpu")
    # The ports the server listens on (REST, gRPC) are the ones the probes and the Service use.
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": settings.port,
        "grpc": settings.grpc_port,
    }


# --- the trainer (TrainingRun's PyTorchJobs) ----------------------------------------------------

TRAINER_SPECS = {
    "one-node": {},
    "two-nodes": {"workers": {"nodes": 2}},
    "two-gpus-per-node": {"workers": {"nodes": 1, "gpusPerNode": 2}},
    "mlflow-tracked": {
        "workers": {"nodes": 2},
        "registry": {"mlflowTrackingUri": "https://mlflow.ns.svc:5000", "caSecret": "mlflow-ca"},
    },
}


def trainer_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    body = training_run("digits", "digits").obj()
    body["spec"].update(spec)
    body = with_meta(body)
    job = build_pytorchjob(
        body,
        TrainingRunSpec.model_validate(body["spec"]),
        SETTINGS,
        round_=1,
        index=0,
        parameters={},
        dataset_uri=f"file://{ARTIFACTS}/datasets/ns/digits/v1",
        dataset_digest=DIGEST,
    )
    pod = {"metadata": {"namespace": "ns", "name": "digits-r1-t0-master-0"}}
    containers = [r["template"]["spec"]["containers"][0] for r in job["spec"]["pytorchReplicaSpecs"].values()]
    for container in containers:  # the downward API's values, as the kubelet sets them
        filled = downward_of(container, pod)
        container["env"] = [
            {"name": e["name"], "value": filled[e["name"]]} if e["name"] in filled else e
            for e in container.get("env") or []
        ]
    return containers


#: Each variable the operator may set on the trainer, and how the trainer is seen to read it.
def _reads_train_config(container: dict[str, Any], env: dict[str, str], _tmp: Path) -> None:
    argv = expand(container["args"], env)
    args = train.parse_args(argv)
    config = parse_config(args.config_json)
    assert config.trial is not None and config.trial.name == "digits-r1-t0"
    assert config.dataset.digest == DIGEST


def _reads_cache_dir(_container: dict[str, Any], env: dict[str, str], _tmp: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELOPS_CACHE_DIR", env["MODELOPS_CACHE_DIR"])
        assert storage.default_cache_dir() == Path(env["MODELOPS_CACHE_DIR"])


def _reads_progress_port(container: dict[str, Any], env: dict[str, str], _tmp: Path) -> None:
    port = progress.port_from_env(env)
    named = {p["name"]: p["containerPort"] for p in container.get("ports") or []}
    assert port is not None and named["progress"] == port


def _reads_namespace(container: dict[str, Any], env: dict[str, str], _tmp: Path) -> None:
    config = parse_config(train.parse_args(expand(container["args"], env)).config_json)
    tags = train.tracking_identity(config, "v1", env)["tags"]
    assert tags["modelops.dev/namespace"] == env["MODELOPS_NAMESPACE"] == "ns"


TRAINER_READERS = {
    "MODELOPS_TRAIN_CONFIG": _reads_train_config,
    "MODELOPS_CACHE_DIR": _reads_cache_dir,
    "MODELOPS_PROGRESS_PORT": _reads_progress_port,
    "MODELOPS_NAMESPACE": _reads_namespace,
}
#: The MLflow variables the trainer's tracker reads (MLflow's own names).
MLFLOW_READ = {
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
}


@pytest.mark.parametrize("spec", TRAINER_SPECS.values(), ids=TRAINER_SPECS.keys())
def test_the_trainer_reads_every_variable_the_operator_sets(spec, tmp_path):
    for container in trainer_containers(spec):
        env = env_of(container)
        ours = sorted(name for name in env if name.startswith("MODELOPS_"))
        tracked = "registry" in spec
        readers = sorted(n for n in TRAINER_READERS if tracked or n != "MODELOPS_NAMESPACE")
        assert ours == readers, "a variable without a reader in the trainer (or a reader unused)"
        assert container["command"][-2:] == ["-m", "modelops_trainer.train"]
        for name in ours:
            TRAINER_READERS[name](container, env, tmp_path)
        mlflow_vars = {name for name in env if name.startswith("MLFLOW_")}
        assert mlflow_vars <= MLFLOW_READ and bool(mlflow_vars) is tracked
        if tracked:
            settings = tracking.Settings.from_env(env)
            assert settings is not None
            assert (settings.uri, settings.experiment) == (env["MLFLOW_TRACKING_URI"], "ns/digits")
            # The CA the tracker trusts is the Secret's ca.crt, where the pod mounts it.
            ca_dir, _, ca_file = env["MLFLOW_TRACKING_SERVER_CERT_PATH"].rpartition("/")
            assert settings.ca_path == env["MLFLOW_TRACKING_SERVER_CERT_PATH"] and ca_file == "ca.crt"
            assert ca_dir in {m["mountPath"] for m in container["volumeMounts"]}
        # The writable cache must be on a volume the restricted pod may write (its /tmp emptyDir).
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert any(env["MODELOPS_CACHE_DIR"].startswith(m + "/") for m in mounts), (env["MODELOPS_CACHE_DIR"], mounts)


# --- data preparation (a Dataset's Job) ---------------------------------------------------------


def prepare_container(sources: list[dict[str, Any]]) -> dict[str, Any]:
    body = with_meta(dataset("digits").set("spec.sources", sources).obj())
    job = build_prepare_job(body, DatasetSpec.model_validate(body["spec"]), SETTINGS)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return dict(container)


@pytest.mark.parametrize(
    "sources",
    [
        [{"uri": "file:///data/digits"}],
        [{"uri": "s3://bucket/pets.tar.gz", "format": "archive", "credentialsSecret": "s3-creds"}],
    ],
    ids=["folder", "s3-with-credentials"],
)
def test_the_preparation_program_reads_every_variable_the_operator_sets(sources, monkeypatch):
    container = prepare_container(sources)
    env = env_of(container)
    assert sorted(n for n in env if n.startswith("MODELOPS_")) == sorted(
        [PREPARE_CONFIG_ENV, prepare_main.LOG_FORMAT_ENV]
    )
    assert container["command"] == ["python", "-m", "modelops_trainer.prepare"]
    args = prepare_main.parse_args(expand(container.get("args", []), env), environ=env)
    assert args.log_format == env[prepare_main.LOG_FORMAT_ENV] == "json"
    assert args.config is None  # so the config comes from the environment
    monkeypatch.setenv(PREPARE_CONFIG_ENV, env[PREPARE_CONFIG_ENV])
    config = load_config(args.config)
    assert [s.uri for s in config.sources] == [s["uri"] for s in sources]
    assert config.dataset.namespace == "ns" and config.dataset.name == "digits"


def test_the_preparation_program_refuses_a_log_format_it_does_not_know(capsys):
    with pytest.raises(SystemExit) as exit_:
        prepare_main.parse_args([], environ={prepare_main.LOG_FORMAT_ENV: "yaml"})
    assert exit_.value.code == 2
    assert "$MODELOPS_LOG_FORMAT='yaml' is not one of auto, json, text" in capsys.readouterr().err
    # A flag wins over the variable.
    assert (
        prepare_main.parse_args(["--log-format", "text"], environ={prepare_main.LOG_FORMAT_ENV: "json"}).log_format
        == "text"
    )
