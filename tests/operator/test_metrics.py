"""The operator's own metrics that follow objects and builds, read back from prometheus_client's
registry: `modelops_rollout_aborted` loses a deleted ModelDeployment's series, and
`modelops_build_info` says which build runs."""

from __future__ import annotations

import asyncio
import logging
import platform
import re

import kopf
import prometheus_client
import pytest

import modelops_operator
from modelops_operator import controllers, handlers, observability
from modelops_operator.api.kinds import DATASET, MODEL_DEPLOYMENT
from modelops_operator.settings import OperatorSettings

REGISTRY = prometheus_client.REGISTRY


def aborted(namespace: str, name: str) -> float | None:
    return REGISTRY.get_sample_value("modelops_rollout_aborted", {"namespace": namespace, "modeldeployment": name})


def event_handler(plural: str):
    """The `wake` event handler kopf calls with every raw event of `plural`, as registered."""
    registry = kopf.get_default_registry()
    if not registry._watching.get_all_handlers():
        handlers.register(OperatorSettings())
    [handler] = [h for h in registry._watching._handlers if h.id == "wake" and plural in repr(h.selector)]
    return handler.fn


def body(kind: str, namespace: str, name: str) -> kopf.Body:
    return kopf.Body(
        {"apiVersion": "modelops.dev/v1alpha1", "kind": kind, "metadata": {"namespace": namespace, "name": name}}
    )


def test_a_deleted_modeldeployments_rollout_series_goes():
    observability.ROLLOUT_ABORTED.labels("ml", "digits").set(1)
    observability.ROLLOUT_ABORTED.labels("ml", "other").set(0)
    observability.count_phase(MODEL_DEPLOYMENT.kind, "ml", "digits", "Degraded")
    objects = REGISTRY.get_sample_value("modelops_objects", {"kind": "ModelDeployment", "phase": "Degraded"})
    assert aborted("ml", "digits") == 1
    on_event = event_handler(MODEL_DEPLOYMENT.plural)
    asyncio.run(
        on_event(
            type="DELETED",
            body=body("ModelDeployment", "ml", "digits"),
            patch=kopf.Patch(),
            logger=logging.getLogger("test"),
            memo=kopf.Memo(),
        )
    )
    assert aborted("ml", "digits") is None
    assert aborted("ml", "other") == 0  # the others stay
    after = REGISTRY.get_sample_value("modelops_objects", {"kind": "ModelDeployment", "phase": "Degraded"})
    assert after == objects - 1


def test_forgetting_twice_or_another_kind_is_harmless():
    observability.ROLLOUT_ABORTED.labels("ml", "twice").set(1)
    controllers.forget(MODEL_DEPLOYMENT, body("ModelDeployment", "ml", "twice"))
    controllers.forget(MODEL_DEPLOYMENT, body("ModelDeployment", "ml", "twice"))
    controllers.forget(DATASET, body("Dataset", "ml", "twice"))
    assert aborted("ml", "twice") is None


@pytest.mark.parametrize(
    ("environ", "commit"),
    [({}, "unknown"), ({"MODELOPS_GIT_COMMIT": " 3f2c9a1e \n"}, "3f2c9a1e"), ({"MODELOPS_GIT_COMMIT": ""}, "unknown")],
)
def test_build_info(environ, commit):
    observability.publish_build_info(environ)
    labels = {
        "version": modelops_operator.__version__,
        "git_commit": commit,
        "python_version": platform.python_version(),
    }
    assert REGISTRY.get_sample_value("modelops_build_info", labels) == 1
    exposition = prometheus_client.generate_latest(REGISTRY).decode()
    assert len(re.findall(r"^modelops_build_info\{", exposition, re.MULTILINE)) == 1  # one build, one series
