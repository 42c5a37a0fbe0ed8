#!/usr/bin/env python3
"""The project's container images, built here from their own Dockerfiles without a Docker engine.

    hack/images.py build [NAME ...]   build and push (default: all), print the references by digest
    hack/images.py build --no-push    build only, into buildah's local store (hack/setup.sh does,
                                      beside the Go builds, so that hack/cluster.py up only pushes)
    hack/images.py refs               print the references of the last successful pushes (JSON)
    hack/images.py wheels             fill the machine's wheel cache only (hack/setup.sh does)

The builder is Debian's buildah (daemonless, runs as root, no Docker daemon; it understands the
Dockerfiles' `RUN --mount=type=bind,from=<stage>`). Each image is built from the same Dockerfile a
user builds with `docker build`, with two build arguments:

- `PYTHON_IMAGE`: a base made here from Debian's packages (mmdebstrap: python3, python3-venv,
  passwd, ca-certificates), since the official python image cannot be pulled. The Dockerfiles
  need only a Python 3.11 with its venv module from their base, which both keep.
- `PIP_FIND_LINKS` + `PIP_NO_INDEX`: the machine's wheel cache ($MODELOPS_CACHE/wheels), filled
  once per machine by `pip download` and shared with the project's .venv (hack/setup.sh installs
  from it too), so that PyTorch and the CUDA wheels are never downloaded per build. The builds
  then need no HTTPS at all; the trainer's `apt-get install g++` uses Debian's plain-HTTP mirror.

Layers are cached (`--layers`), so a rebuild with no source change takes seconds. Images are
pushed (gzip layers; a layer the registry has is not sent again) to the local registry (Debian's
docker-registry on 127.0.0.1, started by hack/cluster.py) and referenced by digest; a failed
build or push leaves the previous tag and digest as they were (the registry moves a tag only once
its manifest is written, and the digest file is replaced only after the push succeeded).

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MODELOPS_CACHE", Path.home() / ".cache" / "modelops"))
WHEELS = CACHE / "wheels"
REFS = CACHE / "images" / "refs.json"
REGISTRY = f"127.0.0.1:{os.environ.get('MODELOPS_REGISTRY_PORT', '15000')}"
#: Debian release of the base; its Python (3.11) is the one the wheels are built for.
DEBIAN = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "passwd", "ca-certificates")
BASE = f"localhost/modelops/python-base:{DEBIAN}"
PAUSE = "modelops/pause:3.10"


@dataclass(frozen=True)
class Image:
    """One of the project's images: its Dockerfile and the build arguments the local cluster uses."""

    name: str
    dockerfile: str
    build_args: tuple[tuple[str, str], ...] = ()

    @property
    def repository(self) -> str:
        return f"{REGISTRY}/modelops/{self.name}"


#: The trainer is the CUDA variant (PyTorch from PyPI brings its CUDA libraries; the CPU variant's
#: wheels come from PyTorch's own index, which this machine cannot reach). The server is the CPU
#: variant: no GPU here, and ONNX Runtime's CUDA libraries would add gigabytes for nothing.
IMAGES = {
    "operator": Image("operator", "operator/Dockerfile"),
    "trainer": Image("trainer", "trainer_image/Dockerfile", (("VARIANT", "cuda"),)),
    "server": Image("server", "server_image/Dockerfile", (("VARIANT", "cpu"),)),
}

#: What the images' builder stages install, for the wheel cache: each Dockerfile's `pip wheel`
#: arguments for the variants above, plus the build backend of the three packages, plus what the
#: base's Python (Debian's 3.11.2) needs beyond this machine's: pip evaluates environment markers
#: for the running interpreter only (redis wants async-timeout below Python 3.11.3).
WHEEL_REQUIREMENTS = (
    "./operator",
    "./trainer_image[samples]",
    "./server_image",
    "setuptools==84.2.1",
    "async-timeout>=4.0.3",
)


class BuildError(SystemExit):
    """A step failed; the message names it and ends with the tail of its output."""


def log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def run(*args: str | Path, what: str, capture: bool = False, cwd: Path = REPO) -> str:
    """Run a command; on failure, raise BuildError naming `what` with the output's last lines."""
    res = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, cwd=cwd)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-40:])
        raise BuildError(f"{what} failed (exit {res.returncode}): {' '.join(map(str, args))}\n{tail}")
    return res.stdout if capture else ""


def need(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        raise BuildError(
            f"missing {', '.join(missing)}: run hack/setup.sh (it installs Debian's buildah and mmdebstrap)"
        )


def _pip() -> list[str]:
    venv = REPO / ".venv" / "bin" / "python"
    return [str(venv if venv.exists() else sys.executable), "-m", "pip"]


def wheel_cache() -> Path:
    """Fill the machine's wheel cache with every wheel the images install (once per input change)."""
    inputs = b"".join(
        (REPO / p).read_bytes()
        for p in (
            "constraints.txt",
            "operator/pyproject.toml",
            "trainer_image/pyproject.toml",
            "server_image/pyproject.toml",
        )
    )
    key = hashlib.sha256(inputs + repr(WHEEL_REQUIREMENTS).encode()).hexdigest()[:16]
    stamp = WHEELS / ".complete"
    if stamp.exists() and stamp.read_text().strip() == key:
        return WHEELS
    log(f"filling the wheel cache {WHEELS} (PyTorch and its CUDA libraries: gigabytes, once per machine)")
    WHEELS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    run(
        *_pip(), "download", "--quiet", "--only-binary=:all:", "--constraint", "constraints.txt",
        "--dest", WHEELS, *WHEEL_REQUIREMENTS, "setuptools>=69",
        what="downloading the images' wheels",
    )  # fmt: skip
    stamp.write_text(key + "\n")
    log(f"wheel cache filled in {time.monotonic() - started:.0f}s")
    return WHEELS


def base_image() -> str:
    """The base made from Debian's packages, built once per machine (its package list is its key)."""
    key = hashlib.sha256(repr((DEBIAN, BASE_PACKAGES)).encode()).hexdigest()[:12]
    tag = f"{BASE}-{key}"
    if subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True, check=False).returncode == 0:
        return tag
    need("mmdebstrap")
    log(f"making the base image {tag} from Debian's packages (mmdebstrap: about a minute)")
    mirror = "http://deb.debian.org/debian"
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        run(
            "mmdebstrap", "--quiet", "--variant=apt", f"--include={','.join(BASE_PACKAGES)}",
            '--aptopt=Acquire::Retries "3"', DEBIAN, rootfs,
            f"deb {mirror} {DEBIAN} main", f"deb {mirror} {DEBIAN}-updates main",
            f"deb {mirror}-security {DEBIAN}-security main",
            what="mmdebstrap of the base image",
        )  # fmt: skip
        ctr = run("buildah", "from", "scratch", what="buildah from scratch", capture=True).strip()
        try:
            mnt = run("buildah", "mount", ctr, what="buildah mount", capture=True).strip()
            run("tar", "-C", mnt, "-xf", rootfs, what="unpacking the base's root filesystem")
            run("buildah", "umount", ctr, what="buildah umount")
            run(
                "buildah", "config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--env", "LANG=C.UTF-8", "--cmd", '["python3"]',
                "--label", f"org.opencontainers.image.description=Debian {DEBIAN} with {' '.join(BASE_PACKAGES)}",
                ctr, what="buildah config of the base",
            )  # fmt: skip
            run("buildah", "commit", "--quiet", ctr, tag, what="buildah commit of the base")
        finally:
            subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
    return tag


def pause_image() -> str:
    """The sandbox ("pause") image: a static program that waits for a signal, as a one-file image."""
    source = "#include <signal.h>\n#include <unistd.h>\nstatic void stop(int s) { (void)s; _exit(0); }\n" \
        "int main(void) { signal(SIGTERM, stop); signal(SIGINT, stop); for (;;) pause(); }\n"  # fmt: skip
    local = f"localhost/{PAUSE}"
    if (
        subprocess.run(["buildah", "inspect", "--type", "image", local], capture_output=True, check=False).returncode
        == 0
    ):
        return push(local, f"{REGISTRY}/{PAUSE}")  # the same image, the same digest
    with tempfile.TemporaryDirectory() as tmp:
        src, binary = Path(tmp) / "pause.c", Path(tmp) / "pause"
        src.write_text(source)
        run("gcc", "-static", "-Os", "-s", "-o", binary, src, what="compiling the pause program")
        ctr = run("buildah", "from", "scratch", what="buildah from scratch", capture=True).strip()
        try:
            run("buildah", "copy", "--chmod", "0755", ctr, binary, "/pause", what="buildah copy of pause")
            run("buildah", "config", "--entrypoint", '["/pause"]', "--user", "65535:65535", ctr, what="buildah config")
            run("buildah", "commit", "--quiet", ctr, local, what="buildah commit of pause")
        finally:
            subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
    return push(local, f"{REGISTRY}/{PAUSE}")


def push(local: str, remote: str) -> str:
    """Push to the local registry; return the reference by digest."""
    with tempfile.TemporaryDirectory() as tmp:
        digestfile = Path(tmp) / "digest"
        run(
            "buildah", "push", "--quiet", "--tls-verify=false",
            "--digestfile", digestfile, local, f"docker://{remote}",
            what=f"pushing {local} to {remote}",
        )  # fmt: skip
        digest = digestfile.read_text().strip()
    return f"{remote.rsplit(':', 1)[0]}@{digest}"


def _image_id(local: str) -> str | None:
    result = subprocess.run(
        ["buildah", "images", "--noheading", "--no-trunc", "--format", "{{.ID}}", local],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.stdout.strip() or None if result.returncode == 0 else None


def build(image: Image, base: str, wheels: Path, *, push_it: bool = True) -> str:
    """Build one image from its Dockerfile and push it; return its reference by digest (its local
    name when not pushed)."""
    local = f"localhost/modelops/{image.name}:dev"
    args = [
        "buildah", "bud", "--layers", "--force-rm", "--network=host", "--quiet",
        "--file", image.dockerfile, "--ignorefile", f"{image.dockerfile}.dockerignore",
        "--build-arg", f"PYTHON_IMAGE={base}",
        "--build-arg", "PIP_FIND_LINKS=/wheelhouse", "--build-arg", "PIP_NO_INDEX=1",
        "--volume", f"{wheels}:/wheelhouse:ro",
    ]  # fmt: skip
    for key, value in image.build_args:
        args += ["--build-arg", f"{key}={value}"]
    previous = _image_id(local)
    started = time.monotonic()
    run(*args, "--tag", local, ".", what=f"building {image.dockerfile}")
    if previous and previous != _image_id(local):
        # The image the tag leaves behind (with the layers only it holds): without this, each
        # change of the sources keeps another generation on disk. Not `rmi --prune`: that also
        # drops the intermediate images that are the layer cache of the next build.
        subprocess.run(["buildah", "rmi", previous], capture_output=True, check=False)
    built = time.monotonic() - started
    if not push_it:
        log(f"{image.name}: built in {built:.0f}s, not pushed")
        return local
    ref = push(local, f"{image.repository}:dev")
    log(f"{image.name}: built in {built:.0f}s, pushed in {time.monotonic() - started - built:.0f}s: {ref}")
    return ref


def load_refs() -> dict[str, str]:
    try:
        return dict(json.loads(REFS.read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def save_refs(refs: dict[str, str]) -> None:
    REFS.parent.mkdir(parents=True, exist_ok=True)
    tmp = REFS.with_suffix(".tmp")
    tmp.write_text(json.dumps(refs, indent=2, sort_keys=True) + "\n")
    tmp.replace(REFS)


def build_all(names: list[str], *, push_them: bool = True) -> dict[str, str]:
    """Build the named images (all by default) and the pause image; return every reference. Not
    pushed, the images are only built into the local store (no registry needed): the references
    are their local names, and the file of references is left as it was."""
    need("buildah", "gcc")
    unknown = sorted(set(names) - set(IMAGES))
    if unknown:
        raise BuildError(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(IMAGES)}")
    if not push_them:
        base, wheels = base_image(), wheel_cache()
        return {name: build(IMAGES[name], base, wheels, push_it=False) for name in names or list(IMAGES)}
    refs = load_refs()
    refs["pause"] = pause_image()
    save_refs(refs)
    base, wheels = base_image(), wheel_cache()
    for name in names or list(IMAGES):
        refs[name] = build(IMAGES[name], base, wheels)
        save_refs(refs)
    return refs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/images.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build and push images (the registry must run: hack/cluster.py up starts it)")
    b.add_argument("names", nargs="*", metavar="NAME", help=f"images to build: {', '.join(IMAGES)} (default: all)")
    b.add_argument(
        "--no-push", dest="push", action="store_false", help="build into the local store only (no registry needed)"
    )
    sub.add_parser("refs", help="print the references by digest of the last successful pushes")
    sub.add_parser("wheels", help="fill the machine's wheel cache (shared with .venv) and print its path")
    args = parser.parse_args(argv)
    if args.command == "wheels":
        print(wheel_cache())
        return 0
    refs = build_all(args.names, push_them=args.push) if args.command == "build" else load_refs()
    print(json.dumps(refs, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
