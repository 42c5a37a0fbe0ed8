"""The four searches that tests/e2e/test_search_e2e.py trains side by side on the local node, one per
strategy, each on the `digits` Dataset (16-pixel images, `workloads.local_dataset`) and each small
(one to three epochs) and set up so that what its test asserts has to happen:

- `grid`: two parameters, two values each: four trials, one per combination;
- `tpe`: Bayesian (TPE) with `parallelism: 2` and a goal every trial of its space reaches;
- `median`: a good trial first, then one whose learning rate is so small that it stays at chance,
  which median stopping judges after its first epoch (`earlyStoppingMinEpochs: 1`);
- `architecture`: two torchvision networks as a `choice` dimension.

Figures the settings rest on, measured with the trainer on these digits (16-pixel RGB, CPU, fp32, no
warm-up, batches of 64 unless said), validation accuracy per epoch (chance is 0.1): ResNet-18 at
learning rate 0.003 over three epochs 0.38, 0.90, 0.99 (the median search's good trial); at 1e-6,
0.12 then 0.09 (its bad one); at 0.001 and 0.005 over two epochs (the ends of the TPE range) 0.81,
0.97 and 0.23, 0.93; at 0.004 with batches of 32, 0.82 in one epoch; mobilenet_v3_small at 0.002,
0.10 in one epoch.
"""

from __future__ import annotations

from typing import Any

from tests.support.workloads import small_run

#: The grid's two parameters and their values; the trials take them in `itertools.product` order.
GRID_RATES = ("0.002", "0.004")
GRID_BATCHES = ("32", "64")

#: The TPE search's learning-rate range, budget and goal (validation accuracy after two epochs).
TPE_RATES = (1e-3, 5e-3)
TPE_MAX_TRIALS = 6
TPE_GOAL = 0.6

#: The median search: a learning rate that learns, then one that leaves the network at chance.
GOOD_RATE, BAD_RATE = "0.003", "1e-06"
MEDIAN_EPOCHS = 3

ARCHITECTURES = ("resnet18", "mobilenet_v3_small")


def _with_epochs(body: dict[str, Any], epochs: int) -> dict[str, Any]:
    body["spec"]["hyperparameters"]["epochs"] = epochs
    return body


def grid_run(name: str = "grid") -> dict[str, Any]:
    """Grid over learning rate x batch size (4 trials, 2 at a time, one epoch each, nobody stopped)."""
    parameters = [
        {"name": "learningRate", "type": "choice", "values": list(GRID_RATES)},
        {"name": "batchSize", "type": "choice", "values": list(GRID_BATCHES)},
    ]
    body = small_run(name, algorithm="grid", parameters=parameters, maxTrials=4, parallelism=2, earlyStopping="none")
    return _with_epochs(body, 1)


def tpe_run(name: str = "tpe") -> dict[str, Any]:
    """TPE over the learning rate, two trials at a time, stopped by a goal every trial reaches."""
    low, high = TPE_RATES
    body = small_run(
        name,
        algorithm="bayesian",
        parameters=[{"name": "learningRate", "type": "logUniform", "min": low, "max": high}],
        objective={"metric": "val_accuracy", "direction": "maximize", "goal": TPE_GOAL},
        maxTrials=TPE_MAX_TRIALS,
        parallelism=2,
        earlyStopping="none",
        seed=3,
    )
    return _with_epochs(body, 2)


def median_run(name: str = "median") -> dict[str, Any]:
    """The good learning rate, then the bad one (grid order, one at a time), judged from epoch 1."""
    body = small_run(
        name,
        algorithm="grid",
        parameters=[{"name": "learningRate", "type": "choice", "values": [GOOD_RATE, BAD_RATE]}],
        maxTrials=2,
        parallelism=1,
        earlyStopping="median",
        earlyStoppingMinEpochs=1,
    )
    return _with_epochs(body, MEDIAN_EPOCHS)


def architecture_run(name: str = "architecture") -> dict[str, Any]:
    """The two architectures side by side, one epoch each, nobody stopped."""
    body = small_run(
        name,
        algorithm="grid",
        parameters=[{"name": "architecture", "type": "choice", "values": list(ARCHITECTURES)}],
        maxTrials=2,
        parallelism=2,
        earlyStopping="none",
    )
    return _with_epochs(body, 1)


def search_runs() -> dict[str, dict[str, Any]]:
    """The four TrainingRuns, by name."""
    runs = [grid_run(), tpe_run(), median_run(), architecture_run()]
    return {run["metadata"]["name"]: run for run in runs}
