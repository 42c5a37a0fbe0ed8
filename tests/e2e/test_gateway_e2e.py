"""A canary rollout through a real Gateway: Traefik (hack/cluster.py) implements the Gateway API on
the local cluster, and the answers are counted at the client. At each step the canary's share of
400 answers, each naming the model version that gave it, is the step's weight within 5 percentage
points; requests marked with the header route reach the canary only while a canary serves, and
the route's own rule (the user's) stays as the user wrote it."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import GATEWAY, GATEWAY_REF, TRAEFIK_API, status, wait_until
from tests.support.serving import export_model, image_bytes
from tests.support.workloads import artifacts_on_host, served_model

pytestmark = pytest.mark.localnode

HTTPROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")
WEIGHTS = (20, 50, 80)
ANSWERS = 400
MARK = {"x-canary": "1"}
#: The user's rule: requests of a team pinned to the stable Service (no request here carries it).
USERS_RULE = {
    "matches": [
        {"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"type": "Exact", "name": "x-team", "value": "a"}]}
    ],
    "backendRefs": [{"group": "", "kind": "Service", "name": "digits-stable", "port": 80, "weight": 1}],
}


def ask(host: str, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    """`n` classifications through the Gateway for `host`, 4 at a time: the count of each model
    version that answered (a failed request counts as `HTTP <code>`)."""
    image = image_bytes(7)

    def one(_: int) -> str:
        r = requests.post(
            f"{GATEWAY}/v1/models/digits:classify",
            files={"file": ("x.png", image, "image/png")},
            headers={"Host": host, **(headers or {})},
            timeout=30,
        )
        return str(r.json()["model_version"]) if r.status_code == 200 else f"HTTP {r.status_code}"

    with ThreadPoolExecutor(4) as pool:
        return Counter(pool.map(one, range(n)))


def programmed(namespace: str) -> tuple[int | None, dict[str, int]]:
    """What Traefik's running configuration (its API) does for the route: the canary's share
    (percent) of the operator's weighted rule, and the number of pod addresses of each track's
    Service. The Gateway accepts a route (what `status.canaryWeight` reports) and a Service's pods
    become ready some moments before Traefik's proxy applies them (it reloads at most every 2 s):
    the counts wait for the proxy."""
    services = requests.get(f"{TRAEFIK_API}/http/services", timeout=10).json()
    names = {track: f"{namespace}-digits-{track}-http-80" for track in ("stable", "canary")}
    servers = {
        track: len((svc.get("loadBalancer") or {}).get("servers") or [])
        for svc in services
        for track, name in names.items()
        if svc["name"] == f"{name}@kubernetesgateway"
    }
    for svc in services:
        weights = {s["name"]: int(s.get("weight", 1)) for s in (svc.get("weighted") or {}).get("services", [])}
        stable, canary = weights.get(names["stable"]), weights.get(names["canary"])
        if stable is not None and canary is not None:
            return round(100 * canary / (stable + canary)), servers
    return None, servers


def wait_programmed(namespace: str, weight: int, *tracks: str) -> None:
    """Until Traefik routes `weight`% to the canary and has pods for each of `tracks`."""

    def done() -> bool:
        w, servers = programmed(namespace)
        return w == weight and all(servers.get(t, 0) > 0 for t in tracks)

    wait_until(f"{weight}% and pods of {', '.join(tracks)} programmed in the proxy", done, timeout=60)


def delegated_route(host: str, parent: dict[str, str], *rules: dict[str, Any]) -> dict[str, Any]:
    """The user's HTTPRoute `digits` for `host`, handed to the ModelDeployment `digits`, with the
    user's own `rules` (none: the field left out)."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "digits", "annotations": {"modelops.dev/modeldeployment": "digits"}},
        "spec": {"parentRefs": [parent], "hostnames": [host], **({"rules": list(rules)} if rules else {})},
    }


def md(custom: Any, namespace: str) -> dict[str, Any]:
    return status(custom, namespace, "modeldeployments", "digits")


@pytest.mark.slow
def test_the_canary_share_at_the_client_follows_each_step_through_the_gateway(operator, custom, namespace):
    store = artifacts_on_host(namespace)
    v1 = export_model(store / "models" / "v1", seed=1, name="digits")
    v2 = export_model(store / "models" / "v2", seed=2, name="digits")
    host = f"{namespace}.gateway.test"
    route = delegated_route(host, GATEWAY_REF, USERS_RULE)
    custom.create_namespaced_custom_object(*HTTPROUTES[:2], namespace, HTTPROUTES[2], route)
    steps: list[dict[str, Any]] = []
    for w in WEIGHTS:
        steps += [{"setWeight": w}, {"pause": {}}]
    routing = {"httpRoute": "digits", "headerRoute": {"name": "x-canary", "value": "1"}}
    body = served_model("digits", store, v1, rollout={"trafficRouting": routing, "steps": steps})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", body)

    wait_until("Healthy through the Gateway", lambda: md(custom, namespace).get("phase") == "Healthy", timeout=240)
    stable_version = md(custom, namespace)["stable"]["version"]
    wait_programmed(namespace, 0, "stable")
    # No canary: marked requests go where the others go, and every one is answered.
    assert ask(host, 40, MARK) == Counter({stable_version: 40})

    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "modeldeployments", "digits",
        {"spec": {"model": {"uri": body["spec"]["model"]["uri"].replace("/v1/", "/v2/"), "digest": v2.digest}}},
    )  # fmt: skip
    shares = {}
    for i, weight in enumerate(WEIGHTS):

        def paused(step: int = 2 * i + 1, weight: int = weight) -> dict[str, Any] | None:
            s = md(custom, namespace)
            ok = s.get("phase") == "Paused" and s.get("currentStep") == step and s.get("canaryWeight") == weight
            return s if ok else None

        st = wait_until(f"paused at {weight}% in effect", paused, timeout=300)
        wait_programmed(namespace, weight, "stable", "canary")
        canary_version = st["canary"]["version"]
        assert canary_version != stable_version
        answers = ask(host, ANSWERS)
        assert set(answers) == {stable_version, canary_version}, answers  # every request answered
        shares[weight] = 100 * answers[canary_version] / ANSWERS
        assert abs(shares[weight] - weight) <= 5, (weight, answers)
        # Marked requests: all to the canary while it serves.
        assert ask(host, 40, MARK) == Counter({canary_version: 40})
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "modeldeployments", "digits",
            {"metadata": {"annotations": {"modelops.dev/promote": "true"}}},
        )  # fmt: skip

    wait_until(
        "v2 promoted, no canary",
        lambda: (
            (s := md(custom, namespace)).get("phase") == "Healthy"
            and s["stable"]["digest"] == v2.digest
            and not s.get("canary")
        ),
        timeout=300,
    )
    promoted = md(custom, namespace)["stable"]["version"]
    # The canary's pods are gone and stable's old pods leave the proxy (at its next reload): marked
    # requests go to stable again, and every one is answered by the promoted version.
    wait_programmed(namespace, 0, "stable")
    wait_until("marked requests to stable", lambda: ask(host, 40, MARK) == Counter({promoted: 40}), timeout=60)
    rules = custom.get_namespaced_custom_object(*HTTPROUTES[:2], namespace, HTTPROUTES[2], "digits")["spec"]["rules"]
    assert rules[-1] == USERS_RULE, rules
    print(f"canary share at the client per step (weight: share %): {shares}")


def test_a_route_the_gateway_refuses_is_a_reason_on_the_deployment_and_never_ready(operator, custom, namespace):
    """The route names a listener the Gateway does not have: Traefik reports the route not
    accepted, and the ModelDeployment says so with Traefik's reason instead of turning Ready."""
    store = artifacts_on_host(namespace)
    v1 = export_model(store / "models" / "v1", seed=1, name="digits")
    route = delegated_route(f"{namespace}.gateway.test", {**GATEWAY_REF, "sectionName": "https"})
    custom.create_namespaced_custom_object(*HTTPROUTES[:2], namespace, HTTPROUTES[2], route)
    body = served_model("digits", store, v1, rollout={"trafficRouting": {"httpRoute": "digits"}})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", body)

    def refused() -> dict[str, Any] | None:
        conds = md(custom, namespace).get("conditions") or []
        ready = next((x for x in conds if x["type"] == c.READY), None)
        return ready if ready and ready.get("reason") == c.ROUTE_NOT_ACCEPTED else None

    ready = wait_until("RouteNotAccepted", refused, timeout=240)
    assert ready["status"] == "False", ready
    assert "listener https" in ready["message"] and "NoMatchingParent" in ready["message"], ready["message"]
    wait_until("Degraded", lambda: md(custom, namespace).get("phase") == "Degraded", timeout=120)
    print(f"Ready False, {ready['reason']}: {ready['message']}")
