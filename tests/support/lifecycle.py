"""The full lifecycle on the local cluster, optionally with the operator SIGKILLed in every stage
of it, and what its end state must be. Shared by tests/e2e/test_lifecycle_faults.py (a few kills,
in CI) and bench/faults.py (50 kills).

The scenario, all for real: scikit-learn's digits seeded onto the artifact volume; a Dataset, a
2-trial TrainingRun and a ModelDeployment following that run, created together (the run waits for
the Dataset, the deployment for the run's model); version 1 served; then the run's spec changes
(round 2, version 2) and the deployment rolls version 2 out as a canary (50%, a pause, promoted);
then all three are deleted. A recorder lists the namespace every half second throughout and keeps
every UID each child ever had, so a child created twice (a duplicate PyTorchJob, Job or
Deployment) is caught even if the first copy was deleted again.

Kills are scheduled by stage, not by the clock: kills at random times land where the lifecycle
spends its time (preparation and training, the first third), and the short stages — a canary step,
the promotion, the deletion — were rarely hit. The killer watches the namespace, names the stage
from what the objects show (`stage_of`) and kills once in each stage it targets, as soon as it
sees it (the operator must have been up a moment, so that it works between kills); while the
operator is down no status moves, so a stage cannot slip by unseen. Kills beyond one per target
stage (bench/faults.py's 50) fall at random times in between, as before. Each kill is recorded
with the stage the cluster showed at that moment.
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
KINDS = ("Dataset", "TrainingRun", "ModelDeployment")
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


#: The lifecycle's stages in order, as `stage_of` names them from the cluster's state.
STAGES = (
    "preparing",  # the Dataset's Job runs
    "training v1",  # round 1's trials
    "deploying v1",  # the first model's Deployment coming up
    "serving v1",
    "training v2",  # the run's spec changed: round 2's trials
    "rollout starting",  # version 2 registered, not yet a canary
    "canary setWeight 50",  # rollout step 0
    "canary pause",  # rollout step 1
    "promotion",  # stable switched to version 2, its Deployment rolling while the canary serves
    "serving v2",
    "deleting",  # an object deleted (the TrainingRun held by its finalizer) and children left
    "deleted",
)
#: Which stages get a kill first, when there are fewer kills than stages (CI's 6: the first six).
PRIORITY = (
    "canary setWeight 50",
    "deleting",
    "promotion",
    "training v1",
    "canary pause",
    "preparing",
    "deploying v1",
    "training v2",
    "rollout starting",
    "serving v1",
    "serving v2",
    "deleted",
)
#: Both canary steps: a kill in either is a kill "in the canary rollout".
CANARY = frozenset({"canary setWeight 50", "canary pause"})


def stage_of(items: list[dict[str, Any]]) -> str:  # noqa: PLR0911 - one return per stage reads best
    """The stage of the scenario, from one listing of the namespace (our objects, their children and
    pods); only for after the three objects were created."""
    ours = {o["kind"]: o for o in items if o["kind"] in KINDS and o["metadata"]["name"] == NAME}
    rest = [o for o in items if o["kind"] not in KINDS and not o["metadata"]["name"].startswith("seed")]
    if len(ours) < len(KINDS) or any(o["metadata"].get("deletionTimestamp") for o in ours.values()):
        return "deleting" if ours or rest else "deleted"
    ds, tr, md = (ours[k].get("status") or {} for k in KINDS)
    if ds.get("phase") != "Ready":
        return "preparing"
    stable = (md.get("stable") or {}).get("version")
    if md.get("canary"):
        return {0: "canary setWeight 50", 1: "canary pause"}.get(md.get("currentStep") or 0, "promotion")
    if stable == f"{NAME}:v2":
        return "serving v2" if md.get("phase") == "Healthy" else "promotion"
    if (tr.get("round") or 0) >= 2:
        return "training v2" if tr.get("phase") != "Succeeded" else "rollout starting"
    if stable is None or md.get("phase") != "Healthy":
        return "deploying v1" if tr.get("phase") == "Succeeded" else "training v1"
    return "serving v1"


class Killer(threading.Thread):
    """SIGKILLs the operator `kills` times and starts it again at once each time: first once in each
    stage of `PRIORITY[:kills]`, as soon as the cluster shows it (see the module's docstring); kills
    left over (more kills than stages, or a target stage passed while the operator was needed up)
    after a random 0.2-1.8 x `mean_uptime` seconds of uptime. `at` records the stage each kill hit."""

    #: Seconds the operator runs after a restart before the next kill: it must get some work done.
    MIN_UPTIME = 1.0

    def __init__(self, namespace: str, operator: OperatorProcess, kills: int, seed: int, mean_uptime: float) -> None:
        super().__init__(daemon=True)
        self.namespace, self.operator, self.kills, self.rng = namespace, operator, kills, random.Random(seed)
        self.mean_uptime = mean_uptime
        self.targets = set(PRIORITY[:kills])
        self.at: list[str] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            furthest, started = 0, time.monotonic()
            extra_at = started + self.gap()
            while len(self.at) < self.kills and not self.halt.wait(0.25):
                now = time.monotonic()
                if now - started < self.MIN_UPTIME:
                    continue
                try:
                    stage = stage_of(objects(f"{self.namespace}/{CHILDREN},pods,{','.join(PLURALS)}"))
                except ObservationFailed:
                    continue  # the API server busy: look again
                furthest = max(furthest, STAGES.index(stage))
                ahead = {t for t in self.targets - set(self.at) if STAGES.index(t) >= furthest}
                planned = stage in self.targets and stage not in self.at
                spare = self.kills - len(self.at) > len(ahead) and now >= extra_at
                if planned or spare:
                    self.operator.kill()
                    self.at.append(stage)
                    self.operator.start()
                    started = time.monotonic()
                    extra_at = started + self.gap()
        except BaseException as e:  # reported by the scenario
            self.error = e

    def gap(self) -> float:
        return self.rng.uniform(0.2, 1.8) * self.mean_uptime

    def wait_for(self, stage: str, timeout: float) -> None:
        """Until a kill in `stage` is done, when it is one of the targets (else at once)."""
        deadline = time.monotonic() + timeout
        while stage in self.targets and stage not in self.at and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)

    def finish(self, timeout: float) -> None:
        """Until every kill is done (or `timeout`); then stop."""
        self.join(timeout=timeout)
        self.stop()

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
    """The stage the cluster showed at each kill (`STAGES`)."""
    seconds: float = 0.0


def bodies() -> list[tuple[str, dict[str, Any]]]:
    run = (
        training_run(NAME, NAME)
        # fp32: `auto` may time bf16 against fp32 and choose differently in the two runs compared
        .set(
            "spec.hyperparameters",
            {"epochs": 1, "batchSize": 64, "learningRate": 0.002, "warmupEpochs": 0, "mixedPrecision": "off"},
        )
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
        # `Autoscaling` follows metrics-server's and the HPA's clocks (15 s each), not the lifecycle.
        return sorted(
            (x["type"], x["status"], x["reason"]) for x in st.get("conditions") or [] if x["type"] != "Autoscaling"
        )

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
    """The scenario in `namespace` (which must exist), with `kills` operator kills over its stages
    (see `Killer`; `mean_uptime` spaces the kills beyond one per stage)."""
    started = time.monotonic()
    seed_digits(namespace)
    recorder = Recorder(namespace)
    recorder.start()
    killer = Killer(namespace, operator, kills, seed, mean_uptime)
    try:
        for plural, body in bodies():
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        killer.start()  # after the creations: from here on, an object missing means it was deleted

        def serving(version: str, previous: str | None) -> bool:
            md = status(custom, namespace, "modeldeployments", NAME, absent_ok=True)
            return (
                md.get("phase") == "Healthy"
                and (md.get("stable") or {}).get("version") == version
                and (md.get("previous") or {}).get("version") == previous
            )

        wait_until("version 1 served", lambda: serving(f"{NAME}:v1", None), timeout=900, interval=1)
        patch = {"spec": {"hyperparameters": {"epochs": 2}}}
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", NAME, patch)
        wait_until("version 2 promoted", lambda: serving(f"{NAME}:v2", f"{NAME}:v1"), timeout=900, interval=1)
        # A last look for a while: nothing moves any more (a disturbed run settles like the other).
        time.sleep(5)
        state = end_state(custom, namespace)
        lost = orphans(namespace)
        for plural in reversed(PLURALS):
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, NAME)
        killer.wait_for("deleting", timeout=60)

        def gone() -> list[str]:
            left = [f"{o['kind']}/{o['metadata']['name']}" for o in objects(f"{namespace}/{','.join(PLURALS)}")]
            return left + [
                f"{o['kind']}/{o['metadata']['name']}"
                for o in objects(f"{namespace}/{CHILDREN}")
                if o["metadata"]["name"] != "seed"
            ]

        with contextlib.suppress(AssertionError):  # what is left is judged below, by other means
            wait_until("everything deleted", lambda: not gone(), timeout=300, interval=1)
        killer.finish(timeout=120)  # kills left over (if any) fall now, in what is left of the deletion
        # Every object ever seen, asked for again by name: one that still exists (same UID) is left.
        left = sorted(
            f"{kind}/{name}"
            for (kind, name), uids in recorder.uids.items()
            if name != "seed" and still_there(namespace, kind, name, uids)
        )
    finally:
        if killer.is_alive():
            killer.stop()
        recorder.stop()
    if killer.error is not None:
        raise AssertionError(f"restarting the operator failed: {killer.error}")
    assert recorder.failures == [], f"listings failed while recording: {recorder.failures[:3]}"
    return Outcome(state, recorder.duplicates(), lost, left, killer.at, time.monotonic() - started)
