"""The user's HTTPRoute: the operator's rules merged into it without touching the user's, and what
its Gateway says of it read into a reason (`reconcile.routing`). Routes are written as the API
server stores them (`tests.support.objects.http_route`)."""

from __future__ import annotations

from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.modeldeployment import ModelDeploymentSpec
from modelops_operator.builders.modeldeployment import http_route_rules
from modelops_operator.reconcile import routing
from tests.support.objects import http_route, model_deployment

HEADER = ("x-canary", "yes")


def spec(header: bool = False) -> ModelDeploymentSpec:
    routing_spec: dict[str, Any] = {"httpRoute": "digits-route"}
    if header:
        routing_spec["headerRoute"] = {"name": HEADER[0], "value": HEADER[1]}
    return ModelDeploymentSpec.model_validate(model_deployment().set("spec.rollout.trafficRouting", routing_spec).spec)


def ours(weight: int, *, header: bool = False, serves: bool = True) -> list[dict[str, Any]]:
    return http_route_rules(spec(header), "digits", weight, serves)


def backends(rule: dict[str, Any]) -> list[tuple[str, int]]:
    return [(ref["name"], ref["weight"]) for ref in rule["backendRefs"]]


# --- whose rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ({"name": "digits-canary"}, True),
        ({"name": "digits-canary", "group": "", "kind": "Service", "namespace": "ns"}, True),
        ({"name": "digits-canary", "namespace": "other"}, False),
        ({"name": "digits-canary", "group": "multicluster.x-k8s.io", "kind": "ServiceImport"}, False),
        ({"name": "digits-stable"}, False),
        ({"name": "other-canary"}, False),
    ],
    ids=["canary", "canary-defaults-written", "other-namespace", "service-import", "stable-only", "other-owner"],
)
def test_a_rule_is_the_operators_when_it_names_the_canary_service(ref, expected):
    assert routing.is_operators({"backendRefs": [{"port": 80, **ref}]}, "digits", "ns") is expected


# --- the merge -------------------------------------------------------------------------------------------


def test_the_users_rules_stay_as_they_were_and_in_their_order_after_the_operators():
    route = (
        http_route()
        .rule(("admin", 1), path="/admin")
        .split(10)
        .rule(("digits-stable", 1), path="/v1/legacy")
        .rule(("docs", 1), path="/docs")
        .parent()
        .obj()
    )
    users = [route["spec"]["rules"][i] for i in (0, 2, 3)]
    patch = routing.route_patch(route, ours(30), "digits")
    assert patch is not None
    rules = patch["spec"]["rules"]
    assert backends(rules[0]) == [("digits-stable", 70), ("digits-canary", 30)]
    assert rules[1:] == users  # untouched, a rule of theirs to the stable Service included


def test_the_write_is_conditional_on_the_route_as_read():
    """A concurrent edit makes the write fail with 409 (retried at the next reconcile) instead of
    being overwritten with the rules read before it."""
    patch = routing.route_patch(http_route().split(10).obj(), ours(30), "digits")
    assert patch is not None and patch["metadata"] == {"resourceVersion": "4711"}


def test_an_empty_route_gets_the_operators_rules():
    patch = routing.route_patch(http_route().obj(), ours(0), "digits")
    assert patch is not None
    (rule,) = patch["spec"]["rules"]
    assert backends(rule) == [("digits-stable", 100), ("digits-canary", 0)]


@pytest.mark.parametrize("defaults_written", [True, False])
def test_nothing_is_written_when_the_route_carries_the_operators_rules(defaults_written):
    route = http_route().rule(("web", 1), path="/web").split(30).obj()
    if not defaults_written:  # as another client may have stored it: the API server fills nothing in
        for ref in route["spec"]["rules"][1]["backendRefs"]:
            del ref["group"], ref["kind"]
        del route["spec"]["rules"][1]["matches"]
    route["spec"]["rules"].reverse()  # the operator's first: where it writes them
    assert routing.route_patch(route, ours(30), "digits") is None


def test_the_header_rule_goes_when_no_canary_serves():
    route = http_route().rule(("digits-canary", 1), header=HEADER).split(30).rule(("web", 1), path="/web").obj()
    patch = routing.route_patch(route, ours(0, header=True, serves=False), "digits")
    assert patch is not None
    split, web = patch["spec"]["rules"]
    assert backends(split) == [("digits-stable", 100), ("digits-canary", 0)]
    assert backends(web) == [("web", 1)]
    assert not any("headers" in m for rule in patch["spec"]["rules"] for m in rule["matches"])


def test_the_header_rule_comes_back_while_a_canary_serves():
    patch = routing.route_patch(http_route().split(0).obj(), ours(10, header=True), "digits")
    assert patch is not None
    header, split = patch["spec"]["rules"]
    assert header["matches"][0]["headers"] == [{"type": "Exact", "name": "x-canary", "value": "yes"}]
    assert backends(header) == [("digits-canary", 1)] and backends(split) == [
        ("digits-stable", 90),
        ("digits-canary", 10),
    ]


@pytest.mark.parametrize(("theirs", "fits"), [(14, True), (15, False)])
def test_the_operators_rules_must_fit_beside_the_users(theirs, fits):
    route = http_route()
    for i in range(theirs):
        route.rule((f"svc-{i}", 1), path=f"/p{i}")
    why = routing.too_many_rules(route.obj(), ours(10, header=True), "digits", "digits-route")
    assert (why is None) is fits
    if not fits:
        assert why == (
            "HTTPRoute ns/digits-route has 15 rules of its own and the operator needs 2 more: an HTTPRoute "
            "holds at most 16; move some to another HTTPRoute; it was left untouched"
        )


# --- in effect -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "weight", "reason", "said"),
    [
        (http_route().split(30).parent(), 30, None, None),
        (http_route().rule(("web", 1)).parent(), 0, c.ROUTE_PENDING, "does not carry"),
        (http_route().split(30), 0, c.ROUTE_NOT_ACCEPTED, "no Gateway reported on HTTPRoute ns/digits-route"),
        (
            http_route().split(30).parent("False", reason="NotAllowedByListeners", message="no listener allows ns"),
            0,
            c.ROUTE_NOT_ACCEPTED,
            "no Gateway accepted HTTPRoute ns/digits-route: Gateway ns/gw: NotAllowedByListeners: no listener allows "
            "ns",
        ),
        (
            http_route().split(30).parent(resolved="False", reason="BackendNotFound", message="digits-canary absent"),
            0,
            c.ROUTE_BACKENDS_REFUSED,
            "Gateway ns/gw: BackendNotFound: digits-canary absent",
        ),
        (http_route().split(30).generation(2).parent(observed=1), 0, c.ROUTE_PENDING, "generation 2"),
        (
            http_route().split(30).parent("False", reason="NoMatchingParent", gateway="a").parent(gateway="b"),
            30,
            None,
            None,
        ),
    ],
    ids=[
        "accepted",
        "no-rules-of-ours",
        "no-parent",
        "refused",
        "backends-refused",
        "stale-status",
        "one-of-two-accepts",
    ],
)
def test_the_split_is_in_effect_only_once_a_gateway_accepted_the_latest_route(route, weight, reason, said):
    state = routing.route_state(route.obj(), "digits", "digits-route")
    assert state.weight == weight
    assert (state.problem[0] if state.problem else None) == reason
    if said:
        assert state.problem is not None and said in state.problem[1]


@pytest.mark.parametrize(("stable", "canary", "expected"), [(70, 30, 30), (1, 1, 50), (0, 0, 0), (0, 5, 100)])
def test_the_weight_carried_is_the_canarys_share_of_the_split(stable, canary, expected):
    route = http_route().rule(("digits-stable", stable), ("digits-canary", canary)).obj()
    assert routing.carried_weight(route["spec"]["rules"], "digits", "ns") == expected
