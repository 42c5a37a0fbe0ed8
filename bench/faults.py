"""Operator-kill benchmark: the full lifecycle undisturbed, then again with the operator SIGKILLed
50 times (restarted at once each time), side by side: once in each stage of the lifecycle as soon
as the cluster shows it (tests/support/lifecycle.py's STAGES), the other kills at random moments.

    .venv/bin/python bench/faults.py                  # 50 kills (the figures in docs/benchmarks.md)
    .venv/bin/python bench/faults.py --kills 10 --seed 3

The scenario is tests/support/lifecycle.py's, the one CI runs with a few kills: a Dataset, a
2-trial TrainingRun and a ModelDeployment created together, version 1 served, the run's spec
changed, version 2 rolled out as a canary and promoted, everything deleted. Reported: whether the
disturbed run's end state equals the undisturbed one's (status of all three objects, children),
children created more than once (by UID), orphans, what deletion left behind, at what stage each
kill fell, and the time each run took (the ratio is the price of the kills), printed and written
to bench/results/faults.json (bench/report.py puts its figures into the docs). The operator runs
with the production timers (resync 60 s, progress 3 s) and an admin kubeconfig; the cluster is
started when it is not running.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import uuid
from collections import Counter

import kubernetes
from harness import cluster, machine, start_operator, write_result

from tests.support.cluster import kubectl
from tests.support.lifecycle import STAGES, Outcome, run_lifecycle, spread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="operator SIGKILLs in the disturbed run (default 50)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill times (default: random, printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    client = cluster()
    custom, core = kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client)
    operator = start_operator("bench-faults.log")
    outcomes: dict[str, Outcome] = {}
    names = [f"faults-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    try:
        for name, kills in zip(names, (0, args.kills), strict=True):
            core.create_namespace({"metadata": {"name": name, "labels": {"modelops.dev/bench": "faults"}}})
            uptime = spread(outcomes[names[0]].seconds, kills) if kills else 0.0  # over the whole lifecycle
            outcomes[name] = run_lifecycle(custom, name, operator, kills=kills, seed=seed, mean_uptime=uptime)
            print(f"{name}: {kills} kills, {outcomes[name].seconds:.0f} s", flush=True)
    finally:
        for name in names:
            kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)
        operator.stop()
    calm, rough = (outcomes[n] for n in names)
    same = rough.state == calm.state
    print(f"\nseed {seed}; kills done: {len(rough.kills_at)} of {args.kills}")
    print("kills by stage:")
    counts = Counter(rough.kills_at)
    for stage in STAGES:
        print(f"  {counts[stage]:3} {stage}")
    print(f"{'':28} {'undisturbed':>12} {'killed':>12} {'ratio':>7}")
    print(f"{'lifecycle seconds':28} {calm.seconds:12.0f} {rough.seconds:12.0f} {rough.seconds / calm.seconds:7.2f}")
    rows = (("children made twice", "duplicates"), ("orphans", "orphans"), ("left after delete", "left_after_delete"))
    for label, attr in rows:
        print(f"{label:28} {len(getattr(calm, attr)):12} {len(getattr(rough, attr)):12}")
    print(f"end state equal to the undisturbed run's: {same}")
    if not same:
        print(json.dumps({"undisturbed": calm.state, "killed": rough.state}, indent=1, default=str))
    write_result(
        "faults",
        {
            "machine": machine("kopf", "kubernetes"),
            "seed": seed,
            "kills": {"asked": args.kills, "done": len(rough.kills_at), "byStage": {s: counts[s] for s in STAGES}},
            "seconds": {
                "undisturbed": round(calm.seconds, 1),
                "killed": round(rough.seconds, 1),
                "ratio": round(rough.seconds / calm.seconds, 3),
            },
            "endStateEqual": same,
            **{
                run: {
                    "duplicates": len(o.duplicates),
                    "orphans": len(o.orphans),
                    "leftAfterDelete": len(o.left_after_delete),
                }
                for run, o in (("undisturbed", calm), ("killed", rough))
            },
        },
    )
    ok = same and len(rough.kills_at) == args.kills
    ok = ok and not any((rough.duplicates, rough.orphans, rough.left_after_delete, calm.duplicates))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
