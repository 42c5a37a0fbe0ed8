"""The image builds (hack/images.py) against the local cluster's registry: a failed build names the
step that failed and leaves no tag and no recorded digest behind; a rebuild with no change gives
the same digests."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.cluster import REPO, images

sys.path.insert(0, str(REPO / "hack"))
import images as builder


def tags(repository: str) -> list[str] | None:
    """The registry's tags of a repository; None when the registry has never heard of it."""
    try:
        with urllib.request.urlopen(f"http://{builder.REGISTRY}/v2/{repository}/tags/list", timeout=10) as r:
            return list(json.load(r).get("tags") or [])
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def working_containers() -> set[str]:
    listing = ["buildah", "containers", "--quiet", "--notruncate"]
    return set(subprocess.run(listing, capture_output=True, text=True, check=True).stdout.split())


def test_a_failed_build_names_its_step_and_pushes_nothing(cluster, tmp_path: Path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\nCOPY no-such-file /here\n")
    (tmp_path / "Dockerfile.dockerignore").write_text("")
    before, containers = builder.load_refs(), working_containers()
    broken = builder.Image("broken-build-test", str(dockerfile))
    with pytest.raises(builder.BuildError) as failure:
        builder.build(broken, base="scratch", wheels=tmp_path)
    message = str(failure.value)
    assert message.startswith(f"building {dockerfile} failed"), message
    assert 'STEP "COPY no-such-file /here"' in message, message
    assert tags("modelops/broken-build-test") is None  # no tag, not even a half-pushed one
    assert builder.load_refs() == before
    # Nor a working container with its overlay mount (one was left by every failed build before --force-rm).
    assert working_containers() <= containers


def test_a_rebuild_without_change_gives_the_same_digests(cluster):
    before = images()
    after = builder.build_all([])
    assert {k: after[k] for k in before} == before
