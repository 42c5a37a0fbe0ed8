"""TrainingRuns end to end on the local cluster: real PyTorchJobs from the Kubeflow training
operator, real training on the executing node, GPU trials scheduled on kwok's GPU nodes, and an
operator killed mid-run that picks up where it left off."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import ARTIFACTS, kubectl, status, wait_until
from tests.support.workloads import host_path, run_jobs, settled, small_run

pytestmark = pytest.mark.localnode


def pytorchjobs(namespace: str) -> list[dict[str, Any]]:
    out = kubectl("-n", namespace, "get", "pytorchjobs", "-l", "modelops.dev/trainingrun", "-o", "json").stdout
    return list(json.loads(out)["items"])


@pytest.mark.slow
def test_a_two_trial_search_trains_registers_onnx_and_survives_an_operator_kill(operator, custom, digits):
    namespace = digits
    body = small_run("digits-resnet", algorithm="random", maxTrials=2, parallelism=1, seed=7, earlyStopping="none")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", body)

    # Kill the operator (SIGKILL, no goodbye) while the first trial trains, and start it again.
    seen: dict[str, str] = {}

    def first_trial_running() -> bool:
        seen.update({j["metadata"]["uid"]: j["metadata"]["name"] for j in run_jobs(namespace, "digits-resnet")})
        trials = status(custom, namespace, "trainingruns", "digits-resnet").get("trials") or []
        return bool(trials) and trials[0]["state"] == "Running"

    wait_until("the first trial to run", first_trial_running, timeout=180)
    operator.kill()
    operator.start()

    # What status says while trials run: read from the trainers' progress endpoints, not logs.
    samples: list[dict[str, Any]] = []

    def done() -> str | None:
        seen.update({j["metadata"]["uid"]: j["metadata"]["name"] for j in run_jobs(namespace, "digits-resnet")})
        samples.append(status(custom, namespace, "trainingruns", "digits-resnet"))
        return settled(custom, namespace, "digits-resnet")

    assert wait_until("the run to finish", done, timeout=900, interval=2) == "Succeeded", status(
        custom, namespace, "trainingruns", "digits-resnet"
    )
    st = status(custom, namespace, "trainingruns", "digits-resnet")

    # While a trial ran, its status showed steps, throughput and an ETA, and the run's progress rose
    # (never fell) to 100 at the end.
    running = [t for s in samples for t in s.get("trials") or [] if t["state"] == "Running"]
    assert any(t.get("step", 0) > 0 and (t.get("imagesPerSecond") or 0) > 0 for t in running), running
    assert any(t.get("etaSeconds") is not None and t.get("stepsPerEpoch", 0) > 0 for t in running), running
    percents = [s["percentComplete"] for s in samples if s.get("percentComplete") is not None]
    assert percents == sorted(percents) and len(set(percents)) >= 3 and percents[-1] == 100, percents
    assert any(s.get("etaSeconds") for s in samples if s.get("phase") == "Running"), samples[-1]
    assert st["percentComplete"] == 100 and "etaSeconds" not in st
    assert all("imagesPerSecond" not in t and "etaSeconds" not in t for t in st["trials"])

    # Exactly two PyTorchJobs were ever made, one per trial, despite the restart.
    names = sorted(seen.values())
    assert names == [f"digits-resnet-r1-t{i}" for i in range(2)], names
    assert len(seen) == 2
    trials = st["trials"]
    assert [t["state"] for t in trials] == ["Succeeded", "Succeeded"]
    assert trials[0]["parameters"]["learningRate"] != trials[1]["parameters"]["learningRate"]
    for t in trials:
        assert 5e-4 <= float(t["parameters"]["learningRate"]) <= 1e-2
        assert len(t["history"]) == 2 and t["epoch"] == 2 and 0 <= t["objective"] <= 1

    # The best trial's model is registered, and the file is the one its digest names.
    best = max(trials, key=lambda t: t["objective"])
    model = st["model"]
    assert st["bestTrial"] == best["name"] == model["trial"] and st["modelVersion"] == model["version"] == 1
    assert model["datasetVersion"] == st["datasetVersion"] and model["dataset"] == "digits"
    assert model["parameters"] == best["parameters"]
    onnx = host_path(namespace, model["uri"])
    assert "sha256:" + hashlib.sha256(onnx.read_bytes()).hexdigest() == model["digest"]
    card = json.loads(host_path(namespace, model["modelCardUri"]).read_text())
    assert card["onnx"]["digest"] == model["digest"]
    assert card["lineage"]["datasetVersion"] == st["datasetVersion"]
    assert card["lineage"]["trial"] == best["name"]
    ready = next(x for x in st["conditions"] if x["type"] == c.READY)
    assert (ready["status"], ready["reason"]) == ("True", c.MODEL_REGISTERED)

    # The PyTorchJob asked for what the spec said, under the restricted profile.
    job = next(j for j in run_jobs(namespace, "digits-resnet") if j["metadata"]["name"] == best["name"])
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["metadata"]["ownerReferences"][0]["name"] == "digits-resnet"

    out = kubectl("get", "trun", "digits-resnet", "-n", namespace).stdout
    assert "Succeeded" in out and f"{st['bestObjective']:.4g}"[:4] in out
    header, row = out.splitlines()[:2]
    assert "PROGRESS" in header.split() and row.split()[header.split().index("PROGRESS")] == "100", out

    events = kubectl(
        "-n", namespace, "get", "events", "--field-selector=involvedObject.name=digits-resnet", "-o", "json"
    ).stdout
    reasons = [e["reason"] for e in json.loads(events)["items"]]
    assert reasons.count("TrialStarted") >= 2 and "TrialSucceeded" in reasons and c.MODEL_REGISTERED in reasons


def test_a_crashing_trial_spends_the_failure_budget(operator, custom, digits):
    namespace = digits
    body = small_run("broken", algorithm="random", maxTrials=3, parallelism=1, maxFailedTrials=0)
    # Weights that are not there: the trainer refuses them before training (exit 1, a reason).
    body["spec"]["model"] = {
        "architecture": "resnet18",
        "weightsUri": f"file://{ARTIFACTS}/no-such-weights.pt",
        "weightsDigest": "sha256:" + "0" * 64,
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", body)
    assert wait_until("the run to fail", lambda: settled(custom, namespace, "broken"), timeout=300) == "Failed"
    st = status(custom, namespace, "trainingruns", "broken")
    ready = next(x for x in st["conditions"] if x["type"] == c.READY)
    assert ready["reason"] == c.TRIALS_EXHAUSTED and "broken-r1-t0" in ready["message"]
    (trial,) = st["trials"]  # the budget was spent: no second trial
    assert trial["state"] == "Failed" and trial["reason"] and trial["reason"] != c.TRAINING_FAILED
    assert [j["metadata"]["name"] for j in pytorchjobs(namespace) if "broken" in j["metadata"]["name"]] == [
        "broken-r1-t0"
    ]
    assert "model" not in st  # nothing is registered from a failed run


def test_gpu_trials_request_gpus_and_run_on_gpu_nodes_and_deletion_cleans_up(operator, custom, digits):
    """kwok's GPU nodes only pretend to run pods, which is what scheduling needs to be shown."""
    namespace = digits
    body = small_run("gpus")
    body["spec"]["workers"] = {
        "nodes": 2,
        "gpusPerNode": 4,
        "resources": {"requests": {"cpu": "8", "memory": "32Gi"}},
        "placement": {"nodeSelector": {"modelops.dev/pool": "gpu"}},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", body)

    def pods() -> list[dict[str, Any]]:
        out = kubectl("-n", namespace, "get", "pods", "-l", "training.kubeflow.org/job-name=gpus-r1-t0", "-o", "json")
        return list(json.loads(out.stdout)["items"])

    wait_until(
        "two Running pods",
        lambda: len(pods()) == 2 and all(p["status"].get("phase") == "Running" for p in pods()),
        timeout=120,
    )
    for pod in pods():
        assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "4"
    wait_until(
        "the trial Running in status",
        lambda: (status(custom, namespace, "trainingruns", "gpus").get("trials") or [{}])[0].get("state") == "Running",
        timeout=60,
    )
    assert status(custom, namespace, "trainingruns", "gpus")["phase"] == "Running"

    # Deleting the run deletes its PyTorchJob (finalizer, then owner references) and goes away.
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "gpus")
    wait_until("the PyTorchJob gone", lambda: not run_jobs(namespace, "gpus"), timeout=60)
    wait_until(
        "the TrainingRun gone",
        lambda: kubectl("-n", namespace, "get", "trun", "gpus", check=False).returncode != 0,
        timeout=60,
    )
