"""bench/scale.py's accounting, without a cluster: whose CPU time a process's is (the operator's,
a cluster component's process group, the rest) and whom an allocation of the memory profile is
charged to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.tools import missing

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import scale  # noqa: E402  (bench/ is not a package)

# Burns `cpu` CPU-seconds of its own, then says so in a file and sleeps until killed.
BURN = """
import sys, time
while time.process_time() < float(sys.argv[1]):
    pass
open(sys.argv[2], "w").close()
time.sleep(600)
"""


def test_a_components_cpu_is_its_whole_process_group_and_the_rest_is_what_no_one_claims(tmp_path, monkeypatch):
    monkeypatch.setattr(scale, "STATE", tmp_path)
    (tmp_path / "run").mkdir()
    done = tmp_path / "burnt"
    # As hack/cluster.py starts a component: its own session, so its children share its group.
    leader = subprocess.Popen(
        ["sh", "-c", f"\"{sys.executable}\" -c '{BURN}' 0.4 {done} & wait"], start_new_session=True
    )
    try:
        (tmp_path / "run" / "burner.pid").write_text(str(leader.pid))
        before = scale.cpu_by_process(operator_pid=-1)
        for _ in range(600):
            if done.exists():
                break
            time.sleep(0.1)
        assert done.exists(), "the burner never finished its CPU-seconds"
        after = scale.cpu_by_process(operator_pid=-1)
    finally:
        subprocess.run(["pkill", "-KILL", "-g", str(leader.pid)], check=False)
        leader.wait(timeout=10)
    # The burning process is the leader's child: counted only if the group is.
    assert after["burner"] - before.get("burner", 0.0) >= 0.3
    # /proc/stat and a process's own counters are read at different instants and each rounds to
    # whole clock ticks (CI once saw 0.40 - 0.40 come out at -6e-14): allow a few ticks.
    ticks = 3 / os.sysconf("SC_CLK_TCK")
    burnt = after["burner"] - before.get("burner", 0.0)
    assert after["machine busy"] - before["machine busy"] >= burnt - ticks
    assert "operator" not in after

    breakdown = scale.cpu_breakdown(before, after, seconds=2.0)
    used = breakdown["cpu_s_by_process"]
    busy = after["machine busy"] - before["machine busy"]
    assert sum(used.values()) == pytest.approx(busy, abs=0.05)
    assert breakdown["operator_share_of_busy"] == 0.0
    assert breakdown["machine_busy_cores"] == pytest.approx(busy / 2.0)


SITE = "/venv/lib/python3.11/site-packages"


@pytest.mark.parametrize(
    ("stack", "charged_to"),
    [
        # A watch event's JSON body, parsed by aiohttp for kopf: kopf holds it.
        (
            [
                ("loads", "/usr/lib/python3.11/json/__init__.py", 346),
                ("json", f"{SITE}/aiohttp/client.py", 1),
                ("watch", f"{SITE}/kopf/_cogs/clients/watching.py", 2),
            ],
            "kopf",
        ),
        # The client's models, built for our reconcile: the client's.
        (
            [
                ("__init__", f"{SITE}/kubernetes/client/models/v1_pod.py", 3),
                ("reconcile", "/repo/operator/src/modelops_operator/controllers/x.py", 4),
            ],
            "kubernetes",
        ),
        (
            [("wake", "/repo/operator/src/modelops_operator/handlers.py", 5), ("run", f"{SITE}/kopf/_core/x.py", 6)],
            "modelops_operator",
        ),
        (
            [("x", f"{SITE}/pydantic/main.py", 7), ("y", "<frozen importlib._bootstrap>", 8)],
            "imports (modules, their code and data)",
        ),
        ([("read", f"{SITE}/yaml/reader.py", 9)], "yaml"),
        ([("get", "/usr/lib/python3.11/ssl.py", 10)], "standard library"),
        ([], "no Python frame (interpreter, native threads)"),
    ],
)
def test_an_allocation_is_charged_to_the_innermost_of_kopf_the_client_and_ours(stack, charged_to):
    assert scale.owner(stack) == charged_to


def test_every_part_of_the_api_servers_work_matches_functions_of_a_real_kube_apiserver_profile():
    # The profile committed with the 1,000-object run: kube-apiserver v1.34.4 while converging.
    if not shutil.which("go"):
        missing("Go (its `go tool pprof` reads the profile)", "hack/setup.sh needs it: install Go 1.24 or newer")
    profile = REPO / "bench" / "results" / "scale_apiserver_profile-apiserver-1000.pprof"
    parts = scale.api_server_parts(profile)["cumulativePercentByPart"]
    assert set(parts) == set(scale.API_SERVER_PARTS)
    # Each pattern names functions the binary has (none had a handshake to do in that run).
    assert all(share >= 0.5 for part, share in parts.items() if part != "TLS handshakes"), parts
    assert all(share < 100 for share in parts.values()), parts
    # Parts inside the handlers' work are at most all of it.
    inside = ("patches (merge and strategic merge)", "status writes: custom resources (modelops.dev)", "lists")
    assert sum(parts[p] for p in inside) <= parts["requests (the handlers' work, inside the filters)"]


def test_writes_are_counted_by_resource_and_verb_between_two_readings():
    """`api_counts` keeps both per-group and per-resource sums: only the per-resource writes that
    grew are counted, so no write is counted twice and reads never are."""
    before = Counter({("apps", "POST"): 5, ("apps/deployments/", "POST"): 5, ("/pods/status", "PATCH"): 7})
    after = Counter(
        {
            ("apps", "POST"): 9,  # the group's sum: not a resource
            ("apps/deployments/", "POST"): 9,
            ("/pods/status", "PATCH"): 7,  # unchanged
            ("/pods/", "GET"): 40,  # a read
            ("modelops.dev/modeldeployments/status", "PATCH"): 3,  # new since the first reading
        }
    )
    assert scale.writes_by_resource(before, after) == {
        ("apps/deployments/", "POST"): 4,
        ("modelops.dev/modeldeployments/status", "PATCH"): 3,
    }
