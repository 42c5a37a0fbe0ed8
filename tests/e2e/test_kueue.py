"""TrainingRuns admitted by Kueue on the local cluster (hack/cluster.py runs Kueue): real PyTorchJobs
on the real node, each test with its own ClusterQueue whose quota holds exactly one trial.

- A trial waits, Queued with Kueue's reason, while another holds the quota; it is admitted and
  trains, and only Kueue ever writes its PyTorchJob's `runPolicy.suspend` (no fight).
- A low-priority trial preempted by a high-priority one resumes from its checkpoint when admitted
  again and ends with the same per-epoch metrics as an uninterrupted run.
- A queue that does not exist is a condition with a reason, not a wait without end.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import ON_LOCAL_NODE, kubectl, status, wait_until
from tests.support.workloads import run_jobs, settled, small_run

pytestmark = pytest.mark.localnode

#: What each trial's pod asks for; a test's ClusterQueue holds exactly one such trial.
TRIAL_REQUESTS = {"cpu": "500m", "memory": "1Gi"}


def apply(*objects: dict[str, Any]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    kubectl("apply", "--server-side", "--field-manager=modelops-tests", "-f", "-", stdin=body)


@pytest.fixture(scope="module")
def kueue() -> None:
    """Kueue runs (a cluster started before it was added has neither its API nor its priorities)."""
    found = kubectl("get", "workloadpriorityclasses.kueue.x-k8s.io", "low", "high", check=False)
    if found.returncode != 0:
        pytest.fail(
            f"Kueue is not set up on this cluster ({found.stderr.strip()}): run `hack/cluster.py down`, then `up`",
            pytrace=False,
        )


@pytest.fixture
def queue(kueue: None, digits: str) -> Iterator[str]:
    """A LocalQueue in the test's namespace whose ClusterQueue has quota for one trial on the real
    node and preempts lower priorities."""
    name = f"{digits}-{uuid.uuid4().hex[:6]}"
    apply(
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": digits}},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": list(TRIAL_REQUESTS),
                        "flavors": [
                            {
                                "name": "local",
                                "resources": [{"name": r, "nominalQuota": q} for r, q in TRIAL_REQUESTS.items()],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "trials", "namespace": digits},
            "spec": {"clusterQueue": name},
        },
    )
    yield "trials"
    kubectl("-n", digits, "delete", "localqueue", "trials", "--wait=false", check=False)
    kubectl("delete", "clusterqueue", name, "--wait=false", check=False)


def queued_run(name: str, queue: str | None, *, epochs: int = 2, priority: str | None = None) -> dict[str, Any]:
    body = small_run(name)
    body["spec"]["hyperparameters"]["epochs"] = epochs
    workers: dict[str, Any] = {"nodes": 1, "placement": ON_LOCAL_NODE, "resources": {"requests": TRIAL_REQUESTS}}
    if queue:
        workers["queueName"] = queue
    if priority:
        workers["workloadPriorityClass"] = priority
    body["spec"]["workers"] = workers
    return body


def create(custom: Any, namespace: str, body: dict[str, Any]) -> str:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", body)
    return str(body["metadata"]["name"])


def ready(st: dict[str, Any]) -> dict[str, Any]:
    return next((x for x in st.get("conditions") or [] if x["type"] == "Ready"), {})


def events(namespace: str, run: str) -> dict[str, list[str]]:
    """The Events posted on the TrainingRun `run`: messages by reason."""
    out = kubectl(
        "-n", namespace, "get", "events", f"--field-selector=involvedObject.name={run},involvedObject.kind=TrainingRun",
        "-o", "json",
    ).stdout  # fmt: skip
    found: dict[str, list[str]] = {}
    for e in json.loads(out)["items"]:
        found.setdefault(e["reason"], []).append(e.get("message") or "")
    return found


def finish(custom: Any, namespace: str, run: str, timeout: float = 600) -> dict[str, Any]:
    phase = wait_until(f"TrainingRun {run} to finish", lambda: settled(custom, namespace, run), timeout=timeout)
    st = status(custom, namespace, "trainingruns", run)
    assert phase == "Succeeded", st
    return st


def jobs_with_writers(namespace: str, run: str) -> list[dict[str, Any]]:
    """The run's PyTorchJobs with their managedFields (kubectl leaves them out unless asked)."""
    out = kubectl(
        "-n", namespace, "get", "pytorchjobs", "-l", f"modelops.dev/trainingrun={run}",
        "-o", "json", "--show-managed-fields",
    ).stdout  # fmt: skip
    return list(json.loads(out)["items"])


def suspend_writers(job: dict[str, Any]) -> set[str]:
    """The field managers that updated the PyTorchJob's `spec.runPolicy.suspend` after its creation."""
    writers = set()
    for entry in job["metadata"].get("managedFields") or []:
        fields = (entry.get("fieldsV1") or {}).get("f:spec", {}).get("f:runPolicy", {})
        if "f:suspend" in fields and entry.get("operation") != "Create":
            writers.add(entry["manager"])
    return writers


@pytest.mark.slow
def test_a_queued_trial_waits_with_kueues_reason_then_is_admitted_and_trains(operator, custom, digits, queue):
    namespace = digits
    holder = create(custom, namespace, queued_run("holder", queue))
    wait_until(
        "the first run's trial to be admitted and run",
        lambda: (
            [t["state"] for t in status(custom, namespace, "trainingruns", holder).get("trials") or []] == ["Running"]
        ),
        timeout=240,
    )
    waiter = create(custom, namespace, queued_run("waiter", queue))

    def queued() -> dict[str, Any] | None:
        st = status(custom, namespace, "trainingruns", waiter)
        return st if st.get("phase") == "Queued" and ready(st).get("reason") == c.QUEUED else None

    st = wait_until("the second run to be Queued", queued, timeout=120)
    assert "insufficient unused quota" in ready(st)["message"], ready(st)  # Kueue's own words
    (trial,) = st["trials"]
    assert (trial["state"], trial["reason"]) == ("Queued", c.QUEUED)
    assert c.QUEUED in events(namespace, waiter)

    finish(custom, namespace, holder)
    done = finish(custom, namespace, waiter)
    assert [t["state"] for t in done["trials"]] == ["Succeeded"]
    assert any("admitted by Kueue" in m for m in events(namespace, waiter).get(c.ADMITTED, []))
    # No fight: the operator created the jobs suspended; only Kueue changed that.
    for job in jobs_with_writers(namespace, waiter) + jobs_with_writers(namespace, holder):
        writers = suspend_writers(job)
        assert writers and all(w.startswith("kueue") for w in writers), job["metadata"]["managedFields"]


@pytest.mark.slow
def test_a_preempted_trial_resumes_from_its_checkpoint_with_identical_epochs(operator, custom, digits, queue):
    namespace = digits
    epochs = 4
    # The uninterrupted run, for comparison (the same spec and seed; alone in the queue).
    reference = finish(custom, namespace, create(custom, namespace, queued_run("reference", queue, epochs=epochs)))

    low = create(custom, namespace, queued_run("low", queue, epochs=epochs, priority="low"))

    def training() -> bool:
        trials = status(custom, namespace, "trainingruns", low).get("trials") or []
        # A finished epoch: its checkpoint is written, so the preempted trial has one to resume from.
        return bool(trials) and trials[0]["state"] == "Running" and len(trials[0].get("history") or []) >= 1

    wait_until("the low-priority trial to finish an epoch", training, timeout=240)
    high = create(custom, namespace, queued_run("high", queue, epochs=1, priority="high"))

    def preempted() -> dict[str, Any] | None:
        st = status(custom, namespace, "trainingruns", low)
        assert st.get("phase") != "Succeeded", "the low-priority trial finished before it could be preempted"
        trials = st.get("trials") or []
        return st if trials and (trials[0]["state"], trials[0].get("reason")) == ("Queued", c.PREEMPTED) else None

    st = wait_until("Kueue to preempt the low-priority trial", preempted, timeout=120)
    assert "resumes from its last checkpoint" in st["trials"][0]["message"]
    assert ready(st)["reason"] == c.PREEMPTED
    assert c.PREEMPTED in events(namespace, low)

    finish(custom, namespace, high)
    done = finish(custom, namespace, low)
    # Readmitted, the trainer took up its checkpoint and trained on to the same result.
    assert any("resumes from its last checkpoint" in m for m in events(namespace, low).get(c.ADMITTED, []))
    (trial,) = done["trials"]
    (ref,) = reference["trials"]
    logs = kubectl(
        "-n", namespace, "logs", "-l",
        f"training.kubeflow.org/job-name={trial['name']},training.kubeflow.org/replica-type=master", "--tail=-1",
    ).stdout  # fmt: skip
    assert "resumed" in logs
    assert len(trial["history"]) == epochs
    assert trial["history"] == ref["history"]
    assert trial["metrics"] == ref["metrics"]


def test_a_queue_that_does_not_exist_is_a_condition_with_a_reason(operator, custom, kueue, digits):
    namespace = digits
    run = create(custom, namespace, queued_run("nowhere", "no-such-queue"))

    def refused() -> dict[str, Any] | None:
        st = status(custom, namespace, "trainingruns", run)
        return st if ready(st).get("reason") == c.QUEUE_NOT_FOUND else None

    st = wait_until("the run to say its queue does not exist", refused, timeout=120)
    assert "LocalQueue no-such-queue doesn't exist" in ready(st)["message"]  # Kueue's words
    assert "fix spec.workers.queueName" in ready(st)["message"]
    conds = {x["type"]: x["status"] for x in st["conditions"]}
    assert (conds["Stalled"], conds["Degraded"], st["phase"]) == ("True", "True", "Queued")
    assert c.QUEUE_NOT_FOUND in events(namespace, run)
    # The operator wrote nothing to the job: it stays suspended, as created.
    (job,) = run_jobs(namespace, run)
    assert job["spec"]["runPolicy"]["suspend"] is True and not suspend_writers(job)
