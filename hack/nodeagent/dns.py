"""A small DNS server for the pods of the local node: cluster names answered from what the agent
knows (Services, EndpointSlices, its pods), everything else forwarded to the host's resolver.

Each pod's /etc/resolv.conf points here with the search path Kubernetes gives a pod
(`<ns>.svc.cluster.local svc.cluster.local cluster.local`, `ndots:5`), so `web`, `web.ns`,
`web.ns.svc` and the full name all resolve, as they do with CoreDNS. A name that changes is seen
by the next lookup; no file is ever rewritten under a reader (the reason this exists: rewriting
per-pod hosts files in place let a lookup read half a file).

Only what pods here need: A queries over UDP; AAAA answers "no data" for names that exist.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Callable

log = logging.getLogger("nodeagent.dns")
A, AAAA = 1, 28
NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3
TTL = 2
MAX_ANSWERS = 32  # keeps every answer under 512 bytes: no truncation, no TCP

# name (lower case, no trailing dot) -> its IPv4 addresses, or None when it is not a cluster name
Resolver = Callable[[str], "list[str] | None"]


def parse_query(packet: bytes) -> tuple[int, int, str, int, int]:
    """(id, flags, name, qtype, end of the question) of a query with one question."""
    ident, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if qdcount != 1:
        raise ValueError("one question per query")
    labels, pos = [], 12
    while (length := packet[pos]) != 0:
        if length & 0xC0:
            raise ValueError("compressed names are not expected in a question")
        labels.append(packet[pos + 1 : pos + 1 + length].decode("ascii"))
        pos += 1 + length
    qtype, _qclass = struct.unpack("!HH", packet[pos + 1 : pos + 5])
    return ident, flags, ".".join(labels).lower(), qtype, pos + 5


def answer(packet: bytes, addresses: list[str] | None, rcode: int = NOERROR) -> bytes:
    """The response to `packet`: its question, then one A record per address."""
    ident, flags, _name, qtype, end = parse_query(packet)
    records = [] if qtype != A or not addresses else addresses[:MAX_ANSWERS]
    if addresses is None and rcode == NOERROR:
        rcode = NXDOMAIN
    header = struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x0100) | 0x0080 | rcode, 1, len(records), 0, 0)
    body = b"".join(struct.pack("!HHHIH", 0xC00C, A, 1, TTL, 4) + socket.inet_aton(a) for a in records)
    return header + packet[12:end] + body


def forward(name: str) -> list[str] | None:
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return None
    return sorted({str(info[4][0]) for info in infos})


class DNSServer:
    def __init__(self, address: str, resolve: Resolver, port: int = 53) -> None:
        self.resolve = resolve
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        threading.Thread(target=self._serve, name="dns", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                packet, peer = self.sock.recvfrom(4096)
            except OSError:
                return  # closed
            try:
                name = parse_query(packet)[2]
            except (ValueError, IndexError, UnicodeDecodeError, struct.error):
                continue
            found = self.resolve(name)
            if found is not None or name.endswith("cluster.local"):
                self._reply(packet, peer, found)
            else:  # not ours: ask the host, off this thread (it may be slow)
                threading.Thread(
                    target=lambda p=packet, a=peer, n=name: self._reply(p, a, forward(n)), daemon=True
                ).start()

    def _reply(self, packet: bytes, peer: tuple[str, int], addresses: list[str] | None) -> None:
        try:
            self.sock.sendto(answer(packet, addresses), peer)
        except OSError as e:
            log.debug("dns reply to %s failed: %s", peer, e)

    def close(self) -> None:
        self.sock.close()
