"""Turning a pod's spec into what a local process needs: environment, command, volume directories.

Pure functions over the pod as a dict (the API server's JSON), plus a resolver for the objects
env and volumes refer to (ConfigMaps, Secrets, service-account tokens), so they are testable
without a cluster.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Pod = dict[str, Any]

#: Local programs for this repository's images when a container gives no `command` (their
#: Dockerfiles' ENTRYPOINTs). Any other image must say what to run in `command`.
ENTRYPOINTS: dict[str, list[str]] = {
    "ghcr.io/modelops/operator": ["modelops-operator"],
    "ghcr.io/modelops/trainer": ["python", "-m"],
    "ghcr.io/modelops/server": ["python", "-m", "modelops_server"],
}

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class SpecError(Exception):
    """The pod asks for something this node cannot give; the message says what (shown in status)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` escapes, unknown stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)


def image_name(image: str) -> str:
    """The image without tag or digest: `ghcr.io/modelops/server:0.1.0` -> `ghcr.io/modelops/server`."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


def argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """The command line of a container: `command` (or the image's entrypoint) + `args`, expanded."""
    command = container.get("command") or ENTRYPOINTS.get(image_name(container.get("image", "")))
    if not command:
        raise SpecError(
            "NoLocalProgram",
            f'image "{container.get("image")}" has no local program on this node: set the container\'s command',
        )
    return [expand(part, env) for part in [*command, *(container.get("args") or [])]]


@dataclass
class Resolver:
    """Reads what env and volumes refer to; injected so tests need no cluster."""

    config_map: Callable[[str, str], Mapping[str, str] | None]
    secret: Callable[[str, str], Mapping[str, str] | None]  # values base64-encoded, as the API returns them
    token: Callable[[str, str, int, str | None], str]  # namespace, serviceaccount, seconds, audience


def _field(pod: Pod, path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(p["ip"] for p in status.get("podIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise SpecError("UnsupportedFieldRef", f"fieldRef {path!r} is not supported by the local node")


def _quantity(value: str) -> float:
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    if not m or (m.group(2) and m.group(2) not in units):
        raise SpecError("InvalidQuantity", f"cannot read the quantity {value!r}")
    return float(m.group(1)) * units.get(m.group(2), 1)


def memory_limit(container: Mapping[str, Any]) -> int | None:
    """The container's memory limit in bytes, if it has one."""
    limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return int(_quantity(limit)) if limit is not None else None


def cpu_limit(container: Mapping[str, Any]) -> float | None:
    """The container's CPU limit in cores, if it has one."""
    limit = ((container.get("resources") or {}).get("limits") or {}).get("cpu")
    return _quantity(limit) if limit is not None else None


def _resource(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    kind, _, name = ref["resource"].partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if value is None:
        return str(os.cpu_count() or 1) if name == "cpu" else "0"
    divisor = _quantity(ref.get("divisor", "1"))
    return str(max(1, int(-(-_quantity(value) // divisor))))  # rounded up, as the kubelet does


def _lookup(kind: str, found: Mapping[str, str] | None, key: str, ref: Mapping[str, Any]) -> str | None:
    if found is None or key not in found:
        if ref.get("optional"):
            return None
        raise SpecError(
            f"{kind}KeyMissing" if found is not None else f"{kind}NotFound",
            f'{kind} "{ref.get("name")}" {"has no key " + repr(key) if found is not None else "not found"}',
        )
    return found[key]


def environment(pod: Pod, container: Mapping[str, Any], resolver: Resolver, base: Mapping[str, str]) -> dict[str, str]:
    """The container's environment: `base` (PATH, service host), then envFrom, then env in order."""
    env = dict(base)
    env["HOSTNAME"] = pod["spec"].get("hostname") or pod["metadata"]["name"]
    for source in container.get("envFrom") or []:
        env.update(_env_from(pod["metadata"]["namespace"], source, resolver))
    for var in container.get("env") or []:
        value = _value_from(pod, container, var["valueFrom"], resolver) if "valueFrom" in var else None
        if "valueFrom" not in var:
            value = expand(var.get("value", ""), env)
        if value is not None:
            env[var["name"]] = value
    return env


def _env_from(ns: str, source: Mapping[str, Any], resolver: Resolver) -> dict[str, str]:
    prefix, out = source.get("prefix", ""), {}
    for key, kind, read, decode in (
        ("configMapRef", "ConfigMap", resolver.config_map, False),
        ("secretRef", "Secret", resolver.secret, True),
    ):
        if key not in source:
            continue
        ref = source[key]
        data = read(ns, ref["name"])
        if data is None and not ref.get("optional"):
            raise SpecError(f"{kind}NotFound", f'{kind} "{ref["name"]}" not found')
        out.update({prefix + k: base64.b64decode(v).decode() if decode else v for k, v in (data or {}).items()})
    return out


def _value_from(pod: Pod, container: Mapping[str, Any], source: Mapping[str, Any], resolver: Resolver) -> str | None:
    ns = pod["metadata"]["namespace"]
    if "fieldRef" in source:
        return _field(pod, source["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in source:
        return _resource(container, source["resourceFieldRef"])
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        return _lookup("ConfigMap", resolver.config_map(ns, ref["name"]), ref["key"], ref)
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        raw = _lookup("Secret", resolver.secret(ns, ref["name"]), ref["key"], ref)
        return None if raw is None else base64.b64decode(raw).decode()
    raise SpecError("UnsupportedEnvSource", f"unsupported valueFrom {sorted(source)}")


#: Host paths a volume may not be mounted over: the programs and the system they run on.
SYSTEM_PATHS = ("/", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/proc", "/sys", "/dev", "/run", "/root")


def check_mount_path(mount_path: str, keep: tuple[Path, ...]) -> None:
    """Refuse a mountPath that would hide what the pod's processes run from: pods share this
    machine's filesystem, so a volume at the repository itself (its .venv holds the programs) or
    over a system directory would break them. Sub-directories (/etc/app, /var/data) are fine, and
    so is a volume over an ancestor of the repository (it is put back inside, see containers.py)."""
    target = Path(os.path.normpath(mount_path))
    if str(target) in SYSTEM_PATHS or any(target == k for k in keep):
        raise SpecError(
            "MountPathShadowsHost",
            f"mountPath {mount_path} would hide {', '.join(str(k) for k in keep)} or a system directory "
            "that the local node's processes run from; mount the volume somewhere else",
        )


def _write_items(target: Path, data: Mapping[str, bytes], items: list[dict[str, Any]] | None) -> None:
    chosen = {i["key"]: i.get("path", i["key"]) for i in items} if items else {k: k for k in data}
    for key, rel in chosen.items():
        if key not in data:
            raise SpecError("VolumeKeyMissing", f"volume item {key!r} not found")
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[key])


def materialize_volume(
    pod: Pod, volume: Mapping[str, Any], pod_dir: Path, pvc_dir: Callable[[str, str], Path], resolver: Resolver
) -> Path:
    """The local directory (or file) behind one pod volume, created and filled as needed."""
    ns, name = pod["metadata"]["namespace"], volume["name"]
    own: Path = pod_dir / "volumes" / str(name)
    if "emptyDir" in volume:
        own.mkdir(parents=True, exist_ok=True)
        return own
    if "persistentVolumeClaim" in volume:
        path = pvc_dir(ns, volume["persistentVolumeClaim"]["claimName"])
        path.mkdir(parents=True, exist_ok=True)
        return path
    if "hostPath" in volume:
        path = Path(volume["hostPath"]["path"])
        if volume["hostPath"].get("type") in ("DirectoryOrCreate", None, ""):
            path.mkdir(parents=True, exist_ok=True)
        return path
    own.mkdir(parents=True, exist_ok=True)
    for source in volume["projected"]["sources"] if "projected" in volume else [volume]:
        _project(pod, source, own, resolver, ns)
    return own


def _project(pod: Pod, source: Mapping[str, Any], target: Path, resolver: Resolver, ns: str) -> None:
    if "configMap" in source:
        ref = source["configMap"]
        data = resolver.config_map(ns, ref.get("name", ""))
        if data is None:
            if ref.get("optional"):
                return
            raise SpecError("ConfigMapNotFound", f'ConfigMap "{ref.get("name")}" not found')
        _write_items(target, {k: v.encode() for k, v in data.items()}, ref.get("items"))
    elif "secret" in source:
        ref = source["secret"]
        sname = ref.get("secretName") or ref.get("name", "")
        data = resolver.secret(ns, sname)
        if data is None:
            if ref.get("optional"):
                return
            raise SpecError("SecretNotFound", f'Secret "{sname}" not found')
        _write_items(target, {k: base64.b64decode(v) for k, v in data.items()}, ref.get("items"))
    elif "serviceAccountToken" in source:
        ref = source["serviceAccountToken"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        token = resolver.token(ns, sa, int(ref.get("expirationSeconds", 3600)), ref.get("audience"))
        _write_items(target, {"token": token.encode()}, [{"key": "token", "path": ref["path"]}])
    elif "downwardAPI" in source:
        values = {
            i["path"]: _field(pod, i["fieldRef"]["fieldPath"]).encode()
            for i in source["downwardAPI"].get("items", [])
            if "fieldRef" in i
        }
        _write_items(target, values, None)
    else:
        raise SpecError("UnsupportedVolume", f"volume source {sorted(source)} is not supported by the local node")
