"""The local node's network: a network namespace per pod on a bridge, names, and Services.

- **Pod IPs.** Each pod gets a network namespace of its own (`ip netns`), joined to the bridge
  `mo-br0` (10.250.0.1/16 on the host) by a veth pair, with an address from 10.250.0.0/16 as
  `status.podIP`. Pods can listen on any address and port without clashing; the host, Prometheus
  and other pods reach them at their pod IP, and EndpointSlices fill in. (The API server refuses
  loopback addresses in EndpointSlices, so 127.0.0.x pod IPs cannot work.) These addresses exist
  only inside this machine: the bridge has no uplink and nothing is forwarded beyond it.
- **The API server** is reachable from pods at 10.250.0.1:443 (`KUBERNETES_SERVICE_HOST/PORT`),
  forwarded to its loopback port; `--forward PORT` does the same for other services of this
  machine (the local cluster forwards Prometheus, so an in-cluster operator can query it).
- **Names.** A DNS server of the agent's own (dns.py) answers on 10.250.0.1:53, and each pod's
  /etc/resolv.conf points there with the search path Kubernetes gives a pod, so every Service
  resolves as `svc`, `svc.ns`, `svc.ns.svc` and `svc.ns.svc.cluster.local` (a headless Service to
  its ready endpoints), pods with `hostname` + `subdomain` as `host.subdomain.ns.svc.cluster.local`,
  and, beyond Kubernetes, a pod's name within its namespace when no Service has that name. Each
  pod's /etc/hosts holds only localhost and its own name, written once: rewriting shared files in
  place while programs read them is what made names fail now and then.
- **Services.** A Service with a cluster IP gets a virtual IP of its own from 10.251.0.0/16 on the
  bridge (there is no kube-proxy); a small proxy on that address forwards each connection on a
  Service port to a random ready endpoint's target port, so traffic splits by replica count as it
  does with kube-proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import random
import signal
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dns import DNSServer

if TYPE_CHECKING:
    from pods import PodRunner

log = logging.getLogger("nodeagent.network")
BRIDGE = "mo-br0"
GATEWAY = "10.250.0.1"
POD_NET = ipaddress.ip_network("10.250.0.0/16")
FIRST_POD_IP = int(ipaddress.ip_address("10.250.0.10"))
FIRST_VIP = int(ipaddress.ip_address("10.251.0.1"))
DOMAIN = "svc.cluster.local"
SEARCH = "{ns}." + DOMAIN + " " + DOMAIN + " cluster.local"
NETNS_PREFIX = "mo-"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_name(uid: str) -> str:
    return NETNS_PREFIX + uid.replace("-", "")[:12]


class Network:
    def __init__(self, state: Path, api_target: tuple[str, int], forward: list[int] | None = None) -> None:
        self.state = state
        self.api_target = api_target
        self.forward = list(forward or [])  # host loopback ports reachable from pods at the gateway
        self.lock = threading.Lock()
        self.pod_ips: dict[str, str] = {}  # pod uid -> IP
        self.vips: dict[str, str] = {}  # service uid -> virtual IP
        self.runners: dict[str, PodRunner] = {}
        self.services: list[dict[str, Any]] = []
        self.slices: list[dict[str, Any]] = []
        self.proxy = ServiceProxy()
        self.dns: DNSServer | None = None

    # --- addresses ----------------------------------------------------------------------------

    def setup(self) -> None:
        """The bridge (idempotent), no namespaces left from an earlier run, the API forwarder."""
        if ip("link", "show", BRIDGE, check=False).returncode != 0:
            ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "replace", f"{GATEWAY}/16", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        self.teardown()
        for line in ip("-4", "-o", "addr", "show", "dev", BRIDGE).stdout.splitlines():
            addr = line.split()[3]
            if addr.endswith("/32"):
                ip("addr", "del", addr, "dev", BRIDGE, check=False)
        self.proxy.configure(self._proxy_routes())
        if self.dns is None:
            self.dns = DNSServer(GATEWAY, self.resolve)

    def teardown(self) -> None:
        """Kill whatever still runs in a pod namespace of ours and delete the namespaces: a process
        left behind would keep its namespace, and its IP, alive on the bridge."""
        for line in ip("netns", "list").stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            if not name.startswith(NETNS_PREFIX):
                continue
            for pid in ip("netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "delete", name, check=False)

    @staticmethod
    def _next(first: int, used: set[str]) -> str:
        n = first
        while str(ipaddress.ip_address(n)) in used or n % 256 in (0, 255):
            n += 1
        return str(ipaddress.ip_address(n))

    def allocate(self, uid: str) -> str:
        """The pod's IP, with its network namespace and veth pair on the bridge."""
        with self.lock:
            if uid in self.pod_ips:
                return self.pod_ips[uid]
            addr = self._next(FIRST_POD_IP, set(self.pod_ips.values()))
            self.pod_ips[uid] = addr
        ns, host_if = netns_name(uid), "v" + netns_name(uid)[len(NETNS_PREFIX) :][:12]
        ip("netns", "add", ns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("link", "set", host_if, "master", BRIDGE, "up")
        ip("-n", ns, "addr", "add", f"{addr}/16", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", "default", "via", GATEWAY)
        return addr

    def release(self, uid: str) -> None:
        ip("netns", "delete", netns_name(uid), check=False)  # takes the veth pair with it
        with self.lock:
            self.pod_ips.pop(uid, None)

    def _vip(self, uid: str) -> str:
        if uid not in self.vips:
            self.vips[uid] = self._next(FIRST_VIP, set(self.vips.values()))
            ip("addr", "replace", f"{self.vips[uid]}/32", "dev", BRIDGE)
        return self.vips[uid]

    def pod_started(self, runner: PodRunner) -> None:
        with self.lock:
            self.runners[runner.uid] = runner

    def pod_stopped(self, runner: PodRunner) -> None:
        with self.lock:
            self.runners.pop(runner.uid, None)
        if not runner.host_network:
            self.release(runner.uid)

    # --- names ------------------------------------------------------------------------------------

    def hosts_file(self, runner: PodRunner) -> Path:
        """The pod's /etc/hosts (localhost and its own name), its resolv.conf and nsswitch.conf beside it."""
        path = runner.dir / "hosts"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            hostname = runner.pod["spec"].get("hostname") or runner.pod_name
            names = [hostname]
            sub = runner.pod["spec"].get("subdomain")
            if sub:
                names.insert(0, f"{hostname}.{sub}.{runner.ns}.{DOMAIN}")
            lines = ["127.0.0.1 localhost", "::1 localhost"] + ([f"{runner.ip} {' '.join(names)}"] if runner.ip else [])
            path.write_text("\n".join(lines) + "\n")
            (runner.dir / "resolv.conf").write_text(
                f"nameserver {GATEWAY}\nsearch {SEARCH.format(ns=runner.ns)}\noptions ndots:5\n"
            )
            # The host's, with names from files then DNS only: an mDNS module would claim
            # `*.local` (so `*.cluster.local`) and answer "not found" before DNS is asked.
            host = Path("/etc/nsswitch.conf").read_text() if Path("/etc/nsswitch.conf").exists() else ""
            kept = [line for line in host.splitlines() if not line.startswith("hosts:")]
            (runner.dir / "nsswitch.conf").write_text("\n".join([*kept, "hosts: files dns"]) + "\n")
        return path

    def update(self, services: list[dict[str, Any]], slices: list[dict[str, Any]]) -> None:
        """New lists of Services and EndpointSlices: re-point the proxy, rewrite the hosts files."""
        with self.lock:
            self.services, self.slices = services, slices
            live = {s["metadata"]["uid"] for s in services}
            for uid in set(self.vips) - live:
                ip("addr", "del", f"{self.vips.pop(uid)}/32", "dev", BRIDGE, check=False)
        self.proxy.configure(self._proxy_routes())

    def _endpoints(self, namespace: str, service: str) -> list[tuple[str, dict[str, int]]]:
        """Ready local endpoints of a Service: (IP, {port name: target port})."""
        out = []
        for sl in self.slices:
            meta = sl["metadata"]
            if (
                meta["namespace"] != namespace
                or (meta.get("labels") or {}).get("kubernetes.io/service-name") != service
            ):
                continue
            ports = {p.get("name") or "": int(p["port"]) for p in sl.get("ports") or [] if p.get("port")}
            for ep in sl.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready", True):
                    out += [(a, ports) for a in ep.get("addresses", []) if ipaddress.ip_address(a) in POD_NET]
        return out

    def _service_ips(self, svc: dict[str, Any]) -> list[str]:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        if spec.get("clusterIP") in (None, "", "None"):
            return sorted({addr for addr, _ in self._endpoints(meta["namespace"], meta["name"])})
        return [self._vip(meta["uid"])]

    def resolve(self, name: str) -> list[str] | None:
        """A cluster name's addresses (None: no such name), for the DNS server."""
        if not name.endswith("." + DOMAIN):
            return None
        parts = name[: -len(DOMAIN) - 1].split(".")
        with self.lock:
            if len(parts) == 2:  # svc.ns, else (beyond Kubernetes) a pod's name in ns
                service, ns = parts
                for svc in self.services:
                    if svc["metadata"]["namespace"] == ns and svc["metadata"]["name"] == service:
                        return self._service_ips(svc)
                return [r.ip for r in self.runners.values() if r.ns == ns and r.pod_name == service and r.ip] or None
            if len(parts) == 3:  # host.subdomain.ns
                host, sub, ns = parts
                found = [
                    r.ip
                    for r in self.runners.values()
                    if r.ns == ns
                    and r.ip
                    and r.pod["spec"].get("subdomain") == sub
                    and (r.pod["spec"].get("hostname") or r.pod_name) == host
                ]
                return found or None
        return None

    def _proxy_routes(self) -> dict[tuple[str, int], list[tuple[str, int]]]:
        routes: dict[tuple[str, int], list[tuple[str, int]]] = {(GATEWAY, 443): [self.api_target]}
        routes.update({(GATEWAY, port): [("127.0.0.1", port)] for port in self.forward})
        with self.lock:
            for svc in self.services:
                spec = svc.get("spec") or {}
                if spec.get("clusterIP") in (None, "", "None") or spec.get("type") == "ExternalName":
                    continue
                vip = self._vip(svc["metadata"]["uid"])
                endpoints = self._endpoints(svc["metadata"]["namespace"], svc["metadata"]["name"])
                for port in spec.get("ports") or []:
                    targets = [
                        (addr, ports[port.get("name") or ""])
                        for addr, ports in endpoints
                        if (port.get("name") or "") in ports
                    ]
                    routes[(vip, int(port["port"]))] = targets
        return routes

    def service_address(self, namespace: str, name: str) -> str | None:
        """The virtual IP a Service answers on locally (for tests and tools on the host)."""
        with self.lock:
            for svc in self.services:
                if svc["metadata"]["namespace"] == namespace and svc["metadata"]["name"] == name:
                    ips = self._service_ips(svc)
                    return ips[0] if ips else None
        return None


class ServiceProxy:
    """TCP forwarding from Service virtual IPs to endpoints, in its own asyncio thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.routes: dict[tuple[str, int], list[tuple[str, int]]] = {}
        self.servers: dict[tuple[str, int], asyncio.base_events.Server] = {}
        threading.Thread(target=self.loop.run_forever, name="service-proxy", daemon=True).start()

    def configure(self, routes: dict[tuple[str, int], list[tuple[str, int]]]) -> None:
        asyncio.run_coroutine_threadsafe(self._configure(routes), self.loop).result(timeout=10)

    async def _configure(self, routes: dict[tuple[str, int], list[tuple[str, int]]]) -> None:
        self.routes = routes
        for key in set(self.servers) - set(routes):
            self.servers.pop(key).close()
        for key in set(routes) - set(self.servers):
            try:
                self.servers[key] = await asyncio.start_server(
                    functools.partial(self._forward, key), host=key[0], port=key[1]
                )
            except OSError as e:
                log.warning("cannot listen on %s:%s for a Service: %s", key[0], key[1], e)

    async def _forward(self, key: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        targets = self.routes.get(key) or []
        if not targets:
            writer.close()  # no ready endpoint: refuse, as kube-proxy does
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*random.choice(targets))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
