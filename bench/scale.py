"""Scale benchmark: N modelops objects on the local cluster's kwok nodes, measured.

    .venv/bin/python bench/scale.py                 # N = 100 then 1000 (the figures in docs/benchmarks.md)
    .venv/bin/python bench/scale.py --sizes 300

For each size: 20% Datasets, 30% TrainingRuns (each on its Dataset), 50% ModelDeployments (each a
model URI, so it serves at once) spread over 20 namespaces, created as fast as the API server
takes them. Pods run on simulated (kwok) nodes, which the benchmark adds for room: a server pod
reports Running and Ready, a Job's pod Succeeded without having run anything. So the expected
phases are: Dataset `Failed` (reason `ResultUnreadable`: its Job succeeded without a result — the
operator does not believe a Job that says nothing), TrainingRun `WaitingForDataset`,
ModelDeployment `Healthy` (stable Deployment, Services, PDB, HPA applied; its pod Ready).

Measured, with a fresh operator process per size (started like the tests start it):
- convergence: time from the first create until every object shows its expected phase, and until
  the operator is quiet (a 10 s window without a write to modelops.dev objects);
- operator RSS (peak and at the end) and CPU seconds used while converging;
- API requests to the modelops.dev resources (from the API server's `apiserver_request_total`)
  per object while converging, and writes (POST/PUT/PATCH/DELETE, any group) per object;
- reconciles and watch events handled per second (the operator's `modelops_reconciles_total`,
  `modelops_watch_events_total`);
- at steady state (after convergence, for `--steady` seconds): writes per minute to modelops.dev
  and to the children's groups — the target is zero: nothing rewritten when nothing changed.

The baseline of the ratios is the smallest size: how each figure grows with the object count.
The cluster must be started by hack/cluster.py (the benchmark starts it when it is not running).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
from harness import cluster, machine, rss_mib, start_operator, write_result

from tests.support.cluster import OperatorProcess

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("MODELOPS_CLUSTER_DIR", REPO / ".cluster"))
KUBECONFIG = STATE / "kubeconfig"
GROUP, VERSION = "modelops.dev", "v1alpha1"
NAMESPACES = 20
EXTRA_NODES = 12
EXPECTED = {"datasets": "Failed", "trainingruns": "WaitingForDataset", "modeldeployments": "Healthy"}
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")
SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE)


def api_counts(client: kubernetes.client.ApiClient) -> Counter[tuple[str, str]]:
    """`apiserver_request_total` summed by (group, verb), plus by ("<group>/<resource>/<sub>", verb)."""
    resp = client.call_api("/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False)[0]
    text = resp.data.decode()
    out: Counter[tuple[str, str]] = Counter()
    for m in SAMPLE.finditer(text):
        labels = dict(kv.split("=", 1) for kv in re.findall(r'(\w+="[^"]*")', m.group("labels")))
        group = labels.get("group", '""').strip('"')
        verb = labels.get("verb", '""').strip('"')
        value = int(float(m.group("value")))
        out[(group, verb)] += value
        resource = f"{group}/{labels.get('resource', '').strip(chr(34))}/{labels.get('subresource', '').strip(chr(34))}"
        out[(resource, verb)] += value
    return out


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_mib(pid), (int(fields[11]) + int(fields[12])) / ticks


def add_nodes(core: kubernetes.client.CoreV1Api) -> None:
    for i in range(EXTRA_NODES):
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"kwok-bench-{i}",
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "modelops.dev/pool": "bench", "kubernetes.io/hostname": f"kwok-bench-{i}"},
            },
            "spec": {},
            "status": {
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
            },
        }
        try:
            core.create_node(body)
        except kubernetes.client.ApiException as e:
            if e.status != 409:
                raise


def objects(n: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(namespace, plural, body) for n objects: 20% Datasets, 30% TrainingRuns, 50% ModelDeployments."""
    out = []
    n_ds, n_tr = n // 5, (3 * n) // 10
    n_md = n - n_ds - n_tr
    on_bench = {"nodeSelector": {"modelops.dev/pool": "bench"}}
    for i in range(n_ds):
        ns = f"scale-{i % NAMESPACES}"
        spec = {
            "sources": [{"uri": "s3://bench/images/", "format": "imageFolder"}],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            "placement": on_bench,
        }
        out.append(
            (
                ns,
                "datasets",
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Dataset", "metadata": {"name": f"d{i}"}, "spec": spec},
            )
        )
    for i in range(n_tr):
        ns = f"scale-{(i % n_ds) % NAMESPACES}" if n_ds else "scale-0"
        spec = {"datasetRef": {"name": f"d{i % max(n_ds, 1)}"}, "workers": {"placement": on_bench}}
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": f"t{i}"}, "spec": spec}
        out.append((ns, "trainingruns", body))
    for i in range(n_md):
        ns = f"scale-{i % NAMESPACES}"
        spec = {
            "model": {"uri": f"s3://bench/models/m{i}.onnx", "digest": "sha256:" + "ab" * 32},
            "server": {"resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}, "placement": on_bench},
            "alerts": {"enabled": False},
        }
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": f"m{i}"},
            "spec": spec,
        }
        out.append((ns, "modeldeployments", body))
    return out


def phases(custom: kubernetes.client.CustomObjectsApi) -> Counter[str]:
    """How many objects of each kind are in their expected phase (key: the plural), and how many
    have a status from the operator at all (key: "<plural> seen")."""
    done: Counter[str] = Counter()
    for plural, want in EXPECTED.items():
        items = custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]
        done[plural] = sum(1 for o in items if (o.get("status") or {}).get("phase") == want)
        done[f"{plural} seen"] = sum(1 for o in items if (o.get("status") or {}).get("observedGeneration"))
    return done


def delta(
    a: Counter[tuple[str, str]], b: Counter[tuple[str, str]], group: str | None, verbs: tuple[str, ...] | None
) -> int:
    """Requests counted between two `api_counts`, for one group (None: all) and verbs (None: all)."""
    return sum(
        v - a.get(k, 0)
        for k, v in b.items()
        if "/" not in k[0] and (group is None or k[0] == group) and (verbs is None or k[1] in verbs)
    )


def stats(operator: OperatorProcess) -> tuple[float, float, float, float]:
    """(RSS MiB, CPU seconds, reconciles so far, watch events handled so far)."""
    rss, cpu = proc_stats(operator.pid)
    return rss, cpu, operator.metric("modelops_reconciles_total"), operator.metric("modelops_watch_events_total")


def cleanup(core: kubernetes.client.CoreV1Api) -> None:
    for i in range(NAMESPACES):
        with contextlib.suppress(kubernetes.client.ApiException):
            core.delete_namespace(f"scale-{i}")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and core.list_namespace(label_selector="modelops.dev/bench=scale").items:
        time.sleep(2)


def run_size(
    n: int, client: kubernetes.client.ApiClient, steady_s: float, settle_s: float, log_level: str = "WARNING"
) -> dict[str, Any]:
    core = kubernetes.client.CoreV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)
    # No artifact PVC: the preparation pods run on kwok nodes, which need none (and have none).
    operator = start_operator(f"bench-scale-{n}.log", MODELOPS_LOG_LEVEL=log_level, MODELOPS_ARTIFACT_PVC=None)
    try:
        # What an interrupted run left behind (TrainingRuns hold the operator's finalizer: their
        # namespaces go only while an operator runs).
        cleanup(core)
        for i in range(NAMESPACES):
            with contextlib.suppress(kubernetes.client.ApiException):
                core.create_namespace({"metadata": {"name": f"scale-{i}", "labels": {"modelops.dev/bench": "scale"}}})
        wanted = objects(n)
        totals = Counter(plural for _, plural, _ in wanted)
        before = api_counts(client)
        rss0, cpu0, rec0, ev0 = stats(operator)
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda o: custom.create_namespaced_custom_object(GROUP, VERSION, o[0], o[1], o[2]), wanted))
        created = time.monotonic() - start
        peak = rss0
        reached: dict[str, float] = {}  # when each kind got there (and when each was first seen)
        while not all((done := phases(custom))[p] >= totals[p] for p in totals):
            for what in (*totals, *(f"{p} seen" for p in totals)):
                if done[what] >= totals[what.split()[0]] and what not in reached:
                    reached[what] = time.monotonic() - start
            peak = max(peak, stats(operator)[0])
            if time.monotonic() - start > 900:
                raise SystemExit(f"not converged after 900 s: {dict(done)} of {dict(totals)}")
            time.sleep(1)
        converged = time.monotonic() - start
        after = api_counts(client)
        _, cpu1, rec1, ev1 = stats(operator)
        # Converged phases are not the end of the work: the operator still finishes the create
        # events it queued. Quiet = a 10 s window without a write to modelops.dev objects.
        quiet_start, last = time.monotonic(), api_counts(client)
        while time.monotonic() - quiet_start < settle_s:
            time.sleep(10)
            now = api_counts(client)
            if delta(last, now, GROUP, WRITE_VERBS) == 0:
                break
            last = now
        quiet = time.monotonic() - start
        s_before, s_start = api_counts(client), time.monotonic()
        _, cpu_s0, rec_s0, ev_s0 = stats(operator)
        while time.monotonic() - s_start < steady_s:
            peak = max(peak, stats(operator)[0])
            time.sleep(2)
        s_after, s_len = api_counts(client), time.monotonic() - s_start
        rss2, cpu_s1, rec_s1, ev_s1 = stats(operator)
    finally:
        cleanup(core)
        operator.stop()
    steady_writes = {
        k: v - s_before.get(k, 0)
        for k, v in s_after.items()
        if k[0].count("/") == 2 and k[1] in WRITE_VERBS and v - s_before.get(k, 0) > 0
    }
    print(f"N={n}: writes during the steady {s_len:.0f} s, by resource:", file=sys.stderr)
    for key, count in sorted(steady_writes.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {key[0]:50} {key[1]:7} {count}", file=sys.stderr)
    return {
        "objects": n,
        "create_s": created,
        "converge_s": converged,
        "all_seen_s": max(reached.get(f"{p} seen", converged) for p in totals),
        **{f"converge_{p}_s": reached.get(p, converged) for p in totals},
        "quiet_s": quiet,
        "rss_start_mib": rss0,
        "rss_peak_mib": max(peak, rss2),
        "rss_end_mib": rss2,
        "cpu_s_converging": cpu1 - cpu0,
        "modelops_requests_per_object": delta(before, after, GROUP, None) / n,
        "writes_per_object": delta(before, after, None, WRITE_VERBS) / n,
        "reconciles_per_s_converging": (rec1 - rec0) / converged,
        "watch_events_per_s_converging": (ev1 - ev0) / converged,
        "steady_modelops_writes_per_min": delta(s_before, s_after, GROUP, WRITE_VERBS) * 60 / s_len,
        "steady_all_writes_per_min": delta(s_before, s_after, None, WRITE_VERBS) * 60 / s_len,
        "steady_reconciles_per_s": (rec_s1 - rec_s0) / s_len,
        "steady_watch_events_per_s": (ev_s1 - ev_s0) / s_len,
        "steady_cpu_percent": 100 * (cpu_s1 - cpu_s0) / s_len,
        "steady_writes_by_resource": {f"{k[0]} {k[1]}": v for k, v in sorted(steady_writes.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/scale.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="object counts (default: 100 1000)")
    parser.add_argument("--steady", type=float, default=60, help="seconds of steady state measured (default 60)")
    parser.add_argument(
        "--settle", type=float, default=300, help="most seconds waited after convergence for quiet (default 300)"
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="operator log level (INFO logs each status change; default WARNING)"
    )
    args = parser.parse_args(argv)
    client = cluster()
    add_nodes(kubernetes.client.CoreV1Api(client))
    results = [run_size(n, client, args.steady, args.settle, args.log_level) for n in args.sizes]
    base = results[0]
    print(f"{'figure':34} " + " ".join(f"{'N=' + str(int(r['objects'])):>12}" for r in results) + "   ratio last/first")
    for key in base:
        if key == "objects" or not isinstance(base[key], int | float):
            continue
        values = " ".join(f"{r[key]:12.2f}" for r in results)
        ratio = results[-1][key] / base[key] if base[key] else float("nan")
        print(f"{key:34} {values}   {ratio:8.2f}")
    print(json.dumps(results))
    write_result(
        "scale",
        {
            "benchmark": "scale",
            "steadySeconds": args.steady,
            "sizes": results,
            "machine": machine("kopf", "kubernetes"),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
