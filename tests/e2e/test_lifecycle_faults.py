"""The full lifecycle with the operator SIGKILLed in its stages ends exactly as an undisturbed run
does: same status of all three objects, same children, no child ever created twice, no orphan,
nothing left behind or stuck Terminating after deletion. CI kills it `MODELOPS_FAULT_KILLS` times
(default 6), once in each of the first six stages of `lifecycle.PRIORITY` (a canary step, the
deletion, the promotion, training, the other canary step, preparation), and checks that the kills
did hit distinct stages, the canary rollout and the deletion among them; bench/faults.py runs the
same scenario with 50."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator

import kubernetes
import pytest

from tests.support.cluster import RESTRICTED
from tests.support.lifecycle import CANARY, run_lifecycle, spread

pytestmark = [pytest.mark.localnode, pytest.mark.slow]


@pytest.fixture
def two_namespaces(api) -> Iterator[tuple[str, str]]:
    core = kubernetes.client.CoreV1Api(api)
    names = (f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}")
    for name in names:
        core.create_namespace({"metadata": {"name": name, "labels": {"modelops.dev/test": "true", **RESTRICTED}}})
    yield names
    for name in names:
        core.delete_namespace(name)


def test_the_lifecycle_ends_the_same_with_the_operator_killed_in_every_stage(custom, operator, two_namespaces):
    calm_ns, rough_ns = two_namespaces
    kills = int(os.environ.get("MODELOPS_FAULT_KILLS", "6"))
    seed = int(os.environ.get("MODELOPS_FAULT_SEED", random.randrange(1 << 30)))
    calm = run_lifecycle(custom, calm_ns, operator)
    uptime = spread(calm.seconds, kills)  # kills beyond one per stage: over the whole lifecycle
    rough = run_lifecycle(custom, rough_ns, operator, kills=kills, seed=seed, mean_uptime=uptime)
    where = f"(seed {seed}, kills at {rough.kills_at})"
    hit = set(rough.kills_at)

    assert calm.state["ModelDeployment"]["phase"] == "Healthy" and calm.state["TrainingRun"]["models"] == [1, 2]
    assert len(rough.kills_at) == kills, where
    if kills >= 6:
        # Scheduled per stage, 6 kills aim at 6 stages; a short one (the promotion's few seconds, say)
        # may pass within the second the operator runs after the kill before, so 4 is the bound.
        assert len(hit) >= 4 and hit & CANARY and "deleting" in hit, where
    assert rough.state == calm.state, where
    assert calm.duplicates == {} and rough.duplicates == {}, where
    assert calm.orphans == [] and rough.orphans == [], where
    assert calm.left_after_delete == [] and rough.left_after_delete == [], where
