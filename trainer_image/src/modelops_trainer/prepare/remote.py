"""Reading a source's bytes: local files directly, HTTP(S) with a short redirect chain, the rest
through fsspec.

A source URL is chosen by the Dataset's author and served by whoever controls it. Over HTTP up to
`MAX_REDIRECTS` redirects are followed (object stores, release pages and CDNs answer with one or
two), except four, each refused with an error naming it: from `https` to `http` (the rest of the
exchange would travel unencrypted), from a public address to an internal one (loopback, private,
link-local: the server of a public source, or of a manifest's rows, must not steer the program to
a service inside the cluster, as the rows' own rule says), a loop, and a chain longer than
`MAX_REDIRECTS`. Every wait for the server (to connect, for the headers, between two reads) is
bounded by `HTTP_TIMEOUT_S`, and every read by the caller (`read_capped`; archives count what they
extract).
"""

from __future__ import annotations

import io
import ipaddress
import os
import socket
import stat
import urllib.error
import urllib.request
from typing import IO, Any, cast
from urllib.parse import urlsplit

import fsspec  # type: ignore[import-untyped]

#: Seconds a source's server may take to answer: to connect, to send the headers, or between two
#: reads. Read at each request, so that a test can shorten it.
HTTP_TIMEOUT_S = 60.0
#: Redirects followed from one source URL; one more is refused.
MAX_REDIRECTS = 5


class RedirectRefused(OSError):
    """A redirect that is not followed: a downgrade to http, inwards from a public address, a loop,
    or one too many."""


class SourceTimeout(OSError):
    """The source's server stopped answering for longer than `HTTP_TIMEOUT_S`."""


def _internal(url: str) -> bool:
    """Whether `url`'s host is (or resolves to) a loopback, private, link-local or other non-global
    address. A name that does not resolve is not: opening it fails anyway."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a[4][0]) for a in socket.getaddrinfo(host, None)]
        except (OSError, UnicodeError):
            return False
    return any(not a.is_global for a in addresses)


def redirect_problem(chain: list[str]) -> str | None:
    """Why the last redirect of `chain` (the URL first asked for, then each redirect's target) is
    not followed, or None."""
    before, target = chain[-2], chain[-1]
    if urlsplit(before).scheme == "https" and urlsplit(target).scheme != "https":
        return f"redirect from {before[:200]} to {target[:200]} refused: a downgrade from https to http"
    if target in chain[:-1]:
        return f"redirect loop: {' -> '.join(u[:200] for u in chain)}"
    if len(chain) - 1 > MAX_REDIRECTS:
        return f"more than {MAX_REDIRECTS} redirects from {chain[0][:200]} (the last to {target[:200]})"
    if _internal(target) and not _internal(chain[0]):
        return (
            f"redirect from {before[:200]} to {target[:200]} refused: it leads from a public address "
            "to an internal one (loopback, private or link-local)"
        )
    return None


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling (303 and 301/302 after POST become GET, fragments and bodies
    handled), with the chain checked first: its own limits would only report an "infinite loop"."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        chain: list[str] = [*getattr(req, "modelops_chain", [req.full_url]), newurl]
        problem = redirect_problem(chain)
        if problem is not None:
            fp.close()
            raise RedirectRefused(problem)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.modelops_chain = chain  # type: ignore[attr-defined]
        return new


_HTTP = urllib.request.build_opener(_Redirects)


def _timed_out(uri: str) -> SourceTimeout:
    return SourceTimeout(f"{uri[:200]} sent nothing for {HTTP_TIMEOUT_S:g} s (the HTTP timeout): timed out")


class _HttpBody(io.RawIOBase):
    """An HTTP response's body whose stalls raise `SourceTimeout` naming the URL and the timeout."""

    def __init__(self, uri: str, response: Any) -> None:
        self.uri, self.response = uri, response
        length = response.headers.get("Content-Length")
        #: The size the server declared, when it did (a caller may refuse it before reading).
        self.declared = int(length) if length and length.isdigit() else None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            return int(self.response.readinto(b))
        except TimeoutError as e:
            raise _timed_out(self.uri) from e

    def close(self) -> None:
        self.response.close()
        super().close()


def _open_http(uri: str) -> _HttpBody:
    try:
        response = _HTTP.open(uri, timeout=HTTP_TIMEOUT_S)
    except TimeoutError as e:  # waiting for the headers
        raise _timed_out(uri) from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):  # connecting
            raise _timed_out(uri) from e
        raise
    return _HttpBody(uri, response)


def open_source(uri: str) -> IO[bytes]:
    """A binary file object reading `uri` from its start (over HTTP: buffered, not seekable)."""
    scheme = urlsplit(uri).scheme
    if scheme in ("", "file"):
        return open(uri.removeprefix("file://"), "rb")
    if scheme in ("http", "https"):
        return cast(IO[bytes], io.BufferedReader(_open_http(uri), 1 << 16))
    return cast(IO[bytes], fsspec.open(uri, "rb").open())


def read_capped(uri: str, limit: int) -> bytes | None:
    """The bytes at `uri`, or None when there are more than `limit`: refused before reading when the
    server declares a larger size, else after reading at most `limit + 1` bytes."""
    if uri.startswith(("file://", "/")):  # what open_source opens locally, without parsing the URL
        return _read_local(uri.removeprefix("file://"), limit)
    with open_source(uri) as f:
        raw = getattr(f, "raw", None)
        if isinstance(raw, _HttpBody) and raw.declared is not None and raw.declared > limit:
            return None
        data = bytes(f.read(limit + 1))
    return data if len(data) <= limit else None


def _read_local(path: str, limit: int) -> bytes | None:
    """`read_capped` of a local file. A regular file is sized first and read whole: asking for
    `limit + 1` bytes makes Python allocate that much (64 MiB by default) for every small image,
    which took more time than decoding it. Pipes and devices are read in blocks up to the limit."""
    with open(path, "rb", buffering=0) as f:
        info = os.fstat(f.fileno())
        if stat.S_ISREG(info.st_mode):
            if info.st_size > limit:
                return None
            data = f.readall()
        else:
            blocks: list[bytes] = []
            total = 0
            while total <= limit and (block := f.read(min(1 << 20, limit + 1 - total))):
                blocks.append(block)
                total += len(block)
            data = b"".join(blocks)
    return data if len(data) <= limit else None
