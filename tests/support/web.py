"""A real HTTP(S) server on loopback for the tests of remote sources and models: the standard
library's `ThreadingHTTPServer` in a thread, with the routes a test gives it, and optionally TLS
with a self-signed certificate that the client is told to trust (`SSL_CERT_FILE`).

Routes are functions of the handler, so a test writes what a hostile or slow server does: redirect,
stream a large body made on the fly, stall after the headers.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import queue
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key: (cert.pem, key.pem) in `directory`."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelops-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Site:
    """An HTTP server on 127.0.0.1 answering GETs by path prefix; `with Site(routes) as site:`.

    `routes` maps a path prefix to a route; the longest matching prefix answers, others get 404.
    `hits` lists the paths asked for, in order. `tls` is (cert, key) for HTTPS.
    """

    def __init__(self, routes: dict[str, Route], tls: tuple[Path, Path] | None = None) -> None:
        self.routes = routes
        self.hits: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                site.hits.append(self.path)
                matches = [p for p in site.routes if self.path.startswith(p)]
                if not matches:
                    self.send_error(404)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a capped reader hangs up
                    site.routes[max(matches, key=len)](self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Site:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def redirect(handler: http.server.BaseHTTPRequestHandler, location: str, code: int = 302) -> None:
    handler.send_response(code)
    handler.send_header("Location", location)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def send_bytes(handler: http.server.BaseHTTPRequestHandler, data: bytes, content_type: str = "text/plain") -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def stream(
    handler: http.server.BaseHTTPRequestHandler,
    size: int,
    *,
    declare: bool,
    sent: queue.Queue[int],
    block: int = 1 << 16,
) -> None:
    """`size` bytes of CSV-looking text made block by block (nothing large in memory), with or
    without a Content-Length (else chunked); `sent` gets the bytes written before the client left."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/csv")
    if declare:
        handler.send_header("Content-Length", str(size))
    else:
        handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    line = b"a.png,x\n" * (block // 8)
    written = 0
    try:
        while written < size:
            chunk = line[: min(block, size - written)]
            handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if not declare else chunk)
            written += len(chunk)
        if not declare:
            handler.wfile.write(b"0\r\n\r\n")
    finally:
        sent.put(written)


def stall(handler: http.server.BaseHTTPRequestHandler, release: threading.Event, *, after_headers: bool) -> None:
    """Accept the request, then send nothing (or only the headers and a few bytes) until `release`."""
    if after_headers:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b"uri,label\n")
        handler.wfile.flush()
    release.wait(60)
