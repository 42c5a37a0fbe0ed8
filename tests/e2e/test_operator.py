"""The operator against the real API server: every kind gets honest status from the operator."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import kubernetes

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import (
    OperatorProcess,
    api_server_port,
    connections,
    create,
    kubectl,
    ready_reason,
    wait_until,
)
from tests.support.objects import dataset, model_deployment, training_run


def get(custom, namespace, plural, name):
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)


def test_each_kind_gets_conditions_from_the_operator(operator, custom, namespace):
    create(custom, namespace, dataset("digits"))
    create(custom, namespace, training_run("digits-resnet", "digits"))
    create(custom, namespace, model_deployment("digits", "digits-resnet"))

    # The Job's pod needs the artifact PVC (the operator's setting), which this namespace lacks:
    # the Dataset says so instead of "preparing" forever.
    wait_until(
        "Dataset status",
        lambda: ready_reason(custom, namespace, "datasets", "digits") == ("False", c.POD_PENDING),
        timeout=60,
    )
    message = next(
        x["message"]
        for x in get(custom, namespace, "datasets", "digits")["status"]["conditions"]
        if x["type"] == c.READY
    )
    assert "modelops-artifacts" in message
    assert wait_until(
        "TrainingRun status", lambda: ready_reason(custom, namespace, "trainingruns", "digits-resnet")
    ) == ("False", c.DATASET_NOT_READY)
    assert wait_until(
        "ModelDeployment status", lambda: ready_reason(custom, namespace, "modeldeployments", "digits")
    ) == ("False", c.MODEL_NOT_REGISTERED)

    run = get(custom, namespace, "trainingruns", "digits-resnet")
    assert run["status"]["phase"] == "WaitingForDataset"
    types = {x["type"] for x in run["status"]["conditions"]}
    assert types == {c.READY, c.PROGRESSING, c.DATASET_READY, c.FAILED, c.SUCCEEDED, c.RECONCILING, c.STALLED}
    summary = {x["type"]: x["status"] for x in run["status"]["conditions"]}
    assert [summary[t] for t in (c.FAILED, c.SUCCEEDED, c.RECONCILING, c.STALLED)] == [
        "False",
        "False",
        "True",
        "False",
    ]
    for cond in run["status"]["conditions"]:
        assert cond["observedGeneration"] == 1 and cond["lastTransitionTime"] and cond["message"]


def test_a_waiting_object_catches_up_when_its_dependency_appears(operator, custom, namespace):
    create(custom, namespace, training_run("early", "later"))
    assert wait_until("DatasetNotFound", lambda: ready_reason(custom, namespace, "trainingruns", "early")) == (
        "False",
        c.DATASET_NOT_FOUND,
    )
    create(custom, namespace, dataset("later"))
    # Nothing about the TrainingRun changed, and the resync is off: the Dataset's creation wakes it.
    wait_until(
        "DatasetNotReady",
        lambda: ready_reason(custom, namespace, "trainingruns", "early") == ("False", c.DATASET_NOT_READY),
        timeout=30,
    )


def test_events_announce_state_changes(operator, custom, namespace):
    create(custom, namespace, training_run("lonely", "missing"))
    wait_until(
        "a Warning event",
        lambda: (
            "DatasetNotFound"
            in kubectl(
                "-n",
                namespace,
                "get",
                "events",
                "--field-selector=involvedObject.name=lonely",
                "-o",
                "jsonpath={.items[*].reason}",
            ).stdout
        ),
    )
    types = kubectl(
        "-n",
        namespace,
        "get",
        "events",
        "--field-selector=involvedObject.name=lonely",
        "-o",
        "jsonpath={.items[*].type}",
    ).stdout.split()
    assert "Warning" in types


def test_a_spec_change_is_observed(operator, custom, namespace):
    create(custom, namespace, dataset("changing"))
    wait_until("generation 1", lambda: ready_reason(custom, namespace, "datasets", "changing"))
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "datasets", "changing", {"spec": {"split": {"train": 0.7, "val": 0.2, "test": 0.1}}}
    )
    assert get(custom, namespace, "datasets", "changing")["metadata"]["generation"] == 2
    wait_until("generation 2", lambda: ready_reason(custom, namespace, "datasets", "changing", generation=2))


def test_status_is_not_rewritten_when_nothing_changed(operator, custom, namespace):
    """Level-based resyncs run every 2 s in tests; a converged object must see no writes."""
    create(custom, namespace, training_run("steady", "nowhere"))
    wait_until("converged", lambda: ready_reason(custom, namespace, "trainingruns", "steady"))
    before = get(custom, namespace, "trainingruns", "steady")["metadata"]["resourceVersion"]
    time.sleep(7)  # three resync periods
    after = get(custom, namespace, "trainingruns", "steady")["metadata"]["resourceVersion"]
    assert before == after


def test_kubectl_get_modelops_lists_all_three_kinds(operator, custom, namespace):
    create(custom, namespace, dataset("digits"))
    create(custom, namespace, training_run("digits-resnet", "digits"))
    create(custom, namespace, model_deployment("digits", "digits-resnet"))
    wait_until(
        "all reconciled",
        lambda: all(
            ready_reason(custom, namespace, p, n)
            for p, n in (("datasets", "digits"), ("trainingruns", "digits-resnet"), ("modeldeployments", "digits"))
        ),
    )
    out = kubectl("get", "modelops", "-n", namespace).stdout
    for kind in (
        "dataset.modelops.dev/digits",
        "trainingrun.modelops.dev/digits-resnet",
        "modeldeployment.modelops.dev/digits",
    ):
        assert kind in out
    headers = [line.split() for line in out.splitlines() if line.startswith("NAME")]
    assert ["NAME", "READY", "PHASE", "VERSION", "IMAGES", "CLASSES", "AGE"] in headers
    assert ["NAME", "READY", "PHASE", "DATASET", "BEST", "MODEL", "PROGRESS", "AGE"] in headers
    assert ["NAME", "READY", "PHASE", "STABLE", "CANARY", "REPLICAS", "EXPERIMENT", "AGE"] in headers
    assert "WaitingForDataset" in out and "False" in out
    for short in ("dset", "trun", "mdep"):
        assert kubectl("get", short, "-n", namespace).returncode == 0


def test_the_operator_survives_a_bad_object_and_keeps_working(operator, custom, api, namespace):
    """An object the schema cannot catch (a Dataset name that is not there) fails alone."""
    create(custom, namespace, model_deployment("orphan", "no-such-run"))
    create(custom, namespace, dataset("fine"))
    assert wait_until("orphan", lambda: ready_reason(custom, namespace, "modeldeployments", "orphan")) == (
        "False",
        c.TRAINING_RUN_NOT_FOUND,
    )
    assert wait_until("fine", lambda: ready_reason(custom, namespace, "datasets", "fine"))
    assert isinstance(kubernetes.client.VersionApi(api).get_code().git_version, str)


def test_a_burst_of_objects_is_handled_on_the_connections_allowed(operator, custom, namespace):
    """kopf's own client opens a connection per request in flight; `MODELOPS_API_CONNECTIONS` bounds
    them, beyond one per watch stream. With one allowed (and one reconcile thread), 40 TrainingRuns
    created at once all get their status, so no watch stream was starved, and the operator never
    holds more connections to the API server than the bound. Without the bound it held 29 here."""
    operator.stop()
    bounded = OperatorProcess(operator.kubeconfig, MODELOPS_API_CONNECTIONS="1", MODELOPS_WORKERS="1")
    # kopf: 1 for requests + 4 watch streams (three kinds and HPAs); the Kubernetes client: one per
    # reconcile thread + 8 (kube.configure).
    bound = 1 + 4 + 1 + 8
    port, peak, stop = api_server_port(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], connections(bounded.pid, port))
            time.sleep(0.02)

    names = [f"burst-{i}" for i in range(40)]

    def all_have_status() -> bool:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns")["items"]
        done = {o["metadata"]["name"] for o in items if o.get("status", {}).get("observedGeneration") == 1}
        return done >= set(names)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        bounded.start()
        sampler.start()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: create(custom, namespace, training_run(n, "absent")), names))
        wait_until("every TrainingRun's status", all_have_status, timeout=180, interval=1)
        assert ready_reason(custom, namespace, "trainingruns", names[-1]) == ("False", c.DATASET_NOT_FOUND)
    finally:
        stop.set()
        sampler.join()
        bounded.stop()
        operator.start()
    assert 0 < peak[0] <= bound, f"{peak[0]} connections to the API server at once, more than {bound}"
