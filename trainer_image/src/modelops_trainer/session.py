"""One training run from data to best checkpoint: the loop and its state.

`TrainingSession(config, runtime).train()` builds everything from the config (dataset, loaders,
network, optimizer, schedule, precision, EMA, DDP), resumes from `<output>/checkpoints/last.pt`
when there is one, and runs epochs: train, evaluate on val, record metrics, keep the best
checkpoint, stop early when the objective stalls. `publish.py` then evaluates the best
checkpoint, exports it and writes the results.

Preemption: SIGTERM (or Ctrl-C) only sets a flag. The loop looks at it after every optimizer
step (every `STOP_POLL_STEPS` steps when distributed, where all processes must agree, so they
vote with one all-reduce), writes `last.pt` at that step boundary and raises `Preempted`.

The hot loop never waits for the device: losses and accuracies accumulate in device tensors
and are read back only when logging, at the end of an epoch, or for a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from modelops_trainer import checkpoint, distributed, progress, reporting, storage
from modelops_trainer.config import TrainConfig
from modelops_trainer.data import (
    EvalSampler,
    ImageSamples,
    LoaderSettings,
    Preprocess,
    TrainSampler,
    batches_per_epoch,
    default_workers,
    eval_transform,
    make_loader,
    train_transform,
)
from modelops_trainer.datasetfmt import DatasetReader, SplitName
from modelops_trainer.distributed import Runtime
from modelops_trainer.errors import CheckpointError, ConfigError, TrainingDiverged
from modelops_trainer.evaluate import Evaluation, evaluate
from modelops_trainer.models import build_model, load_weights, parameter_count
from modelops_trainer.precision import Precision, PrecisionChoice, autocast, choose_precision, guard_strided_convs
from modelops_trainer.strategy import build_ema, build_optimizer, build_scheduler

log = logging.getLogger(__name__)
STOP_POLL_STEPS = 10


class Preempted(Exception):
    """A stop was requested (SIGTERM/SIGINT); `last.pt` holds the state to resume from."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by signal {signum} at step {step}; the checkpoint resumes it")
        self.signum = signum
        self.step = step

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports a process killed by it."""
        return 128 + self.signum


@dataclass
class Progress:
    """Where the run is: the part of the state that is not tensors."""

    epoch: int = 0
    """Completed epochs."""
    batch_in_epoch: int = 0
    """Micro-batches of the current epoch already trained on (a multiple of the accumulation)."""
    step: int = 0
    """Optimizer steps taken."""
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_value: float | None = None
    bad_epochs: int = 0
    finished: bool = False
    stopped_early: bool = False
    partial: dict[str, float] = field(default_factory=lambda: {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0})
    """Training-metric sums of the current epoch's steps before a resume."""


class StopFlag:
    """Set by SIGTERM/SIGINT; the handlers are installed for the session and removed after."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum
        log.warning("stop requested: checkpointing at the next step boundary", extra={"signal": signum})

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Install the handlers (main thread only; elsewhere the flag stays unset)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[int(sig)] = signal.signal(sig, self._handle)
        try:
            yield
        finally:
            for signum, old in self._old.items():
                signal.signal(signum, old)


class TrainingSession:
    """The run's objects and its loop."""

    def __init__(self, config: TrainConfig, runtime: Runtime, *, show_progress: bool = False) -> None:
        self.config = config
        self.cfg = config.effective()
        self.hp = self.cfg.hyperparameters
        self.runtime = runtime
        self.device = runtime.device
        self.show_progress = show_progress
        self.stop = StopFlag()
        self.state = Progress()
        out = self.cfg.output.uri
        self.last_uri = storage.join(out, checkpoint.LAST)
        self.best_uri = storage.join(out, checkpoint.BEST)
        self.fingerprint = self.cfg.fingerprint()
        objective = self.cfg.objective.metric if self.cfg.trial else None
        self.metrics = reporting.MetricsWriter(out, trial_objective=objective)
        self.maximize = self.cfg.objective.maximize
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")  # TF32 on tensor cores

        cache = None if self.cfg.dataset.cache_dir is None else storage.local_path(self.cfg.dataset.cache_dir)
        self.reader = DatasetReader(self.cfg.dataset.uri, digest=self.cfg.dataset.digest, cache_dir=cache)
        manifest = self.reader.manifest
        self.image = manifest.image
        self.classes = manifest.classes
        self.num_classes = len(self.classes)
        self.in_channels = 3 if self.image.color_mode == "RGB" else 1
        self._build_data()

        self._build_model(cache)
        self.board = progress.ProgressBoard(
            metric=self.cfg.objective.metric,
            epochs=self.hp.epochs,
            steps_per_epoch=self.steps_per_epoch,
            images_per_step=self.hp.batch_size * self.hp.grad_accumulation_steps * runtime.world_size,
        )
        """What rank 0 serves on `/progress` (see `progress.py`)."""
        seed = self.hp.seed + 1_000_003 * runtime.rank  # dropout etc. differ between processes
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)

    # --- set-up --------------------------------------------------------------------------------

    def _build_model(self, cache: Path | None) -> None:
        """Network (same initial weights on every process), optimizer, schedule, precision, EMA, DDP."""
        torch.manual_seed(self.hp.seed)
        raw = build_model(
            self.cfg.model.architecture,
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            image_size=self.image.size,
        )
        model_cfg = self.cfg.model
        if model_cfg.weights_uri and model_cfg.weights_digest:
            load_weights(
                raw, model_cfg.weights_uri, model_cfg.weights_digest, num_classes=self.num_classes, cache_dir=cache
            )
        if self.device.type == "cpu":
            guard_strided_convs(raw)  # oneDNN's bf16 weight gradients of tiny maps (precision.py)
        self.memory_format = torch.channels_last if self.hp.channels_last else torch.contiguous_format
        self.preprocess = Preprocess(self.image.color_mode, self.device, channels_last=self.hp.channels_last)
        self.raw: nn.Module = raw.to(self.device).to(memory_format=self.memory_format)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.hp.label_smoothing)
        self.precision_choice = self._choose_precision()
        self.precision = self.precision_choice.precision
        self.optimizer = build_optimizer(self.raw, self.hp)
        self.steps_per_epoch = self.batches // self.hp.grad_accumulation_steps
        self.scheduler = build_scheduler(self.optimizer, self.hp, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaler)
        self.ema = build_ema(self.raw, self.hp.ema_decay)
        self.model: nn.Module = self.raw
        self.ddp: DistributedDataParallel | None = None
        if self.runtime.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = self.ddp = DistributedDataParallel(self.raw, device_ids=ids)
        if self.hp.compile:
            self.model = torch.compile(self.model)  # type: ignore[assignment]

    def _choose_precision(self) -> PrecisionChoice:
        """`mixedPrecision`, measured on this model at this batch shape where it is `auto` on a CPU;
        when distributed every process measures (as they will train: side by side) and rank 0's
        choice holds for all."""
        size, hp = self.image.size, self.hp

        def batch() -> tuple[torch.Tensor, torch.Tensor]:
            gen = torch.Generator().manual_seed(hp.seed)
            x = torch.randn(hp.batch_size, self.in_channels, size, size, generator=gen)
            y = torch.randint(0, self.num_classes, (hp.batch_size,), generator=gen)
            return x.to(self.device).contiguous(memory_format=self.memory_format), y.to(self.device)

        choice: PrecisionChoice = distributed.broadcast_object(
            self.runtime, choose_precision(hp.mixed_precision, self.device, self.raw, self.criterion, batch)
        )
        log.info("precision chosen", extra={"precision": choice.to_json()})
        return choice

    def _build_data(self) -> None:
        cfg, rt = self.cfg, self.runtime
        indexes = {s: self.reader.index(s) for s in ("train", "val", "test")}
        self.split_sizes = {s: len(i) for s, i in indexes.items()}
        workers = cfg.data_loader.workers
        if workers is None:
            workers = default_workers(rt.local_world_size, cuda=self.device.type == "cuda")
        settings = LoaderSettings(
            batch_size=self.hp.batch_size,
            workers=workers,
            prefetch_factor=cfg.data_loader.prefetch_factor,
            pin_memory=self.device.type == "cuda",
        )
        self.batches = batches_per_epoch(len(indexes["train"]), rt.world_size, self.hp.batch_size)
        if self.batches < self.hp.grad_accumulation_steps:
            raise ConfigError(
                f"hyperparameters: batchSize {self.hp.batch_size} × gradAccumulationSteps "
                f"{self.hp.grad_accumulation_steps} × {rt.world_size} process(es) exceeds the "
                f"{len(indexes['train'])} training images: not one optimizer step per epoch"
            )
        train = ImageSamples(
            indexes["train"], self.image, train_transform(self.reader.manifest.augmentation, self.image)
        )
        self.train_sampler = TrainSampler(len(train), rank=rt.rank, world_size=rt.world_size, seed=self.hp.seed)
        self.train_loader = make_loader(train, self.train_sampler, settings, drop_last=True)
        eval_settings = LoaderSettings(settings.batch_size * 2, min(workers, 1), 2, settings.pin_memory)
        self.eval_samples: dict[SplitName, ImageSamples] = {}
        self.eval_loaders: dict[SplitName, Any] = {}
        for split in ("val", "test"):
            samples = ImageSamples(indexes[split], self.image, eval_transform(self.image))
            self.eval_samples[split] = samples
            sampler = EvalSampler(len(samples), rank=rt.rank, world_size=rt.world_size)
            self.eval_loaders[split] = make_loader(samples, sampler, eval_settings, drop_last=False)
        log.info(
            "dataset verified",
            extra={
                "version": self.reader.version,
                "classes": len(self.reader.classes),
                "images": self.split_sizes,
                "imageSize": self.reader.manifest.image.size,
                "workers": workers,
            },
        )

    def _resume(self) -> None:
        state = checkpoint.load(self.last_uri) if self.cfg.checkpointing.resume else None
        if state is None:
            return
        if state.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{self.last_uri} was written by a run with another dataset, model or hyper-parameters "
                f"(fingerprint {state.get('fingerprint')}, this run {self.fingerprint}); "
                "use another output.uri, or delete it to start over"
            )
        self.raw.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        p = self.state
        p.epoch, p.batch_in_epoch, p.step = state["epoch"], state["batch_in_epoch"], state["step"]
        p.history, p.best_epoch, p.best_value = state["history"], state["best_epoch"], state["best_value"]
        self._keep_precision(state.get("precision"))
        p.bad_epochs, p.finished, p.stopped_early = state["bad_epochs"], state["finished"], state["stopped_early"]
        p.partial = dict(state["partial"])
        rngs = state["rng"]
        if len(rngs) == self.runtime.world_size:
            checkpoint.restore_rng(rngs[self.runtime.rank], self.device)
        else:
            log.warning(
                "resumed with another number of processes: the epoch restarts and randomness is not bit-exact",
                extra={"checkpointProcesses": len(rngs), "processes": self.runtime.world_size},
            )
            p.batch_in_epoch = 0
            p.partial = {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0}
        self.board.resumed(
            epoch=p.epoch,
            step=p.step,
            step_in_epoch=p.batch_in_epoch // self.hp.grad_accumulation_steps,
            history=p.history,
        )
        log.info("resumed", extra={"epoch": p.epoch, "step": p.step, "batchInEpoch": p.batch_in_epoch})

    def _keep_precision(self, saved: dict[str, Any] | None) -> None:
        """A measured choice gives way to the one the interrupted run measured: a run trains on in
        the precision it started with (both CPU candidates have the same optimizer state)."""
        choice = self.precision_choice
        if saved is None or choice.reason != "measured" or saved.get("name") == choice.precision.name:
            return
        self.precision = Precision.named(saved["name"])
        self.precision_choice = PrecisionChoice(
            self.precision, choice.requested, "resumed", choice.cpu, choice.rates, choice.probe_seconds
        )
        log.info("precision of the checkpoint kept", extra={"precision": self.precision_choice.to_json()})

    def save_last(self, sums: dict[str, float] | None = None) -> None:
        """Write `last.pt` (a collective: every process takes part; rank 0 writes)."""
        rngs = checkpoint.gather_rng(self.runtime, self.device)
        if self.runtime.is_main:
            p = self.state
            checkpoint.save(
                self.last_uri,
                {
                    "fingerprint": self.fingerprint,
                    "epoch": p.epoch,
                    "batch_in_epoch": p.batch_in_epoch,
                    "step": p.step,
                    "history": p.history,
                    "best_epoch": p.best_epoch,
                    "best_value": p.best_value,
                    "bad_epochs": p.bad_epochs,
                    "finished": p.finished,
                    "stopped_early": p.stopped_early,
                    "partial": sums or {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0},
                    "model": self.raw.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "ema": self.ema.state_dict() if self.ema is not None else None,
                    "rng": rngs,
                    "world_size": self.runtime.world_size,
                    "precision": self.precision_choice.to_json(),
                },
            )
        distributed.barrier(self.runtime)

    # --- the loop ------------------------------------------------------------------------------

    def train(self) -> Progress:
        """Train until the last epoch or early stop; returns the final progress."""
        self._resume()
        if self.runtime.is_main and not self.state.history:
            storage.write_bytes_atomic(storage.join(self.cfg.output.uri, "config.json"), self.cfg.to_json().encode())
        log.info(
            "training",
            extra={
                "architecture": self.cfg.model.architecture,
                "parameters": parameter_count(self.raw),
                "device": str(self.device),
                "processes": self.runtime.world_size,
                "precision": self.precision.name,
                "stepsPerEpoch": self.steps_per_epoch,
                "globalBatch": self.hp.batch_size * self.hp.grad_accumulation_steps * self.runtime.world_size,
            },
        )
        with self.stop.installed():
            while not self.state.finished:
                self._epoch()
        self.board.finished()
        return self.state

    def _epoch(self) -> None:
        p, hp, rt = self.state, self.hp, self.runtime
        epoch = p.epoch
        accum = hp.grad_accumulation_steps
        usable = self.steps_per_epoch * accum
        self.train_sampler.set_epoch(epoch)
        self.train_sampler.start = p.batch_in_epoch * hp.batch_size
        # Sums of this epoch's steps before a resume are global: rank 0 carries them.
        carried = [p.partial["loss_sum"], p.partial["correct"], p.partial["seen"]] if rt.is_main else [0.0] * 3
        sums = torch.tensor(carried, dtype=torch.float64, device=self.device)
        started = time.perf_counter()
        first_batch = p.batch_in_epoch
        self.model.train()
        batches = reporting.progress(
            self.train_loader, enabled=self.show_progress, total=usable - first_batch, desc=f"epoch {epoch + 1}"
        )
        b = first_batch
        for batch in batches:
            if b >= usable:
                break
            x, y = self.preprocess(batch)
            boundary = (b + 1) % accum == 0
            # Between optimizer steps DDP need not all-reduce gradients: they only accumulate.
            sync = self.ddp.no_sync() if self.ddp is not None and not boundary else contextlib.nullcontext()
            with sync:
                with autocast(self.device, self.precision):
                    logits = self.model(x)
                    loss = self.criterion(logits, y)
                self.scaler.scale(loss / accum).backward()
            with torch.no_grad():  # device-side sums: no host round trip per step
                sums[0] += loss.detach().double() * len(y)
                sums[1] += (logits.argmax(1) == y).sum()
                sums[2] += len(y)
            b += 1
            if boundary:
                self._optimizer_step()
                p.step += 1
                p.batch_in_epoch = b
                self.board.stepped(p.step, b // accum)
                if p.step % self.cfg.logging.every_steps == 0:
                    self._log_step(sums)
                every = self.cfg.checkpointing.every_steps
                if every and p.step % every == 0:
                    self.save_last(self._global_sums(sums))
                self._maybe_stop(sums)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the queued steps belong to this epoch's time
        seconds = time.perf_counter() - started
        self._end_epoch(sums, seconds, (usable - first_batch) * hp.batch_size * rt.world_size)

    def _optimizer_step(self) -> None:
        if self.hp.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.raw.parameters(), self.hp.grad_clip_norm, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.raw)

    @staticmethod
    def _sums(sums: torch.Tensor) -> dict[str, float]:
        loss_sum, correct, seen = sums.tolist()
        return {"loss_sum": loss_sum, "correct": correct, "seen": seen}

    def _global_sums(self, sums: torch.Tensor) -> dict[str, float]:
        """The training-metric sums over all processes (a collective)."""
        return self._sums(distributed.all_reduce_sum(self.runtime, sums.clone()))

    def _log_step(self, sums: torch.Tensor) -> None:
        s = self._sums(sums)  # this process's share is enough for a progress line
        loss = s["loss_sum"] / max(1.0, s["seen"])
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the training loss is {loss} at step {self.state.step}; lower learningRate")
        lr = self.optimizer.param_groups[0]["lr"]
        log.info("step", extra={"epoch": self.state.epoch + 1, "step": self.state.step, "trainLoss": loss, "lr": lr})

    def _maybe_stop(self, sums: torch.Tensor) -> None:
        requested = self.stop.signum is not None
        if self.runtime.distributed:
            if self.state.step % STOP_POLL_STEPS:
                return
            requested = distributed.any_process(self.runtime, requested)
        if requested:
            self.save_last(self._global_sums(sums))
            raise Preempted(self.stop.signum or signal.SIGTERM, self.state.step)

    def _end_epoch(self, sums: torch.Tensor, seconds: float, images: int) -> None:
        p, hp = self.state, self.hp
        s = self._global_sums(sums)
        train_loss = s["loss_sum"] / max(1.0, s["seen"])
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"the training loss is {train_loss} in epoch {p.epoch + 1}; lower learningRate")
        val = self._evaluate("val")
        record: dict[str, Any] = {
            "epoch": p.epoch + 1,
            "step": p.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            "train_accuracy": s["correct"] / max(1.0, s["seen"]),
            **(val.metrics("val") if val else {}),
            "epoch_seconds": round(seconds, 3),
            "images_per_second": round(images / seconds, 2) if seconds > 0 else None,
        }
        p.history.append(record)
        self.board.epoch_finished(p.history)
        p.epoch += 1
        p.batch_in_epoch = 0
        p.partial = {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0}
        value = record.get(self.cfg.objective.metric)
        improved = (
            value is None or p.best_value is None or (value > p.best_value if self.maximize else value < p.best_value)
        )
        if improved:
            p.best_epoch, p.best_value, p.bad_epochs = p.epoch, value, 0
            self._save_best(record)
        else:
            p.bad_epochs += 1
        patience = hp.early_stopping_patience
        if patience and val is not None and p.bad_epochs >= patience:
            p.stopped_early = True
            log.info("early stop", extra={"epoch": p.epoch, "epochsWithoutImprovement": p.bad_epochs})
        p.finished = p.epoch >= hp.epochs or p.stopped_early
        if self.runtime.is_main:
            self.metrics.write(p.history)
        if p.finished or p.epoch % self.cfg.checkpointing.every_epochs == 0:
            self.save_last()
        requested = distributed.any_process(self.runtime, self.stop.signum is not None)
        if requested and not p.finished:
            if p.epoch % self.cfg.checkpointing.every_epochs:
                self.save_last()
            raise Preempted(self.stop.signum or signal.SIGTERM, p.step)

    def eval_model(self) -> nn.Module:
        """The weights evaluated and exported: the EMA when on, else the trained model."""
        return self.ema.module if self.ema is not None else self.raw

    def _evaluate(self, split: SplitName) -> Evaluation | None:
        if not self.split_sizes[split]:
            return None
        return evaluate(
            self.eval_model(),
            self.eval_loaders[split],
            num_classes=self.num_classes,
            runtime=self.runtime,
            precision=self.precision,
            preprocess=self.preprocess,
        )

    def _save_best(self, record: dict[str, Any]) -> None:
        if self.runtime.is_main:
            checkpoint.save(
                self.best_uri,
                {
                    "fingerprint": self.fingerprint,
                    "epoch": record["epoch"],
                    "metrics": record,
                    "model": self.eval_model().state_dict(),
                },
            )
        distributed.barrier(self.runtime)
