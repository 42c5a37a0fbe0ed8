"""Refuse a CRD change that would break the objects already stored, or the clients reading them.

Within one served version (`v1alpha1` today) the CRDs may only grow: the API server prunes a field
the schema no longer has from every object it reads or writes, so removing a field still in use
loses data, and changing a field's type makes stored objects unreadable by typed clients. This
compares the CRDs in `crds/` with those of the last release, kept in `crds/baseline/`, and lists
each such change:

- a served version no longer served, or the group, scope or names changed;
- a field removed (a property, the items of a list, the values of a map);
- a field's type changed (integer-or-string counts as its own type);
- an enum value removed, or an enum imposed on a field that had none;
- `x-kubernetes-preserve-unknown-fields` dropped (the subtree's contents would be pruned);
- a field made required that has no default (stored objects without it could not be updated).

Tighter bounds, patterns and CEL rules are not listed: from Kubernetes 1.30 the API server ratchets
them (an unchanged value keeps passing on update). Removing a field or changing its type takes a new version
(docs/upgrade.md, "API versions").

    python -m modelops_operator.crdcompat             # exit 1 and list the breaking changes
    python -m modelops_operator.crdcompat --accept    # at a release: crds/*.yaml become the baseline
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from modelops_operator import crdgen

Schema = dict[str, Any]


def baseline_dir() -> Path:
    """`crds/baseline/`: the CRDs of the last release, the ones clusters may hold objects of."""
    return crdgen.default_dir() / "baseline"


def load(directory: Path) -> dict[str, Schema]:
    """The CRDs in `directory` (`*.yaml`, not its subfolders), by name."""
    crds = (yaml.safe_load(p.read_text()) for p in sorted(directory.glob("*.yaml")))
    return {crd["metadata"]["name"]: crd for crd in crds}


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    """Each change from `old` to `new` (two versions of one CRD) that breaks stored objects."""
    name = old["metadata"]["name"]
    out = [
        f"{name}: {key} changed from {old['spec'].get(key)!r} to {new['spec'].get(key)!r}"
        for key in ("group", "scope")
        if old["spec"].get(key) != new["spec"].get(key)
    ]
    out += [
        f"{name}: names.{key} changed from {value!r} to {new['spec']['names'].get(key)!r}"
        for key, value in old["spec"]["names"].items()
        if key in ("kind", "plural", "singular", "listKind") and new["spec"]["names"].get(key) != value
    ]
    versions = {v["name"]: v for v in new["spec"]["versions"]}
    for version in old["spec"]["versions"]:
        if not version.get("served"):
            continue
        after = versions.get(version["name"])
        if after is None or not after.get("served"):
            out.append(f"{name}: version {version['name']} is no longer served")
            continue
        before_schema = version["schema"]["openAPIV3Schema"]
        after_schema = after["schema"]["openAPIV3Schema"]
        out += [f"{name} {version['name']}: {change}" for change in schema_changes(before_schema, after_schema)]
    return out


def _type(node: Schema) -> str:
    return "integer-or-string" if node.get("x-kubernetes-int-or-string") else str(node.get("type", "any"))


def schema_changes(old: Schema, new: Schema, path: str = "") -> list[str]:
    """The breaking changes between two structural schemas, each naming its field's path."""
    if _type(old) != _type(new):
        return [f"{path or '<root>'}: type changed from {_type(old)} to {_type(new)}"]
    return _node_changes(old, new, path or "<root>") + _children_changes(old, new, path)


def _node_changes(old: Schema, new: Schema, here: str) -> list[str]:
    """What one node (of the same type) no longer accepts or keeps."""
    out = []
    if "enum" in new and "enum" not in old:
        out.append(f"{here}: now restricted to {new['enum']}")
    elif "enum" in new:
        removed = [v for v in old["enum"] if v not in new["enum"]]
        if removed:
            out.append(f"{here}: enum values removed: {removed}")
    if old.get("x-kubernetes-preserve-unknown-fields") and not new.get("x-kubernetes-preserve-unknown-fields"):
        out.append(f"{here}: x-kubernetes-preserve-unknown-fields dropped (its unknown fields would be pruned)")
    return out


def _children_changes(old: Schema, new: Schema, path: str) -> list[str]:
    """Fields removed or newly required below a node, and the changes inside each kept one."""
    out = []
    properties = new.get("properties", {})
    for name in sorted(set(new.get("required", [])) - set(old.get("required", []))):
        if "default" not in properties.get(name, {}):
            out.append(f"{path}.{name}: newly required, without a default")
    for name, sub in old.get("properties", {}).items():
        if name not in properties:
            out.append(f"{path}.{name}: removed")
        else:
            out += schema_changes(sub, properties[name], f"{path}.{name}")
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(old.get(key), dict):
            if not isinstance(new.get(key), dict):
                out.append(f"{path}{suffix}: removed")
            else:
                out += schema_changes(old[key], new[key], f"{path}{suffix}")
    return out


def check(current: Path, baseline: Path) -> list[str]:
    """Every breaking change from the CRDs in `baseline` to those in `current` (a CRD gone is one)."""
    old, new = load(baseline), load(current)
    out = [f"{name}: the CRD is gone" for name in old if name not in new]
    for name, crd in old.items():
        if name in new:
            out += breaking_changes(crd, new[name])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelops_operator.crdcompat",
        description="Compare the CRDs in crds/ with the last release's (crds/baseline/); exit 1 on a breaking change.",
    )
    parser.add_argument("--crds", type=Path, default=crdgen.default_dir(), help="the CRDs (default: %(default)s)")
    parser.add_argument(
        "--baseline", type=Path, default=baseline_dir(), help="the last release's CRDs (default: %(default)s)"
    )
    parser.add_argument("--accept", action="store_true", help="at a release: copy the CRDs into the baseline")
    args = parser.parse_args(argv)
    if args.accept:
        args.baseline.mkdir(parents=True, exist_ok=True)
        for old in args.baseline.glob("*.yaml"):
            old.unlink()
        for crd in sorted(args.crds.glob("*.yaml")):
            shutil.copyfile(crd, args.baseline / crd.name)
            print(f"wrote {args.baseline / crd.name}")
        return 0
    if not load(args.baseline):
        print(f"no CRDs in {args.baseline}", file=sys.stderr)
        return 1
    problems = check(args.crds, args.baseline)
    if problems:
        print(
            "CRD changes that would break stored objects (serve a new version instead: docs/upgrade.md):",
            *problems,
            sep="\n  ",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
