"""The pure reconcile layer: status from spec and observed objects, conditions, patches, events."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from modelops_operator.api import conditions as c
from modelops_operator.api.common import ConditionStatus
from modelops_operator.api.dataset import DatasetSpec, DatasetStatus
from modelops_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus, ServedModel
from modelops_operator.api.trainingrun import TrainingRunStatus
from modelops_operator.reconcile import modeldeployment as rm
from modelops_operator.reconcile.status import (
    describe_error,
    invalid_spec,
    merge_patch,
    parse_status,
    ready_events,
)
from tests.support.objects import DIGEST, dataset, model_deployment

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 2, tzinfo=UTC)


def ready(status):
    return c.get_condition(status.conditions, c.READY)


def cond(status, type_):
    return c.get_condition(status.conditions, type_)


def registered_run(version=3):
    return {"status": {"model": {"version": version, "uri": "file:///m/model.onnx", "digest": DIGEST}}}


# --- conditions -------------------------------------------------------------------------------


def test_transition_time_moves_only_when_status_changes():
    conds = c.set_condition([], c.READY, ConditionStatus.FALSE, "A", "a", 1, at=T0)
    same = c.set_condition(conds, c.READY, ConditionStatus.FALSE, "B", "b", 2, at=T1)
    flipped = c.set_condition(same, c.READY, ConditionStatus.TRUE, "C", "c", 2, at=T1)
    assert same[0].last_transition_time == T0 and same[0].reason == "B" and same[0].observed_generation == 2
    assert flipped[0].last_transition_time == T1
    assert len(flipped) == 1


def test_set_condition_keeps_other_conditions_and_order():
    conds = c.set_condition([], c.READY, ConditionStatus.FALSE, "A", "", 1)
    conds = c.set_condition(conds, c.PROGRESSING, ConditionStatus.TRUE, "B", "", 1)
    conds = c.set_condition(conds, c.READY, ConditionStatus.TRUE, "C", "", 1)
    assert [x.type for x in conds] == [c.READY, c.PROGRESSING]


Y, N = ConditionStatus.TRUE, ConditionStatus.FALSE


@pytest.mark.parametrize(
    ("transition", "expected"),
    [
        (lambda cs: c.waiting(cs, "R", "m", 3, at=T1), {c.READY: N, c.PROGRESSING: N}),
        (lambda cs: c.waiting(cs, "R", "m", 3, degraded=False, at=T1), {c.READY: N, c.PROGRESSING: N, c.DEGRADED: N}),
        (lambda cs: c.running(cs, "R", "m", 3, at=T1), {c.READY: N, c.PROGRESSING: Y}),
        (lambda cs: c.finished(cs, True, "R", "m", 3, at=T1), {c.READY: Y, c.PROGRESSING: N}),
        (
            lambda cs: c.finished(cs, False, "R", "m", 3, degraded=True, at=T1),
            {c.READY: N, c.PROGRESSING: N, c.DEGRADED: Y},
        ),
    ],
    ids=["waiting", "suspended", "running", "succeeded", "failed"],
)
def test_transitions_set_ready_progressing_and_degraded_for_one_reason(transition, expected):
    before = c.set_condition([], c.AVAILABLE, Y, "Other", "kept", 1, at=T0)
    after = transition(before)
    assert [x.type for x in after] == [c.AVAILABLE, *expected]  # Ready, Progressing, Degraded, in order
    assert after[0] == before[0]
    for x in after[1:]:
        assert (x.status, x.reason, x.message, x.observed_generation) == (expected[x.type], "R", "m", 3)


def test_one_message_length_rule_keeps_start_and_end():
    long = "start " + "x" * 10_000 + " the last line says why"
    cond_ = c.running([], "R", long, 1)[0]
    assert len(cond_.message) == c.MAX_MESSAGE
    assert cond_.message.startswith("start ") and cond_.message.endswith(" the last line says why")
    assert c.shorten("short") == "short" and len(c.shorten("y" * 101, 100)) == 100


# --- per kind ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "observed", "reason"),
    [
        (model_deployment(), None, c.TRAINING_RUN_NOT_FOUND),
        (model_deployment(), {"status": {}}, c.MODEL_NOT_REGISTERED),
        (model_deployment().set("spec.model.trainingRunRef.version", 4), registered_run(3), c.MODEL_NOT_REGISTERED),
    ],
    ids=["run-missing", "no-model", "version-not-yet"],
)
def test_model_deployment_waits_for_its_model(builder, observed, reason):
    spec = ModelDeploymentSpec.model_validate(builder.spec)
    why = rm.resolve_model(spec, observed)
    assert isinstance(why, rm.Waiting) and why.reason == reason
    st = rm.waiting_status(ModelDeploymentStatus(), 2, why)
    assert ready(st).reason == reason and ready(st).status == ConditionStatus.FALSE
    assert cond(st, c.MODEL_RESOLVED).status == ConditionStatus.FALSE
    assert cond(st, c.MODEL_RESOLVED).reason == reason
    assert st.observed_generation == 2 and st.phase == "Pending"


@pytest.mark.parametrize(
    ("builder", "observed", "version", "uri"),
    [
        (model_deployment(), registered_run(3), "digits-resnet:v3", "file:///m/model.onnx"),
        (
            model_deployment()
            .drop("spec.model.trainingRunRef")
            .set("spec.model.uri", "s3://b/m.onnx")
            .set("spec.model.digest", DIGEST),
            None,
            DIGEST[7:19],
            "s3://b/m.onnx",
        ),
    ],
    ids=["registered", "uri"],
)
def test_model_deployment_resolves_its_model(builder, observed, version, uri):
    spec = ModelDeploymentSpec.model_validate(builder.spec)
    model = rm.resolve_model(spec, observed)
    assert model == ServedModel(version=version, uri=uri, digest=DIGEST)
    st = rm.resolved_condition(ModelDeploymentStatus(observed_generation=2), 2, model)
    resolved = cond(st, c.MODEL_RESOLVED)
    assert resolved.status == ConditionStatus.TRUE and resolved.reason == c.MODEL_FOUND
    assert resolved.observed_generation == 2 and DIGEST in resolved.message


# --- status bookkeeping -------------------------------------------------------------------------


def test_merge_patch():
    assert merge_patch({"a": 1, "b": {"c": 1, "d": 2}}, {"a": 1, "b": {"c": 2, "d": 2}}) == {"b": {"c": 2}}
    assert merge_patch({"a": 1, "gone": 2}, {"a": 1}) == {"gone": None}
    assert merge_patch({"l": [1, 2]}, {"l": [1]}) == {"l": [1]}
    assert merge_patch({"x": 1}, {"x": 1}) == {}


def test_invalid_spec_is_reported_not_raised():
    with pytest.raises(ValidationError) as err:
        DatasetSpec.model_validate(dataset().set("spec.split.train", 2).spec)
    message = describe_error(err.value)
    st = invalid_spec(DatasetStatus(), 5, message)
    assert st.phase == "Failed" and st.observed_generation == 5
    assert ready(st).reason == c.INVALID_SPEC and "spec.split.train" in ready(st).message


def test_a_status_that_no_longer_validates_starts_afresh():
    assert parse_status(DatasetStatus, {"phase": "Exploded"}) == DatasetStatus()


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (None, (ConditionStatus.FALSE, c.DATASET_NOT_FOUND), [("Warning", c.DATASET_NOT_FOUND)]),
        (None, (ConditionStatus.FALSE, c.DATASET_NOT_READY), [("Normal", c.DATASET_NOT_READY)]),
        ((ConditionStatus.FALSE, c.DATASET_NOT_READY), (ConditionStatus.FALSE, c.DATASET_NOT_READY), []),
        ((ConditionStatus.FALSE, c.DATASET_NOT_READY), (ConditionStatus.TRUE, "Succeeded"), [("Normal", "Succeeded")]),
    ],
)
def test_events_mark_ready_transitions_only(before, after, expected):
    def status(pair):
        s = TrainingRunStatus()
        if pair:
            s.conditions = c.set_condition([], c.READY, pair[0], pair[1], "m", 1)
        return s

    assert [(e.type, e.reason) for e in ready_events(status(before), status(after))] == expected
