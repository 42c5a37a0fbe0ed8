"""bench/report.py: the docs' benchmark tables generated from bench/results/, and its --check
(hack/test.sh runs it) failing, naming the block, when a page and the result files disagree.

The script runs as CI runs it, a subprocess, on a temporary copy of the pages and result files."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image, JpegImagePlugin
from sklearn.datasets import load_sample_image

REPO = Path(__file__).resolve().parents[2]
PAGES = ("README.md", "docs/benchmarks.md", "bench/README.md")


def report(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "report.py"), "--root", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The pages and result files, as committed, under a temporary root."""
    for page in PAGES:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / page, tmp_path / page)
    (tmp_path / "bench" / "results").mkdir(parents=True, exist_ok=True)
    for result in (REPO / "bench" / "results").glob("*.json"):
        shutil.copy(result, tmp_path / "bench" / "results" / result.name)
    return tmp_path


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def test_the_committed_pages_match_the_result_files():
    done = report(REPO, "--check")
    assert done.returncode == 0, done.stderr + "\nrun: .venv/bin/python bench/report.py"


def test_a_changed_result_file_fails_check_naming_its_blocks_until_regenerated(copy):
    grpc = copy / "bench" / "results" / "grpc.json"
    edit_json(grpc, lambda doc: doc["points"][0]["rest"].update(rps=266.0))
    docs = (copy / "docs" / "benchmarks.md").read_text()

    stale = report(copy, "--check")
    assert stale.returncode == 1
    assert "docs/benchmarks.md: bench:grpc" in stale.stderr
    assert "docs/benchmarks.md: bench:summary" in stale.stderr  # the binary gRPC/REST range moved
    assert "bench:images" not in stale.stderr and "bench:search_algorithms" not in stale.stderr
    assert "README.md" not in stale.stderr  # gRPC has no goal in the README's headline table
    assert (copy / "docs" / "benchmarks.md").read_text() == docs, "--check must change nothing"

    wrote = report(copy)
    assert wrote.returncode == 0, wrote.stderr
    assert "docs/benchmarks.md (bench:summary, bench:grpc)" in wrote.stdout
    assert report(copy, "--check").returncode == 0
    page = (copy / "docs" / "benchmarks.md").read_text()
    assert "| `fp32x8-binary` | 1 | 266 | 6.9 / 17.2 | 3.23 | 115 |" in page
    changed = [new for old, new in zip(docs.splitlines(), page.splitlines(), strict=True) if old != new]
    assert changed[1] == "| `fp32x8-binary` | 1 | 266 | 6.9 / 17.2 | 3.23 | 115 | 7.6 / 24.7 | 4.18 | 0.43 |"
    assert len(changed) == 2 and changed[0].startswith("| inference server, gRPC next to REST |")


def test_a_value_a_file_lacks_shows_as_a_dash(copy):
    edit_json(copy / "bench" / "results" / "images.json", lambda doc: doc.pop("machine"))
    assert report(copy).returncode == 0
    page = (copy / "docs" / "benchmarks.md").read_text()
    assert "| `images.json` | — | — | — | — | — | — | — |" in page
    assert "(`bench/image_sizes.py`, no machine record):" in page
    assert "| operator | 140 MB | 426 MB | 6 |" in page  # the figures the file has are still there


def test_a_new_result_file_shows_in_the_summary_and_machines_with_the_harness_record(copy):
    spec = importlib.util.spec_from_file_location("bench_harness", REPO / "bench" / "harness.py")
    assert spec is not None and spec.loader is not None
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    record = harness.machine("pytest", "surely-not-installed")
    (copy / "bench" / "results" / "newbench.json").write_text(json.dumps({"machine": record}))

    assert report(copy, "--check").returncode == 1
    assert report(copy).returncode == 0
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True)
    commit = head.stdout.strip()[:7] + ("-dirty" if dirty.stdout.strip() else "")
    cpu = next(
        line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line
    )
    machines = next(
        line for line in (copy / "docs/benchmarks.md").read_text().splitlines() if "`newbench.json`" in line
    )
    cells = [c.strip() for c in machines.strip("|").split("|")]
    assert cells[1:5] == [record["date"][:10], commit, cpu, str(os.cpu_count())]
    assert cells[7] == f"pytest {pytest.__version__}"  # the package not installed is left out
    summary = next(line for line in (copy / "docs/benchmarks.md").read_text().splitlines() if "newbench.json" in line)
    assert summary.startswith("| newbench | — | — |") and commit in summary


def headline_row(root: Path, what: str) -> list[str]:
    """The cells of the README's headline row for `what`."""
    row = next(line for line in (root / "README.md").read_text().splitlines() if line.startswith(f"| [{what}]("))
    return [c.strip() for c in row.strip("|").split("|")]


def test_the_headline_verdict_follows_every_file_of_its_goal(copy):
    results = copy / "bench" / "results"
    before = headline_row(copy, "training on a CPU (ResNet-18, batch 32)")
    assert "2.22×, 0.95 of compute (AMD EPYC)" in before[2] and before[3] == "**missed** on AMD EPYC"

    edit_json(results / "trainer_throughput.json", lambda doc: doc["summary"]["end-to-end"].update(ratio=2.6))
    assert report(copy, "--check").returncode == 1
    assert report(copy).returncode == 0
    after = headline_row(copy, "training on a CPU (ResNet-18, batch 32)")
    assert "2.60×, 0.95 of compute (AMD EPYC)" in after[2] and after[3] == "met"

    # Fast enough but far from its own compute: the second half of the goal.
    edit_json(
        results / "trainer_throughput_xeon.json", lambda doc: doc["summary"]["endToEndVsCompute"].update(median=0.5)
    )
    assert report(copy).returncode == 0
    assert headline_row(copy, "training on a CPU (ResNet-18, batch 32)")[3] == "**missed** on Xeon"

    # A file without the figure is not judged; a goal with no file says so.
    edit_json(results / "trainer_throughput_xeon.json", lambda doc: doc.pop("summary"))
    (results / "faults.json").unlink()
    assert report(copy).returncode == 0
    assert headline_row(copy, "training on a CPU (ResNet-18, batch 32)")[3] == "—"
    assert headline_row(copy, "the operator killed mid-lifecycle")[2:] == ["not measured yet", "—"]
    # ... but a file that misses decides, whatever the other lacks.
    edit_json(results / "trainer_throughput.json", lambda doc: doc["summary"]["end-to-end"].update(ratio=2.0))
    assert report(copy).returncode == 0
    assert headline_row(copy, "training on a CPU (ResNet-18, batch 32)")[3] == "**missed**"


def test_the_scale_headline_misses_on_any_of_its_three_figures(monkeypatch):
    report = bench_script(monkeypatch, "report")
    run = {"objects": 1000, "converge_s": 59.0, "rss_peak_mib": 249.0, "steady_modelops_writes_per_min": 0.0}
    assert report.headline_scale({"sizes": [{**run, "objects": 100, "converge_s": 500.0}, run]})[1] is True
    for figure, value in (("converge_s", 61.0), ("rss_peak_mib", 251.0), ("steady_modelops_writes_per_min", 0.5)):
        assert report.headline_scale({"sizes": [{**run, figure: value}]})[1] is False, figure
    assert report.headline_scale({"sizes": [{"objects": 1000, "converge_s": 30.0}]})[1] is None


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("results/grpc.json:{not json", "bench/results/grpc.json: not a readable JSON file"),
        ("results/grpc.json:[1, 2]", "bench/results/grpc.json: expected a JSON object, got list"),
        ("results/grpc.json:", "bench/results/grpc.json is missing"),
        ("page:<!-- bench:nope -->\n<!-- /bench:nope -->\n", "docs/benchmarks.md: unknown block bench:nope"),
        ("page:<!-- bench:grpc -->\n", "docs/benchmarks.md: bench:grpc is never closed"),
        ("page:<!-- /bench:gpu -->\n", "closes a block that is not open"),
    ],
)
def test_bad_input_gets_a_clear_error(copy, breakage, message):
    where, _, content = breakage.partition(":")
    if where == "page":
        page = copy / "docs" / "benchmarks.md"
        page.write_text(page.read_text() + "\n" + content)
    elif content:
        (copy / "bench" / where).write_text(content)
    else:
        (copy / "bench" / where).unlink()
    done = report(copy, "--check")
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_list_names_every_block_a_page_uses():
    done = report(REPO, "--list")
    assert done.returncode == 0
    listed = {line.split()[0] for line in done.stdout.splitlines()}
    used = {
        line.split()[1].split("(")[0]
        for page in PAGES
        for line in (REPO / page).read_text().splitlines()
        if line.startswith("<!-- bench:")
    }
    assert used and used <= listed


def bench_script(monkeypatch: pytest.MonkeyPatch, name: str) -> Any:
    """bench/<name>.py loaded as the module `bench_<name>` (bench/ is not a package), with bench/ on
    the path for its own imports; both undone after the test."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, f"bench_{name}", module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_the_soak_summary_is_what_its_samples_give(monkeypatch):
    """soak.json was recomputed from soak.csv (soak.py --from-csv): the two must not drift apart."""
    soak = bench_script(monkeypatch, "soak")
    samples = soak.read_samples(REPO / "bench" / "results" / "soak.csv")
    committed = json.loads((REPO / "bench" / "results" / "soak.json").read_text())
    assert json.loads(json.dumps(soak.summary(samples))) == committed["summary"]
    assert committed["summary"]["requests"] == sum(s.requests for s in samples) > 0


def test_the_lone_client_summary_is_what_its_runs_give(monkeypatch):
    """server_lone_client.json's medians, ranges and verdicts come from its runs: they must not drift."""
    lone = bench_script(monkeypatch, "server_lone_client")
    committed = json.loads((REPO / "bench" / "results" / "server_lone_client.json").read_text())
    assert len(committed["runs"]) >= 5
    assert json.loads(json.dumps(lone.summarise(committed["runs"]))) == committed["summary"]


@pytest.mark.parametrize(
    ("doc", "default", "baseline"),
    [
        pytest.param({"writeVerbs": ["PATCH", "APPLY"]}, 0.0, 0.0, id="applies counted, none made"),
        pytest.param({}, 0.0, 3000.0, id="a file without writeVerbs whose baseline applied"),
        pytest.param({}, None, None, id="a file from before applies were counted"),
    ],
)
def test_steady_applies_are_read_from_the_writes_by_resource(monkeypatch, doc, default, baseline):
    report = bench_script(monkeypatch, "report")
    ours = {"objects": 1000, "steady_writes_by_resource": {"/events/ PATCH": 379}}
    before = {"objects": 1000, "steady_writes_by_resource": {"apps/deployments/ APPLY": 1500} if baseline else {}}
    doc = {**doc, "steadySeconds": 30, "sizes": [ours], "baseline": {"env": {}, "sizes": [before]}}
    assert report.steady_applies_per_min(doc, ours) == default
    assert report.steady_applies_per_min(doc, before) == baseline


def test_the_scale_summary_names_the_connections_only_when_the_file_has_them(monkeypatch):
    report = bench_script(monkeypatch, "report")
    run = {"objects": 1000, "converge_s": 130.0, "rss_peak_mib": 280.0}
    base = {"env": {"MODELOPS_API_CONNECTIONS": "0"}, "sizes": [{**run, "api_connections_peak_converging": 113}]}
    _, figure, _ = report.summary_scale({"sizes": [{**run, "api_connections_peak_converging": 52}], "baseline": base})
    assert "at most 52 connections to the API server" in figure
    assert "`MODELOPS_API_CONNECTIONS=0`" in figure and "at most 113 connections" in figure
    assert "connections" not in report.summary_scale({"sizes": [run]})[1]


def test_the_scale_summary_gives_the_api_servers_largest_parts_and_ours(monkeypatch):
    report = bench_script(monkeypatch, "report")
    parts = {"writes": 25.0, "gc": 14.0, "a": 9.0, "b": 8.5, "c": 8.2, "d": 8.1, "status writes (modelops.dev)": 7.8}
    profile = {"durationAndSamples": "Duration: 90.01s, Total samples = 95.25s", "cumulativePercentByPart": parts}
    what, figure, _ = report.summary_scale({"sizes": [{"objects": 1000, "apiServerProfile": profile}]})
    assert "--api-server-profile 90" in what
    assert "first 90 s of convergence" in figure and "writes **25%**" in figure
    assert "status writes (modelops.dev) **8%**" in figure  # ours, though not among the five largest
    assert "d **8%**" not in figure
    assert "profile" not in report.summary_scale({"sizes": [{"objects": 1000}]})[1]


def test_the_photos_summary_is_what_its_runs_give(monkeypatch):
    """server_photos.json's medians, ranges and verdicts come from its runs: they must not drift."""
    photos = bench_script(monkeypatch, "server_photos")
    committed = json.loads((REPO / "bench" / "results" / "server_photos.json").read_text())
    assert len(committed["runs"]) >= 5
    assert json.loads(json.dumps(photos.summarise(committed["runs"]))) == committed["summary"]


def test_a_photo_is_judged_unbounded_only_where_kserve_answered_none_in_most_runs(monkeypatch):
    photos = bench_script(monkeypatch, "server_photos")
    point = {"imagesPerSecond": 1.0, "p50Ms": 1.0, "p99Ms": 1.0, "serverCores": 1.0, "rejected": 0}

    def run(c4: float | None, c64: float | None) -> dict[str, Any]:
        ratios: dict[str, float | None] = {"p c=1": 1.5, "p c=4": c4, "p c=16": 3.0, "p c=64": c64}
        ratios |= {f"{k} per core": v for k, v in ratios.items()}
        points = {"p": {name: {str(c): point for c in (1, 4, 16, 64)} for name in ("modelops", "kserve")}}
        return {"points": points, "limits": {"p": {"pillow": 30.0, "ours": 50.0}}, "ratios": ratios}

    summary = photos.summarise([run(1.9, None), run(2.1, None), run(1.95, 5.0)])
    goals = summary["goals"]
    assert goals["p c=4"] == {"target": "≥ 2", "median": 1.95, "met": False}
    assert goals["p c=16"]["met"] is True
    assert goals["p c=64"] == {"target": "≥ 2", "median": None, "met": True}
    assert summary["ratios"]["p c=64"] == {"median": 5.0, "min": 5.0, "max": 5.0, "kserveAnsweredNone": 2}
    # KServe answered in most runs: the median of those runs is judged.
    assert photos.summarise([run(2.5, 1.5), run(2.5, 1.8), run(2.5, None)])["goals"]["p c=64"]["met"] is False


def test_the_photographs_are_the_sample_images_scaled_up_as_a_camera_saves_them(monkeypatch):
    photos = bench_script(monkeypatch, "server_photos")
    data = photos.camera_jpeg("flower.jpg")
    img = Image.open(io.BytesIO(data))
    assert (img.format, img.size) == ("JPEG", (1920, 1080))
    assert JpegImagePlugin.get_sampling(img) == 2  # 4:2:0, as cameras save
    # Brought back to the original's scale, it is the original's centre (less the JPEG's loss).
    original = np.asarray(load_sample_image("flower.jpg"), dtype=np.float32)  # 427 x 640
    back = np.asarray(img.convert("RGB").resize((640, 360), Image.Resampling.BOX), dtype=np.float32)
    top = (427 - 360) // 2
    assert np.abs(back - original[top : top + 360]).mean() < 6


def test_the_null_model_is_its_channel_means_times_a_matrix_under_an_imagenet_card(monkeypatch, tmp_path):
    """bench/server_ceiling.py's model: what the server loads as any exported model, and what it
    computes (a wrong axis or shape would fail here, not in a 4-minute run)."""
    ceiling = bench_script(monkeypatch, "server_ceiling")
    path = ceiling.null_model(tmp_path / "null.onnx")
    card = json.loads(Path(f"{path}.card.json").read_text())
    assert (card["input"]["imageSize"], card["input"]["layout"], len(card["classes"])) == (224, "NCHW", 1000)
    assert card["onnx"]["dynamicBatch"] is True
    x = np.random.default_rng(0).random((5, 3, 224, 224), dtype=np.float32)
    x[:, 1] += 2.0  # the channels differ, so a mean over the wrong axes gives other logits
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert out.shape == (5, 1000)
    (weights,) = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    np.testing.assert_allclose(out, x.mean(axis=(2, 3)) @ weights, rtol=1e-4, atol=1e-4)


def test_the_ceiling_summary_is_what_its_runs_give(monkeypatch):
    """server_ceiling.json's medians and ratios come from its runs: they must not drift."""
    ceiling = bench_script(monkeypatch, "server_ceiling")
    committed = json.loads((REPO / "bench" / "results" / "server_ceiling.json").read_text())
    assert len(committed["runs"]) >= 3
    assert json.loads(json.dumps(ceiling.summarise(committed["runs"]))) == committed["summary"]
