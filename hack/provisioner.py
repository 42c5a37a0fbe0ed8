"""The local cluster's volume provisioner: a directory on this machine for each claim.

A development add-on, not part of the product (a user's cluster has its own storage). It owns the
default StorageClass `local-dir`: each pending PersistentVolumeClaim of that class gets a hostPath
PersistentVolume at `<volumes>/<namespace>/<claim>` on this machine (the one real node), and a
released volume's directory is removed with it. Directories are world-writable, since the pods run
as an arbitrary non-root user and a hostPath volume has no fsGroup. The quickstart and the tests
read artifacts from these directories.

    .venv/bin/python hack/provisioner.py --kubeconfig .cluster/kubeconfig --volumes .cluster/volumes
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

STORAGE_CLASS = "local-dir"
PROVISIONER = "modelops.dev/local-dir"

log = logging.getLogger("provisioner")

#: What a pass may meet while the API server is away or restarting (the fault tests stop it): an
#: error status, a refused or reset connection (urllib3's `MaxRetryError`, `ProtocolError`, which
#: are not `OSError`s), a file it cannot make. The next pass tries again.
TRANSIENT = (ApiException, OSError, urllib3.exceptions.HTTPError)


class Provisioner:
    def __init__(self, kubeconfig: str, volumes: Path) -> None:
        client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        self.core = kubernetes.client.CoreV1Api(client)
        self.storage = kubernetes.client.StorageV1Api(client)
        self.volumes = volumes

    def ensure_storage_class(self) -> None:
        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        try:
            self.storage.create_storage_class(body)
        except ApiException as e:
            if e.status != 409:
                raise

    def directory(self, namespace: str, claim: str) -> Path:
        return self.volumes / namespace / claim

    def provision(self) -> None:
        """A PersistentVolume for each pending claim of our class; removal of released ones."""
        for pvc in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            if pvc.status.phase != "Pending" or pvc.spec.volume_name or pvc.spec.storage_class_name != STORAGE_CLASS:
                continue
            ns, name = pvc.metadata.namespace, pvc.metadata.name
            path = self.directory(ns, name)
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o1777)
            size = (pvc.spec.resources.requests or {}).get("storage", "1Gi")
            pv: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": f"pvc-{pvc.metadata.uid}",
                    "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
                },
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": pvc.spec.access_modes,
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": STORAGE_CLASS,
                    "hostPath": {"path": str(path), "type": "Directory"},
                    "claimRef": {"namespace": ns, "name": name, "uid": pvc.metadata.uid},
                    # No node affinity, although only local-0 has the directory: kwok's simulated
                    # nodes mount nothing, and a GPU trial scheduled there with the artifact
                    # claim must not be held back by it.
                },
            }
            try:
                self.core.create_persistent_volume(pv)
                log.info("provisioned %s for claim %s/%s at %s", pv["metadata"]["name"], ns, name, path)
            except ApiException as e:
                if e.status != 409:
                    raise
        for volume in self.core.list_persistent_volume().items:
            if volume.spec.storage_class_name == STORAGE_CLASS and volume.status.phase in ("Released", "Failed"):
                ref = volume.spec.claim_ref
                if ref is not None:
                    shutil.rmtree(self.directory(ref.namespace, ref.name), ignore_errors=True)
                try:
                    self.core.delete_persistent_volume(volume.metadata.name)
                except ApiException as e:
                    if e.status != 404:
                        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/provisioner.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of an identity that may manage volumes")
    parser.add_argument("--volumes", type=Path, required=True, help="directory under which volumes are made")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two passes (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    prov = Provisioner(args.kubeconfig, args.volumes)
    while True:
        try:
            prov.ensure_storage_class()
            break
        except TRANSIENT as e:
            log.warning("waiting for the API server: %s", e)
            time.sleep(1)
    while True:
        try:
            prov.provision()
        except TRANSIENT as e:
            log.warning("provisioning pass failed, retrying: %s", e)
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
