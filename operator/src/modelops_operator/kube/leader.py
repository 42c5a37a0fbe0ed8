"""Leader election with a `coordination.k8s.io/v1` Lease, so that two operator replicas never
reconcile the same objects: the one holding the Lease runs kopf, the others wait.

The protocol is client-go's: the holder renews `renewTime` every `renew_seconds` (retrying every
second after a failure); a candidate takes the Lease over only when it has not been renewed for
`lease_seconds`, with an update that carries the Lease's `resourceVersion` (so two candidates
cannot both win). A holder that cannot renew within its renew deadline (two thirds of
`lease_seconds`, before any candidate may take over) exits the process at once (status 1) — a
replica that might have lost the Lease must not keep reconciling; Kubernetes restarts it as a
candidate. Each Lease call has a short timeout of its own, so a connection that went silent
cannot hold the holder past its deadline. On a normal shutdown
the Lease is released (`holderIdentity` cleared), so the standby takes over within a second or two.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from modelops_operator import kube

log = logging.getLogger("modelops_operator.leader")
#: What a Lease call may fail with: the API server's answer, the connection, a timeout (all
#: `KubeError`s), a bad body.
_LEASE_ERRORS = (kube.KubeError, ValueError, KeyError, TypeError)


def _now() -> datetime:
    return datetime.now(UTC)


def _micro(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElection:
    def __init__(
        self,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
    ) -> None:
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds, self.renew_seconds = lease_seconds, renew_seconds
        self.renew_deadline = lease_seconds * 2 / 3
        self.call_timeout = (2.0, max(1.0, renew_seconds / 2))
        self.stopped = threading.Event()

    def _body(self, lease: dict[str, Any] | None, acquired: bool) -> dict[str, Any]:
        now = _micro(_now())
        spec: dict[str, Any] = dict((lease or {}).get("spec") or {})
        spec.update({"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds, "renewTime": now})
        if acquired:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def _read(self) -> dict[str, Any] | None:
        return kube.get_lease(self.namespace, self.name, self.call_timeout)

    def try_acquire(self) -> bool:
        """One attempt: True when this process holds the Lease afterwards."""
        lease = self._read()
        if lease is None:
            try:
                kube.create_lease(self._body(None, acquired=True), self.call_timeout)
            except kube.Conflict:
                return False
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = spec.get("renewTime")
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        expired = (
            not holder
            or renewed is None
            or datetime.fromisoformat(str(renewed).replace("Z", "+00:00")) + timedelta(seconds=duration) < _now()
        )
        if holder != self.identity and not expired:
            return False
        try:
            kube.replace_lease(self._body(lease, acquired=holder != self.identity), self.call_timeout)
        except kube.Conflict:  # someone else updated it first
            return False
        return True

    def _attempt(self) -> bool:
        try:
            return self.try_acquire()
        except _LEASE_ERRORS as e:
            log.warning("cannot reach the leader lease (will retry): %s", e)
            return False

    def acquire(self) -> None:
        """Block until this process holds the Lease, then keep renewing it in a thread."""
        logged = False
        while not self._attempt():
            if not logged:
                log.info("waiting for the leader lease %s/%s", self.namespace, self.name)
                logged = True
            time.sleep(self.renew_seconds / 2)
        log.info("acquired the leader lease %s/%s as %s", self.namespace, self.name, self.identity)
        threading.Thread(target=self._renew, name="leader-lease", daemon=True).start()

    def _renew(self) -> None:
        last, wait = time.monotonic(), self.renew_seconds
        while not self.stopped.wait(wait):
            try:
                if self.try_acquire():
                    last, wait = time.monotonic(), self.renew_seconds
                    continue
                log.error("lost the leader lease %s/%s to another replica; exiting", self.namespace, self.name)
            except _LEASE_ERRORS as e:
                if time.monotonic() - last < self.renew_deadline:
                    log.warning("cannot renew the leader lease (will retry): %s", e)
                    wait = 1.0
                    continue
                log.error("could not renew the leader lease for %.0f s; exiting: %s", self.renew_deadline, e)
            os._exit(1)

    def release(self) -> None:
        """Give the Lease up (on a normal shutdown), so a standby takes over at once."""
        self.stopped.set()
        try:
            lease = self._read()
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                body = self._body(lease, acquired=False)
                body["spec"]["holderIdentity"] = None
                kube.replace_lease(body, self.call_timeout)
        except _LEASE_ERRORS as e:
            log.warning("could not release the leader lease: %s", e)
