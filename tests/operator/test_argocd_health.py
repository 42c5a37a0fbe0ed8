"""Argo CD health checks of the three kinds (`charts/argocd/health/*.lua`), run in Lua with lupa.

Argo CD runs a custom health script in gopher-lua (Lua 5.1) with the object as the global `obj` and
only the base, table, package and a safe os library: no `string`, no `math`. `health()` rebuilds
that sandbox in a real Lua 5.1, so a script that calls `string.find` or `("x"):sub()` fails here
as it would in Argo CD. The objects carry statuses built with the operator's own status models and
`set_condition`, written out as the API server stores them (camelCase, conditions with
type/status/reason/message/observedGeneration/lastTransitionTime).
"""

from __future__ import annotations

import importlib.util
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from modelops_operator.api import conditions as c
from modelops_operator.api.common import API_VERSION, ConditionStatus, StatusBase
from modelops_operator.api.dataset import DatasetPhase, DatasetStatus, SplitCounts
from modelops_operator.api.modeldeployment import ModelDeploymentPhase, ModelDeploymentStatus, ServedModel
from modelops_operator.api.trainingrun import RegisteredModel, TrainingRunPhase, TrainingRunStatus, TrialStatus
from tests.support.objects import DIGEST
from tests.support.tools import import_or_missing

lupa = import_or_missing("lupa.lua51", "lupa (requirements-dev.txt) runs the Lua health checks")

ARGOCD = Path(__file__).resolve().parents[2] / "charts" / "argocd"
KINDS = ("Dataset", "TrainingRun", "ModelDeployment")
HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
AT = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
GEN = 4

#: What Argo CD's sandbox leaves out of a custom health script's globals (UseOpenLibs false).
SANDBOX = """
string, math, io, debug, coroutine, dofile, loadfile, load, loadstring, python = nil
getmetatable("").__index = nil  -- no ("x"):sub() either: the string library is not opened
"""


def script(kind: str) -> str:
    return (ARGOCD / "health" / f"modelops.dev_{kind}.lua").read_text()


def health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """Run the kind's health script on `obj` as Argo CD does; the table it returns, as a dict."""
    lua = lupa.LuaRuntime(register_eval=False, unpack_returned_tuples=True)
    lua.execute(SANDBOX)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script(kind))
    assert lupa.lua_type(result) == "table", f"the script returned {result!r}, not a table"
    hs = dict(result.items())
    assert set(hs) == {"status", "message"}, hs
    assert hs["status"] in HEALTH_STATUSES and isinstance(hs["message"], str) and hs["message"], hs
    return hs


def obj(kind: str, status: StatusBase | dict[str, Any] | None, generation: int = GEN) -> dict[str, Any]:
    """A live object as Argo CD sees it; a status model is written out in its wire form."""
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": "digits", "namespace": "default", "generation": generation, "uid": "0f1e2d3c"},
        "spec": {},
    }
    if status is not None:
        body["status"] = status.wire() if isinstance(status, StatusBase) else status
    return body


def conds(*entries: tuple[str, ConditionStatus, str, str]) -> list[Any]:
    """Conditions set with the operator's own `set_condition`, all at generation GEN."""
    out: list[Any] = []
    for type_, status, reason, message in entries:
        out = c.set_condition(out, type_, status, reason, message, GEN, at=AT)
    return out


# --- Dataset ----------------------------------------------------------------------------------


def dataset_status(phase: str, ready: ConditionStatus, progressing: ConditionStatus, reason: str, msg: str, **kw):
    return DatasetStatus(
        phase=phase,
        observed_generation=GEN,
        conditions=conds((c.READY, ready, reason, msg), (c.PROGRESSING, progressing, reason, msg)),
        **kw,
    )


JOB = "digits-prepare-5f2c1a9e"
VERSION = "732e3bc5b1a7"
PREPARED: dict[str, Any] = {
    "version": VERSION,
    "digest": DIGEST,
    "artifact_uri": f"file:///var/lib/modelops/artifacts/datasets/default/digits/{VERSION}",
    "spec_hash": "5f2c1a9e",
    "job_name": JOB,
    "images": 1797,
    "classes": 10,
    "splits": {"train": SplitCounts(total=1437, per_class={"0": 143}), "val": SplitCounts(total=180)},
    "dropped": {"Duplicate": 3},
}

DATASET_CASES = [
    pytest.param(
        dataset_status("Pending", F, T, c.JOB_CREATED, f"Job {JOB} created for the current spec", job_name=JOB),
        "Progressing",
        [f"JobCreated: Job {JOB} created"],
        id="Pending",
    ),
    pytest.param(
        dataset_status("Running", F, T, c.PREPARING, f"Job {JOB} is preparing the dataset", job_name=JOB),
        "Progressing",
        [f"Preparing: Job {JOB} is preparing the dataset"],
        id="Running",
    ),
    pytest.param(
        dataset_status(
            "Running",
            F,
            T,
            c.POD_PENDING,
            f"Job {JOB}: pod {JOB}-x7k2p: Unschedulable: 0/3 nodes are available: 3 Insufficient memory.",
            job_name=JOB,
        ),
        "Progressing",
        ["PodPending", "Unschedulable: 0/3 nodes are available"],
        id="Running-PodPending",
    ),
    pytest.param(
        dataset_status(
            "Ready",
            T,
            F,
            c.DATASET_PREPARED,
            f"version {VERSION}: 1797 images in 10 classes at file:///var/lib/modelops/artifacts/datasets",
            **PREPARED,
        ),
        "Healthy",
        [f"version {VERSION}: 1797 images in 10 classes"],
        id="Ready",
    ),
    pytest.param(
        dataset_status(
            "Failed",
            F,
            F,
            c.SOURCE_UNREACHABLE,
            "cannot read s3://images/digits/: NoSuchBucket: The specified bucket does not exist",
            job_name=JOB,
        ),
        "Degraded",
        ["SourceUnreachable: cannot read s3://images/digits/: NoSuchBucket"],
        id="Failed",
    ),
    pytest.param(
        dataset_status("Failed", F, F, c.INVALID_SPEC, "spec.sources.0.labelColumn: only for csv and jsonl sources"),
        "Degraded",
        ["InvalidSpec: spec.sources.0.labelColumn"],
        id="Failed-InvalidSpec",
    ),
    pytest.param(
        DatasetStatus(phase="Ready", observed_generation=GEN, **PREPARED),
        "Healthy",
        [f"version {VERSION}"],
        id="Ready-without-conditions",
    ),
]


@pytest.mark.parametrize(("status", "expected", "says"), DATASET_CASES)
def test_dataset_health(status, expected, says):
    hs = health("Dataset", obj("Dataset", status))
    assert hs["status"] == expected
    for part in says:
        assert part in hs["message"]


# --- TrainingRun ------------------------------------------------------------------------------

TRIAL = "digits-resnet-r2-t0"
PROGRESS = f"round 2: 2/4 trials started (1 succeeded); {TRIAL} running epoch 3/10 val_accuracy=0.9412"
MODEL = RegisteredModel(
    version=2,
    uri=f"file:///var/lib/modelops/artifacts/runs/default/digits-resnet/r2/{TRIAL}/model.onnx",
    digest=DIGEST,
    metrics={"val_accuracy": 0.982},
    dataset="digits",
    dataset_version=VERSION,
    trial=TRIAL,
    objective=0.982,
    parameters={"learningRate": "0.00288193"},
)


def run_status(phase: str, reason: str, msg: str, ready: ConditionStatus = F, progressing=F, degraded=F, **kw):
    return TrainingRunStatus(
        phase=phase,
        observed_generation=GEN,
        round=2,
        conditions=conds(
            (c.READY, ready, reason, msg),
            (c.PROGRESSING, progressing, reason, msg),
            (c.DEGRADED, degraded, reason, msg),
        ),
        **kw,
    )


PINNED: dict[str, Any] = {
    "dataset_version": VERSION,
    "dataset_uri": PREPARED["artifact_uri"],
    "dataset_digest": DIGEST,
    "spec_hash": "9c1",
}
TRIALS = [
    TrialStatus(name=TRIAL, parameters={"learningRate": "0.0029"}, state="Running", epoch=3, epochs=10),
    TrialStatus(name="digits-resnet-r2-t1", state="Succeeded", objective=0.97, model_uri="file:///m.onnx"),
]

TRAININGRUN_CASES = [
    pytest.param(
        TrainingRunStatus(phase="Pending", observed_generation=GEN, round=2),
        "Progressing",
        ["Pending"],
        id="Pending",
    ),
    pytest.param(
        run_status(
            "WaitingForDataset",
            c.DATASET_NOT_FOUND,
            'Dataset "digits" does not exist in this namespace; create it or fix spec.datasetRef.name',
        ),
        "Progressing",
        ['DatasetNotFound: Dataset "digits" does not exist'],
        id="WaitingForDataset-NotFound",
    ),
    pytest.param(
        run_status(
            "WaitingForDataset",
            c.DATASET_NOT_READY,
            'Dataset "digits" has no Ready version yet; the run starts when it has one',
        ),
        "Progressing",
        ['DatasetNotReady: Dataset "digits" has no Ready version yet'],
        id="WaitingForDataset-NotReady",
    ),
    pytest.param(
        run_status("Running", c.TRIALS_RUNNING, PROGRESS, progressing=T, progress=PROGRESS, trials=TRIALS, **PINNED),
        "Progressing",
        [f"{TRIAL} running epoch 3/10 val_accuracy=0.9412"],
        id="Running",
    ),
    pytest.param(
        run_status("Running", c.TRIALS_RUNNING, "round 2: 0/4 trials started", progressing=T, **PINNED),
        "Progressing",
        ["round 2: 0/4 trials started"],
        id="Running-without-progress",
    ),
    pytest.param(
        run_status(
            "Suspended",
            c.SUSPENDED,
            "suspended: 1 trial(s) stopped with a checkpoint; they resume from it when unsuspended",
            progress=PROGRESS,
            trials=TRIALS,
            **PINNED,
        ),
        "Suspended",
        ["suspended: 1 trial(s) stopped with a checkpoint"],
        id="Suspended",
    ),
    pytest.param(
        run_status(
            "Succeeded",
            c.MODEL_REGISTERED,
            f"model version 2 registered from trial {TRIAL} (val_accuracy=0.982) at {MODEL.uri}",
            ready=T,
            model=MODEL,
            model_version=2,
            models=[MODEL],
            best_trial=TRIAL,
            best_objective=0.982,
            **PINNED,
        ),
        "Healthy",
        [f"model version 2 registered from trial {TRIAL}"],
        id="Succeeded",
    ),
    pytest.param(
        TrainingRunStatus(phase="Succeeded", observed_generation=GEN, model=MODEL, model_version=2, models=[MODEL]),
        "Healthy",
        ["model version 2"],
        id="Succeeded-without-conditions",
    ),
    pytest.param(
        run_status(
            "Failed",
            c.TRIALS_EXHAUSTED,
            "2 trial(s) failed, more than spec.search.maxFailedTrials (1); the last, digits-resnet-r2-t3: "
            "TrainingDiverged: loss is NaN at epoch 2",
            degraded=T,
            **PINNED,
        ),
        "Degraded",
        ["TrialsExhausted: 2 trial(s) failed", "TrainingDiverged: loss is NaN"],
        id="Failed",
    ),
    pytest.param(
        run_status(
            "Failed",
            c.PARITY_CHECK_FAILED,
            "ONNX outputs differ from PyTorch's: max abs diff 0.31 > 1e-3",
            degraded=T,
        ),
        "Degraded",
        ["ParityCheckFailed: ONNX outputs differ"],
        id="Failed-ParityCheck",
    ),
]


@pytest.mark.parametrize(("status", "expected", "says"), TRAININGRUN_CASES)
def test_trainingrun_health(status, expected, says):
    hs = health("TrainingRun", obj("TrainingRun", status))
    assert hs["status"] == expected
    for part in says:
        assert part in hs["message"]


# --- ModelDeployment --------------------------------------------------------------------------

V1 = ServedModel(version="digits-resnet:v1", uri="file:///m/v1/model.onnx", digest=DIGEST)
V2 = ServedModel(version="digits-resnet:v2", uri="file:///m/v2/model.onnx", digest="sha256:" + "cd" * 32)


def deployment_status(phase: str, reason: str, msg: str, ready_pods: int = 2, **kw) -> ModelDeploymentStatus:
    """A status as the rollout's `finish()` writes it: one message on Progressing, Degraded, Ready."""
    available = T if ready_pods else F
    return ModelDeploymentStatus(
        phase=phase,
        observed_generation=GEN,
        message=msg,
        replicas=max(ready_pods, 1),
        ready_replicas=ready_pods,
        url="http://digits.default.svc:8080",
        conditions=conds(
            (c.MODEL_RESOLVED, T, c.MODEL_FOUND, "model digits-resnet:v2 (version 2 of TrainingRun digits-resnet)"),
            (
                c.AVAILABLE,
                available,
                c.MINIMUM_REPLICAS_AVAILABLE if ready_pods else c.NO_READY_REPLICAS,
                f"{ready_pods} stable server pod(s) ready",
            ),
            (c.PROGRESSING, T if phase in ("Progressing", "Pending") else F, reason, msg),
            (c.DEGRADED, T if phase == "Degraded" else F, reason, msg),
            (c.READY, T if phase == "Healthy" else F, reason, msg),
        ),
        **kw,
    )


CANARY: dict[str, Any] = {
    "stable": V1,
    "stable_version": V1.version,
    "canary": V2,
    "current_step": 1,
    "canary_weight": 10,
    "desired_weight": 10,
}

MODELDEPLOYMENT_CASES = [
    pytest.param(
        deployment_status(
            "Pending", c.ROLLING_STABLE, "stable rolling out model digits-resnet:v1 (0 available)", 0, stable=V1
        ),
        "Progressing",
        ["stable rolling out model digits-resnet:v1"],
        id="Pending",
    ),
    pytest.param(
        ModelDeploymentStatus(
            phase="Pending",
            observed_generation=GEN,
            conditions=conds(
                *(
                    (t, F, c.TRAINING_RUN_NOT_FOUND, 'TrainingRun "digits-resnet" does not exist in this namespace')
                    for t in (c.MODEL_RESOLVED, c.READY, c.PROGRESSING)
                )
            ),
        ),
        "Progressing",
        ['TrainingRunNotFound: TrainingRun "digits-resnet" does not exist'],
        id="Pending-TrainingRunNotFound",
    ),
    pytest.param(
        deployment_status("Progressing", c.ROLLOUT_IN_PROGRESS, "step 1: analysis 1/3 clean measurements", **CANARY),
        "Progressing",
        ["step 1: analysis 1/3 clean measurements", "canary digits-resnet:v2 at 10% of traffic"],
        id="Progressing-canary",
    ),
    pytest.param(
        deployment_status(
            "Paused",
            c.ROLLOUT_PAUSED,
            "step 2: paused until promoted (annotate modelops.dev/promote=true)",
            **CANARY,
        ),
        "Suspended",
        ["paused until promoted", "modelops.dev/promote=true"],
        id="Paused",
    ),
    pytest.param(
        deployment_status(
            "Paused",
            c.ROLLOUT_PAUSED,
            "step 1: analysis inconclusive 3 times (no data: is traffic reaching the canary?); paused: annotate "
            "modelops.dev/promote=true to go on, or modelops.dev/abort=true",
            **CANARY,
        ),
        "Suspended",
        ["analysis inconclusive 3 times"],
        id="Paused-inconclusive",
    ),
    pytest.param(
        deployment_status("Healthy", c.SERVING, "serving model digits-resnet:v1", stable=V1, stable_version=V1.version),
        "Healthy",
        ["serving model digits-resnet:v1"],
        id="Healthy",
    ),
    pytest.param(
        # The spec asks for version 3, not registered yet: the old model keeps serving, phase stays.
        deployment_status("Healthy", c.SERVING, "serving model digits-resnet:v1", stable=V1).model_copy(
            update={
                "conditions": conds(
                    *(
                        (t, F, c.MODEL_NOT_REGISTERED, 'TrainingRun "digits-resnet" has not registered version 3 yet')
                        for t in (c.MODEL_RESOLVED, c.READY, c.PROGRESSING)
                    )
                )
            }
        ),
        "Progressing",
        ['ModelNotRegistered: TrainingRun "digits-resnet" has not registered version 3'],
        id="Healthy-ModelNotRegistered",
    ),
    pytest.param(
        deployment_status(
            "Degraded",
            c.ROLLED_BACK,
            "rolled back: analysis at step 1: error-rate = 0.1234 outside max 0.05",
            aborted=True,
            **{**CANARY, "canary_weight": 0, "desired_weight": 0},
        ),
        "Degraded",
        ["rolled back: analysis at step 1: error-rate = 0.1234", "stable digits-resnet:v1 serves all traffic"],
        id="Degraded",
    ),
    pytest.param(
        ModelDeploymentStatus(
            phase="Failed",
            observed_generation=GEN,
            conditions=conds(
                *(
                    (t, F, c.INVALID_SPEC, "spec.rollout.steps.1: a step is exactly one of setWeight, pause, analysis")
                    for t in (c.READY, c.PROGRESSING)
                )
            ),
        ),
        "Degraded",
        ["InvalidSpec: spec.rollout.steps.1"],
        id="Failed",
    ),
]


@pytest.mark.parametrize(("status", "expected", "says"), MODELDEPLOYMENT_CASES)
def test_modeldeployment_health(status, expected, says):
    hs = health("ModelDeployment", obj("ModelDeployment", status))
    assert hs["status"] == expected
    for part in says:
        assert part in hs["message"]


@pytest.mark.parametrize(
    ("cases", "phases"),
    [
        (DATASET_CASES, DatasetPhase),
        (TRAININGRUN_CASES, TrainingRunPhase),
        (MODELDEPLOYMENT_CASES, ModelDeploymentPhase),
    ],
    ids=KINDS,
)
def test_every_phase_has_a_case(cases, phases):
    assert {p.values[0].phase for p in cases} == set(get_args(phases))


# --- every kind: before the operator has caught up --------------------------------------------

HEALTHY = {
    "Dataset": DATASET_CASES[3].values[0],
    "TrainingRun": TRAININGRUN_CASES[6].values[0],
    "ModelDeployment": MODELDEPLOYMENT_CASES[5].values[0],
}


@pytest.mark.parametrize("kind", KINDS)
def test_missing_status_is_progressing(kind):
    hs = health(kind, obj(kind, None, generation=1))
    assert hs == {"status": "Progressing", "message": "waiting for the operator to observe generation 1"}


@pytest.mark.parametrize("kind", KINDS)
def test_stale_observed_generation_is_progressing_whatever_the_phase(kind):
    assert health(kind, obj(kind, HEALTHY[kind]))["status"] == "Healthy"
    hs = health(kind, obj(kind, HEALTHY[kind], generation=GEN + 1))
    assert hs["status"] == "Progressing"
    assert "waiting for the operator to observe generation 5 (status describes generation 4)" in hs["message"]


@pytest.mark.parametrize("kind", KINDS)
def test_status_without_phase_or_conditions(kind):
    hs = health(kind, obj(kind, {"observedGeneration": GEN}))
    assert hs["status"] == "Progressing"


def test_the_sandbox_has_no_string_library():
    """The scripts must do without `string` and string methods, as in Argo CD."""
    lua = lupa.LuaRuntime(register_eval=False)
    lua.execute(SANDBOX)
    for snippet in ('return string.find("ab", "b")', 'return ("ab"):sub(1, 1)', "return math.floor(1.5)"):
        with pytest.raises(lupa.LuaError):
            lua.execute(snippet)


# --- the generated argocd-cm snippet and argo-cd values ----------------------------------------


def _generator(argocd: Path = ARGOCD):
    spec = importlib.util.spec_from_file_location("argocd_generate", argocd / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("file", "path"),
    [("argocd-cm-snippet.yaml", ("data",)), ("argo-cd-values.yaml", ("configs", "cm"))],
)
def test_generated_yaml_embeds_exactly_the_lua_files(file, path):
    doc = yaml.safe_load((ARGOCD / file).read_text())
    for key in path:
        doc = doc[key]
    assert doc == {f"resource.customizations.health.modelops.dev_{kind}": script(kind) for kind in KINDS}


def test_generated_lua_and_yaml_are_up_to_date():
    assert _generator().main(["--check"]) == 0, "run python3 charts/argocd/generate.py"


def test_check_fails_on_a_stale_or_edited_script(tmp_path, capsys):
    """`generate.py --check` covers the generated Lua too: an edit there, or in a body, is caught."""
    copy = tmp_path / "charts" / "argocd"
    shutil.copytree(ARGOCD, copy)
    generate = _generator(copy)
    assert generate.main(["--check"]) == 0
    target = copy / "health" / "modelops.dev_Dataset.lua"
    target.write_text(target.read_text().replace('"Healthy"', '"Degraded"'))
    assert generate.main(["--check"]) == 1
    assert "charts/argocd/health/modelops.dev_Dataset.lua is out of date" in capsys.readouterr().out
    assert generate.main([]) == 0 and generate.main(["--check"]) == 0
    assert target.read_text() == script("Dataset")
    capsys.readouterr()
    body = copy / "health" / "TrainingRun.body.lua"
    body.write_text(body.read_text().replace("training failed", "the training failed"))
    assert generate.main(["--check"]) == 1
    assert {line.split()[0] for line in capsys.readouterr().out.splitlines()} == {
        "charts/argocd/health/modelops.dev_TrainingRun.lua",
        "charts/argocd/argocd-cm-snippet.yaml",
        "charts/argocd/argo-cd-values.yaml",
    }


def test_snippet_is_the_argocd_cm_configmap():
    doc = yaml.safe_load((ARGOCD / "argocd-cm-snippet.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) == ("v1", "ConfigMap", "argocd-cm")


# --- the Argo CD Applications in examples/argocd ------------------------------------------------

REPO = ARGOCD.parents[1]


def applications() -> dict[str, dict[str, Any]]:
    apps = {}
    for path in sorted((REPO / "examples" / "argocd").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] == "argoproj.io/v1alpha1" and doc["kind"] == "Application", path
            apps[doc["metadata"]["name"]] = doc
    return apps


def test_applications_point_at_this_repository():
    apps = applications()
    assert set(apps) == {"modelops-operator", "modelops-quickstart-artifacts", "modelops-quickstart"}
    for app in apps.values():
        source = app["spec"]["source"]
        assert source["repoURL"] == "https://github.com/modelops/modelops.git" and source["targetRevision"] == "main"
        assert (REPO / source["path"]).is_dir(), source["path"]
        assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
        assert {"CreateNamespace=true", "ServerSideApply=true"} <= set(app["spec"]["syncPolicy"]["syncOptions"])


def test_quickstart_applications_split_the_directory():
    """The artifacts Application takes 00-artifacts.yaml, the other every other file."""
    apps = applications()
    files = {p.name for p in (REPO / "examples" / "quickstart").glob("*.yaml")}
    first = apps["modelops-quickstart-artifacts"]["spec"]["source"]["directory"]["include"]
    rest = apps["modelops-quickstart"]["spec"]["source"]["directory"]["exclude"]
    assert first == rest == "00-artifacts.yaml" and first in files and len(files) > 1


def test_operator_values_fit_the_chart():
    schema_path = REPO / "charts" / "modelops" / "values.schema.json"
    assert schema_path.exists(), "charts/modelops/values.schema.json is gone"
    jsonschema = import_or_missing("jsonschema", "jsonschema (requirements-dev.txt) checks the values")
    values = applications()["modelops-operator"]["spec"]["source"]["helm"]["valuesObject"]
    jsonschema.validate(values, yaml.safe_load(schema_path.read_text()))
    assert values["rbac"]["scope"] == "cluster" and values["watchNamespaces"] == []
