"""`python -m modelops_trainer.train --config config.json`: train, export and publish one model.

The same command runs on a laptop, under `torchrun --nproc-per-node N -m modelops_trainer.train`,
and in a Kubeflow PyTorchJob's pods; the environment tells it which (see `distributed.py`).
Exit status: 0 done, 1 failed (the termination message says why), 2 config refused,
143/130 stopped by SIGTERM/SIGINT after writing a checkpoint (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from modelops_trainer import distributed, progress, storage
from modelops_trainer.config import API_VERSION, TrainConfig, load_config, parse_config
from modelops_trainer.errors import ConfigError, TrainerError
from modelops_trainer.reporting import setup_logging, write_termination_message
from modelops_trainer.tracking import Tracker

log = logging.getLogger("modelops_trainer.train")

DESCRIPTION = f"""\
Train an image classifier on a modelops dataset version, keep the best checkpoint, export it to
ONNX, check the ONNX file against PyTorch on real validation images, and write a model card.

The config is JSON ({API_VERSION}); the operator writes it for every training run. A minimal one:

  {{"apiVersion": "{API_VERSION}",
   "dataset": {{"uri": "file:///data/datasets/digits/0123456789ab", "digest": "sha256:<64 hex>"}},
   "model": {{"architecture": "resnet18"}},
   "hyperparameters": {{"epochs": 10, "batchSize": 64, "learningRate": 0.001}},
   "output": {{"uri": "file:///data/runs/digits-resnet"}}}}

Every field, its default and meaning: --schema (JSON Schema), or trainer_image/README.md.
"""

EPILOG = """\
what it writes under output.uri:
  config.json             the config as used (trial parameters applied)
  metrics.jsonl           one JSON line per epoch (train/val loss and accuracy, lr, images/s)
  checkpoints/last.pt     everything needed to resume exactly (rerun the same command)
  checkpoints/best.pt     weights of the best epoch by the objective (default val_accuracy)
  model.onnx              the best checkpoint in ONNX, written only if the parity check passed
  model.onnx.card.json    the model card: classes, preprocessing, metrics, lineage
  evaluation.json         per-class precision/recall and confusion matrices (val, test)
  summary.json            the run's summary, also written to the termination message
  mlflow-run.json         the MLflow run of this folder, when tracking (a resumed run keeps it)

progress: rank 0 serves GET /progress (JSON: epoch, step, images/s, ETA, the objective per epoch)
and GET /metrics (Prometheus) on port $MODELOPS_PROGRESS_PORT (default 9400; 0 any free port, off none).

distributed: run under torchrun, or in a PyTorchJob (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK,
LOCAL_RANK); NCCL on GPUs, gloo on CPUs. Only rank 0 writes.

MLflow tracking (optional, MLflow's own variables): MLFLOW_TRACKING_URI turns it on; one MLflow
run gets the hyper-parameters, every epoch's metrics (step = epoch) and the model card.
MLFLOW_EXPERIMENT_NAME (default Default), MLFLOW_TRACKING_TOKEN (bearer) or
MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_SERVER_CERT_PATH (a CA bundle).
A server that cannot be reached never fails training: the summary says mlflowRunId null and why.

exit status: 0 done; 1 failed (reason in the termination message, e.g. ParityCheckFailed);
2 config refused; 143 (SIGTERM) or 130 (Ctrl-C) stopped after a checkpoint: rerun to resume.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m modelops_trainer.train",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="PATH_OR_URI", help="the JSON config, a local path or an fsspec URI")
    source.add_argument("--config-json", metavar="JSON", help="the JSON config itself (e.g. from an env variable)")
    source.add_argument("--schema", action="store_true", help="print the config's JSON Schema and exit")
    parser.add_argument("--check", action="store_true", help="validate the config, print it with defaults, and exit")
    return parser.parse_args(argv)


def _failure(reason: str, message: str) -> dict[str, Any]:
    return {"status": "Failed", "reason": reason, "message": message}


def run(config: TrainConfig, *, show_progress: bool = False) -> dict[str, Any]:
    """Train and publish under this process's runtime; returns the summary (rank 0's is complete).

    Raises TrainerError on failure and session.Preempted when stopped by a signal.
    """
    # Imported here so --help, --schema and --check answer without loading torch's stack.
    from modelops_trainer.publish import publish  # noqa: PLC0415
    from modelops_trainer.session import Preempted, TrainingSession  # noqa: PLC0415

    runtime = distributed.detect(os.environ, config.device)
    distributed.setup(runtime)
    server = None
    tracker: Tracker | None = None
    try:
        session = TrainingSession(config, runtime, show_progress=show_progress)
        if runtime.is_main:  # only rank 0 tracks and serves GET /progress, /metrics
            server = progress.serve(session.board, os.environ)
            tracker = Tracker.from_env(os.environ, session.cfg.output.uri)
        if tracker is not None:
            tracker.start(**tracking_identity(session.cfg, session.reader.version, os.environ))
            session.metrics.followers.append(tracker.log_history)
        try:
            state = session.train()
            summary = publish(session, state)
        except Preempted:
            if tracker is not None:
                tracker.finish("KILLED", history=session.state.history)
            raise
        except Exception:
            if tracker is not None:
                tracker.finish("FAILED", history=session.state.history)
            raise
        if tracker is not None:
            model = summary.get("model") or {}
            tracker.finish(
                "FINISHED", history=state.history, metrics=summary.get("metrics"), card_uri=model.get("modelCardUri")
            )
            summary.update(tracker.report())
            storage.write_bytes_atomic(
                storage.join(session.cfg.output.uri, "summary.json"), json.dumps(summary, indent=2).encode()
            )
        return summary
    finally:
        if server is not None:
            server.close()
        distributed.teardown()


def tracking_identity(config: TrainConfig, dataset_version: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The MLflow run's name, parameters (the hyper-parameters as trained, the architecture, the
    dataset version) and tags (trial, TrainingRun, namespace, dataset)."""
    trial = config.trial.name if config.trial else None
    run = config.lineage.training_run
    namespace = (env.get("MODELOPS_NAMESPACE") or "").strip()
    params = {k: str(v) for k, v in config.hyperparameters.model_dump(by_alias=True).items()}
    params.update({"architecture": config.model.architecture, "datasetVersion": dataset_version})
    tags = {"modelops.dev/dataset": f"{config.lineage.dataset or ''}@{dataset_version}"}
    if trial:
        tags["modelops.dev/trial"] = trial
    if run:
        tags["modelops.dev/trainingrun"] = f"{namespace}/{run}" if namespace else run
    if namespace:
        tags["modelops.dev/namespace"] = namespace
    return {"run_name": trial or run or "standalone", "params": params, "tags": tags}


def main(argv: list[str] | None = None) -> int:
    """The program; returns its exit status."""
    args = parse_args(argv)
    if args.schema:
        print(json.dumps(TrainConfig.model_json_schema(by_alias=True), indent=2))
        return 0
    try:
        config = load_config(args.config) if args.config else parse_config(args.config_json, source="--config-json")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            write_termination_message("/dev/termination-log", _failure(exc.reason, str(exc)))
        return exc.exit_code
    if args.check:
        print(config.effective().to_json())
        return 0
    return _train(config)


def _train(config: TrainConfig) -> int:
    """Run with logging set up; map the outcome to an exit status and a termination message."""
    from modelops_trainer.session import Preempted  # noqa: PLC0415

    rank = int(os.environ.get("RANK", "0") or 0)
    show_progress = setup_logging(config.logging.format, rank=rank)
    # Every pod should explain its own failure; with torchrun, its local rank 0 speaks for the pod.
    speaks = rank == 0 or os.environ.get("LOCAL_RANK", "0") == "0"
    path = config.termination_message_path
    try:
        summary = run(config, show_progress=show_progress)
    except Preempted as stop:
        log.warning("stopped; rerun the same command to resume", extra={"step": stop.step, "signal": stop.signum})
        if speaks:
            write_termination_message(path, {"status": "Preempted", "reason": "Preempted", "message": str(stop)})
        return stop.exit_code
    except TrainerError as exc:
        log.error("failed: %s", exc, extra={"reason": exc.reason})
        if speaks:
            write_termination_message(path, _failure(exc.reason, str(exc)))
        return exc.exit_code
    except Exception as exc:
        log.exception("internal error")
        if speaks:
            write_termination_message(path, _failure("InternalError", f"{type(exc).__name__}: {exc}"))
        return 1
    if rank == 0:
        write_termination_message(path, summary)
        log.info("done", extra={"metrics": summary.get("metrics", {})})
    return 0


if __name__ == "__main__":
    sys.exit(main())
