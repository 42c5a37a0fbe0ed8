"""An A/B experiment end to end on the local cluster: one ModelDeployment serves two exported models
50/50 from its stable pods, a client sends requests with many distinct `x-user-id` keys to the
Service's ready endpoints and reports feedback by the test's own rule (success with probability 0.7
on variant b, 0.5 on the control), real Prometheus scrapes the servers, and the operator measures
the variants, runs its test, promotes b and ends the experiment.

The client draws its outcomes from a seeded generator and the assignment is the contract's hash, so
the run is the same every time: about 300 outcomes a variant at 0.7 against 0.5 is z ≈ 5, far past
the 0.05 level; the test asserts the decision the operator wrote, not a number of its own. The
experiment ends by `maxRequests` with one last request sent only once the operator's table holds
every outcome reported, so the decision is made on all of them."""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path

import pytest
import requests

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import ARTIFACTS, endpoint_addresses, kubectl, status, wait_until
from tests.support.serving import export_model, image_bytes
from tests.support.workloads import artifacts_on_host, served_model

pytestmark = pytest.mark.localnode

KEYS = 600
#: Keys asked a second time, from another pod where there is one: the same variant both times.
REPEATS = 100
SUCCESS = {"control": 0.5, "b": 0.7}


def events(namespace: str, name: str) -> dict[str, list[str]]:
    out = kubectl(
        "-n", namespace, "get", "events", "-o", "json",
        "--field-selector", f"involvedObject.name={name},involvedObject.kind=ModelDeployment",
    ).stdout  # fmt: skip
    found: dict[str, list[str]] = defaultdict(list)
    for e in json.loads(out)["items"]:
        found[e["reason"]].append(e["message"])
    return found


def stable_env(namespace: str, name: str) -> dict[str, str]:
    out = kubectl("-n", namespace, "get", "deployment", f"{name}-stable", "-o", "json").stdout
    container = json.loads(out)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def rolled(namespace: str, name: str) -> bool:
    """The stable Deployment has seen its latest template and every pod runs it, ready."""
    d = json.loads(kubectl("-n", namespace, "get", "deployment", f"{name}-stable", "-o", "json").stdout)
    want, got = d["spec"].get("replicas", 1), d.get("status") or {}
    return (
        got.get("observedGeneration", 0) >= d["metadata"]["generation"]
        and got.get("updatedReplicas") == want
        and got.get("readyReplicas") == want
        and got.get("replicas") == want
    )


def two_endpoints(namespace: str) -> list[str] | None:
    found = endpoint_addresses(namespace, "digits")
    return found if len(found) >= 2 else None


def experiment_gone(namespace: str) -> bool:
    return "MODELOPS_EXPERIMENT" not in stable_env(namespace, "digits")


@pytest.mark.slow
def test_an_experiment_finds_the_better_variant_and_promotes_it(operator, custom, namespace):
    store = artifacts_on_host(namespace)
    a = export_model(store / "models" / "a", seed=1, name="digits")
    b = export_model(store / "models" / "b", seed=2, name="digits")

    def uri(path: Path) -> str:
        return f"file://{ARTIFACTS}/{path.relative_to(store)}"

    body = served_model(
        "digits",
        store,
        a,
        autoscaling={"minReplicas": 2, "maxReplicas": 2},
        experiment={
            "name": "ab-e2e",
            "variants": [
                {"name": "control", "uri": uri(a.path), "digest": a.digest, "weight": 50},
                {"name": "b", "uri": uri(b.path), "digest": b.digest, "weight": 50},
            ],
            "maxRequests": KEYS + REPEATS + 1,  # the last request, sent once every outcome is counted
            "duration": "30m",
            "minSamplesPerVariant": 150,
            "interval": "15s",
            "metrics": {"maxErrorRate": 0.05, "maxLatencyP99Seconds": 5.0},  # a busy 2-core machine
            "promotion": "Automatic",
        },
    )
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", body)

    def st() -> dict:
        return status(custom, namespace, "modeldeployments", "digits")

    def experiment() -> dict:
        return st().get("experiment") or {}

    wait_until("the experiment running", lambda: experiment().get("phase") == "Running", timeout=180)
    setting = json.loads(stable_env(namespace, "digits")["MODELOPS_EXPERIMENT"])
    assert [(v["name"], v["digest"], v["weight"]) for v in setting["variants"]] == [
        ("control", a.digest, 50),
        ("b", b.digest, 50),
    ]
    wait_until("every stable pod rolled to the experiment", lambda: rolled(namespace, "digits"), timeout=240)
    endpoints = wait_until("two endpoints", lambda: two_endpoints(namespace), timeout=60)

    rng = random.Random(7)
    image = image_bytes(3)
    assigned: dict[str, str] = {}
    repeats: list[tuple[str, str, str]] = []  # (key, first variant, second variant)
    outcomes: dict[str, list[str]] = defaultdict(list)
    session = requests.Session()

    def classify(ip: str, key: str) -> requests.Response:
        r = session.post(
            f"http://{ip}:8080/v1/models/digits:classify",
            files={"file": ("x.png", image, "image/png")},
            headers={"x-user-id": key},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r

    for i in range(KEYS):
        key = f"user-{i}"
        ip = endpoints[i % len(endpoints)]
        r = classify(ip, key)
        answer = r.json()
        variant = r.headers["x-modelops-variant"]
        assert answer["variant"] == variant and answer["request_id"].startswith(f"{variant}.")
        assert r.headers["x-modelops-request-id"] == answer["request_id"]
        assigned[key] = variant
        outcome = "success" if rng.random() < SUCCESS[variant] else "failure"
        fb = session.post(
            f"http://{ip}:8080/v1/feedback", json={"requestId": answer["request_id"], "outcome": outcome}, timeout=30
        )
        assert fb.status_code == 204, fb.text
        outcomes[variant].append(outcome)
        if i < REPEATS:  # the same key on the other pod
            again = classify(endpoints[(i + 1) % len(endpoints)], key)
            repeats.append((key, variant, again.headers["x-modelops-variant"]))
    assert [r for r in repeats if r[1] != r[2]] == []  # sticky: the same key, the same variant, on every pod
    assert set(assigned.values()) == {"control", "b"}
    assert all(len(outcomes[v]) >= 150 for v in ("control", "b")), {v: len(o) for v, o in outcomes.items()}

    # Every outcome in the operator's table while the experiment still runs (one request short of
    # its end), then the last request ends it: the test sees the counts the decision will use.
    def counted() -> bool:
        rows = {v["name"]: v for v in experiment().get("variants") or []}
        return all(
            (rows.get(v, {}).get("successes"), rows.get(v, {}).get("failures"))
            == (outcomes[v].count("success"), outcomes[v].count("failure"))
            for v in ("control", "b")
        )

    wait_until("every outcome measured", counted, timeout=120)
    assert experiment()["phase"] == "Running" and "outcomes" in experiment()["message"]
    classify(endpoints[0], "user-last")

    # maxRequests reached, samples enough: concluded and (Automatic) promoted.
    wait_until("the experiment promoted", lambda: experiment().get("phase") == "Promoted", timeout=300)
    final = st()
    exp = final["experiment"]
    assert exp["winner"] == "b" and exp["promoted"] == "b" and exp["pValue"] < 0.05
    table = {v["name"]: v for v in exp["variants"]}
    assert list(table) == ["control", "b"]
    for name in ("control", "b"):
        row = table[name]
        sent = outcomes[name]
        # Prometheus' counts are the pods' counters: every outcome the client reported, none lost
        assert (row["successes"], row["failures"]) == (sent.count("success"), sent.count("failure")), row
        assert row["successRate"] == pytest.approx(sent.count("success") / len(sent))
        assert row["requests"] >= len(sent) and row.get("errorRate") == 0 and row.get("latencyP99", 0) > 0, row
    assert table["b"]["successRate"] > table["control"]["successRate"]
    assert final["stable"]["digest"] == b.digest and final["previous"]["digest"] == a.digest
    cond = next(x for x in final["conditions"] if x["type"] == c.EXPERIMENT)
    assert (cond["status"], cond["reason"]) == ("False", c.EXPERIMENT_PROMOTED)
    said = events(namespace, "digits")
    assert said["ExperimentStarted"] and said["ExperimentConcluded"] and said["ExperimentPromoted"]
    assert "b wins" in said["ExperimentConcluded"][0] and "z-test" in said["ExperimentConcluded"][0]

    # The pods drop the experiment and serve b alone.
    gone = wait_until("the experiment gone from the pod template", lambda: experiment_gone(namespace), timeout=60)
    assert gone
    wait_until("every stable pod rolled to b alone", lambda: rolled(namespace, "digits"), timeout=240)
    wait_until("Healthy on b", lambda: st().get("phase") == "Healthy", timeout=240)
    time.sleep(2)
    for ip in endpoint_addresses(namespace, "digits"):
        r = classify(ip, "user-0")
        assert r.json()["model_version"] == b.digest[7:19] and "x-modelops-variant" not in r.headers
