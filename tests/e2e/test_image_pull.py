"""An image that cannot be pulled surfaces on each kind's status as PodPending, in Kubernetes' own
words (ErrImagePull or ImagePullBackOff, with the kubelet's message): for a Dataset's preparation
Job, a TrainingRun's trial and a ModelDeployment's servers. The session's operator is swapped for
one whose trainer and server images name a tag the local registry does not have."""

from __future__ import annotations

from typing import Any

import pytest

from modelops_operator.api import conditions as c
from modelops_operator.api.common import GROUP, VERSION
from tests.support.cluster import OperatorProcess, images, wait_until
from tests.support.serving import export_model
from tests.support.workloads import artifacts_on_host, local_dataset, ready_digits, served_model, small_run

pytestmark = pytest.mark.localnode
PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff")


def missing(image: str) -> str:
    """The same repository in the local registry, at a tag nothing was pushed to."""
    return image.split("@", maxsplit=1)[0] + ":no-such-tag"


def pull_failure(custom, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    """The Ready condition, once it is False with reason PodPending and a pull failure's words."""
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    cond = next((x for x in (obj.get("status") or {}).get("conditions", []) if x["type"] == c.READY), None)
    if cond and cond["reason"] == c.POD_PENDING and any(r in cond["message"] for r in PULL_FAILURES):
        return dict(cond)
    return None


@pytest.mark.slow
def test_an_image_that_cannot_be_pulled_is_named_on_each_kind(operator, custom, namespace):
    ready_digits(custom, namespace)  # a Ready Dataset (good images), so that a trial is launched
    store = artifacts_on_host(namespace)
    model = export_model(store / "models", seed=1, name="digits")
    operator.stop()
    trainer, server = missing(images()["trainer"]), missing(images()["server"])
    bad = OperatorProcess(operator.kubeconfig, MODELOPS_TRAINER_IMAGE=trainer, MODELOPS_SERVER_IMAGE=server)
    try:
        bad.start()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", local_dataset("other"))
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", small_run("blocked"))
        md = served_model("blocked", store, model)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", md)
        for plural, name, image in (
            ("datasets", "other", trainer),
            ("trainingruns", "blocked", trainer),
            ("modeldeployments", "blocked", server),
        ):
            cond = wait_until(
                f"{plural}/{name} to name the pull failure",
                lambda p=plural, n=name: pull_failure(custom, namespace, p, n),
                timeout=180,
            )
            assert cond["status"] == "False" and image in cond["message"], cond
    finally:
        bad.stop()
        operator.start()
