"""The user's HTTPRoute: which of its rules are the operator's, how they are rewritten, and whether
the split they carry is in effect.

The route is the user's (its owner hands it over by annotation, see `ownership`); the operator
owns only the rules it adds. `spec.rules` is an atomic list in the Gateway API CRDs (no
`x-kubernetes-list-type`, and rule names are experimental-channel only in v1.3), so server-side
apply cannot give the operator a share of it. The convention instead:

- **a rule is the operator's when one of its backendRefs is the `<name>-canary` Service** (every
  rule it writes has one; a user's rule has no reason to name the canary's Service);
- the operator's rules come first, in the order it writes them; the user's rules follow, as they
  were and in their order (a more specific match of theirs still wins: the Gateway API orders
  rules by match first, list order only breaks ties);
- the route is read, merged and written back with its `resourceVersion`: an edit made in between
  fails the write (409), and the next reconcile merges again on the new rules. Nothing is written
  when the operator's rules are already there.

The split is in effect when a parent (Gateway) accepted the route at its latest generation and
resolved its backends; the weight in effect is then the canary's share of the operator's weighted
rule. Anything else is a reason on the ModelDeployment (`RouteNotAccepted`,
`RouteBackendsRefused`, `RoutePending`), and the rollout holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelops_operator.api import conditions as c
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.modeldeployment import ModelDeploymentStatus
from modelops_operator.builders.modeldeployment import deployment_name

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
#: Most rules an HTTPRoute may have (the CRD's `maxItems`).
MAX_RULES = 16


def _is_service(ref: dict[str, Any], service: str, namespace: str) -> bool:
    return (
        ref.get("name") == service
        and (ref.get("group") or "") == ""
        and (ref.get("kind") or "Service") == "Service"
        and (ref.get("namespace") or namespace) == namespace
    )


def is_operators(rule: dict[str, Any], name: str, namespace: str) -> bool:
    """Whether `rule` is one the operator wrote for the ModelDeployment `name`: a backendRef of it
    is the `<name>-canary` Service of the route's namespace."""
    canary = deployment_name(name, "canary")
    return any(_is_service(ref, canary, namespace) for ref in rule.get("backendRefs") or [])


def carried_weight(rules: list[dict[str, Any]], name: str, namespace: str) -> int | None:
    """The canary's share (percent) of the operator's weighted rule (the one of its rules that also
    names the stable Service); None when the route has no such rule."""
    stable, canary = deployment_name(name, "stable"), deployment_name(name, "canary")
    for rule in rules:
        refs = rule.get("backendRefs") or []
        if not is_operators(rule, name, namespace) or not any(_is_service(r, stable, namespace) for r in refs):
            continue
        weights = {
            svc: sum(int(r.get("weight", 1)) for r in refs if _is_service(r, svc, namespace))
            for svc in (stable, canary)
        }
        total = sum(weights.values())
        return round(100 * weights[canary] / total) if total else 0
    return None


def _normal_match(match: dict[str, Any]) -> dict[str, Any]:
    path = {"type": "PathPrefix", "value": "/", **(match.get("path") or {})}
    headers = [{"type": "Exact", **h} for h in match.get("headers") or []]
    return {**match, "path": path, **({"headers": headers} if headers else {})}


def _normal(rule: dict[str, Any]) -> dict[str, Any]:
    """`rule` with the Gateway API's defaults filled in, to compare a rule as written with the same
    rule as read back."""
    matches = [_normal_match(m) for m in rule.get("matches") or [{}]]
    refs = [{"group": "", "kind": "Service", "weight": 1, **r} for r in rule.get("backendRefs") or []]
    return {**rule, "matches": matches, "backendRefs": refs}


def merged_rules(
    observed: list[dict[str, Any]], ours: list[dict[str, Any]], name: str, namespace: str
) -> list[dict[str, Any]]:
    """The route's rules with the operator's replaced by `ours`: ours first, then the user's, in
    their order."""
    return [*ours, *(rule for rule in observed if not is_operators(rule, name, namespace))]


def route_patch(route: dict[str, Any], ours: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """A merge patch setting the route's rules to `merged_rules`, conditional on the route's
    `resourceVersion`; None when the route already carries them."""
    meta = route.get("metadata") or {}
    observed = list((route.get("spec") or {}).get("rules") or [])
    rules = merged_rules(observed, ours, name, meta.get("namespace") or "")
    if [_normal(r) for r in rules] == [_normal(r) for r in observed]:
        return None
    return {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "spec": {"rules": rules}}


def too_many_rules(route: dict[str, Any], ours: list[dict[str, Any]], name: str, route_name: str) -> str | None:
    """Why the operator's rules do not fit in the route beside the user's, or None."""
    namespace = (route.get("metadata") or {}).get("namespace") or ""
    theirs = [r for r in (route.get("spec") or {}).get("rules") or [] if not is_operators(r, name, namespace)]
    if len(theirs) + len(ours) <= MAX_RULES:
        return None
    return (
        f"HTTPRoute {namespace}/{route_name} has {len(theirs)} rules of its own and the operator needs {len(ours)} "
        f"more: an HTTPRoute holds at most {MAX_RULES}; move some to another HTTPRoute; it was left untouched"
    )


@dataclass(frozen=True)
class RouteState:
    """What the route does now: the canary's weight in effect (0 when no split is), and why no
    split is in effect (a reason and a message), if it is not."""

    weight: int = 0
    problem: tuple[str, str] | None = None


def _condition(parent: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((cond for cond in parent.get("conditions") or [] if cond.get("type") == type_), None)


def _parent(parent: dict[str, Any], namespace: str) -> str:
    ref = parent.get("parentRef") or {}
    section = f" (listener {ref['sectionName']})" if ref.get("sectionName") else ""
    return f"{ref.get('kind') or 'Gateway'} {ref.get('namespace') or namespace}/{ref.get('name', '?')}{section}"


def _said(parent: dict[str, Any], cond: dict[str, Any] | None, namespace: str) -> str:
    if cond is None:
        return f"{_parent(parent, namespace)}: no condition"
    return f"{_parent(parent, namespace)}: {cond.get('reason') or '?'}: {cond.get('message') or ''}".rstrip(": ")


def route_state(route: dict[str, Any], name: str, route_name: str) -> RouteState:
    """Whether the split the route carries is in effect, and its canary weight (see the module
    docstring)."""
    meta, st = route.get("metadata") or {}, route.get("status") or {}
    namespace, generation = meta.get("namespace") or "", int(meta.get("generation") or 0)
    where = f"HTTPRoute {namespace}/{route_name}"
    weight = carried_weight(list((route.get("spec") or {}).get("rules") or []), name, namespace)
    if weight is None:
        return RouteState(problem=(c.ROUTE_PENDING, f"{where} does not carry the operator's rules yet"))
    parents = st.get("parents") or []
    if not parents:
        return RouteState(
            problem=(
                c.ROUTE_NOT_ACCEPTED,
                f"no Gateway reported on {where}: check that its spec.parentRefs name a Gateway, and that a "
                "Gateway controller runs for that Gateway's GatewayClass",
            )
        )
    current = [
        p for p in parents if int((_condition(p, "Accepted") or {}).get("observedGeneration", generation)) >= generation
    ]
    if not current:
        return RouteState(
            problem=(c.ROUTE_PENDING, f"no Gateway has reported on generation {generation} of {where} yet")
        )
    accepted = [p for p in current if (_condition(p, "Accepted") or {}).get("status") == T]
    if not accepted:
        said = "; ".join(_said(p, _condition(p, "Accepted"), namespace) for p in current)
        return RouteState(problem=(c.ROUTE_NOT_ACCEPTED, f"no Gateway accepted {where}: {said}"))
    refused = [p for p in accepted if (_condition(p, "ResolvedRefs") or {}).get("status") == F]
    if refused:
        said = "; ".join(_said(p, _condition(p, "ResolvedRefs"), namespace) for p in refused)
        return RouteState(problem=(c.ROUTE_BACKENDS_REFUSED, f"{where} has backends its Gateway cannot use: {said}"))
    return RouteState(weight=weight)


def with_route(
    status: ModelDeploymentStatus, state: RouteState, generation: int, *, at: datetime | None = None
) -> ModelDeploymentStatus:
    """`status` with the route's problem, if it has one: never Ready while no split is in effect.
    A route refused by its Gateway is a failure a person fixes (a Healthy deployment turns
    Degraded); a route not reported on yet only holds Ready back (the rollout says what it waits for)."""
    if state.problem is None:
        return status
    reason, message = state.problem
    ready = c.get_condition(status.conditions, c.READY)
    conds = status.conditions
    update: dict[str, object] = {}
    if reason == c.ROUTE_PENDING:
        if ready is None or ready.status != T:
            return status  # the rollout's own reason says more
        conds = c.set_condition(conds, c.PROGRESSING, T, reason, message, generation, at)
        update["phase"] = "Progressing"
    elif status.phase == "Healthy":
        conds = c.set_condition(conds, c.DEGRADED, T, reason, message, generation, at)
        update["phase"] = "Degraded"
    conds = c.set_condition(conds, c.READY, F, reason, message, generation, at)
    return status.model_copy(update={**update, "conditions": conds, "message": message[:1024]})
