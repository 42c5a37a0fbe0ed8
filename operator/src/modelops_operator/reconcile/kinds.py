"""The status of ModelDeployments, from their spec and the objects they depend on.

This release resolves a ModelDeployment's model; serving arrives with the issue that builds it.
Until then the operator says so in `Ready` (reason `NotImplemented`) instead of pretending:
nothing is marked Ready that is not.
"""

from __future__ import annotations

from typing import Any

from modelops_operator.api import conditions as c
from modelops_operator.api.common import Condition, ConditionStatus
from modelops_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE


def _is_ready(obj: dict[str, Any]) -> bool:
    conds = obj.get("status", {}).get("conditions", [])
    return any(x.get("type") == c.READY and x.get("status") == "True" for x in conds)


def _waiting(old_conds: list[Condition], cond_type: str, reason: str, msg: str, generation: int) -> list[Condition]:
    """`cond_type`, Ready and Progressing all False for the same reason: waiting on another object."""
    conds = c.set_condition(old_conds, cond_type, F, reason, msg, generation)
    conds = c.set_condition(conds, c.READY, F, reason, msg, generation)
    return c.set_condition(conds, c.PROGRESSING, F, reason, msg, generation)


def _accepted(
    old_conds: list[Condition], cond_type: str, reason: str, msg: str, todo: str, generation: int
) -> list[Condition]:
    """`cond_type` True; Ready and Progressing False with `NotImplemented`: the next stage is not built."""
    conds = c.set_condition(old_conds, cond_type, T, reason, msg, generation)
    conds = c.set_condition(conds, c.READY, F, c.NOT_IMPLEMENTED, todo, generation)
    return c.set_condition(conds, c.PROGRESSING, F, c.NOT_IMPLEMENTED, todo, generation)


def model_deployment_status(
    spec: ModelDeploymentSpec, generation: int, old: ModelDeploymentStatus, training_run: dict[str, Any] | None
) -> ModelDeploymentStatus:
    """A ModelDeployment's status: resolves the model to serve (a URI with digest, or a TrainingRun's
    registered version); serving is not built yet."""
    src, ref = spec.model, spec.model.training_run_ref
    model = (training_run or {}).get("status", {}).get("model")
    if src.uri is not None:
        where = f"model {src.digest} at {src.uri}"
    elif ref is not None and training_run is None:
        msg = f'TrainingRun "{ref.name}" does not exist in this namespace; create it or fix spec.model.trainingRunRef'
        conds = _waiting(old.conditions, c.MODEL_RESOLVED, c.TRAINING_RUN_NOT_FOUND, msg, generation)
        return old.model_copy(update={"phase": "Pending", "observed_generation": generation, "conditions": conds})
    elif ref is not None and (model is None or (ref.version is not None and model.get("version", 0) < ref.version)):
        wanted = f"version {ref.version}" if ref.version else "a model"
        msg = f'TrainingRun "{ref.name}" has not registered {wanted} yet; the deployment waits for it'
        conds = _waiting(old.conditions, c.MODEL_RESOLVED, c.MODEL_NOT_REGISTERED, msg, generation)
        return old.model_copy(update={"phase": "Pending", "observed_generation": generation, "conditions": conds})
    else:
        assert ref is not None and model is not None
        where = f'model version {ref.version or model["version"]} of TrainingRun "{ref.name}"'
    todo = "model resolved; this operator version does not deploy servers yet, so nothing serves it"
    conds = _accepted(old.conditions, c.MODEL_RESOLVED, c.MODEL_FOUND, where, todo, generation)
    return old.model_copy(update={"phase": "Pending", "observed_generation": generation, "conditions": conds})
