"""Search algorithms side by side: random, TPE, TPE + median stopping, TPE + ASHA, TPE + Hyperband.

The operator's own search code decides everything: `search.propose` gives each trial's parameters
(random or Bayesian/TPE, rebuilt from the earlier trials as status holds them) and `search.judge`,
the function the reconcile calls after every epoch a trial reports, stops weak trials (median,
asha, hyperband) from `TrialStatus` records alone — the same records `status.trials` keeps. Trials
run one after another (`parallelism: 1`).

The task is small and real, but it is not the project's trainer: a torchvision model per trial
takes seconds per epoch on this 2-core machine, too slow for 5 strategies x several seeds x 30
trials. Each trial trains scikit-learn's `MLPClassifier` (one hidden layer of 64, SGD with
Nesterov momentum, one `partial_fit` pass over the training split per epoch) on scikit-learn's
digits (1,797 8x8 images; 60/20/20 train/validation/test split, fixed), with the searched
`learningRate` (log-uniform 1e-4..1), `momentum` (0.5..0.99), `weightDecay` (L2 `alpha`,
log-uniform 1e-6..1e-1) and `batchSize` (16..256). The objective is validation accuracy, the
trial's best epoch (as the operator records it); the model a search would register is the best
trial that ran to the end (a stopped trial is never registered), and its test accuracy at that
epoch is reported beside it.

Every strategy gets the same budget of trials and epochs and the same seeds (search seed s; trial
i's network initialisation and shuffling seeded from (s, i) in every strategy). CPU-seconds are
`time.process_time()` around the training and evaluation only; the search's own CPU (proposals,
pruning decisions) is reported apart. Strategies alternate within each seed, in one process.

    .venv/bin/python bench/search_algorithms.py                # 3 seeds x 30 trials x 27 epochs (~4 min, 2 cores)
    .venv/bin/python bench/search_algorithms.py --seeds 2 --trials 10
    .venv/bin/python bench/report.py                           # then: the table in docs/benchmarks.md

Writes bench/results/search_algorithms.json (`--output`): per strategy and seed the trials
(parameters, per-epoch validation accuracy, where they stopped and why, CPU-seconds), and the
summary that bench/report.py makes the table in docs/benchmarks.md from.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator" / "src"))

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

from bench.harness import machine  # noqa: E402
from modelops_operator.api.trainingrun import Search, TrialStatus  # noqa: E402
from modelops_operator.reconcile import search as searching  # noqa: E402

RESULT = REPO / "bench" / "results" / "search_algorithms.json"

PARAMETERS: list[dict[str, Any]] = [
    {"name": "learningRate", "type": "logUniform", "min": 1e-4, "max": 1.0},
    {"name": "momentum", "type": "uniform", "min": 0.5, "max": 0.99},
    {"name": "weightDecay", "type": "logUniform", "min": 1e-6, "max": 1e-1},
    {"name": "batchSize", "type": "int", "min": 16, "max": 256},
]
#: name -> (algorithm, earlyStopping, extra search fields)
STRATEGIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "random": ("random", "none", {}),
    "tpe": ("bayesian", "none", {}),
    "tpe+median": ("bayesian", "median", {}),
    "tpe+asha": ("bayesian", "asha", {"earlyStoppingMinEpochs": 1, "successiveHalving": {"reductionFactor": 3}}),
    "tpe+hyperband": (
        "bayesian",
        "hyperband",
        {"earlyStoppingMinEpochs": 1, "successiveHalving": {"reductionFactor": 3}},
    ),
}


@dataclass(frozen=True)
class Data:
    x_train: np.ndarray[Any, Any]
    y_train: np.ndarray[Any, Any]
    x_val: np.ndarray[Any, Any]
    y_val: np.ndarray[Any, Any]
    x_test: np.ndarray[Any, Any]
    y_test: np.ndarray[Any, Any]


def digits() -> Data:
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest)
    return Data(x_train, y_train, x_val, y_val, x_test, y_test)


def spec(strategy: str, seed: int, trials: int) -> Search:
    algorithm, early, extra = STRATEGIES[strategy]
    return Search.model_validate(
        {
            "algorithm": algorithm,
            "parameters": PARAMETERS,
            "objective": {"metric": "val_accuracy", "direction": "maximize"},
            "maxTrials": trials,
            "earlyStopping": early,
            "seed": seed,
            **extra,
        }
    )


def run_search(strategy: str, seed: int, trials: int, epochs: int, data: Data) -> dict[str, Any]:
    """One search, as the operator would run it with parallelism 1."""
    s = spec(strategy, seed, trials)
    status: list[TrialStatus] = []
    records: list[dict[str, Any]] = []
    train_cpu = search_cpu = 0.0
    classes = np.unique(data.y_train)
    for index in range(trials):
        started = time.process_time()
        history = [searching.Observation(t.parameters, t.state, t.objective) for t in status]
        params = searching.propose(s, index, history)
        search_cpu += time.process_time() - started
        name = f"bench-r1-t{index}"
        trial = TrialStatus(name=name, parameters=params, state="Running", epochs=epochs)
        status.append(trial)
        model = MLPClassifier(
            hidden_layer_sizes=(64,),
            solver="sgd",
            nesterovs_momentum=True,
            learning_rate_init=float(params["learningRate"]),
            momentum=float(params["momentum"]),
            alpha=float(params["weightDecay"]),
            batch_size=int(params["batchSize"]),
            random_state=seed * 1000 + index,
        )
        tests: list[float] = []
        cpu = 0.0
        reason = "Succeeded"
        for epoch in range(1, epochs + 1):
            started = time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                warnings.simplefilter("ignore", RuntimeWarning)  # a diverging learning rate overflows
                model.partial_fit(data.x_train, data.y_train, classes=classes)
            val = float(model.score(data.x_val, data.y_val))
            tests.append(float(model.score(data.x_test, data.y_test)))
            cpu += time.process_time() - started
            trial = trial.model_copy(
                update={
                    "epoch": epoch,
                    "history": [*trial.history, val],
                    "objective": searching.best_of([*trial.history, val], True),
                }
            )
            status[index] = trial
            if epoch == epochs:
                break  # training is over: the operator judges no more (stop_weak_trials)
            started = time.process_time()
            verdict = searching.judge(s, status, name, True, epochs, metric="val_accuracy")
            search_cpu += time.process_time() - started
            if verdict.rung_epochs is not None:
                trial = trial.model_copy(update={"rung_epochs": list(verdict.rung_epochs)})
            if verdict.reason:
                reason = verdict.reason
                trial = trial.model_copy(update={"state": "Stopped", "reason": reason})
                status[index] = trial
                break
            status[index] = trial
        if reason == "Succeeded":
            trial = trial.model_copy(update={"state": "Succeeded", "reason": reason})
            status[index] = trial
        train_cpu += cpu
        best_epoch = int(np.argmax(trial.history)) + 1
        records.append(
            {
                "trial": index,
                "parameters": params,
                "state": trial.state,
                "reason": reason,
                "epochs": len(trial.history),
                "valAccuracy": [round(v, 4) for v in trial.history],
                "objective": round(max(trial.history), 4),
                "testAccuracyAtBest": round(tests[best_epoch - 1], 4),
                "cpuSeconds": round(cpu, 4),
                "cumulativeCpuSeconds": round(train_cpu, 4),
            }
        )
    finished = [r for r in records if r["state"] == "Succeeded"]
    best = max(finished, key=lambda r: r["objective"]) if finished else None
    return {
        "strategy": strategy,
        "seed": seed,
        "trials": records,
        "epochsTrained": sum(r["epochs"] for r in records),
        "stopped": sum(r["state"] == "Stopped" for r in records),
        "trainCpuSeconds": round(train_cpu, 3),
        "searchCpuSeconds": round(search_cpu, 3),
        "bestObjective": best["objective"] if best else None,
        "bestTrial": best["trial"] if best else None,
        "bestTestAccuracy": best["testAccuracyAtBest"] if best else None,
    }


def cpu_to_reach(run: dict[str, Any], target: float) -> float | None:
    """CPU-seconds of training until a trial that ran to the end reached `target` (the end of that
    trial: a model is only there to register once its trial finished)."""
    for r in run["trials"]:
        if r["state"] == "Succeeded" and r["objective"] >= target:
            return float(r["cumulativeCpuSeconds"])
    return None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by.setdefault(run["strategy"], []).append(run)
    random_runs = {r["seed"]: r for r in by["random"]}
    out: dict[str, Any] = {}
    for strategy, rs in by.items():
        best = [r["bestObjective"] or 0.0 for r in rs]
        cpu = [r["trainCpuSeconds"] for r in rs]
        per_cpu = [b / c for b, c in zip(best, cpu, strict=True)]
        random_per_cpu = [
            (random_runs[r["seed"]]["bestObjective"] or 0.0) / random_runs[r["seed"]]["trainCpuSeconds"] for r in rs
        ]
        # CPU-seconds until random search's final best of the same seed was reached (None: never).
        reach = [cpu_to_reach(r, random_runs[r["seed"]]["bestObjective"] or 0.0) for r in rs]
        reached = [x for x in reach if x is not None]
        out[strategy] = {
            "seeds": len(rs),
            "bestObjectiveMedian": round(statistics.median(best), 4),
            "bestObjectiveMean": round(statistics.fmean(best), 4),
            "bestTestAccuracyMedian": round(statistics.median(r["bestTestAccuracy"] or 0.0 for r in rs), 4),
            "trainCpuSecondsMedian": round(statistics.median(cpu), 2),
            "searchCpuSecondsMedian": round(statistics.median(r["searchCpuSeconds"] for r in rs), 2),
            "epochsTrainedMedian": statistics.median(r["epochsTrained"] for r in rs),
            "stoppedMedian": statistics.median(r["stopped"] for r in rs),
            "bestPerCpuSecondMedian": round(statistics.median(per_cpu), 5),
            "bestPerCpuSecondVsRandom": round(
                statistics.median(p / q for p, q in zip(per_cpu, random_per_cpu, strict=True)), 3
            ),
            "reachedRandomsBest": f"{len(reached)}/{len(rs)}",
            "cpuSecondsToRandomsBestMedian": round(statistics.median(reached), 2) if reached else None,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="search seeds 0..N-1 (default 3)")
    parser.add_argument("--trials", type=int, default=30, help="trials per search, every strategy (default 30)")
    parser.add_argument("--epochs", type=int, default=27, help="epochs of a trial that is not stopped (default 27)")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--output", type=Path, default=RESULT, help=f"result file (default {RESULT.relative_to(REPO)})")
    args = parser.parse_args()
    if "random" not in args.strategies:
        parser.error("the ratios are against random: keep it in --strategies")
    data = digits()
    runs = []
    wall = time.monotonic()
    for seed in range(args.seeds):
        for strategy in args.strategies:
            run = run_search(strategy, seed, args.trials, args.epochs, data)
            runs.append(run)
            print(
                f"seed {seed} {strategy:>14}: best {run['bestObjective']}  train CPU {run['trainCpuSeconds']:.1f} s  "
                f"epochs {run['epochsTrained']}  stopped {run['stopped']}  search CPU {run['searchCpuSeconds']:.1f} s",
                flush=True,
            )
    result = {
        "benchmark": "search_algorithms",
        "machine": machine("scikit-learn", "optuna"),
        "config": {
            "seeds": args.seeds,
            "trials": args.trials,
            "epochs": args.epochs,
            "parameters": PARAMETERS,
            "strategies": {k: STRATEGIES[k] for k in args.strategies},
            "task": "sklearn MLPClassifier(64, sgd+nesterov), one partial_fit pass per epoch, digits 60/20/20",
        },
        "wallSeconds": round(time.monotonic() - wall, 1),
        "summary": summarise(runs),
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    for name, s in result["summary"].items():
        print(f"{name:>14}: best {s['bestObjectiveMedian']}  best per CPU-s vs random {s['bestPerCpuSecondVsRandom']}x")
    print(f"wrote {args.output}; bench/report.py puts its table into docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
