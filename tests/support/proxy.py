"""A TCP proxy to the API server whose open connections can be stalled: bytes stop flowing both
ways while the sockets stay open, as behind a load balancer or NAT that silently dropped the flow.
Connections opened after the stall work normally. Nothing in the client sees an error: only a
timeout of its own can notice."""

from __future__ import annotations

import socket
import threading


class StallingProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.generation = 0  # connections accepted before the last stall() have a lower one
        self.stalled_below = 0
        self.closed = threading.Event()
        self.accepted = 0

    def start(self) -> StallingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stall(self) -> None:
        """Freeze every connection open now; later ones are not affected."""
        self.generation += 1
        self.stalled_below = self.generation

    def close(self) -> None:
        self.closed.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                continue
            self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst, self.generation), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, generation: int) -> None:
        try:
            while data := src.recv(65536):
                if generation < self.stalled_below:
                    self.closed.wait()  # hold the bytes, keep both sockets open, say nothing
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if generation >= self.stalled_below:
                for s in (src, dst):
                    s.close()
