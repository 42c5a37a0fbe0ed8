"""The tests' own tools (tests/support): the rule for missing tools (a skip on a developer machine,
a failure in CI, no test that skips for a missing tool on its own), and the fault test's reading of
the lifecycle's stage from the cluster's state."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from xdist.scheduler import LoadGroupScheduling

from tests.conftest import CLUSTER_TESTS, ClusterTestsInOneWorker
from tests.e2e.conftest import E2E
from tests.support import tools
from tests.support.lifecycle import STAGES, stage_of

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_a_missing_tool_fails_in_ci_naming_it_and_how_to_get_it(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(
        pytest.fail.Exception, match=r"^helm \(/x/helm\) is missing: run hack/setup.sh \(CI must have it\)$"
    ):
        tools.missing("helm (/x/helm)", "run hack/setup.sh")
    with pytest.raises(pytest.fail.Exception, match=r"^the Python module no_such_module_x is missing: pip install it"):
        tools.import_or_missing("no_such_module_x", "pip install it")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_a_missing_tool_skips_outside_ci(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match=r"^promtool is missing: build it$"):
        tools.missing("promtool", "build it")


def test_the_ci_script_sets_ci_so_that_missing_tools_fail():
    out = subprocess.run(
        ["bash", "-c", 'source <(sed -n "/^export CI=/p" .ci/run); echo "$CI"'],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "true"


#: Skips allowed outside tests/support/tools.py: they are about hardware, not a missing tool.
HARDWARE = re.compile(r"CUDA|GPU", re.IGNORECASE)


def test_no_test_skips_for_a_missing_tool_on_its_own():
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if path == REPO / "tests" / "support" / "tools.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"importorskip\(|pytest\.skip\(", line) and not HARDWARE.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == [], "use tests.support.tools.missing() or import_or_missing():\n" + "\n".join(offenders)


def obj(kind: str, name: str = "digits", deleting: bool = False, **status) -> dict:
    meta = {"name": name, **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {})}
    return {"kind": kind, "metadata": meta, "status": status}


def scene(ds: dict | None, tr: dict | None, md: dict | None, *children: dict) -> list[dict]:
    return [o for o in (ds, tr, md) if o is not None] + [obj("Pod", "seed-x7k2p"), obj("Job", "seed"), *children]


READY = obj("Dataset", phase="Ready")
RUN1 = obj("TrainingRun", phase="Succeeded", round=1)
RUN2 = obj("TrainingRun", phase="Succeeded", round=2)
V1 = {"version": "digits:v1"}
V2 = {"version": "digits:v2"}
SERVING_V1 = obj("ModelDeployment", phase="Healthy", stable=V1)

STAGE_CASES = {
    "preparing": scene(
        obj("Dataset", phase="Running"), obj("TrainingRun", phase="WaitingForDataset"), obj("ModelDeployment")
    ),
    "training v1": scene(READY, obj("TrainingRun", phase="Running", round=1), obj("ModelDeployment", phase="Pending")),
    "deploying v1": scene(READY, RUN1, obj("ModelDeployment", phase="Progressing", stable=V1)),
    "serving v1": scene(READY, RUN1, SERVING_V1),
    "training v2": scene(READY, obj("TrainingRun", phase="Running", round=2), SERVING_V1),
    "rollout starting": scene(READY, RUN2, SERVING_V1),
    "canary setWeight 50": scene(
        READY, RUN2, obj("ModelDeployment", phase="Progressing", stable=V1, canary=V2, currentStep=0)
    ),
    "canary pause": scene(
        READY, RUN2, obj("ModelDeployment", phase="Progressing", stable=V1, canary=V2, currentStep=1)
    ),
    "promotion": scene(READY, RUN2, obj("ModelDeployment", phase="Progressing", stable=V2, previous=V1)),
    "serving v2": scene(READY, RUN2, obj("ModelDeployment", phase="Healthy", stable=V2, previous=V1)),
    "deleting": scene(
        READY, obj("TrainingRun", deleting=True, phase="Succeeded", round=2), None, obj("Pod", "digits-stable-1")
    ),
    "deleted": scene(None, None, None),
}


def test_every_stage_of_the_lifecycle_is_told_apart_from_the_cluster_state():
    assert list(STAGE_CASES) == list(STAGES)
    assert {name: stage_of(items) for name, items in STAGE_CASES.items()} == {name: name for name in STAGE_CASES}


def test_the_deletion_is_seen_while_anything_of_it_is_left():
    """The objects gone and only a server pod still terminating: still deleting, not deleted."""
    assert stage_of(scene(None, None, None, obj("Pod", "digits-canary-1"))) == "deleting"
    assert stage_of(scene(READY, RUN2, obj("ModelDeployment", deleting=True, phase="Healthy", stable=V2))) == "deleting"


def test_the_xdist_scheduler_keeps_every_cluster_test_in_one_worker():
    """tests/conftest.py's scheduler makes one work unit of the node IDs under CLUSTER_TESTS: that
    prefix must be the directory whose tests tests/e2e/conftest.py marks `cluster`, and the unit
    must hold them all, while any other test is a unit of its own."""
    assert (REPO / CLUSTER_TESTS).resolve() == E2E
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/e2e", "tests/server"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    ids = [line for line in listed if "::" in line]
    split = ClusterTestsInOneWorker._split_scope.__get__(object.__new__(ClusterTestsInOneWorker))
    cluster = [i for i in ids if i.startswith("tests/e2e/")]
    assert len(cluster) > 100 and {split(i) for i in cluster} == {"cluster"}
    others = [i for i in ids if not i.startswith("tests/e2e/")]
    assert others and [split(i) for i in others] == others
    assert issubclass(ClusterTestsInOneWorker, LoadGroupScheduling)
