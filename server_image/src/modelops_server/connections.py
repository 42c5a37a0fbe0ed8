"""The listening socket, with a bound on the connections a client can hold open.

aiohttp bounds what one request head may hold (line and field sizes, `--max-header-fields`), and
its keep-alive timer, armed from a connection's opening and from each answer, closes a connection
that has not delivered a whole request head when it fires: set to `--header-timeout-s`, that is the
header timeout a slow-loris client meets. What aiohttp does not bound is how many connections are
open at once. `GuardedSite` is aiohttp's `TCPSite` with that bound: past `--max-connections`, a new
connection gets a 503 with `Retry-After` and is closed before any of it is read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from aiohttp import web

log = logging.getLogger(__name__)

_BODY = b'{"error": "too many connections to this server replica; retry"}'
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


class _Refused(asyncio.Protocol):
    """Answers 503 and closes, reading nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        writer = cast(asyncio.WriteTransport, transport)  # uvloop's are not asyncio's classes
        writer.write(REFUSAL)
        writer.close()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted from its creation to its loss.

    The count cannot be aiohttp's own list of connections: a burst of connections accepted at once
    gets all its protocols made before the first of them is listed.
    """

    __slots__ = ("_inner", "_site")

    def __init__(self, inner: asyncio.Protocol, site: GuardedSite) -> None:
        self._inner, self._site = inner, site
        site.open += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._site.open -= 1
        self._inner.connection_lost(exc)


class GuardedSite(web.TCPSite):
    """A TCP site that accepts at most `max_connections` open connections."""

    __slots__ = ("_max_connections", "_on_refused", "open")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        max_connections: int,
        on_refused: Callable[[], None] = lambda: None,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog, reuse_address=True)
        self._max_connections = max_connections
        self._on_refused = on_refused
        self.open = 0
        """Connections accepted and not yet lost."""

    def _protocol(self) -> asyncio.BaseProtocol:
        if self.open >= self._max_connections:
            self._on_refused()
            return _Refused()
        server = self._runner.server
        assert server is not None
        return _Counted(server(), self)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner, as TCPSite.start does
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
