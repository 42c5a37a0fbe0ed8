"""Large real photographs: modelops_server against KServe 0.21, one 1920×1080 photo per request.

    .venv/bin/python bench/server_photos.py              # 5 runs, about 23 minutes on 2 cores
    .venv/bin/python bench/server_photos.py --runs 1 --duration 3 --warmup 1   # a smoke run

An outside run with a real camera photograph at 1920×1080 found this server's lead over KServe
much smaller (1.38×, 1.75×, 1.92× at 1, 4 and 16 connections) than ``bench/server_bench.py``'s
synthetic photo shows: a synthetic picture does not compress or decode like a real one. The goal
is at least 2× KServe's images per second at every concurrency from 4 up, on the median of at least
5 runs.

The payloads are the two photographs scikit-learn ships (``china.jpg`` and ``flower.jpg``,
640×427), scaled up to cover 1920×1080 (Lanczos), centre-cropped, and saved as a camera saves
them: JPEG quality 92, 4:2:0 chroma subsampling. One photo per request, as base64 BYTES in an Open
Inference Protocol JSON body, the same bytes to both servers. Scaled-up pictures are smoother than
a camera's: their files are smaller and decode faster, which helps both servers. So every run also
measures ``bench/server_bench.py``'s synthetic 1920×1080 photo, whose fine texture costs the
decoder more than either real photograph: it bounds the goal from the hard side.

The servers are started once and measured alternately, their order swapped from run to run:
``modelops`` (``python -m modelops_server`` with ``bench/server_lone_client.py``'s settings: one
worker, batches of up to 4, a 2 ms window, ``--queue-capacity 8``) and ``kserve`` (KServe 0.21's
Python model server, ``bench/server_kserve_model.py``, one worker, Pillow decoding, in the
git-ignored ``build/bench-venv``). Each run starts with each photo's in-process limit: Pillow's
full decode, resize and ONNX Runtime in a tight loop, and the same with this server's preprocessor
(reduced-scale JPEG decoding). The summary is the median over the runs and their range (min–max),
the goals judged on the medians. Writes ``bench/results/server_photos.json`` with the machine
record (``bench/harness.py``).
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path
from typing import Any

from PIL import Image
from server_bench import (
    WORK,
    ensure_bench_venv,
    export_resnet18,
    free_port,
    in_process_limit,
    photo,
    running,
    v2_body,
)
from server_loadgen import build_request
from server_lone_client import (
    CONNECTIONS,
    keep,
    parse_args,
    point,
    server_commands,
    settings,
    show,
    spread,
    spread_point,
)

#: The photos scikit-learn ships, and the synthetic one of bench/server_bench.py.
SAMPLES = ("china.jpg", "flower.jpg")
SYNTHETIC = "synthetic"
SIZE = (1920, 1080)
QUALITY = 92
#: The goal: at least this many times KServe's images per second at each of these connections.
GOAL_RATIO, GOAL_CONNECTIONS = 2.0, (4, 16, 64)


def camera_jpeg(name: str, size: tuple[int, int] = SIZE) -> bytes:
    """A scikit-learn sample photograph scaled up to cover `size`, centre-cropped, saved as a camera
    saves a JPEG (quality 92, 4:2:0)."""
    from sklearn.datasets import load_sample_image  # noqa: PLC0415 - scikit-learn is a dev dependency

    img = Image.fromarray(load_sample_image(name))
    scale = max(size[0] / img.width, size[1] / img.height)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    left, top = (img.width - size[0]) // 2, (img.height - size[1]) // 2
    buf = io.BytesIO()
    img.crop((left, top, left + size[0], top + size[1])).save(buf, format="JPEG", quality=QUALITY, subsampling=2)
    return buf.getvalue()


def photos() -> dict[str, bytes]:
    """The payloads by name: the two real photographs, then the synthetic one."""
    out = {name.removesuffix(".jpg"): camera_jpeg(name) for name in SAMPLES}
    out[SYNTHETIC] = photo(*SIZE, seed=2)
    return out


def one_run(
    index: int,
    pids: dict[str, int],
    ports: dict[str, int],
    model: Path,
    images: dict[str, bytes],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Every photo at every concurrency once, against both servers (order swapped by `index`)."""
    order = ["modelops", "kserve"] if index % 2 == 0 else ["kserve", "modelops"]
    load_before = os.getloadavg()
    limits: dict[str, dict[str, float]] = {}
    points: dict[str, dict[str, dict[str, Any]]] = {}
    ratios: dict[str, float | None] = {}
    for label, image in images.items():
        limits[label] = {
            "pillow": in_process_limit(model, [image], args.limit_seconds, reduced=False, spinning=False),
            "ours": in_process_limit(model, [image], args.limit_seconds, reduced=True, spinning=False),
        }
        print(
            f"run {index + 1}, {label}: in-process limit {limits[label]['pillow']:.1f} img/s with Pillow's full "
            f"decode, {limits[label]['ours']:.1f} with our preprocessor",
            flush=True,
        )
        body, headers = v2_body([image])
        request = build_request("/v2/models/resnet18/infer", body, headers)
        points[label] = {name: {} for name in order}
        for c in CONNECTIONS:
            for name in order:
                points[label][name][str(c)] = point(pids[name], ports[name], request, c, args)
                show(name, c, points[label][name][str(c)])
            ours, ks = points[label]["modelops"][str(c)], points[label]["kserve"][str(c)]
            # None where KServe answered nothing within the point (every answer took longer).
            answered = ks["imagesPerSecond"] > 0
            ratios[f"{label} c={c}"] = ours["imagesPerSecond"] / ks["imagesPerSecond"] if answered else None
            per_core = [p["imagesPerSecond"] / max(p["serverCores"], 1e-9) for p in (ours, ks)]
            ratios[f"{label} c={c} per core"] = per_core[0] / per_core[1] if answered else None
    print("  " + ", ".join(f"{k} {v if v is None else round(v, 2)}" for k, v in ratios.items() if "core" not in k))
    return {
        "order": order,
        "loadAverageStart": list(load_before),
        "loadAverageEnd": list(os.getloadavg()),
        "limits": limits,
        "points": points,
        "ratios": ratios,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and ranges over the runs of each point, limit and ratio; the goals on the medians."""
    first = runs[0]
    points = {
        label: {
            name: {c: spread_point([r["points"][label][name][c] for r in runs]) for c in per_c}
            for name, per_c in per_name.items()
        }
        for label, per_name in first["points"].items()
    }
    limits = {
        label: {key: spread([r["limits"][label][key] for r in runs]) for key in per}
        for label, per in first["limits"].items()
    }
    # A ratio over the runs where KServe answered within the point; how many it did not is kept.
    ratios: dict[str, dict[str, float]] = {}
    for key in first["ratios"]:
        values = [r["ratios"][key] for r in runs if r["ratios"][key] is not None]
        ratios[key] = {**(spread(values) if values else {}), "kserveAnsweredNone": len(runs) - len(values)}
    goals = {}
    for label in first["points"]:
        for c in GOAL_CONNECTIONS:
            ratio = ratios[f"{label} c={c}"]
            # Where KServe answered nothing in most runs, the ratio is unbounded: the goal is met.
            median = ratio.get("median") if ratio["kserveAnsweredNone"] * 2 <= len(runs) else None
            goals[f"{label} c={c}"] = {
                "target": f"≥ {GOAL_RATIO:g}",
                "median": median,
                "met": median is None or median >= GOAL_RATIO,
            }
    return {"runs": len(runs), "limits": limits, "points": points, "ratios": ratios, "goals": goals}


def main() -> None:
    args = parse_args(__doc__)
    WORK.mkdir(parents=True, exist_ok=True)
    model = export_resnet18()
    images = photos()
    python = ensure_bench_venv()
    ports = {name: free_port() for name in ("modelops", "kserve")}
    servers = server_commands(model, python, ports, args.server_arg)
    print("payloads: " + ", ".join(f"{k} {len(v) // 1024} KiB" for k, v in images.items()), flush=True)
    started = time.time()
    with running(servers) as pids:
        runs = [one_run(index, pids, ports, model, images, args) for index in range(args.runs)]
    summary = summarise(runs)
    for key, goal in summary["goals"].items():
        r = summary["ratios"][key]
        figure = f"median {r['median']:.2f} (range {r['min']:.2f}–{r['max']:.2f})" if "median" in r else "—"
        print(
            f"{key}: modelops / KServe {figure}, KServe answered none in {r['kserveAnsweredNone']} runs; "
            f"target {goal['target']}: {'met' if goal['met'] else 'NOT met'}"
        )
    about = {
        "payloads": {
            label: {
                "source": f"scikit-learn's {label}.jpg scaled up" if label != SYNTHETIC else "bench/server_bench.py",
                "size": list(SIZE),
                "jpegBytes": len(image),
                "bitsPerPixel": round(8 * len(image) / (SIZE[0] * SIZE[1]), 3),
            }
            for label, image in images.items()
        },
        "settings": {**settings(servers, args), "jpegQuality": QUALITY},
    }
    keep("server_photos", args, python, about, started, summary, runs, ("scikit-learn",))


if __name__ == "__main__":
    main()
