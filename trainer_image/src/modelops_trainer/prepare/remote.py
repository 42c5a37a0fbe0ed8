"""Reading a source's bytes: local files directly, HTTP without redirects, the rest through fsspec.

A source URL is chosen by the Dataset's author and served by whoever controls it. Over HTTP a
redirect is refused (an error naming where it pointed), since it could send the program to an
internal service the author cannot reach; and every read is bounded by the caller.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import IO, Any, cast
from urllib.parse import urlsplit

import fsspec  # type: ignore[import-untyped]

#: Seconds a source's server may take to answer (to connect, or between two reads).
HTTP_TIMEOUT_S = 60


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl[:200]} not followed", headers, fp)


_HTTP = urllib.request.build_opener(_NoRedirects)


def open_source(uri: str) -> IO[bytes]:
    """A binary file object reading `uri` from its start (over HTTP: not seekable)."""
    scheme = urlsplit(uri).scheme
    if scheme in ("", "file"):
        return open(uri.removeprefix("file://"), "rb")
    if scheme in ("http", "https"):
        return cast(IO[bytes], _HTTP.open(uri, timeout=HTTP_TIMEOUT_S))
    return cast(IO[bytes], fsspec.open(uri, "rb").open())


def read_capped(uri: str, limit: int) -> bytes | None:
    """The bytes at `uri`, or None when there are more than `limit`; reads at most `limit + 1`."""
    with open_source(uri) as f:
        data = bytes(f.read(limit + 1))
    return data if len(data) <= limit else None
