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
  the operator is quiet (a 30 s window without a write to modelops.dev objects: two periods of
  the autoscaler controller, whose readings a ModelDeployment's status follows);
- operator RSS (peak and at the end) and CPU seconds used while converging;
- the CPU seconds of every other process on the same cores while converging: each local-cluster
  component (its process group, from hack/cluster.py's pid files), this benchmark, and the rest
  (the machine's busy time from /proc/stat less all of those), so the operator's share of the
  convergence is a figure, not a guess;
- API requests to the modelops.dev resources (from the API server's `apiserver_request_total`)
  per object while converging, and writes (POST/PUT/PATCH/DELETE, any group) per object;
- reconciles and watch events handled per second (the operator's `modelops_reconciles_total`,
  `modelops_watch_events_total`);
- at steady state (after convergence, for `--steady` seconds): writes per minute to modelops.dev
  and to the children's groups — the target is zero: nothing rewritten when nothing changed. A
  server-side apply is a write (verb APPLY), even one that changes nothing. The Events recorded in
  the window, by component and reason, say who PATCHes Events (a repeated one gets its count raised).

The baseline of the ratios is the smallest size: how each figure grows with the object count.
`--baseline VAR=VALUE` also runs each size, first, with the operator under that setting (for
example `MODELOPS_EVENT_LOOP=asyncio`) and prints the default's ratio to it, both kept in scale.json.
The phases are followed by watches, not lists: listing 1,000 objects of each kind every second
loaded the API server under test.
The cluster must be started by hack/cluster.py (the benchmark starts it when it is not running).

`--api-server-profile SECONDS` also takes a CPU profile of kube-apiserver (its `/debug/pprof/profile`)
over the first SECONDS of each size's convergence and keeps, in the result, the share of its CPU
under each part of its work (`API_SERVER_PARTS`: request handlers, writes to etcd, patches, managed
fields, status writes of our objects and of the built-in ones, lists, gets, sending watch events,
authentication, admission, TLS, garbage collection, allocation) and its 25 hottest functions; the
raw profile is written beside the result (`NAME-apiserver-N.pprof`, for `go tool pprof`). The local
cluster serves profiles only when started so: `MODELOPS_API_SERVER_PROFILING=1 hack/cluster.py up`.

`--memory-profile` runs the operator under memray (its Python allocators traced) and writes
bench/results/scale_memory.json instead: the heap at its peak, by who allocated it (imports, kopf,
the Kubernetes client, the operator's own code, other libraries) and by the 20 largest allocating
lines. The profiler slows the operator, so that run's times are not the benchmark's figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes.watch
import urllib3
from harness import cluster, machine, rss_mib, start_operator, write_result

from tests.support.cluster import OperatorProcess, api_counts, api_server_port, connections

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("MODELOPS_CLUSTER_DIR", REPO / ".cluster"))
KUBECONFIG = STATE / "kubeconfig"
RESULTS = REPO / "bench" / "results"
GROUP, VERSION = "modelops.dev", "v1alpha1"
#: A quiet window: two sync periods of the HPA controller (15 s by default). A ModelDeployment's
#: status follows its autoscaler, which 1,000 HPAs on 2 cores update in waves; a 10 s window once
#: fell between two waves, and the "steady" minute after it held 226 writes.
QUIET_S = 30
NAMESPACES = 20
EXTRA_NODES = 12
EXPECTED = {"datasets": "Failed", "trainingruns": "WaitingForDataset", "modeldeployments": "Healthy"}
OPERATOR_ENV_PREFIXES = ("MODELOPS_", "MALLOC_", "PYTHONPATH", "PYTHONMALLOC")
#: What `apiserver_request_total` counts as a write: a server-side apply is its own verb, APPLY (not
#: PATCH), and was left out before session 16, which hid 3,500 applies a minute at steady state.
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE")
#: The parts of kube-apiserver's work: each the sum of the cumulative CPU of the functions its
#: pattern matches, chosen so that they do not call one another (parts may still overlap: a write's
#: managed fields are inside its storage write, and allocation is inside everything).
API_SERVER_PARTS = {
    "requests (the handlers' work, inside the filters)": r"handlers/finisher\.finishRequest\.func1$",
    "writes to etcd (creates and updates)": r"etcd3\.\(\*store\)\.(GuaranteedUpdate|Create)$",
    "patches (merge and strategic merge)": r"handlers\.\(\*patcher\)\.patchResource\.func2$",
    "managed fields (on every write)": r"managedfields/internal\.\(\*FieldManager\)\.Update$",
    "status writes: custom resources (modelops.dev)": r"customresource\.\(\*StatusREST\)\.Update$",
    "status writes: Deployments, ReplicaSets, Pods, Jobs": (
        r"/(deployment|replicaset|pod|job)/storage\.\(\*StatusREST\)\.Update$"
    ),
    "lists": r"handlers\.ListResource\.func1$",
    "gets": r"handlers\.GetResource\.getResourceHandler\.func\d+$",
    "watches: sending events": r"handlers\.\(\*WatchServer\)\.HandleHTTP$",
    "authentication": r"union\.\(\*unionAuthRequestHandler\)\.AuthenticateRequest$",
    "admission": r"admission\.\(\*reinvoker\)\.(Admit|Validate)$",
    "TLS handshakes": r"crypto/tls\.\(\*Conn\)\.(serverHandshake|clientHandshake)$",
    "TLS records": r"crypto/tls\.\(\*Conn\)\.(Read|Write)$",
    "garbage collection": r"^runtime\.gcBgMarkWorker$",
    "memory allocation": r"^runtime\.mallocgc$",
}


def stat_fields(proc: Path) -> list[str]:
    """A /proc/<pid>/stat's fields after the command name (state first: pgrp is [2], utime [11],
    stime [12])."""
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(fields: list[str]) -> float:
    """User plus system CPU seconds from `stat_fields`."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds) of a process."""
    return rss_mib(pid), cpu_seconds(stat_fields(Path(f"/proc/{pid}")))


def cpu_by_process(operator_pid: int) -> dict[str, float]:
    """CPU seconds used so far: by the operator, by each local-cluster component (all processes of
    the process group hack/cluster.py started it in), by this benchmark, and the machine's busy
    total (all cores, from /proc/stat). Exited processes no longer count: take differences over a
    window in which none of these exit."""
    groups: dict[int, str] = {}
    for pidfile in (STATE / "run").glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            groups[int(pidfile.read_text())] = pidfile.stem
    out: Counter[str] = Counter()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = stat_fields(proc)
        except OSError:
            continue  # gone since the listing
        pid, pgrp = int(proc.name), int(fields[2])
        name = "operator" if pid == operator_pid else "benchmark" if pid == os.getpid() else groups.get(pgrp)
        if name:
            out[name] += cpu_seconds(fields)
    # user nice system idle iowait irq softirq steal: busy is all but idle and iowait
    times = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    out["machine busy"] = (sum(times) - times[3] - times[4]) / os.sysconf("SC_CLK_TCK")
    return dict(out)


def cpu_breakdown(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, Any]:
    """Who used the cores between two `cpu_by_process` readings: seconds by process (the rest:
    busy time not accounted to any of them: pods' containers, system daemons), and the operator's
    share of the busy time."""
    used = {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()}
    busy = used.pop("machine busy")
    used["rest"] = round(busy - sum(used.values()), 2)
    return {
        "cpu_s_by_process": dict(sorted(used.items(), key=lambda kv: -kv[1])),
        "machine_busy_cores": busy / seconds,
        "operator_share_of_busy": used.get("operator", 0.0) / busy if busy else None,
    }


#: Who holds a traced allocation: the innermost frame in one of these packages (the issue's three:
#: kopf's caches, our indexes and state, the client's models), else the innermost frame's package.
OWNERS = ("modelops_operator", "kopf", "kubernetes")


def owner(stack: list[tuple[str, str, int]]) -> str:
    """The owner of an allocation with `stack` (innermost frame first; function, file, line)."""
    if any("importlib._bootstrap" in file for _, file, _ in stack):
        return "imports (modules, their code and data)"
    for _, file, _ in stack:
        for package in OWNERS:
            if f"/{package}/" in file:
                return package
    if not stack:
        return "no Python frame (interpreter, native threads)"
    file = stack[0][1]
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    return "standard library"


def memory_profile(capture: Path, top: int = 20) -> dict[str, Any]:
    """The heap at its peak in a memray capture: MiB by `owner` and the `top` allocating lines."""
    from memray import FileReader  # noqa: PLC0415 - only --memory-profile needs it

    reader = FileReader(str(capture))
    mib = 1024 * 1024
    by_owner: Counter[str] = Counter()
    by_line: Counter[str] = Counter()
    for record in reader.get_high_watermark_allocation_records(merge_threads=True):
        stack = record.stack_trace()
        by_owner[owner(stack)] += record.size
        if stack:
            function, file, line = stack[0]
            by_line[f"{file.split('site-packages/')[-1].split('/src/')[-1]}:{line} {function}"] += record.size
    return {
        "heap_peak_mib": reader.metadata.peak_memory / mib,
        "traced_at_peak_mib": sum(by_owner.values()) / mib,
        "by_owner_mib": {k: round(v / mib, 1) for k, v in by_owner.most_common()},
        "top_lines_mib": {k: round(v / mib, 1) for k, v in by_line.most_common(top)},
        "python_allocators_traced": True,
    }


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


class Phases:
    """Each object's status as watches of the three kinds report it. Listing 1,000 objects of each
    kind every second cost the API server under test a share of its CPU (and this benchmark 16
    CPU-s of its own); a watch sends each change once."""

    def __init__(self) -> None:
        # A client of their own: the watches hold a connection each for as long as they run.
        client = kubernetes.config.new_client_from_config(config_file=str(KUBECONFIG))
        self.seen: dict[str, dict[str, tuple[str | None, bool]]] = {plural: {} for plural in EXPECTED}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        for plural in EXPECTED:
            threading.Thread(target=self._watch, args=(client, plural), daemon=True, name=f"watch-{plural}").start()

    def _watch(self, client: kubernetes.client.ApiClient, plural: str) -> None:
        custom = kubernetes.client.CustomObjectsApi(client)
        while not self.stopping.is_set():
            # Without a resourceVersion, each watch begins with every object as ADDED: a restart
            # after its timeout or an error starts from the whole state again.
            watch = kubernetes.watch.Watch()
            try:
                for event in watch.stream(
                    custom.list_cluster_custom_object, GROUP, VERSION, plural, timeout_seconds=30
                ):
                    obj, kind = event["object"], event["type"]
                    st = obj.get("status") or {}
                    with self.lock:
                        if kind == "DELETED":
                            self.seen[plural].pop(obj["metadata"]["uid"], None)
                        else:
                            self.seen[plural][obj["metadata"]["uid"]] = (
                                st.get("phase"),
                                bool(st.get("observedGeneration")),
                            )
                    if self.stopping.is_set():
                        watch.stop()
            except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as e:
                print(f"watch of {plural} ended ({e}); watching again", file=sys.stderr)
                time.sleep(1)

    def counts(self) -> Counter[str]:
        """How many objects of each kind are in their expected phase (key: the plural), and how many
        have a status from the operator at all (key: "<plural> seen")."""
        done: Counter[str] = Counter()
        with self.lock:
            for plural, want in EXPECTED.items():
                done[plural] = sum(1 for phase, _ in self.seen[plural].values() if phase == want)
                done[f"{plural} seen"] = sum(1 for _, seen in self.seen[plural].values() if seen)
        return done

    def stop(self) -> None:
        self.stopping.set()


def delta(
    a: Counter[tuple[str, str]], b: Counter[tuple[str, str]], group: str | None, verbs: tuple[str, ...] | None
) -> int:
    """Requests counted between two `api_counts`, for one group (None: all) and verbs (None: all)."""
    return sum(
        v - a.get(k, 0)
        for k, v in b.items()
        if "/" not in k[0] and (group is None or k[0] == group) and (verbs is None or k[1] in verbs)
    )


def writes_by_resource(a: Counter[tuple[str, str]], b: Counter[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Writes counted between two `api_counts`, by ("<group>/<resource>/<subresource>", verb)."""
    return {
        k: v - a.get(k, 0) for k, v in b.items() if k[0].count("/") == 2 and k[1] in WRITE_VERBS and v - a.get(k, 0) > 0
    }


def stats(operator: OperatorProcess) -> tuple[float, float, float, float]:
    """(RSS MiB, CPU seconds, reconciles so far, watch events handled so far)."""
    rss, cpu = proc_stats(operator.pid)
    return rss, cpu, operator.metric("modelops_reconciles_total"), operator.metric("modelops_watch_events_total")


def event_counts(core: kubernetes.client.CoreV1Api) -> Counter[str]:
    """How often each Event of the benchmark's namespaces was recorded, summed by "<component>
    <reason>": a repeated Event is PATCHed with its count raised, so the counts' growth over the
    steady window says whose Event writes those are (apiserver_request_total does not say who)."""
    out: Counter[str] = Counter()
    for i in range(NAMESPACES):
        for ev in core.list_namespaced_event(f"scale-{i}").items:
            who = ev.reporting_component or (ev.source.component if ev.source else None) or "unknown"
            out[f"{who} {ev.reason}"] += ev.count or (ev.series.count if ev.series else 1)
    return out


def cleanup(core: kubernetes.client.CoreV1Api) -> None:
    for i in range(NAMESPACES):
        with contextlib.suppress(kubernetes.client.ApiException):
            core.delete_namespace(f"scale-{i}")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and core.list_namespace(label_selector="modelops.dev/bench=scale").items:
        time.sleep(2)


def api_server_profile(client: kubernetes.client.ApiClient, seconds: int, into: Path) -> threading.Thread:
    """A thread that takes kube-apiserver's CPU profile over the next `seconds` and writes it to `into`."""

    def take() -> None:
        try:
            resp = client.call_api(
                "/debug/pprof/profile",
                "GET",
                query_params=[("seconds", str(seconds))],
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=seconds + 60,
            )[0]
            into.write_bytes(resp.data)
        except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError) as exc:
            print(f"the API server's profile failed: {exc}", file=sys.stderr)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread


_PPROF_ROW = re.compile(r"^\s*(\S+)\s+(\S+)%\s+(\S+)%\s+(\S+)\s+(\S+)%\s+(.+)$")


def api_server_parts(profile: Path, top: int = 25) -> dict[str, Any]:
    """The profile read by `go tool pprof`: the share of CPU under each of `API_SERVER_PARTS` and the
    `top` functions by their own time."""
    out = subprocess.run(
        ["go", "tool", "pprof", "-top", "-nodecount=1000000", "-nodefraction=0", "-edgefraction=0", str(profile)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [(float(m[2]), float(m[5]), m[6].strip()) for line in out.splitlines() if (m := _PPROF_ROW.match(line))]
    total = next((line for line in out.splitlines() if "samples" in line and "Duration" in line), "")
    return {
        "profile": profile.name,
        "durationAndSamples": total.strip(),
        "cumulativePercentByPart": {
            part: round(sum(cum for _, cum, name in rows if re.search(rx, name)), 2)
            for part, rx in API_SERVER_PARTS.items()
        },
        "topFlatPercent": [{"function": name, "flat": flat, "cum": cum} for flat, cum, name in rows[:top]],
    }


def converge(
    watched: Phases,
    totals: Counter[str],
    operator: OperatorProcess,
    start: float,
    rss: float,
) -> tuple[dict[str, float], float, int]:
    """Wait until every object shows its expected phase: when each kind got there (and when each
    was first seen), seconds from `start`, and the operator's peaks meanwhile: RSS (from `rss`) and
    connections to the API server."""
    reached: dict[str, float] = {}
    conns, port = 0, api_server_port()
    while not all((done := watched.counts())[p] >= totals[p] for p in totals):
        for what in (*totals, *(f"{p} seen" for p in totals)):
            if done[what] >= totals[what.split()[0]] and what not in reached:
                reached[what] = time.monotonic() - start
        rss = max(rss, stats(operator)[0])
        conns = max(conns, connections(operator.pid, port))
        if time.monotonic() - start > 900:
            raise SystemExit(f"not converged after 900 s: {dict(done)} of {dict(totals)}")
        time.sleep(1)
    return reached, rss, conns


def wait_quiet(client: kubernetes.client.ApiClient, settle_s: float) -> bool:
    """Converged phases are not the end of the work: the operator still finishes the create events
    it queued, and each ModelDeployment reports its autoscaler's first reading. Wait (at most
    `settle_s`) for quiet: a window of QUIET_S without a write to modelops.dev. False when it never
    came: the steady window that follows then holds the tail of convergence."""
    quiet_start, last = time.monotonic(), api_counts(client)
    while time.monotonic() - quiet_start < settle_s:
        time.sleep(QUIET_S)
        now = api_counts(client)
        if delta(last, now, GROUP, WRITE_VERBS) == 0:
            return True
        last = now
    return False


def run_size(
    n: int,
    client: kubernetes.client.ApiClient,
    steady_s: float,
    settle_s: float,
    log_level: str = "WARNING",
    capture: Path | None = None,
    env: dict[str, str] | None = None,
    profile: tuple[int, Path] | None = None,
) -> dict[str, Any]:
    """One size measured; with `capture`, the operator runs under memray writing it there; `env`
    adds to the operator's environment (a baseline's settings); with `profile` (seconds, file),
    kube-apiserver's CPU profile over the first seconds of convergence is written to the file."""
    core = kubernetes.client.CoreV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)
    runner = (
        ["-m", "memray", "run", "--aggregate", "--trace-python-allocators", "-q", "-f", "-o", str(capture)]
        if capture
        else []
    )
    # No artifact PVC: the preparation pods run on kwok nodes, which need none (and have none).
    operator = start_operator(
        f"bench-scale-{n}{'-baseline' if env else ''}.log",
        runner,
        **{"MODELOPS_LOG_LEVEL": log_level, "MODELOPS_ARTIFACT_PVC": None, **(env or {})},
    )
    watched = Phases()
    try:
        # What an interrupted run left behind (TrainingRuns hold the operator's finalizer: their
        # namespaces go only while an operator runs).
        cleanup(core)
        for i in range(NAMESPACES):
            with contextlib.suppress(kubernetes.client.ApiException):
                core.create_namespace({"metadata": {"name": f"scale-{i}", "labels": {"modelops.dev/bench": "scale"}}})
        wanted = objects(n)
        totals = Counter(plural for _, plural, _ in wanted)
        before, events_start = api_counts(client), event_counts(core)
        rss0, _, rec0, ev0 = stats(operator)
        by_process0 = cpu_by_process(operator.pid)
        start = time.monotonic()
        profiler = api_server_profile(client, *profile) if profile else None
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda o: custom.create_namespaced_custom_object(GROUP, VERSION, o[0], o[1], o[2]), wanted))
        created = time.monotonic() - start
        reached, peak, conns = converge(watched, totals, operator, start, rss0)
        converged = time.monotonic() - start
        converging = cpu_breakdown(by_process0, cpu_by_process(operator.pid), converged)
        if profiler:
            profiler.join()
        after, events_converged = api_counts(client), event_counts(core)
        _, _, rec1, ev1 = stats(operator)
        quiet_reached = wait_quiet(client, settle_s)
        quiet = time.monotonic() - start
        s_before, events_before, s_start = api_counts(client), event_counts(core), time.monotonic()
        _, cpu_s0, rec_s0, ev_s0 = stats(operator)
        steady_conns, port = 0, api_server_port()
        while time.monotonic() - s_start < steady_s:
            peak = max(peak, stats(operator)[0])
            steady_conns = max(steady_conns, connections(operator.pid, port))
            time.sleep(2)
        s_after, events_after, s_len = api_counts(client), event_counts(core), time.monotonic() - s_start
        rss2, cpu_s1, rec_s1, ev_s1 = stats(operator)
    finally:
        watched.stop()
        cleanup(core)
        # memray writes its aggregated capture at exit, after kopf's graceful shutdown: both slow
        # under the profiler (a SIGKILL after the usual 15 s left an empty file).
        operator.stop(timeout=300 if capture else 15)
    steady_writes, converging_writes = writes_by_resource(s_before, s_after), writes_by_resource(before, after)
    for what, writes, events in (
        (f"the steady {s_len:.0f} s", steady_writes, events_after - events_before),
        (f"convergence ({converged:.0f} s)", converging_writes, events_converged - events_start),
    ):
        print(f"N={n}: writes during {what}, by resource:", file=sys.stderr)
        for key, count in sorted(writes.items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {key[0]:50} {key[1]:7} {count}", file=sys.stderr)
        print(f"N={n}: Events recorded during {what}, by component and reason:", file=sys.stderr)
        for who, count in events.most_common(8):
            print(f"  {who:58} {count}", file=sys.stderr)
    return {
        "objects": n,
        **({"apiServerProfile": api_server_parts(profile[1])} if profile and profile[1].exists() else {}),
        "create_s": created,
        "converge_s": converged,
        "all_seen_s": max(reached.get(f"{p} seen", converged) for p in totals),
        **{f"converge_{p}_s": reached.get(p, converged) for p in totals},
        "quiet_s": quiet,
        "quiet_reached": quiet_reached,
        "rss_start_mib": rss0,
        "rss_peak_mib": max(peak, rss2),
        "rss_end_mib": rss2,
        "api_connections_peak_converging": conns,
        "api_connections_peak_steady": steady_conns,
        "cpu_s_converging": converging["cpu_s_by_process"].get("operator", 0.0),
        "machine_busy_cores_converging": converging["machine_busy_cores"],
        "operator_share_of_busy_converging": converging["operator_share_of_busy"],
        "cpu_s_converging_by_process": converging["cpu_s_by_process"],
        "modelops_requests_per_object": delta(before, after, GROUP, None) / n,
        "writes_per_object": delta(before, after, None, WRITE_VERBS) / n,
        "reconciles_per_s_converging": (rec1 - rec0) / converged,
        "watch_events_per_s_converging": (ev1 - ev0) / converged,
        "steady_modelops_writes_per_min": delta(s_before, s_after, GROUP, WRITE_VERBS) * 60 / s_len,
        "steady_all_writes_per_min": delta(s_before, s_after, None, WRITE_VERBS) * 60 / s_len,
        "steady_reconciles_per_s": (rec_s1 - rec_s0) / s_len,
        "steady_watch_events_per_s": (ev_s1 - ev_s0) / s_len,
        "steady_cpu_percent": 100 * (cpu_s1 - cpu_s0) / s_len,
        "converging_writes_by_resource": {f"{k[0]} {k[1]}": v for k, v in sorted(converging_writes.items())},
        "converging_events_by_source": dict(sorted((events_converged - events_start).items())),
        "steady_writes_by_resource": {f"{k[0]} {k[1]}": v for k, v in sorted(steady_writes.items())},
        "steady_events_by_source": dict(sorted((events_after - events_before).items())),
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
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="also run each size, first, with the operator under this environment setting (repeatable; e.g. "
        "MODELOPS_EVENT_LOOP=asyncio), print the default's ratio to it and keep both in scale.json",
    )
    parser.add_argument(
        "--result",
        default="scale",
        metavar="NAME",
        help="write bench/results/NAME.json (default scale: the file the docs quote; another name for a side "
        "experiment)",
    )
    parser.add_argument(
        "--api-server-profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="take kube-apiserver's CPU profile over the first SECONDS of each size's convergence and keep its "
        "breakdown in the result (the raw profile beside it)",
    )
    parser.add_argument(
        "--memory-profile",
        action="store_true",
        help="run the operator under memray and write scale_memory.json (the heap at its peak, by owner)",
    )
    args = parser.parse_args(argv)
    client = cluster()
    add_nodes(kubernetes.client.CoreV1Api(client))
    if args.memory_profile:
        return profile_memory(client, args)
    baseline_env = dict(kv.split("=", 1) for kv in args.baseline)
    results, baseline = [], []
    for n in args.sizes:
        if baseline_env:  # the baseline first, then the default: the same cluster, one after the other
            baseline.append(run_size(n, client, args.steady, args.settle, args.log_level, env=baseline_env))
        pprof = RESULTS / f"{args.result}-apiserver-{n}.pprof"
        profile = (args.api_server_profile, pprof) if args.api_server_profile else None
        results.append(run_size(n, client, args.steady, args.settle, args.log_level, profile=profile))
    print_table(results, "ratio last/first", lambda key: ratio(results[-1][key], results[0][key]))
    if baseline:
        print(f"against the baseline ({' '.join(args.baseline)}), size by size:")
        for b, r in zip(baseline, results, strict=True):
            heads = [f"baseline {r['objects']}", f"default {r['objects']}"]
            print_table([b, r], "ratio default/baseline", lambda key, b=b, r=r: ratio(r[key], b[key]), heads)
    print(json.dumps(results))
    doc: dict[str, Any] = {
        "benchmark": "scale",
        "steadySeconds": args.steady,
        "writeVerbs": list(WRITE_VERBS),
        "settleSeconds": args.settle,
        "sizes": results,
        # What of this process's environment the operator inherits and reads (settings, glibc's
        # malloc, where its code comes from): a run under MALLOC_ARENA_MAX=16 says so in its file.
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(OPERATOR_ENV_PREFIXES)},
    }
    if baseline:
        doc["baseline"] = {"env": baseline_env, "sizes": baseline}
    write_result(args.result, {**doc, "machine": machine("kopf", "kubernetes", "uvloop")})
    return 0


def ratio(value: float, base: float) -> float:
    return value / base if base else float("nan")


def print_table(
    runs: list[dict[str, Any]], ratio_name: str, ratio_of: Callable[[str], float], labels: list[str] | None = None
) -> None:
    """The numeric figures of `runs` side by side (headed N=<objects> or `labels`), `ratio_of(figure)` last."""
    heads = labels or [f"N={int(r['objects'])}" for r in runs]
    print(f"{'figure':34} " + " ".join(f"{h:>12}" for h in heads) + f"   {ratio_name}")
    for key, first in runs[0].items():
        if key == "objects" or not isinstance(first, int | float):
            continue
        values = " ".join(f"{r[key]:12.2f}" for r in runs)
        print(f"{key:34} {values}   {ratio_of(key):8.2f}")


def profile_memory(client: kubernetes.client.ApiClient, args: argparse.Namespace) -> int:
    """The largest size, converged under memray: where the operator's memory goes."""
    n = max(args.sizes)
    capture = REPO / "build" / f"scale-memray-{n}.bin"
    capture.parent.mkdir(parents=True, exist_ok=True)
    run = run_size(n, client, args.steady, args.settle, args.log_level, capture)
    profile = memory_profile(capture)
    print(json.dumps(profile, indent=2))
    write_result(
        "scale_memory",
        {
            "benchmark": "scale_memory",
            "objects": n,
            "profile": profile,
            # Under the profiler: RSS includes memray's own tables, times are slowed.
            "rss_peak_mib_profiled": run["rss_peak_mib"],
            "converge_s_profiled": run["converge_s"],
            "machine": machine("kopf", "kubernetes", "uvloop", "memray"),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
