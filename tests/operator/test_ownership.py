"""Whose object is it: a ModelDeployment never writes an object of a child's name that it did not
create, nor an HTTPRoute its owner did not hand over (the children are the builders' real output)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.dataset import DatasetSpec, DatasetStatus
from modelops_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus, ServedModel
from modelops_operator.api.names import APPLIED_ANNOTATION
from modelops_operator.builders.dataset import build_prepare_job
from modelops_operator.builders.modeldeployment import build_deployment, build_hpa, build_pdb, build_services
from modelops_operator.reconcile.modeldeployment import refused_status, stable_replicas_to_apply, track
from modelops_operator.reconcile.ownership import ROUTE_ANNOTATION, claim, conflicts, holds, owns, route_delegated
from modelops_operator.reconcile.status import refused
from modelops_operator.settings import OperatorSettings
from tests.support.objects import DIGEST, dataset, model_deployment

UID = "0b1c-our-uid"
MODEL = ServedModel(version="v1", uri="s3://models/api.onnx", digest=DIGEST)


def md(name: str = "api") -> dict[str, Any]:
    body = model_deployment(name).obj()
    body["metadata"].update(namespace="team-b", uid=UID, generation=1)
    return body


def children(name: str = "api") -> list[dict[str, Any]]:
    body = md(name)
    spec = ModelDeploymentSpec.model_validate(body["spec"])
    return [
        build_deployment(body, spec, MODEL, "stable", OperatorSettings(), 1),
        *build_services(body, spec),
        build_pdb(body),
        build_hpa(body, spec),
    ]


def existing(desired: dict[str, Any], owner_refs: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The object of the same kind and name as another team or tool would have it."""
    other = copy.deepcopy(desired)
    other["metadata"] = {"name": desired["metadata"]["name"], "namespace": "team-b", "uid": "theirs"}
    if owner_refs is not None:
        other["metadata"]["ownerReferences"] = owner_refs
    return other


def controller(uid: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": uid, "controller": True}]


def test_every_child_carries_our_controller_reference():
    for child in children():
        refs = child["metadata"]["ownerReferences"]
        assert [(r["uid"], r["controller"]) for r in refs] == [(UID, True)], child["kind"]


@pytest.mark.parametrize(
    ("owner_refs", "verb"),
    [
        (None, "conflict"),  # another team's Service "api", Deployment "api-stable", HPA and PDB "api"
        ([], "conflict"),
        (controller("another-uid"), "conflict"),  # a child of another object (a Helm-less tool, another MD)
        ([{**controller(UID)[0], "controller": False}], "conflict"),  # our uid, but not as its controller
        (controller(UID), "apply"),
    ],
)
def test_an_existing_object_is_applied_only_when_we_control_it(owner_refs, verb):
    for desired in children():
        got = claim(desired, existing(desired, owner_refs))
        assert got.verb == verb, desired["kind"]
        if verb == "conflict":
            kind, name = desired["kind"], desired["metadata"]["name"]
            assert got.message.startswith(f"{kind} team-b/{name} already exists and is ")
            assert got.message.endswith(": rename this object, or delete that one")


def as_served(body: dict[str, Any]) -> dict[str, Any]:
    """`body` as the API server returns it after the create: metadata and defaults added."""
    out = copy.deepcopy(body)
    out["metadata"].update(uid="child-uid", resourceVersion="42", managedFields=[{"manager": "modelops-operator"}])
    out["status"] = {"observedGeneration": 1}
    if out["kind"] == "Deployment":
        out["spec"].setdefault("progressDeadlineSeconds", 600)
        out["spec"]["template"]["spec"].setdefault("schedulerName", "default-scheduler")
        out["spec"]["template"]["spec"]["containers"][0].setdefault("terminationMessagePath", "/dev/termination-log")
    if out["kind"] == "Service":
        out["spec"].update(clusterIP="10.96.0.12", sessionAffinity="None")
        for port in out["spec"]["ports"]:
            port.setdefault("protocol", "TCP")
    return out


def test_a_child_that_holds_the_applied_body_is_kept_not_applied_again():
    for desired in children():
        created = claim(desired, None)
        assert created.verb == "create" and created.body["metadata"]["annotations"][APPLIED_ANNOTATION]
        assert claim(desired, as_served(created.body)).verb == "keep", desired["kind"]


def test_a_child_changed_by_hand_or_built_differently_is_applied():
    desired = children()[0]  # the stable Deployment
    served = as_served(claim(desired, None).body)
    edited = copy.deepcopy(served)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:1"
    assert claim(desired, edited).verb == "apply"
    dropped = copy.deepcopy(served)
    del dropped["metadata"]["labels"][next(iter(dropped["metadata"]["labels"]))]
    assert claim(desired, dropped).verb == "apply"
    # A field the builder no longer sets (the body's hash changed): applied, so the field goes.
    fewer = copy.deepcopy(desired)
    del fewer["spec"]["template"]["spec"]["containers"][0]["env"][0]
    assert holds(claim(fewer, None).body["spec"], served["spec"]) is False
    assert claim(fewer, served).verb == "apply"
    unstamped = copy.deepcopy(served)
    del unstamped["metadata"]["annotations"][APPLIED_ANNOTATION]  # made by an operator before the hash
    assert claim(desired, unstamped).verb == "apply"


@pytest.mark.parametrize(
    ("want", "have", "held"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, True),  # more in the object: defaults, others' fields
        ({"a": None}, {}, True),  # no value wanted, none there
        ({"a": None}, {"a": 1}, False),
        ({"cpu": "0.5"}, {"cpu": "500m"}, False),  # the API server's canonical form: applied again
        ([{"a": 1}], [{"a": 1, "b": 2}], True),
        ([{"a": 1}], [{"a": 1}, {"a": 2}], False),  # an item added (a sidecar): applied again
        ({"a": True}, {"a": 1}, False),
        ({"a": 1}, {"a": 1.0}, False),
        ({"a": {"b": 1}}, {"a": "x"}, False),
    ],
)
def test_holds(want, have, held):
    assert holds(want, have) is held


def test_an_absent_child_is_created_not_applied():
    assert {claim(child, None).verb for child in children()} == {"create"}


def test_one_conflict_names_the_object_and_holds_back_all_writes():
    desired = children()
    observed = [None] * len(desired)
    taken = next(i for i, d in enumerate(desired) if (d["kind"], d["metadata"]["name"]) == ("Service", "api"))
    observed[taken] = existing(desired[taken], None)  # only the Service "api" is taken
    claims = [claim(d, o) for d, o in zip(desired, observed, strict=True)]
    assert conflicts(claims) == [
        "Service team-b/api already exists and is not created by the operator: rename this object, or delete that one"
    ]
    status = refused_status(ModelDeploymentStatus(), 1, c.NAME_CONFLICT, conflicts(claims))
    ready = c.get_condition(status.conditions, c.READY)
    assert (status.phase, ready.status, ready.reason) == ("Failed", "False", "NameConflict")
    assert ready.message == conflicts(claims)[0]


@pytest.mark.parametrize(
    ("route", "words"),
    [
        (None, "HTTPRoute team-b/shared does not exist; create it, annotated modelops.dev/modeldeployment: api"),
        ({"metadata": {"name": "shared"}}, "is not handed to this ModelDeployment"),
        ({"metadata": {"annotations": {ROUTE_ANNOTATION: "someone-else"}}}, "is not handed to this ModelDeployment"),
    ],
)
def test_an_http_route_is_touched_only_when_handed_over(route, words):
    why = route_delegated(route, "team-b", "shared", "api")
    assert why is not None and words in why


def test_a_handed_over_route_is_patched():
    assert route_delegated({"metadata": {"annotations": {ROUTE_ANNOTATION: "api"}}}, "team-b", "shared", "api") is None


def test_a_preparation_job_name_held_by_another_job_is_a_conflict():
    body = dataset("digits").obj()
    body["metadata"].update(namespace="team-b", uid=UID, generation=3)
    job = build_prepare_job(body, DatasetSpec.model_validate(body["spec"]), OperatorSettings())
    name = job["metadata"]["name"]
    got = claim(job, existing(job, None))
    assert got.verb == "conflict"
    assert got.message == (
        f"Job team-b/{name} already exists and is not created by the operator: rename this object, or delete that one"
    )
    status = refused(DatasetStatus(), 3, c.NAME_CONFLICT, [got.message] * 7, "Failed")
    ready = c.get_condition(status.conditions, c.READY)
    assert (status.phase, status.observed_generation, ready.reason) == ("Failed", 3, "NameConflict")
    assert ready.message.endswith(" (and 2 more)") and ready.message.count("already exists") == 5


def entry(manager: str, operation: str, fields: dict[str, Any], **more: str) -> dict[str, Any]:
    return {"manager": manager, "operation": operation, "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
            "fieldsV1": fields, "time": "2026-12-06T12:00:00Z", **more}  # fmt: skip


def test_an_earlier_versions_create_is_folded_into_the_apply_entry_before_an_apply():
    desired = children()[0]  # the stable Deployment
    served = as_served(claim(desired, None).body)
    created = {"f:spec": {"f:template": {"f:spec": {"f:tolerations": {}}}, "f:replicas": {}}}
    applied = {"f:spec": {"f:replicas": {}, "f:selector": {}}}
    controllers = entry("kube-controller-manager", "Update", {"f:status": {}}, subresource="status")
    served["metadata"].update(
        resourceVersion="41",
        managedFields=[
            entry("modelops-operator", "Update", created),
            entry("modelops-operator", "Apply", applied),
            entry("someone", "Update", {"f:metadata": {"f:labels": {}}}),
            controllers,
        ],
    )
    fewer = copy.deepcopy(desired)
    fewer["spec"]["template"]["spec"]["containers"][0]["env"].pop()
    decided = claim(fewer, served)
    assert decided.verb == "apply" and decided.upgrade is not None
    test, replace = decided.upgrade
    assert test == {"op": "test", "path": "/metadata/resourceVersion", "value": "41"}
    entries = {(e["manager"], e["operation"]): e for e in replace["value"]}
    assert set(entries) == {
        ("modelops-operator", "Apply"),
        ("someone", "Update"),
        ("kube-controller-manager", "Update"),
    }
    assert entries["modelops-operator", "Apply"]["fieldsV1"] == {
        "f:spec": {"f:template": {"f:spec": {"f:tolerations": {}}}, "f:replicas": {}, "f:selector": {}}
    }
    assert entries["kube-controller-manager", "Update"] == controllers  # a status writer's entry is not ours


@pytest.mark.parametrize(
    "managed",
    [
        [entry("modelops-operator", "Apply", {"f:spec": {}})],  # created by apply: nothing to fold
        [entry("modelops-operator", "Update", {"f:status": {}}, subresource="status")],
        [entry("modelops-operator", "Update", {"f:spec": {}}, apiVersion="apps/v1beta1")],  # another schema
        [],
    ],
    ids=["apply-only", "status", "other-version", "none"],
)
def test_nothing_to_fold_sends_no_patch(managed):
    desired = children()[0]
    served = as_served(claim(desired, None).body)
    served["metadata"].update(resourceVersion="41", managedFields=managed)
    served["spec"]["replicas"] = 7  # not what is applied: an apply
    decided = claim(desired, served)
    assert decided.verb == "apply" and decided.upgrade is None


REPLICAS = {"f:spec": {"f:replicas": {}}}


@pytest.mark.parametrize(
    ("managed", "owned"),
    [
        ([entry("modelops-operator", "Apply", REPLICAS)], True),
        ([entry("modelops-operator", "Update", REPLICAS)], True),  # an earlier version's create: `upgrade` folds it
        ([entry("modelops-operator", "Apply", {"f:spec": {"f:selector": {}}})], False),
        ([entry("modelops-operator", "Apply", {}), entry("hpa", "Update", REPLICAS, subresource="scale")], False),
        ([entry("modelops-operator", "Update", REPLICAS, subresource="scale")], False),  # a scale, not the object
        ([entry("someone", "Apply", REPLICAS)], False),
        ([], False),
    ],
    ids=["apply", "created-by-post", "other-field", "autoscaler", "scale-subresource", "other-manager", "none"],
)
def test_owns_reads_the_operators_entries_of_the_object_itself(managed, owned):
    served = as_served(claim(children()[0], None).body)
    served["metadata"]["managedFields"] = managed
    assert owns(served, ("spec", "replicas")) is owned


def stable_of(body: dict[str, Any], stable: dict[str, Any] | None, min_replicas: int = 3) -> dict[str, Any]:
    """The stable Deployment the operator would write for `body` (with `min_replicas`), given the one
    it sees now."""
    spec = ModelDeploymentSpec.model_validate({**body["spec"], "autoscaling": {"minReplicas": min_replicas}})
    replicas = stable_replicas_to_apply(spec, track(stable))
    return build_deployment(body, spec, MODEL, "stable", OperatorSettings(), replicas)


def test_the_stable_replicas_stay_ours_until_the_autoscaler_changes_them():
    body = md()
    created = claim(stable_of(body, None), None)
    assert created.verb == "create" and created.body["spec"]["replicas"] == 3  # the autoscaler's minimum
    served = as_served(created.body)
    served["metadata"]["managedFields"] = [entry("modelops-operator", "Apply", {"f:spec": {"f:replicas": {}}})]
    # Leaving replicas out now would remove the field (its sole owner no longer sets it): one pod,
    # until the autoscaler's next sync. It stays, so the Deployment is not even applied again.
    assert claim(stable_of(body, served), served).verb == "keep"
    # A raised minimum is the autoscaler's to apply: the count the Deployment has stays.
    assert claim(stable_of(body, served, min_replicas=5), served).verb == "keep"
    # The autoscaler scaled through the scale subresource: the field is its own, and left out.
    served["spec"]["replicas"] = 6
    served["metadata"]["managedFields"] = [
        entry("modelops-operator", "Apply", {"f:spec": {"f:selector": {}}}),
        entry("kube-controller-manager", "Update", {"f:spec": {"f:replicas": {}}}, subresource="scale"),
    ]
    handed = claim(stable_of(body, served), served)
    assert handed.verb == "apply" and "replicas" not in handed.body["spec"]
