"""The full lifecycle on the local cluster, optionally with the operator SIGKILLed at random
moments, and what its end state must be. Shared by tests/e2e/test_lifecycle_faults.py (a few
kills, in CI) and bench/faults.py (50 kills).

The scenario, all for real: scikit-learn's digits seeded onto the artifact volume; a Dataset, a
2-trial TrainingRun and a ModelDeployment following that run, created together (the run waits for
the Dataset, the deployment for the run's model); version 1 served; then the run's spec changes
(round 2, version 2) and the deployment rolls version 2 out as a canary (50%, a pause, promoted);
then all three are deleted. A recorder lists the namespace every half second throughout and keeps
every UID each child ever had, so a child created twice (a duplicate PyTorchJob, Job or
Deployment) is caught even if the first copy was deleted again.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import ON_LOCAL_NODE, OperatorProcess, kubectl, status, wait_until
from tests.support.objects import model_deployment, search, training_run
from tests.support.workloads import local_dataset, seed_digits

PLURALS = ("datasets", "trainingruns", "modeldeployments")
#: Every kind of child the operator (or the training operator, for pods) creates in the namespace.
CHILDREN = "pytorchjobs,jobs,deployments,services,poddisruptionbudgets,horizontalpodautoscalers"
NAME = "digits"


def objects(spec: str) -> list[dict[str, Any]]:
    """`namespace/kinds`, as kubectl lists them. A listing that fails raises: an observation that
    could not be made must never read as "nothing there"."""
    namespace, kinds = spec.split("/", 1)
    out = kubectl("-n", namespace, "get", kinds, "-o", "json", check=False)
    if out.returncode != 0:
        raise ObservationFailed(f"kubectl get {kinds} -n {namespace}: {out.stderr.strip()}")
    return list(json.loads(out.stdout)["items"])


class ObservationFailed(AssertionError):
    """kubectl could not list what a check needs."""


def still_there(namespace: str, kind: str, name: str, uids: set[str]) -> bool:
    """Whether an object of one of these UIDs still exists, asked by name (not by the listing that
    decided the deletion was over); an answer other than found or NotFound raises."""
    out = kubectl("-n", namespace, "get", kind, name, "-o", "jsonpath={.metadata.uid}", check=False)
    if out.returncode != 0:
        if "NotFound" in out.stderr:
            return False
        raise ObservationFailed(f"kubectl get {kind} {name} -n {namespace}: {out.stderr.strip()}")
    return out.stdout.strip() in uids


class Recorder(threading.Thread):
    """Lists the namespace's children (and our objects) every half second; keeps each one's UIDs."""

    def __init__(self, namespace: str) -> None:
        super().__init__(daemon=True)
        self.namespace = namespace
        self.uids: dict[tuple[str, str], set[str]] = {}
        self.failures: list[str] = []
        """Listings that failed: each one is a moment the duplicate check could not see."""
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                found = objects(f"{self.namespace}/{CHILDREN},{','.join(PLURALS)}")
            except ObservationFailed as e:
                self.failures.append(str(e))
                found = []
            for obj in found:
                key = (obj["kind"], obj["metadata"]["name"])
                self.uids.setdefault(key, set()).add(obj["metadata"]["uid"])
            time.sleep(0.5)

    def duplicates(self) -> dict[str, int]:
        return {f"{k}/{n}": len(u) for (k, n), u in self.uids.items() if len(u) > 1}

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)


class Killer(threading.Thread):
    """SIGKILLs the operator `kills` times, each after it has run a random 0.2-1.8 x `mean_uptime`
    seconds since it last became healthy, and starts it again at once; records what stage the
    scenario was in at each kill. Choosing `mean_uptime` below the undisturbed run's length divided
    by `kills` spreads the kills over the whole lifecycle."""

    def __init__(self, operator: OperatorProcess, kills: int, seed: int, mean_uptime: float, stage: Any) -> None:
        super().__init__(daemon=True)
        self.operator, self.kills, self.rng, self.stage = operator, kills, random.Random(seed), stage
        self.mean_uptime = mean_uptime
        self.at: list[str] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while len(self.at) < self.kills and not self.halt.wait(self.rng.uniform(0.2, 1.8) * self.mean_uptime):
                self.operator.kill()
                self.at.append(self.stage())
                self.operator.start()
        except BaseException as e:  # reported by the scenario
            self.error = e

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=120)
        if self.error is not None:
            raise AssertionError(f"restarting the operator failed: {self.error}")


def spread(undisturbed_seconds: float, kills: int) -> float:
    """The mean uptime between kills that spreads `kills` over a lifecycle that took
    `undisturbed_seconds` undisturbed: kills and restarts (1-2 s each) together stay within it."""
    return max(0.3, 0.3 * undisturbed_seconds / kills) if kills else 0.0


@dataclass
class Outcome:
    """What a scenario left: the end state to compare, and what happened on the way."""

    state: dict[str, Any]
    duplicates: dict[str, int]
    orphans: list[str]
    left_after_delete: list[str]
    kills_at: list[str] = field(default_factory=list)
    seconds: float = 0.0


def bodies() -> list[tuple[str, dict[str, Any]]]:
    run = (
        training_run(NAME, NAME)
        .set("spec.hyperparameters", {"epochs": 1, "batchSize": 64, "learningRate": 0.002, "warmupEpochs": 0})
        .set("spec.workers", {"nodes": 1, "placement": ON_LOCAL_NODE})
        .set("spec.search", search(algorithm="random", maxTrials=2, parallelism=1, seed=7, earlyStopping="none"))
    )
    deployment = (
        model_deployment(NAME, NAME)
        .set("spec.server", {"placement": ON_LOCAL_NODE, "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}}})
        .set("spec.autoscaling", {"minReplicas": 1, "maxReplicas": 1})
        .set("spec.rollout", {"steps": [{"setWeight": 50}, {"pause": {"duration": "5s"}}]})
    )
    return [("datasets", local_dataset(NAME)), ("trainingruns", run.obj()), ("modeldeployments", deployment.obj())]


def end_state(custom: Any, namespace: str) -> dict[str, Any]:
    """What an undisturbed run and a disturbed one must agree on (no times, no measured numbers)."""
    ds, tr, md = (status(custom, namespace, p, NAME, absent_ok=True) for p in PLURALS)

    def conds(st: dict[str, Any]) -> list[tuple[str, str, str]]:
        return sorted((x["type"], x["status"], x["reason"]) for x in st.get("conditions") or [])

    children = sorted(
        f"{o['kind']}/{o['metadata']['name']}"
        for o in objects(f"{namespace}/{CHILDREN}")
        if o["kind"] != "Job" or o["metadata"]["name"] != "seed"
    )
    return {
        "Dataset": {k: ds.get(k) for k in ("phase", "version", "digest", "images", "classes", "splits")}
        | {"conditions": conds(ds)},
        "TrainingRun": {k: tr.get(k) for k in ("phase", "round", "datasetVersion", "modelVersion")}
        | {
            "trials": sorted((t["name"], t["state"]) for t in tr.get("trials") or []),
            "models": sorted(m["version"] for m in tr.get("models") or []),
            "conditions": conds(tr),
        },
        "ModelDeployment": {
            "phase": md.get("phase"),
            "stable": (md.get("stable") or {}).get("version"),
            "previous": (md.get("previous") or {}).get("version"),
            "canary": (md.get("canary") or {}).get("version"),
            "aborted": md.get("aborted"),
            "canaryWeight": md.get("canaryWeight"),
            "conditions": conds(md),
        },
        "children": children,
    }


def orphans(namespace: str) -> list[str]:
    """Children whose owner (by UID) no longer exists."""
    present = {o["metadata"]["uid"] for o in objects(f"{namespace}/{CHILDREN},{','.join(PLURALS)}")}
    return [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in objects(f"{namespace}/{CHILDREN}")
        for ref in o["metadata"].get("ownerReferences") or []
        if ref["uid"] not in present
    ]


def run_lifecycle(
    custom: Any, namespace: str, operator: OperatorProcess, kills: int = 0, seed: int = 0, mean_uptime: float = 5.0
) -> Outcome:
    """The scenario in `namespace` (which must exist), with `kills` operator kills spread over it
    (see `Killer` for `mean_uptime`)."""
    stage = ["seeding"]

    def where() -> str:
        phases = [status(custom, namespace, plural, NAME, absent_ok=True).get("phase") or "-" for plural in PLURALS]
        return f"{stage[0]}: Dataset {phases[0]}, TrainingRun {phases[1]}, ModelDeployment {phases[2]}"

    started = time.monotonic()
    seed_digits(namespace)
    recorder = Recorder(namespace)
    recorder.start()
    killer = Killer(operator, kills, seed, mean_uptime, where)
    killer.start()
    try:
        stage[0] = "version 1"
        for plural, body in bodies():
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)

        def serving(version: str, previous: str | None) -> bool:
            md = status(custom, namespace, "modeldeployments", NAME, absent_ok=True)
            return (
                md.get("phase") == "Healthy"
                and (md.get("stable") or {}).get("version") == version
                and (md.get("previous") or {}).get("version") == previous
            )

        wait_until("version 1 served", lambda: serving(f"{NAME}:v1", None), timeout=900, interval=1)
        stage[0] = "version 2"
        patch = {"spec": {"hyperparameters": {"epochs": 2}}}
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", NAME, patch)
        wait_until("version 2 promoted", lambda: serving(f"{NAME}:v2", f"{NAME}:v1"), timeout=900, interval=1)
        # A last look for a while: nothing moves any more (a disturbed run settles like the other).
        time.sleep(5)
        state = end_state(custom, namespace)
        lost = orphans(namespace)
        stage[0] = "deleting"
        for plural in reversed(PLURALS):
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, NAME)

        def gone() -> list[str]:
            left = [f"{o['kind']}/{o['metadata']['name']}" for o in objects(f"{namespace}/{','.join(PLURALS)}")]
            return left + [
                f"{o['kind']}/{o['metadata']['name']}"
                for o in objects(f"{namespace}/{CHILDREN}")
                if o["metadata"]["name"] != "seed"
            ]

        with contextlib.suppress(AssertionError):  # what is left is judged below, by other means
            wait_until("everything deleted", lambda: not gone(), timeout=300, interval=1)
        # Every object ever seen, asked for again by name: one that still exists (same UID) is left.
        left = sorted(
            f"{kind}/{name}"
            for (kind, name), uids in recorder.uids.items()
            if name != "seed" and still_there(namespace, kind, name, uids)
        )
    finally:
        killer.stop()
        recorder.stop()
    assert recorder.failures == [], f"listings failed while recording: {recorder.failures[:3]}"
    return Outcome(state, recorder.duplicates(), lost, left, killer.at, time.monotonic() - started)
