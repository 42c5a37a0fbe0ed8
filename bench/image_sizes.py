"""The three images built here (hack/images.py): their sizes, and what a rebuild costs.

Measured, in one run:
- each image's size compressed (gzip, as the local registry holds and containerd pulls it) and
  unpacked (the layers' tar streams), with its layer count;
- a rebuild of all three with no source change (hack/images.py build: cached layers, pushes that
  find every blob already there), against the baseline of building the operator image from
  scratch (`--no-cache`) in the same run, so that the ratio does not depend on this machine's speed.

Needs the local registry running (hack/cluster.py up). Writes bench/results/images.json.

    .venv/bin/python bench/image_sizes.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))
sys.path.insert(0, str(REPO))

import images  # noqa: E402  (hack/images.py)

from bench.harness import machine, write_result  # noqa: E402

MANIFEST_TYPES = ", ".join(
    ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
)


def registry_json(path: str) -> dict[str, object]:
    req = urllib.request.Request(f"http://{images.REGISTRY}{path}", headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(req, timeout=30) as r:
        return dict(json.load(r))


def sizes(ref: str) -> dict[str, float]:
    """Compressed (as pushed and pulled) and unpacked sizes (MB) and the layer count of an image in
    the local registry: gzip layers are measured as stored and decompressed; plain tar layers as
    stored and gzip-compressed (level 6, what `docker push` would send)."""
    repository, digest = ref.split("@")
    name = repository.split("/", 1)[1]
    manifest = registry_json(f"/v2/{name}/manifests/{digest}")
    layers = list(manifest["layers"])  # type: ignore[call-overload]
    unpacked = packed = 0
    for layer in layers:
        gzipped = str(layer["mediaType"]).endswith("gzip")
        codec = zlib.decompressobj(31) if gzipped else zlib.compressobj(6, zlib.DEFLATED, 31)
        url = f"http://{images.REGISTRY}/v2/{name}/blobs/{layer['digest']}"
        with urllib.request.urlopen(url, timeout=60) as r:
            while chunk := r.read(1 << 20):
                out = len(codec.decompress(chunk) if gzipped else codec.compress(chunk))  # type: ignore[union-attr]
                unpacked += out if gzipped else len(chunk)
                packed += len(chunk) if gzipped else out
        packed += 0 if gzipped else len(codec.flush())
    return {"unpackedMB": round(unpacked / 1e6, 1), "compressedMB": round(packed / 1e6, 1), "layers": len(layers)}


def timed(*args: str) -> float:
    started = time.monotonic()
    subprocess.run(list(args), check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    hack = str(REPO / "hack" / "images.py")
    timed(sys.executable, hack, "build")  # everything built once, so that the next run is a rebuild
    rebuild = timed(sys.executable, hack, "build")
    base = images.base_image()
    scratch = timed(
        "buildah", "bud", "--no-cache", "--network=host", "--quiet", "--file", "operator/Dockerfile",
        "--ignorefile", "operator/Dockerfile.dockerignore", "--build-arg", f"PYTHON_IMAGE={base}",
        "--build-arg", "PIP_FIND_LINKS=/wheelhouse", "--build-arg", "PIP_NO_INDEX=1",
        "--volume", f"{images.WHEELS}:/wheelhouse:ro", "--tag", "localhost/modelops/operator:bench", ".",
    )  # fmt: skip
    subprocess.run(["buildah", "rmi", "localhost/modelops/operator:bench"], capture_output=True, check=False)
    refs = images.load_refs()
    result = {
        "benchmark": "images",
        "machine": machine(),
        "images": {name: {"ref": refs[name], **sizes(refs[name])} for name in images.IMAGES},
        "rebuildAllNoChangeSeconds": round(rebuild, 1),
        "operatorFromScratchSeconds": round(scratch, 1),
        "rebuildVsOperatorFromScratch": round(rebuild / scratch, 3),
    }
    for name, s in result["images"].items():  # type: ignore[attr-defined]
        mb = f"{s['compressedMB']:8.1f} MB compressed {s['unpackedMB']:8.1f} MB unpacked"
        print(f"{name:9} {mb} {s['layers']:3d} layers")
    print(f"rebuild of all three, no change: {rebuild:.1f}s; operator from scratch: {scratch:.1f}s "
          f"(ratio {rebuild / scratch:.2f})")  # fmt: skip
    write_result("images", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
