"""The local cluster's Go builds (hack/build-binaries.sh) that build one after the other to share
Go's build cache. A package compiled for one is reused by the next only where every module it
depends on is at the same version in both, so the wrapper modules of such a chain require the same
version of each module they share: a version raised in one of them alone would not break the build,
only make it compile those packages again (minutes on 2 cores), which this test catches instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.tools import missing

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "build-binaries.sh"
GOMOD = REPO / "hack" / "gomod"


def chains() -> list[list[str]]:
    """The default build list's chains (sets joined by "+")."""
    (default,) = re.findall(r"want=\(([^)$]*)\)", SCRIPT.read_text())
    return [word.split("+") for word in default.split() if "+" in word]


def versions(module_dir: Path) -> dict[str, str]:
    """What a wrapper module builds with: each required module's version, or its replacement's."""
    required: dict[str, str] = {}
    replaced: dict[str, str] = {}
    block = ""
    for line in re.sub(r"//.*", "", (module_dir / "go.mod").read_text()).splitlines():
        words = line.split()
        if words == [")"]:
            block = ""
            continue
        if len(words) == 2 and words[1] == "(":
            block = words[0]
            continue
        verb = block
        if not block and words:
            verb, words = words[0], words[1:]
        if verb == "require" and len(words) == 2:
            required[words[0]] = words[1]
        elif verb == "replace" and "=>" in words and words[-1].startswith("v"):
            replaced[words[0]] = words[-1]
    return required | {module: version for module, version in replaced.items() if module in required}


def test_the_default_build_list_has_chains_of_known_sets():
    found = chains()
    assert ["metrics-server", "custom-metrics-adapter", "kwok", "health"] in found
    for chain in found:
        for name in chain:
            assert re.search(rf"^\s+{re.escape(name)}\)", SCRIPT.read_text(), re.M), f"no set {name} in {SCRIPT.name}"


def differences(chain: list[str], root: Path = GOMOD) -> list[str]:
    """What keeps each later set of a chain from reusing the packages of the sets built before it."""
    # A set's module directory is its name in hack/gomod.
    mods = {name: versions(root / name) for name in chain}
    problems = []
    for i, later in enumerate(chain[1:], 1):
        theirs = mods[later]
        shared_with_first = set(mods[chain[0]]) & set(theirs)
        if len(shared_with_first) < 20:
            problems.append(f"{chain[0]} and {later} share only {len(shared_with_first)} modules: why chain them?")
        for earlier in chain[:i]:
            ours = mods[earlier]
            differ = {m: (ours[m], theirs[m]) for m in sorted(set(ours) & set(theirs)) if ours[m] != theirs[m]}
            if differ:
                problems.append(
                    f"hack/gomod/{later} builds after hack/gomod/{earlier} to reuse its compiled packages, "
                    f"but they require different versions of {differ}: require the same in both"
                )
    return problems


@pytest.mark.parametrize("chain", chains(), ids="+".join)
def test_the_sets_of_a_chain_require_one_version_of_each_module_they_share(chain):
    assert differences(chain) == []


def test_a_version_raised_in_one_module_of_a_chain_is_seen(tmp_path):
    # The check above on a copy of kwok's go.mod with one version raised.
    (tmp_path / "kwok").mkdir()
    text = (GOMOD / "kwok" / "go.mod").read_text()
    (current,) = re.findall(r"^\s+k8s\.io/client-go (v\S+)", text, re.M)
    (tmp_path / "kwok" / "go.mod").write_text(text.replace(f"k8s.io/client-go {current}", "k8s.io/client-go v0.99.0"))
    (tmp_path / "metrics-server").symlink_to(GOMOD / "metrics-server")
    (problem,) = differences(["metrics-server", "kwok"], tmp_path)
    assert "'k8s.io/client-go': ('" + current + "', 'v0.99.0')" in problem


def test_a_version_that_differs_between_two_later_sets_is_seen(tmp_path):
    # dario.cat/mergo is in kwok's and health's modules, not in metrics-server's: health, built after
    # both, reuses kwok's packages only with kwok's version of it.
    assert "dario.cat/mergo" not in versions(GOMOD / "metrics-server")
    (tmp_path / "health").mkdir()
    text = (GOMOD / "health" / "go.mod").read_text()
    (current,) = re.findall(r"^\s+dario\.cat/mergo (v\S+)", text, re.M)
    (tmp_path / "health" / "go.mod").write_text(text.replace(f"dario.cat/mergo {current}", "dario.cat/mergo v1.9.0"))
    for name in ("metrics-server", "kwok"):
        (tmp_path / name).symlink_to(GOMOD / name)
    (problem,) = differences(["metrics-server", "kwok", "health"], tmp_path)
    assert problem.startswith("hack/gomod/health builds after hack/gomod/kwok")
    assert "'dario.cat/mergo': ('" + current + "', 'v1.9.0')" in problem


def test_a_build_deletes_the_builds_it_replaces(tmp_path):
    """A binary built again for a new version or wrapper module deletes its earlier builds (each
    tens to hundreds of MB, which filled a disk once), and nothing of another binary's."""
    if shutil.which("go") is None:
        missing("go", "install Go 1.24 or newer")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stale = [bin_dir / "custom-metrics-adapter-000000000000", bin_dir / "custom-metrics-adapter-v0.1-111111111111"]
    kept = [bin_dir / "metrics-server-v0.9.0-222222222222", bin_dir / "custom-metrics-adapterx-333333333333"]
    for path in stale + kept:
        path.write_bytes(b"#!/bin/sh\n")
        path.chmod(0o755)
    (bin_dir / "custom-metrics-adapter").symlink_to(stale[0].name)
    env = os.environ | {"MODELOPS_CACHE": str(tmp_path)}
    run = [str(SCRIPT), "custom-metrics-adapter"]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=1800, check=True)
    assert "building custom-metrics-adapter" in first.stderr
    link = bin_dir / "custom-metrics-adapter"
    built = bin_dir / os.readlink(link)
    assert re.fullmatch(r"custom-metrics-adapter-[0-9a-f]{12}", built.name) and built.stat().st_size > 1_000_000
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)
    again = subprocess.run(run, env=env, capture_output=True, text=True, timeout=600, check=True)
    assert "building" not in again.stderr and built.exists()
