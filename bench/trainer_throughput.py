"""Training throughput: this program (modelops_trainer) vs the source document's loop, side by side.

Both train the same torchvision model on the same dataset version (scikit-learn's digits,
upscaled to --image-size, stored as JPEG shards with the real dataset writer), with the same
batch size, in the same process on the same machine, alternating rounds so background load
hits both alike. Two measurements:

- end to end: each reads, decodes and augments the images itself. The baseline is section 4.2
  of the source document verbatim — `model.train()`, `optim.Adam(lr=1e-4)`, `CrossEntropyLoss`,
  `loss.item()` every batch — fed by a plain `DataLoader(batch_size, shuffle=True)` (the document
  shows no loader settings). The program is `TrainingSession`, the real training loop of
  `python -m modelops_trainer.train`, with its own loaders and `mixedPrecision: auto` (on a CPU
  the precision its start-up probe measures fastest; `--precision` to force one),
  `channelsLast: true`.
- loop only: both consume the same pre-decoded, pre-augmented batches from memory (or, with
  --synthetic, random pixels of the same shape), so only the training step differs (precision,
  memory format, fused optimizer, no per-batch sync). The program's loop-only rate is its pure
  compute rate: `endToEndVsCompute` is its end-to-end rate over it, in the same precision, per
  round (the issue's goal: ≥ 0.9).

Images/s count training images only, after one warm-up epoch each (evaluation excluded). The
machine may be shared: each round measures both sides back to back (a short epoch of --batches
batches each; the order baseline, program, program, baseline keeps the program's end-to-end and
loop-only epochs adjacent too), and the ratio reported is the median of the per-round ratios,
which background load that comes and goes disturbs far less than a ratio of two long runs.

    .venv/bin/python bench/trainer_throughput.py                       # ResNet-18, 224×224, batch 32
    .venv/bin/python bench/trainer_throughput.py --image-size 112 --rounds 20
    .venv/bin/python bench/trainer_throughput.py --device cuda --arch resnet50 --batch-size 256 --batches 50
    .venv/bin/python bench/trainer_throughput.py --device cuda --arch resnet50 --batch-size 256 --batches 50 \
        --only loop --synthetic
    .venv/bin/python bench/trainer_throughput.py --profile     # cProfile of the program's epochs, no ratios

Results go to bench/results/trainer_throughput.json (`--output`), with the machine: CPU model,
cores, its vector extensions, torch's version and threads, the git commit (bench/harness.py's record).
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import torchvision
from torch import nn, optim
from torch.utils.data import DataLoader
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support.digits writes the dataset with the real writer

from bench import harness  # noqa: E402
from modelops_trainer import distributed  # noqa: E402
from modelops_trainer.config import TrainConfig  # noqa: E402
from modelops_trainer.data import ImageSamples, Preprocess, normalization, train_transform  # noqa: E402
from modelops_trainer.datasetfmt import AugmentationPolicy, DatasetReader, DatasetVersion, ImageFormat  # noqa: E402
from modelops_trainer.session import TrainingSession  # noqa: E402
from tests.support.digits import write_digits  # noqa: E402

Batch = tuple[torch.Tensor, torch.Tensor]
POLICY = AugmentationPolicy(horizontal_flip=False, random_resized_crop_scale=[0.6, 1.0], rotation_degrees=10)


def machine(device: torch.device, *packages: str) -> dict[str, object]:
    """The machine record every result file carries (bench/harness.py), with torch's threads and,
    on CUDA, the GPU's name; the versions of torch, torchvision and `packages`."""
    info = harness.machine("torch", "torchvision", *packages)
    info["torchThreads"] = torch.get_num_threads()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def make_dataset(root: Path, size: int, train_images: int) -> DatasetVersion:
    """Digits at `size`×`size` (JPEG); at most `train_images` per epoch are used."""
    limit = max(3, -(-train_images * 10 // 8) // 10 + 1)  # per class, before the 80/10/10 split
    return write_digits(root.as_uri(), size=size, mode="RGB", encoding="jpeg", limit=limit, augmentation=POLICY)


class SourceDocumentLoop:
    """The source document's training loop (section 4.2), kept as it is written there."""

    def __init__(self, arch: str, classes: int, device: torch.device) -> None:
        self.device = device
        self.model = torchvision.models.get_model(arch, weights=None, num_classes=classes).to(device)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = optim.Adam(self.model.parameters(), lr=1e-4)

    def epoch(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *, max_batches: int) -> float:
        """One epoch; returns training images/s."""
        model, criterion, optimizer = self.model, self.criterion, self.optimizer
        model.train()
        train_loss = 0.0
        images = 0
        started = time.perf_counter()
        for batch_inputs, batch_labels in itertools.islice(loader, max_batches):
            inputs, labels = batch_inputs.to(self.device), batch_labels.to(self.device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            train_loss += loss.item()
            images += len(labels)
        return images / (time.perf_counter() - started)


def program_session(version: DatasetVersion, out: Path, args: argparse.Namespace) -> TrainingSession:
    config = TrainConfig.model_validate(
        {
            "apiVersion": "modelops.dev/train-config/v1",
            "dataset": {"uri": version.uri, "digest": version.digest},
            "model": {"architecture": args.arch},
            "hyperparameters": {
                "epochs": 1000,
                "batchSize": args.batch_size,
                "learningRate": 1e-3,
                "mixedPrecision": args.precision,
                "channelsLast": True,
            },
            "output": {"uri": out.as_uri()},
            "checkpointing": {"everyEpochs": 10_000, "resume": False},
            "device": args.device,
            "logging": {"format": "json", "everySteps": 10**6},
            "terminationMessagePath": "",
        }
    )
    runtime = distributed.detect({}, config.device)
    distributed.setup(runtime)
    return TrainingSession(config, runtime)


def program_epoch(session: TrainingSession) -> float:
    """One epoch of the program's own loop; returns its training images/s (evaluation excluded)."""
    session.state.finished = False
    session._epoch()  # the loop of `python -m modelops_trainer.train`, as it runs there
    return float(session.state.history[-1]["images_per_second"])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=5, help="training batches per epoch (one measurement)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating measurements of each side")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=["end-to-end", "loop"], default=None)
    parser.add_argument("--synthetic", action="store_true", help="loop only: random pixels instead of the images")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "off"], default="auto", help="the program's")
    parser.add_argument("--profile", action="store_true", help="profile the program's epochs instead of measuring")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "trainer_throughput.json"))
    return parser.parse_args()


def memory_batches(
    samples: ImageSamples, image: ImageFormat, args: argparse.Namespace, batches: int
) -> tuple[list[Batch], list[Batch]]:
    """The same batches as each loop takes them: uint8 for the program, normalised floats for the
    document's loop (random pixels of the same shapes with --synthetic)."""
    uint8 = list(itertools.islice(DataLoader(samples, batch_size=args.batch_size), batches))
    if args.synthetic:
        gen = torch.Generator().manual_seed(0)
        uint8 = [
            (torch.randint(0, 256, x.shape, dtype=torch.uint8, generator=gen), torch.randint(0, 10, y.shape))
            for x, y in uint8
        ]
    cpu = Preprocess(image.color_mode, torch.device("cpu"), channels_last=False)
    return uint8, [(cpu.images(x), y) for x, y in uint8]


def report(results: dict[str, dict[str, list[float]]], args: argparse.Namespace, context: dict[str, object]) -> None:
    summary: dict[str, object] = {}
    for kind, sides in results.items():
        b_rates, p_rates = sides["baseline"], sides["program"]
        ratio = statistics.median(p / b for p, b in zip(p_rates, b_rates, strict=True))
        b, p = statistics.median(b_rates), statistics.median(p_rates)
        summary[kind] = {
            "baselineImagesPerSecond": round(b, 1),
            "programImagesPerSecond": round(p, 1),
            "ratio": round(ratio, 2),
        }
        print(
            f"{kind}: baseline {b:.1f} img/s, program {p:.1f} img/s (medians); "
            f"ratio {ratio:.2f}× (median of {args.rounds} side-by-side pairs)"
        )
    if "end-to-end" in results and "loop" in results:
        e2e, loop = results["end-to-end"]["program"], results["loop"]["program"]
        per_round = [e / c for e, c in zip(e2e, loop, strict=True)]
        summary["endToEndVsCompute"] = {
            "median": round(statistics.median(per_round), 3),
            "min": round(min(per_round), 3),
            "max": round(max(per_round), 3),
        }
        print(
            f"program end to end / its compute (loop only, same precision): {statistics.median(per_round):.2f} "
            f"(median of {len(per_round)} rounds, {min(per_round):.2f}–{max(per_round):.2f})"
        )
    setup = {
        "arch": args.arch,
        "imageSize": args.image_size,
        "batchSize": args.batch_size,
        "batchesPerMeasurement": args.batches,
        "rounds": args.rounds,
        "device": args.device,
        "synthetic": args.synthetic,
    }
    doc = {
        "benchmark": "trainer_throughput",
        **setup,
        **context,
        "loadAverageEnd": [round(x, 2) for x in os.getloadavg()],
        "summary": summary,
        "rates": results,
    }
    print(json.dumps(summary))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"written: {args.output}")


def profile(session: TrainingSession, memory_uint8: list[Batch], real_loader: object, epochs: int) -> None:
    """cProfile of the program's end-to-end and loop-only epochs: where the main process spends its time."""
    for kind, loader in (("end-to-end", real_loader), ("loop", memory_uint8)):
        session.train_loader = loader  # type: ignore[assignment]
        profiler = cProfile.Profile()
        profiler.enable()
        rates = [program_epoch(session) for _ in range(epochs)]
        profiler.disable()
        print(f"\n=== {kind}: {', '.join(f'{r:.1f}' for r in rates)} img/s; top functions by own time")
        stats = pstats.Stats(profiler).strip_dirs().sort_stats(pstats.SortKey.TIME)
        stats.print_stats(18)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    info = machine(device)
    flags = ", ".join(info["cpuFlags"]) or "no avx2, avx512 or amx"  # type: ignore[arg-type]
    print(f"machine: {info['cores']} CPUs ({info['usableCores']} usable); {info['cpu']}; {flags}")
    if device.type == "cuda":
        print(f"GPU: {info['gpu']}")
    load_start = [round(x, 2) for x in os.getloadavg()]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.arch}, {args.image_size}px, batch {args.batch_size}"
    )
    with tempfile.TemporaryDirectory(prefix="modelops-bench-") as tmp:
        version = make_dataset(Path(tmp) / "data", args.image_size, args.batches * args.batch_size)
        session = program_session(version, Path(tmp) / "run", args)
        reader = DatasetReader(version.uri, digest=version.digest)
        image = reader.manifest.image
        # The document normalises per image in its loader (albumentations' Normalize); same augmentation.
        mean, std = normalization(image.color_mode)
        to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
        samples = ImageSamples(reader.index("train"), image, v2.Compose([train_transform(POLICY, image), *to_float]))
        loader = DataLoader(samples, batch_size=args.batch_size, shuffle=True)  # the document's loader
        batches = session.batches
        print(
            f"dataset: {len(samples)} training images → {batches} batches per epoch; program loader workers: "
            f"{session.train_loader.num_workers}, precision {session.precision.name}"
        )
        print(f"precision choice: {json.dumps(session.precision_choice.to_json())}")
        baseline = SourceDocumentLoop(args.arch, len(reader.classes), device)
        kinds = [args.only] if args.only else ["end-to-end", "loop"]
        results: dict[str, dict[str, list[float]]] = {k: {"baseline": [], "program": []} for k in kinds}
        # Warm-up: one epoch each (oneDNN/cuDNN primitive creation, worker start-up).
        baseline.epoch(loader, max_batches=batches)
        program_epoch(session)
        raw = ImageSamples(reader.index("train"), image, train_transform(POLICY, image))
        memory_uint8, memory_float = memory_batches(raw, image, args, batches)
        real_loader = session.train_loader
        if args.profile:
            profile(session, memory_uint8, real_loader, max(1, args.rounds // 2))
            return
        for round_ in range(args.rounds):
            for i, kind in enumerate(kinds):
                # baseline, program | program, baseline: each pair back to back, and the program's
                # end-to-end and loop-only epochs too (their ratio is endToEndVsCompute).
                rate = {}
                for side in ("baseline", "program") if i % 2 == 0 else ("program", "baseline"):
                    if side == "baseline":
                        data = loader if kind == "end-to-end" else memory_float
                        rate[side] = baseline.epoch(data, max_batches=batches)
                    else:
                        session.train_loader = real_loader if kind == "end-to-end" else memory_uint8  # type: ignore[assignment]
                        rate[side] = program_epoch(session)
                b, p = rate["baseline"], rate["program"]
                results[kind]["baseline"].append(b)
                results[kind]["program"].append(p)
                print(
                    f"round {round_ + 1} {kind:>10}: baseline {b:7.1f} img/s   "
                    f"program {p:7.1f} img/s   ratio {p / b:.2f}×",
                    flush=True,
                )
        context = {
            "machine": info,
            "loadAverageStart": load_start,
            "programLoaderWorkers": real_loader.num_workers,
            "programPrecision": session.precision_choice.to_json(),
        }
        report(results, args, context)


if __name__ == "__main__":
    main()
