"""The controllers' decisions, table-driven (Kueue's style): named cases of input objects and what
was observed -> the status and the actions the controller carries out. The decisions are the pure
`reconcile` functions the controllers call; no API server is involved (the cluster tests run the
controllers against a real one). Also: the kopf registration, and the operator's log filters."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from modelops_operator import controllers, handlers, observability
from modelops_operator.api import conditions as c
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.kinds import DATASET, MODEL_DEPLOYMENT, TRAINING_RUN
from modelops_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus, ServedModel
from modelops_operator.api.names import ABORT_ANNOTATION, APPLIED_ANNOTATION, PROMOTE_ANNOTATION
from modelops_operator.api.trainingrun import RegisteredModel, TrainingRunSpec, TrainingRunStatus
from modelops_operator.reconcile import modeldeployment as rm
from modelops_operator.reconcile import ownership, rollout
from modelops_operator.reconcile import trainingrun as rt
from modelops_operator.reconcile.actions import Action, Registration
from modelops_operator.settings import OperatorSettings
from tests.support.objects import DIGEST, http_route, model_deployment, training_run

T0 = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
SETTINGS = OperatorSettings()
M1 = ServedModel(version="digits-resnet:v1", uri="file:///m/v1/model.onnx", digest=DIGEST)
M2 = ServedModel(version="digits-resnet:v2", uri="file:///m/v2/model.onnx", digest="sha256:" + "2" * 64)
ROUTE = "digits-route"

# --- ModelDeployment ------------------------------------------------------------------------------

#: (kind, name) of every child of the ModelDeployment "digits", in the order they are written.
CHILDREN = [
    ("Deployment", "digits-stable"),
    ("Deployment", "digits-canary"),
    ("Service", "digits"),
    ("Service", "digits-stable"),
    ("Service", "digits-canary"),
    ("PodDisruptionBudget", "digits"),
    ("HorizontalPodAutoscaler", "digits"),
]
#: The canary's Deployment: made for the first canary, kept from then on.
CANARY_DEPLOYMENT = ("Deployment", "digits-canary")
#: The tracks' Services: made only for an HTTPRoute's backends (`rollout.trafficRouting.httpRoute`).
TRACK_SERVICES = [("Service", "digits-stable"), ("Service", "digits-canary")]


def children_of(*, canary: bool, routed: bool) -> list[tuple[str, str]]:
    """CHILDREN without the canary's Deployment before the first canary, and without the tracks'
    Services unless the ModelDeployment routes through an HTTPRoute."""
    skip = ([] if canary else [CANARY_DEPLOYMENT]) + ([] if routed else TRACK_SERVICES)
    return [child for child in CHILDREN if child not in skip]


def md(*steps: dict[str, Any], route: bool = False, header: bool = False) -> dict[str, Any]:
    builder = model_deployment("digits")
    if steps:
        builder.set("spec.rollout.steps", list(steps))
    if route:
        routing: dict[str, Any] = {"httpRoute": ROUTE}
        if header:
            routing["headerRoute"] = {"name": "x-canary", "value": "yes"}
        builder.set("spec.rollout.trafficRouting", routing)
    body = builder.obj()
    body["metadata"].update(namespace="ns", uid="u-1", generation=3, annotations={})
    return body


def serving(model: ServedModel, replicas: int = 2) -> rollout.Track:
    return rollout.Track(replicas=replicas, ready=replicas, updated=replicas, available=replicas, digest=model.digest)


#: One ready canary pod of M2.
ONE_CANARY_POD = serving(M2, 1)


def canary_at(step: int, *, aborted: bool = False) -> ModelDeploymentStatus:
    """M1 serves; M2 is the canary at `step` (started at T0)."""
    return ModelDeploymentStatus(
        stable=M1, canary=M2, current_step=step, step_started_at=rollout.stamp(T0), aborted=aborted
    )


def route_of(owner: str | None) -> dict[str, Any]:
    return http_route(ROUTE, owner).obj()


def accepted(canary: int) -> dict[str, Any]:
    """The route carrying `canary`% to the canary, accepted by its Gateway at its latest generation."""
    return http_route(ROUTE).split(canary).parent().obj()


def foreign(child: dict[str, Any]) -> dict[str, Any]:
    """The object of `child`'s name as another team created it."""
    return {"kind": child["kind"], "metadata": {"name": child["metadata"]["name"], "namespace": "ns"}}


@dataclass
class MDCase:
    name: str
    body: dict[str, Any] = field(default_factory=md)
    old: ModelDeploymentStatus = field(default_factory=ModelDeploymentStatus)
    target: ServedModel = field(default_factory=lambda: M1)
    stable: rollout.Track | None = None
    canary: rollout.Track | None = None
    command: rollout.Command | None = None
    existing: str = "none"
    """What holds the children's names: none, ours (a previous reconcile's), or a foreign Service."""
    route: dict[str, Any] | None = None
    crds: bool = False
    # expected
    phase: str = ""
    reason: str = ""
    """Ready's reason."""
    verbs: list[tuple[str, str, str]] | None = None
    """The actions, as (verb, kind, name); None: one per child, `child_verb` each, then the gauge."""
    canary_deployment: bool = False
    """The canary's Deployment is among the children (a canary needs pods, or it exists)."""
    child_verb: str = "create"
    route_weight: int | None = None
    """The canary's weight in the HTTPRoute patch; None: no patch."""
    header_rule: bool = False
    """The HTTPRoute patch has a header rule."""
    step: int | None = None
    canary_weight: int | None = None
    removed_annotation: str | None = None
    gauge: float = 0.0


def serving_through_route(name: str, route: dict[str, Any], **expected: Any) -> MDCase:
    """M1 serves (its children ours) and the HTTPRoute `route` is handed over."""
    return MDCase(
        name,
        body=md(route=True),
        old=ModelDeploymentStatus(stable=M1),
        stable=serving(M1),
        existing="ours",
        route=route,
        child_verb="apply",
        **expected,
    )


def canary_through_route(
    name: str,
    route: dict[str, Any],
    *,
    canary: rollout.Track | None = ONE_CANARY_POD,
    aborted: bool = False,
    **expected: Any,
) -> MDCase:
    """M2 rolls out beside M1 at a 30% step (then a pause), with a header route, through `route`."""
    return MDCase(
        name,
        body=md({"setWeight": 30}, {"pause": {}}, route=True, header=True),
        old=canary_at(0, aborted=aborted),
        target=M2,
        stable=serving(M1),
        canary=canary,
        existing="ours",
        route=route,
        child_verb="apply",
        canary_deployment=True,
        **expected,
    )


MD_CASES = [
    MDCase(
        "first model: every child created but the canary's Deployment, nothing serves yet",
        phase="Pending",
        reason=c.ROLLING_STABLE,
    ),
    MDCase(
        "the ServiceMonitor and PrometheusRule CRDs are installed: those children too",
        crds=True,
        phase="Pending",
        reason=c.ROLLING_STABLE,
        verbs=[
            *(("create", kind, name) for kind, name in children_of(canary=False, routed=False)),
            ("create", "ServiceMonitor", "digits"),
            ("create", "PrometheusRule", "digits-alerts"),
            ("gauge", "ModelDeployment", "digits"),
        ],
    ),
    MDCase(
        "stable serves the model: children applied, Healthy",
        old=ModelDeploymentStatus(stable=M1),
        stable=serving(M1),
        existing="ours",
        child_verb="apply",
        phase="Healthy",
        reason=c.SERVING,
    ),
    MDCase(
        "a canary rolled out before: its Deployment, at 0 replicas, stays a child",
        old=ModelDeploymentStatus(stable=M2, previous=M1),
        target=M2,
        stable=serving(M2),
        canary=rollout.Track(digest=M2.digest),
        existing="ours",
        child_verb="apply",
        canary_deployment=True,
        phase="Healthy",
        reason=c.SERVING,
    ),
    MDCase(
        "a Service of that name belongs to another team: nothing written",
        existing="foreign",
        phase="Failed",
        reason=c.NAME_CONFLICT,
        verbs=[],
    ),
    MDCase(
        "a name conflict while a model serves: the phase stays",
        old=ModelDeploymentStatus(stable=M1, phase="Healthy"),
        stable=serving(M1),
        existing="foreign",
        phase="Healthy",
        reason=c.NAME_CONFLICT,
        verbs=[],
    ),
    MDCase(
        "the HTTPRoute does not exist: nothing written",
        body=md(route=True),
        route=None,
        phase="Failed",
        reason=c.ROUTE_NOT_DELEGATED,
        verbs=[],
    ),
    MDCase(
        "the HTTPRoute is not handed over: nothing written",
        body=md(route=True),
        route=route_of("someone-else"),
        phase="Failed",
        reason=c.ROUTE_NOT_DELEGATED,
        verbs=[],
    ),
    canary_through_route(
        "a canary at a 30% step without a ready pod: the route sends it nothing yet",
        accepted(0),
        canary=None,
        phase="Progressing",
        reason=c.ROLLOUT_IN_PROGRESS,
        step=0,
        canary_weight=0,
    ),
    canary_through_route(
        "a canary pod is ready at a 30% step: the route gets 30% and the header rule; the step waits for it",
        accepted(0),
        phase="Progressing",
        reason=c.ROLLOUT_IN_PROGRESS,
        route_weight=30,
        header_rule=True,
        step=0,
        canary_weight=0,
    ),
    canary_through_route(
        "the accepted route carries 30%: the step moves on, canaryWeight is 30; the header rule is added",
        accepted(30),
        phase="Paused",
        reason=c.ROLLOUT_PAUSED,
        route_weight=30,
        header_rule=True,
        step=1,
        canary_weight=30,
    ),
    canary_through_route(
        "a rolled-back canary: the route sends it nothing, the gauge says so",
        accepted(30),
        aborted=True,
        phase="Degraded",
        reason=c.ROLLED_BACK,
        route_weight=0,
        gauge=1.0,
    ),
    serving_through_route(
        "serving through a route no Gateway accepted: not Ready, Degraded with the Gateway's reason",
        http_route(ROUTE).split(0).parent("False", reason="NotAllowedByListeners").obj(),
        phase="Degraded",
        reason=c.ROUTE_NOT_ACCEPTED,
        canary_weight=0,
    ),
    serving_through_route(
        "serving through a route whose backends the Gateway refuses: RouteBackendsRefused",
        http_route(ROUTE).split(0).parent(resolved="False", reason="RefNotPermitted").obj(),
        phase="Degraded",
        reason=c.ROUTE_BACKENDS_REFUSED,
    ),
    serving_through_route(
        "a route without the operator's rules: they are written, and Ready waits for the Gateway",
        http_route(ROUTE).rule(("web", 1), path="/web").parent().obj(),
        phase="Progressing",
        reason=c.ROUTE_PENDING,
        route_weight=0,
    ),
    serving_through_route(
        "serving through an accepted route: Healthy, nothing written to the route",
        accepted(0),
        phase="Healthy",
        reason=c.SERVING,
        canary_weight=0,
    ),
    MDCase(
        "a route full of the user's rules: nothing written",
        body=md(route=True),
        route=http_route(ROUTE).obj() | {"spec": {"rules": [{"backendRefs": [{"name": f"s{i}"}]} for i in range(16)]}},
        phase="Failed",
        reason=c.ROUTE_TOO_MANY_RULES,
        verbs=[],
    ),
    MDCase(
        "promote at a manual pause: the command is consumed",
        body=md({"setWeight": 30}, {"pause": {}}),
        old=canary_at(1),
        target=M2,
        stable=serving(M1),
        canary=serving(M2, 1),
        command="promote",
        existing="ours",
        child_verb="apply",
        canary_deployment=True,
        phase="Progressing",  # promoted: the stable Deployment now rolls to M2
        reason=c.ROLLING_STABLE,
        removed_annotation=PROMOTE_ANNOTATION,
    ),
    MDCase(
        "abort with no canary: meaningless, removed all the same",
        old=ModelDeploymentStatus(stable=M1),
        stable=serving(M1),
        command="abort",
        existing="ours",
        child_verb="apply",
        phase="Healthy",
        reason=c.SERVING,
        removed_annotation=ABORT_ANNOTATION,
    ),
]


def decide(case: MDCase) -> tuple[rm.Desired, Any]:
    spec = ModelDeploymentSpec.model_validate(case.body["spec"])
    route_weight = rm.route_weight_in_effect(spec, case.body, case.route)
    seen = rollout.RolloutObserved(case.target, case.stable, case.canary, T0, case.command, None, route_weight)
    want = rm.desired(case.body, spec, case.old, seen, SETTINGS, service_monitor=case.crds, prometheus_rule=case.crds)
    held = {
        "none": lambda child: None,
        "ours": lambda child: child,
        "foreign": lambda child: foreign(child) if child["kind"] == "Service" else None,
    }[case.existing]
    claims = [ownership.claim(child, held(child)) for child in want.children]
    return want, rm.reconcile_model_deployment(case.body, spec, case.old, seen, want, claims, case.route)


@pytest.mark.parametrize("case", MD_CASES, ids=[case.name for case in MD_CASES])
def test_model_deployment_status_and_actions(case: MDCase):
    _, out = decide(case)
    ready = c.get_condition(out.status.conditions, c.READY)
    assert (out.status.phase, ready.reason if ready else None) == (case.phase, case.reason)
    assert ready is not None and ready.last_transition_time == T0.replace(microsecond=0)  # the injected clock
    expected = case.verbs
    if expected is None:
        routed = "trafficRouting" in case.body["spec"].get("rollout", {})
        children = children_of(canary=case.canary_deployment, routed=routed)
        expected = [(case.child_verb, kind, name) for kind, name in children]
        if case.route_weight is not None:
            expected.append(("patch", "HTTPRoute", ROUTE))
        if case.removed_annotation is not None:
            expected.append(("annotate", "ModelDeployment", "digits"))
        expected.append(("gauge", "ModelDeployment", "digits"))
    assert [(a.verb, a.kind, a.name) for a in out.actions] == expected
    by_verb = {a.verb: a for a in out.actions}
    if case.route_weight is not None:
        rules = [
            [(b["name"], b["weight"]) for b in rule["backendRefs"]] for rule in by_verb["patch"].body["spec"]["rules"]
        ]
        split = [("digits-stable", 100 - case.route_weight), ("digits-canary", case.route_weight)]
        header = [[("digits-canary", 1)]] if case.header_rule else []
        assert rules[: len(header) + 1] == [*header, split]
        assert not any(r == [("digits-canary", 1)] for r in rules[len(header) + 1 :])
    if case.step is not None:
        assert out.status.current_step == case.step
    if case.canary_weight is not None:
        assert out.status.canary_weight == case.canary_weight
    if case.removed_annotation is not None:
        assert by_verb["annotate"].body == {case.removed_annotation: None}
    if out.actions:
        assert by_verb["gauge"].value == case.gauge
        assert out.status.url == "http://digits.ns.svc.cluster.local"
        assert c.get_condition(out.status.conditions, c.MODEL_RESOLVED).reason == c.MODEL_FOUND
    else:
        assert out.events == [] and out.status.url is None  # refused: nothing written, nothing said


def test_the_canary_deployment_is_made_with_pods_for_the_first_canary_and_kept_at_zero_after():
    """No idle canary Deployment before the first canary; made with pods when one starts (its
    Deployment not there yet), and kept at 0 replicas once the rollout is over."""

    def canary_replicas(name: str) -> list[int]:
        want, _ = decide(next(case for case in MD_CASES if case.name.startswith(name)))
        canary = [c for c in want.children if (c["kind"], c["metadata"]["name"]) == CANARY_DEPLOYMENT]
        return [child["spec"]["replicas"] for child in canary]

    assert canary_replicas("first model") == []
    assert canary_replicas("stable serves the model") == []
    assert canary_replicas("a canary at a 30% step without a ready pod") == [1]
    assert canary_replicas("a canary rolled out before") == [0]


def test_the_children_written_are_the_ones_built():
    """Each create or apply carries its child's body as `desired` built it, in the same order,
    stamped with a hash of that body: one per child."""
    case = MD_CASES[1]
    want, out = decide(case)
    written = [copy.deepcopy(a.body) for a in out.actions if a.verb in ("create", "apply")]
    stamps = [body["metadata"]["annotations"].pop(APPLIED_ANNOTATION) for body in written]
    for body in written:
        if not body["metadata"]["annotations"]:
            del body["metadata"]["annotations"]
    assert written == want.children
    assert len(set(stamps)) == len(want.children)


@pytest.mark.parametrize(
    ("stable", "canary", "matters"),
    [
        pytest.param(None, None, True, id="no stable track yet"),
        pytest.param(rollout.Track(replicas=2, available=1), None, True, id="stable short of pods"),
        pytest.param(serving(M1), M2, True, id="a canary rolls out"),
        pytest.param(serving(M1), None, False, id="stable complete, no canary: pods are not read"),
    ],
)
def test_server_pods_are_read_only_when_they_may_explain_a_wait(stable, canary, matters):
    assert rm.pods_matter(stable, ModelDeploymentStatus(stable=M1, canary=canary)) is matters


UNPULLABLE = {
    "metadata": {"name": "p"},
    "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull"}}}]},
}
PULL_SAYS = (
    "pod p: ErrImagePull; check the image name and that the registry's credentials are in a Secret of this "
    "namespace listed in spec.podSettings.imagePullSecrets (or the chart's workloadDefaults.imagePullSecrets)"
)


@pytest.mark.parametrize(
    ("pods", "serving", "expected_reason", "message"),
    [
        pytest.param([], False, c.ROLLING_STABLE, None, id="no pod problem: unchanged"),
        pytest.param([UNPULLABLE], False, c.POD_PENDING, PULL_SAYS, id="unpullable: Ready says why"),
        pytest.param([UNPULLABLE], True, c.SERVING, PULL_SAYS, id="stable serves: only the message tells"),
    ],
)
def test_server_pods_that_cannot_start(pods, serving, expected_reason, message):
    ready, reason = (ConditionStatus.TRUE, c.SERVING) if serving else (ConditionStatus.FALSE, c.ROLLING_STABLE)
    status = ModelDeploymentStatus(
        observed_generation=3, conditions=c.set_condition([], c.READY, ready, reason, "before", 3, T0)
    )
    out = rm.with_pods(status, pods, at=T0)
    assert c.get_condition(out.conditions, c.READY).reason == expected_reason
    assert out.message == message


# --- TrainingRun: registration in MLflow as an action ------------------------------------------------------

MODEL = RegisteredModel(
    version=2, uri="file:///m/v2/model.onnx", digest=DIGEST, dataset="digits", dataset_version="abc", trial="t1"
)


@dataclass
class RegistryCase:
    name: str
    registry: dict[str, Any]
    model: RegisteredModel | None
    registration: Registration | None


#: What every registration of MODEL by the run ns/digits-resnet records.
MODEL_REGISTRATION = Registration(
    tracking_uri="http://mlflow:5000",
    model_name="digits-resnet",
    uri=MODEL.uri,
    digest=DIGEST,
    description="modelops TrainingRun ns/digits-resnet v2",
    tags={
        "modelops.dev/trainingrun": "ns/digits-resnet",
        "modelops.dev/version": "2",
        "modelops.dev/dataset": "digits@abc",
        "modelops.dev/trial": "t1",
    },
    credentials_secret=None,
    model_version=2,
)
MLFLOW = {"mlflowTrackingUri": "http://mlflow:5000"}

REGISTRY_CASES = [
    RegistryCase("no tracking server named: nothing to register", {}, MODEL, None),
    RegistryCase("no model yet", MLFLOW, None, None),
    RegistryCase("already recorded in MLflow", MLFLOW, MODEL.model_copy(update={"mlflow_version": "7"}), None),
    RegistryCase("a new version: registered under the run's name", MLFLOW, MODEL, MODEL_REGISTRATION),
    RegistryCase(
        "a model name and a credentials Secret from the spec",
        {**MLFLOW, "modelName": "digits", "credentialsSecret": "mlflow-token"},
        MODEL,
        replace(MODEL_REGISTRATION, model_name="digits", credentials_secret="mlflow-token"),
    ),
]


@pytest.mark.parametrize("case", REGISTRY_CASES, ids=[case.name for case in REGISTRY_CASES])
def test_training_run_registration_is_an_action(case: RegistryCase):
    body = training_run().set("spec.registry", case.registry).obj()
    body["metadata"].update(namespace="ns", uid="u-1", generation=1)
    spec = TrainingRunSpec.model_validate(body["spec"])
    assert rt.registration_of(body, spec, TrainingRunStatus(model=case.model)) == case.registration


def test_a_settled_run_still_registers_its_model():
    """A run that succeeded before the registry was named registers at the next reconcile, and
    its Jobs are left alone."""
    body = training_run().set("spec.registry", {"mlflowTrackingUri": "http://mlflow:5000"}).obj()
    body["metadata"].update(namespace="ns", uid="u-1", generation=1)
    spec = TrainingRunSpec.model_validate(body["spec"])
    from modelops_operator.builders.trainingrun import model_hash  # noqa: PLC0415

    old = TrainingRunStatus(
        phase="Succeeded", spec_hash=model_hash(spec), round=1, dataset_digest=DIGEST, model=MODEL, models=[MODEL]
    )
    out = rt.reconcile_training_run(body, spec, old, rt.TrainingRunObserved(now=T0), SETTINGS)
    assert [(a.verb, a.kind, a.name) for a in out.actions] == [("register", "TrainingRun", "digits-resnet")]


def test_registered_and_failed_registration_statuses():
    status = TrainingRunStatus(observed_generation=4, model=MODEL, models=[MODEL])
    registration = rt.registration_of(
        {"metadata": {"namespace": "ns", "name": "digits-resnet"}},
        TrainingRunSpec.model_validate(
            {"datasetRef": {"name": "digits"}, "registry": {"mlflowTrackingUri": "http://m"}}
        ),
        status,
    )
    assert registration is not None
    done = rt.registered(status, registration, "7", T0)
    assert done.status.model is not None and done.status.model.mlflow_version == "7"
    assert [m.mlflow_version for m in done.status.models] == ["7"]
    cond = c.get_condition(done.status.conditions, c.MLFLOW_REGISTERED)
    assert (cond.status, cond.reason, cond.observed_generation) == (ConditionStatus.TRUE, c.MLFLOW_VERSION_CREATED, 4)
    assert cond.message == 'model version 2 is version 7 of "digits-resnet" in MLflow'
    assert [(e.type, e.reason) for e in done.events] == [("Normal", c.MLFLOW_VERSION_CREATED)]
    failed = rt.registration_failed(status, "MLflow at http://m unreachable", T0)
    cond = c.get_condition(failed.conditions, c.MLFLOW_REGISTERED)
    assert (cond.status, cond.reason) == (ConditionStatus.FALSE, c.MLFLOW_REGISTRATION_FAILED)
    assert failed.model == MODEL  # no version recorded: tried again at the next reconcile


# --- the one Action ---------------------------------------------------------------------------------------------


def test_dataset_and_training_run_return_the_same_action_type():
    from modelops_operator.reconcile import dataset as rd  # noqa: PLC0415

    assert rd.Action is rt.Action is rm.Action is Action


# --- kopf registration and the log filters ---------------------------------------------------------------


def test_handlers_register_the_same_handler_ids_with_kopf():
    """The ids are kopf's keys for progress annotations and index kwargs: renaming one would
    orphan the state of every existing object. Run in a fresh process (kopf's registry is global)."""
    script = textwrap.dedent(
        """
        import kopf
        from modelops_operator import handlers
        from modelops_operator.settings import OperatorSettings
        handlers.register(OperatorSettings(resync_seconds=7))
        reg = kopf.get_default_registry()
        for part in ("_activities", "_changing", "_spawning", "_watching", "_indexing"):
            print(part, sorted({h.id for h in getattr(reg, part).get_all_handlers()}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "_activities ['configure', 'login', 'login_via_client', 'schedule']",  # kopf's login: its fallback, unused
        "_changing ['cleanup', 'forget', 'reconcile', 'reconcile/spec']",
        "_spawning []",  # no kopf timers: controllers.schedule resyncs and polls
        "_watching ['wake', 'wake-modeldeployments', 'wake-modeldeployments-autoscaled', 'wake-trainingruns']",
        "_indexing ['deployments_by_run', 'runs_by_dataset']",
    ]


def test_event_handlers_run_on_the_event_loop():
    """kopf hands an object's events to its handlers one at a time, each event a whole body; a sync
    handler waits for a thread of the pool that the reconciles hold. So every watching handler is
    a coroutine, and only a wake-up or a reconcile goes to a thread (a fresh process: kopf's
    registry is global)."""
    script = textwrap.dedent(
        """
        import inspect, kopf
        from modelops_operator import handlers
        from modelops_operator.settings import OperatorSettings
        handlers.register(OperatorSettings())
        for h in kopf.get_default_registry()._watching.get_all_handlers():
            print(h.id, inspect.iscoroutinefunction(h.fn))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    lines = sorted(out.splitlines())
    assert lines == sorted(
        f"{h} True"
        for h in (
            "wake",
            "wake",
            "wake",
            "wake-modeldeployments",
            "wake-modeldeployments-autoscaled",
            "wake-trainingruns",
        )
    )


def test_blocking_work_runs_in_kopfs_pool_with_the_handlers_context():
    """What kopf gives a sync handler: its thread pool, and the context (kopf's event posting reads it)."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")
    pool = ThreadPoolExecutor(1, thread_name_prefix="kopf-pool")
    saved = list(handlers._pool)
    handlers._pool[:] = [pool]

    async def handler() -> tuple[str, str]:
        var.set("the handler's")
        return await handlers._blocking(lambda: (var.get(), threading.current_thread().name))

    try:
        value, thread = asyncio.run(handler())
    finally:
        handlers._pool[:] = saved
        pool.shutdown()
    assert value == "the handler's"
    assert thread.startswith("kopf-pool")


def _dataset(version: str | None, ready: str = "True") -> dict[str, Any]:
    status = {"version": version, "conditions": [{"type": "Ready", "status": ready}]} if version else {}
    return {"metadata": {"name": "digits", "namespace": "ml"}, "status": status}


def test_a_dataset_wakes_its_runs_only_when_what_they_read_changes():
    memo: dict[str, Any] = {}

    def wake(body: dict[str, Any] | None, dependants: list[str], listed: bool = False) -> controllers.Wake | None:
        return controllers.dependants_wake(
            DATASET, body, memo, name="digits", namespace="ml", listed=listed, dependants=lambda: dependants
        )

    assert wake(_dataset(None), ["run"], listed=True) is None  # first sight at start: resume reconciles all
    woken = wake(_dataset("v1"), ["run-a", "run-b"])
    assert woken is not None
    assert (woken.kind, woken.namespace, woken.names) == (TRAINING_RUN, "ml", ("run-a", "run-b"))
    assert woken.value.startswith("Dataset/digits@")
    assert wake(_dataset("v1"), ["run-a"]) is None  # the same status again: no one to wake
    assert wake(_dataset("v2"), []) is None  # a change, but no run waits for it
    gone = wake(None, ["run-a"])
    assert gone is not None and gone.value == "Dataset/digits@deleted"


def test_an_autoscaler_wakes_the_modeldeployment_that_controls_it():
    memo: dict[str, Any] = {}
    owner = {"kind": "ModelDeployment", "name": "digits", "controller": True}

    def hpa(replicas: int, owners: list[dict[str, Any]]) -> dict[str, Any]:
        return {"metadata": {"ownerReferences": owners}, "status": {"currentReplicas": replicas}}

    def wake(body: dict[str, Any] | None) -> controllers.Wake | None:
        return controllers.autoscaler_wake(body, memo, name="digits-hpa", namespace="ml", listed=False)

    woken = wake(hpa(1, [owner]))
    assert woken is not None and (woken.kind, woken.names) == (MODEL_DEPLOYMENT, ("digits",))
    assert woken.value.startswith("HorizontalPodAutoscaler/digits-hpa@")
    assert wake(hpa(1, [owner])) is None
    assert wake(hpa(2, [{**owner, "controller": False}])) is None  # not controlled by a ModelDeployment


def _record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("kopf", level, __file__, 1, message, None, None)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("Starting the watch-stream for datasets.v1alpha1.modelops.dev cluster-wide.", "start"),
        ("Watch-stream for datasets.v1alpha1.modelops.dev is inactive, reconnecting.", "inactive"),
        ("Restarting the watch-stream for datasets.v1alpha1.modelops.dev cluster-wide.", "gone"),
    ],
)
@pytest.mark.parametrize("keep_debug", [False, True])
def test_watch_restarts_are_counted_and_debug_records_dropped_unless_asked(message, reason, keep_debug):
    counter = observability.WATCH_STARTS.labels(reason)
    before = counter._value.get()
    kept = observability.CountWatchStarts(keep_debug=keep_debug).filter(_record(logging.DEBUG, message))
    assert counter._value.get() == before + 1
    assert kept is keep_debug


@pytest.mark.parametrize(
    ("level", "message", "kept"),
    [
        (logging.INFO, "Handler 'wake' succeeded.", False),
        (logging.INFO, "Handler 'wake-trainingruns' succeeded.", False),
        (logging.INFO, "Handler 'reconcile' succeeded.", True),
        (logging.INFO, "Handler 'cleanup' succeeded.", True),
        (logging.ERROR, "Handler 'wake' failed with an exception. Will retry.", True),
    ],
)
def test_routine_successes_are_dropped(level, message, kept):
    assert observability.DropRoutineSuccess().filter(_record(level, message)) is kept
