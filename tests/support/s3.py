"""A real S3-compatible server for the tests: moto's, in server mode, over plain HTTP.

Programs under test reach it as a pod reaches a bucket: through the environment a credentials
Secret gives them (`AWS_ENDPOINT_URL`, keys, region), never through a client made for them. The
test's own view of the buckets is an s3fs file system with the same endpoint and keys.
moto keeps its buckets in the process that runs the server (this one), for as long as it runs.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from moto.server import ThreadedMotoServer

#: moto accepts any keys; these are what the tests put in a "credentials Secret".
ACCESS_KEY = "test"
SECRET_KEY = "test"  # moto accepts any
REGION = "us-east-1"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    """moto's S3 listening on `host:port` (a free port when 0); `start()`, then `stop()`."""

    host: str = "127.0.0.1"
    port: int = 0
    _server: Any = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The variables a credentials Secret gives a program (AWS SDKs and s3fs read them)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def start(self) -> S3Server:
        self.port = self.port or _free_port(self.host)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def fs(self) -> Any:
        """An s3fs file system on this server (a fresh instance: s3fs caches them by arguments)."""
        import s3fs  # noqa: PLC0415 - only the tests that use S3 need it

        return s3fs.S3FileSystem(
            key=ACCESS_KEY,
            secret=SECRET_KEY,
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
        )

    def bucket(self, name: str) -> Any:
        """The file system, with bucket `name` made if it is not there yet."""
        fs = self.fs()
        if not fs.exists(name):
            fs.mkdir(name)
        return fs
