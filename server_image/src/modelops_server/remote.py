"""Opening a model's URI: local files directly, HTTP(S) with a short redirect chain, S3 through
fsspec (s3fs); other schemes are refused before any I/O.

The rules are the trainer's for its sources (`modelops_trainer.prepare.remote`; the two images
share no package): up to `MAX_REDIRECTS` redirects are followed, but not from `https` to `http`,
not from a public address to an internal one (loopback, private, link-local), not in a loop; and
every wait for the server (to connect, for the headers, between two reads) is bounded by
`HTTP_TIMEOUT_S`. Each refusal is an `OSError` whose message names it.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import urllib.request
from typing import IO, Any, cast
from urllib.parse import urlsplit

import fsspec  # type: ignore[import-untyped]

#: The schemes the image has file systems for: local files, HTTP(S) and S3 (s3fs). The operator's
#: API accepts the same; gs:// (gcsfs) and Azure (adlfs) are not installed.
SUPPORTED_SCHEMES = ("file", "s3", "http", "https")
#: Seconds the model's HTTP server may take to connect, to send the headers, or between two reads.
HTTP_TIMEOUT_S = 60.0
#: Redirects followed from one URL; one more is refused.
MAX_REDIRECTS = 5


class RedirectRefused(OSError):
    """A redirect that is not followed: a downgrade, inwards from a public address, a loop, too many."""


class UnsupportedScheme(ValueError):
    """A URI whose scheme has no file system in the image."""


def check_scheme(uri: str) -> None:
    """Raise UnsupportedScheme unless `uri` is a plain path or of a supported scheme."""
    scheme, sep, _ = uri.partition("://")
    if sep and scheme not in SUPPORTED_SCHEMES:
        raise UnsupportedScheme(
            f"{scheme}:// is not supported: the model's URI must be a local path or a file://, s3://, http:// "
            "or https:// URI (gs://, gcs://, az:// and abfs:// are not: the image has no Google Cloud Storage "
            "or Azure client)"
        )


def _internal(url: str) -> bool:
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
    """Why the last redirect of `chain` (the URL asked for, then each target) is refused, or None."""
    before, target = chain[-2], chain[-1]
    if urlsplit(before).scheme == "https" and urlsplit(target).scheme != "https":
        return f"redirect from {before[:200]} to {target[:200]} refused: a downgrade from https to http"
    if target in chain[:-1]:
        return f"redirect loop: {' -> '.join(u[:200] for u in chain)}"
    if len(chain) - 1 > MAX_REDIRECTS:
        return f"more than {MAX_REDIRECTS} redirects from {chain[0][:200]} (the last to {target[:200]})"
    if _internal(target) and not _internal(chain[0]):
        return f"redirect from {before[:200]} to {target[:200]} refused: from a public address to an internal one"
    return None


class _Redirects(urllib.request.HTTPRedirectHandler):
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


class _HttpBody(io.RawIOBase):
    """A response body whose stalls raise TimeoutError naming the URL and the timeout."""

    def __init__(self, uri: str, response: Any) -> None:
        self.uri, self.response = uri, response

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            return int(self.response.readinto(b))
        except TimeoutError as e:
            raise TimeoutError(f"{self.uri[:200]} sent nothing for {HTTP_TIMEOUT_S:g} s (the HTTP timeout)") from e

    def close(self) -> None:
        self.response.close()
        super().close()


def open_uri(uri: str) -> IO[bytes]:
    """A binary file object reading `uri` from its start. Raises UnsupportedScheme or OSError."""
    check_scheme(uri)
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        try:
            response = _HTTP.open(uri, timeout=HTTP_TIMEOUT_S)
        except TimeoutError as e:
            raise TimeoutError(f"{uri[:200]} sent nothing for {HTTP_TIMEOUT_S:g} s (the HTTP timeout)") from e
        return cast(IO[bytes], io.BufferedReader(_HttpBody(uri, response), 1 << 20))
    return cast(IO[bytes], fsspec.open(uri, "rb").open())
