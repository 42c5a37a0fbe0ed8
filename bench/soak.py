"""Soak benchmark: the operator and real inference servers for 30 minutes under steady traffic and
churn, sampled every 10 s; the curves must stay flat.

    .venv/bin/python bench/soak.py                    # 30 min (the figures in docs/benchmarks.md)
    .venv/bin/python bench/soak.py --minutes 5 --rollout-every 60
    .venv/bin/python bench/soak.py --from-csv bench/results/soak.csv   # only the summary, from samples

On the local cluster (started when it is not running), in namespace `soak`:
- a ModelDeployment serving a real ONNX model with real server processes on the executing node,
  under traffic from 3 client threads through the Service's ready endpoints;
- churn: every `--rollout-every` seconds the ModelDeployment's model changes (three models in
  turn), so a canary is rolled out (50%, analysis of error rate and p99 on real Prometheus data,
  promoted); every 30 s a TrainingRun is created and the one before deleted (finalizers, the
  operator's per-object bookkeeping and indexes);
- the operator runs as in production: resync every 60 s, progress every 3 s.

Sampled: the operator's RSS, open file descriptors and threads; the server processes' count, total
RSS and file descriptors; all processes on the machine (leaks show as growth); and per window the
requests, errors (anything but 200) and p99 latency the clients saw. Printed: the first 5 minutes
against the last 5 (the baseline of the ratios is the start of the same run), the operator's RSS
slope over the second half, and rollouts promoted. Written: bench/results/soak.csv (the samples),
soak.png (their curves) and soak.json (that summary with the machine record; bench/report.py makes
the docs' soak table from it). `--from-csv` recomputes soak.json from a soak.csv alone, without a
machine record (the run's machine is not in the CSV).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import kubernetes
from harness import REPO, cluster, machine, rss_mib, start_operator, write_result

from tests.support.cluster import ARTIFACTS, ON_LOCAL_NODE, OperatorProcess, status
from tests.support.objects import model_deployment, training_run
from tests.support.serving import ExportedModel, export_model
from tests.support.workloads import ANALYSIS, Load, artifacts_on_host

GROUP, VERSION = "modelops.dev", "v1alpha1"
NAMESPACE = "soak"
RESULTS = REPO / "bench" / "results"


@dataclass
class Sample:
    t_s: float
    operator_rss_mib: float
    operator_fds: int
    operator_threads: int
    servers: int
    servers_rss_mib: float
    servers_fds: int
    processes: int
    requests: int
    errors: int
    p99_ms: float
    promoted: int


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("Threads:")))


def pids() -> Iterator[tuple[int, bytes]]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                yield int(entry), Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue


def servers() -> list[int]:
    """The inference server processes (python -m modelops_server) running on this machine."""
    return [pid for pid, cmd in pids() if b"-m\0modelops_server" in cmd]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else float("nan")


def setup(custom: Any, core: Any) -> list[ExportedModel]:
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE, "labels": {"modelops.dev/bench": "soak"}}})
    except kubernetes.client.ApiException as e:
        if e.status != 409:
            raise
    store = artifacts_on_host(NAMESPACE)
    return [export_model(store / "models" / f"v{i}", seed=i, name="soak") for i in (1, 2, 3)]


def model_of(exported: ExportedModel) -> dict[str, str]:
    return {"uri": f"file://{ARTIFACTS}/models/{exported.path.parent.name}/model.onnx", "digest": exported.digest}


def deployment(first: ExportedModel) -> dict[str, Any]:
    return (
        model_deployment("soak")
        .set("spec.model", model_of(first))
        .set("spec.server", {"placement": ON_LOCAL_NODE, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}})
        .set("spec.autoscaling", {"minReplicas": 1, "maxReplicas": 1})
        .set("spec.rollout", {"steps": [{"setWeight": 50}, {"analysis": ANALYSIS}]})
        .obj()
    )


def plot(samples: list[Sample], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only for the picture

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    t = [s.t_s / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    axes[0].plot(t, [s.operator_rss_mib for s in samples], label="operator RSS")
    axes[0].plot(t, [s.servers_rss_mib for s in samples], label="servers RSS (all)")
    axes[0].set_ylabel("MiB")
    axes[1].plot(t, [s.operator_fds for s in samples], label="operator fds")
    axes[1].plot(t, [s.servers_fds for s in samples], label="servers fds")
    axes[1].plot(t, [s.operator_threads for s in samples], label="operator threads")
    axes[2].plot(t, [s.processes for s in samples], label="processes on the machine")
    axes[2].plot(t, [s.servers * 10 for s in samples], label="server processes ×10")
    axes[3].plot(t, [s.p99_ms for s in samples], label="client p99 ms (10 s window)")
    axes[3].plot(t, [s.errors for s in samples], label="errors per window")
    axes[3].plot(t, [s.promoted * 10 for s in samples], label="rollouts promoted ×10")
    axes[3].set_xlabel("minutes")
    for ax in axes:
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("modelops soak: operator and servers under traffic and rollouts")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def slope_per_10_min(samples: list[Sample], field: str) -> float | None:
    half = samples[len(samples) // 2 :]
    xs, ys = [s.t_s for s in half], [float(getattr(s, field)) for s in half]
    return round(statistics.linear_regression(xs, ys).slope * 600, 2) if len(half) >= 2 else None


def read_samples(path: Path) -> list[Sample]:
    """The samples of a soak.csv this script wrote."""
    kinds = {f.name: int if f.type == "int" else float for f in dataclasses.fields(Sample)}
    with path.open(newline="") as f:
        return [Sample(**{k: kinds[k](v) for k, v in row.items()}) for row in csv.DictReader(f)]


#: The sampled figures compared between the first and the last 5 minutes.
FIGURES = ("operator_rss_mib", "operator_fds", "operator_threads", "servers", "servers_rss_mib", "processes")


def summary(samples: list[Sample]) -> dict[str, Any]:
    """What the soak shows, from its samples: each figure's first and last 5 minutes (means), their
    ratio and its range; requests and errors; the slopes over the second half; client p99 over the
    10 s windows; rollouts promoted; the last sample."""
    window = max(1, int(300 / max(samples[1].t_s - samples[0].t_s, 1))) if len(samples) > 1 else 1
    first, last = samples[:window], samples[-window:]
    figures = {}
    for name in FIGURES:
        a = statistics.mean(getattr(s, name) for s in first)
        b = statistics.mean(getattr(s, name) for s in last)
        values = [getattr(s, name) for s in samples]
        figures[name] = {
            "first5min": round(a, 1),
            "last5min": round(b, 1),
            "ratio": round(b / a, 2) if a else None,
            "min": min(values),
            "max": max(values),
        }
    p99 = [s.p99_ms for s in samples if not math.isnan(s.p99_ms)]
    return {
        "seconds": samples[-1].t_s,
        "samples": len(samples),
        "windowSamples": window,
        "figures": figures,
        "requests": sum(s.requests for s in samples),
        "errors": sum(s.errors for s in samples),
        "firstRequests": sum(s.requests for s in first),
        "firstErrors": sum(s.errors for s in first),
        "lastRequests": sum(s.requests for s in last),
        "lastErrors": sum(s.errors for s in last),
        "slopePer10Min": {name: slope_per_10_min(samples, name) for name in ("operator_rss_mib", "operator_fds")},
        "p99Ms": {"medianWindow": statistics.median(p99), "worstWindow": max(p99)} if p99 else None,
        "rolloutsPromoted": samples[-1].promoted,
        "atEnd": asdict(samples[-1]),
    }


class Churn:
    """The changes made during the soak: a new model every `every` seconds (a canary rollout),
    and every 30 s a TrainingRun created and the one before deleted."""

    def __init__(self, custom: Any, models: list[ExportedModel], every: float) -> None:
        self.custom, self.models, self.every = custom, models, every
        self.last_rollout = self.last_run = time.monotonic()
        self.next_model, self.runs, self.promoted = 1, 0, 0
        self.stable = status(custom, NAMESPACE, "modeldeployments", "soak")["stable"]["digest"]

    def step(self, now: float) -> None:
        custom = self.custom
        if now - self.last_rollout >= self.every:
            patch = {"spec": {"model": model_of(self.models[self.next_model % len(self.models)])}}
            custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modeldeployments", "soak", patch)
            self.next_model, self.last_rollout = self.next_model + 1, now
        if now - self.last_run >= 30:
            self.runs += 1
            body = training_run(f"churn-{self.runs}", "missing").obj()
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "trainingruns", body)
            if self.runs > 1:
                before = f"churn-{self.runs - 1}"
                custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "trainingruns", before)
            self.last_run = now
        stable = (status(custom, NAMESPACE, "modeldeployments", "soak").get("stable") or {}).get("digest")
        if stable not in (None, self.stable):
            self.promoted, self.stable = self.promoted + 1, stable


class Sampler:
    """One Sample per call: process figures now, client figures since the last call."""

    def __init__(self, operator: OperatorProcess, load: Load) -> None:
        self.operator, self.load = operator, load
        self.seen = self.seen_latencies = 0

    def sample(self, t_s: float, promoted: int) -> Sample:
        load, pid = self.load, self.operator.pid
        window, self.seen = load.results[self.seen :], len(load.results)
        latencies, self.seen_latencies = load.latencies[self.seen_latencies :], len(load.latencies)
        server_pids = servers()
        return Sample(
            t_s=round(t_s, 1),
            operator_rss_mib=round(rss_mib(pid), 1),
            operator_fds=fds(pid),
            operator_threads=threads(pid),
            servers=len(server_pids),
            servers_rss_mib=round(sum(rss_mib(p) for p in server_pids), 1),
            servers_fds=sum(fds(p) for p in server_pids),
            processes=sum(1 for _ in pids()),
            requests=len(window),
            errors=sum(1 for _, code, _ in window if code != 200),
            p99_ms=round(1000 * p99(latencies), 1),
            promoted=promoted,
        )


def soak(custom: Any, operator: OperatorProcess, models: list[ExportedModel], args: argparse.Namespace) -> list[Sample]:
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modeldeployments", deployment(models[0]))
    deadline = time.monotonic() + 300
    while status(custom, NAMESPACE, "modeldeployments", "soak").get("phase") != "Healthy":
        if time.monotonic() > deadline:
            raise SystemExit("the ModelDeployment did not become Healthy in 300 s")
        time.sleep(2)
    samples: list[Sample] = []
    with Load(NAMESPACE, "soak") as load:
        churn, sampler, start = Churn(custom, models, args.rollout_every), Sampler(operator, load), time.monotonic()
        while (now := time.monotonic()) - start < args.minutes * 60:
            churn.step(now)
            samples.append(sampler.sample(now - start, churn.promoted))
            print(asdict(samples[-1]), flush=True)
            time.sleep(args.sample_every)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30, help="how long to soak (default 30)")
    parser.add_argument("--rollout-every", type=float, default=180, help="seconds between model changes")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between samples")
    parser.add_argument(
        "--from-csv",
        type=Path,
        help="no soak: write results/soak.json from this soak.csv's samples (no machine record)",
    )
    args = parser.parse_args(argv)
    if args.from_csv:
        result = {"benchmark": "soak", "note": f"recomputed from {args.from_csv.name} by soak.py --from-csv"}
        report(write_summary({**result, "summary": summary(read_samples(args.from_csv))}))
        return 0

    client = cluster()
    custom, core = kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client)
    operator = start_operator("bench-soak.log")
    try:
        samples = soak(custom, operator, setup(custom, core), args)
    finally:
        try:
            core.delete_namespace(NAMESPACE)  # while the operator runs: TrainingRuns hold its finalizer
            deadline = time.monotonic() + 300
            gone = f"metadata.name={NAMESPACE}"
            while time.monotonic() < deadline and core.list_namespace(field_selector=gone).items:
                time.sleep(2)
        finally:
            operator.stop()
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "soak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(samples[0])))
        writer.writeheader()
        writer.writerows(asdict(s) for s in samples)
    plot(samples, RESULTS / "soak.png")
    config = {
        "minutes": args.minutes,
        "rolloutEverySeconds": args.rollout_every,
        "sampleEverySeconds": args.sample_every,
    }
    result = {"benchmark": "soak", "machine": machine("kubernetes", "kopf", "onnxruntime"), "config": config}
    report(write_summary({**result, "summary": summary(samples)}))
    return 0


def write_summary(result: dict[str, Any]) -> dict[str, Any]:
    """results/soak.json; `result` again."""
    write_result("soak", result)
    return result


def report(result: dict[str, Any]) -> None:
    s = result["summary"]
    print(f"\n{'figure':34} {'first 5 min':>12} {'last 5 min':>12} {'ratio':>7}")
    for name, f in s["figures"].items():
        print(f"{name:34} {f['first5min']:12.1f} {f['last5min']:12.1f} {f['ratio'] or float('nan'):7.2f}")
    for label in ("first", "last"):
        reqs, errs = s[f"{label}Requests"], s[f"{label}Errors"]
        print(f"{label} 5 min: {reqs} requests, {errs} errors ({100 * errs / max(reqs, 1):.2f}%)")
    print(
        f"whole run: {s['requests']} requests, {s['errors']} errors ({100 * s['errors'] / max(s['requests'], 1):.3f}%)"
    )
    for name, unit in (("operator_rss_mib", "MiB"), ("operator_fds", "fds")):
        print(f"{name} slope over the second half: {s['slopePer10Min'][name]} {unit}/10 min")
    print(f"rollouts promoted: {s['rolloutsPromoted']}")


if __name__ == "__main__":
    sys.exit(main())
