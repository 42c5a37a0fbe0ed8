"""Messages between the front end and its workers, moved by the front end's event loop itself.

A ``multiprocessing`` queue moves each message through a helper thread: a feeder thread pickles
and writes what the loop puts, and a reader thread in the front end waits on the answers and hands
each to the loop (``call_soon_threadsafe``). Per request that is two thread hand-overs in the front
end, each taking the GIL from the loop, and a wake-up of the loop: on the 2-core Xeon, 0.16 of the
front end's 0.60 CPU-ms per request went to the two helper threads alone
(`bench/server_ceiling.py`). Here the loop writes each message to the worker's pipe and reads the
answers from theirs, on non-blocking file descriptors it watches:

- :class:`Sender` (front end → one worker): pickles a message and writes it at once; what the
  pipe cannot take now waits, in order, and is written when the pipe has room (``add_writer``).
  The loop never blocks on a slow worker.
- :class:`Receiver` (one worker → front end): reads what has arrived, cuts it into messages and
  hands each to a callback, on the loop (``add_reader``).
- :class:`Inbox` and :class:`Outbox` (in the worker): read the front end's messages one at a time
  (blocking the worker's intake thread), and write each answer whole (under a lock, from the
  thread that has the answer); a batch's answers go in one write (``put_all``), so the batcher
  pays one pickle and one write per batch.

Each worker has its own two pipes. A worker killed while writing an answer (the OOM killer) leaves
at most a partial message in its own answer pipe, which the front end closes with it; in one pipe
shared by all workers, that fragment would have garbled every later answer.

The frames are ``multiprocessing.connection.Connection``'s (a 4-byte big-endian length, or -1 and
an 8-byte length above 2 GiB, then the pickle): the workers use ``Connection`` as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pickle
import struct
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

#: Pipe buffer asked for (Linux caps it at /proc/sys/fs/pipe-max-size, 1 MiB by default): a large
#: photo's request goes in one write instead of 16 of the default 64 KiB.
PIPE_BYTES = 1 << 20
_HEADER = struct.Struct("!i")
_LONG = struct.Struct("!Q")


def _frame(msg: Any) -> list[bytes]:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > 0x7FFFFFFF:
        return [_HEADER.pack(-1) + _LONG.pack(len(data)), data]
    return [_HEADER.pack(len(data)), data]


def _grow(fd: int) -> None:
    with contextlib.suppress(OSError):  # not Linux, or a smaller cap: the default buffer works
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class Sender:
    """The front end's end of one worker's pipe (see the module docstring); on the event loop."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self._fd = conn.fileno()
        self._loop = loop
        self._waiting: deque[memoryview] = deque()
        self.broken = False
        """The worker's end is gone: what is sent now is dropped (the worker's requests are answered
        by the front end's watch over its workers)."""
        os.set_blocking(self._fd, False)
        _grow(self._fd)

    @property
    def backlog(self) -> int:
        """Bytes sent and not yet written into the pipe."""
        return sum(len(part) for part in self._waiting)

    def send(self, msg: Any) -> None:
        if self.broken:
            return
        parts = _frame(msg)
        if self._waiting:
            self._waiting.extend(memoryview(p) for p in parts)
            return
        try:
            written = os.writev(self._fd, parts)
        except BlockingIOError:
            written = 0
        except OSError:  # BrokenPipeError: the worker exited
            self._break()
            return
        for part in parts:
            if written >= len(part):
                written -= len(part)
                continue
            self._waiting.append(memoryview(part)[written:])
            written = 0
        if self._waiting:
            self._loop.add_writer(self._fd, self._flush)

    def _flush(self) -> None:
        while self._waiting:
            head = self._waiting[0]
            try:
                written = os.write(self._fd, head)
            except BlockingIOError:
                return
            except OSError:
                self._break()
                return
            if written < len(head):
                self._waiting[0] = head[written:]
                return
            self._waiting.popleft()
        self._loop.remove_writer(self._fd)

    def _break(self) -> None:
        self.broken = True
        self._waiting.clear()
        self._loop.remove_writer(self._fd)

    def close(self) -> None:
        """Close the pipe; what is still waiting is dropped (after a Stop and the worker's exit, nothing
        is)."""
        self._loop.remove_writer(self._fd)
        self._waiting.clear()
        self._conn.close()


class Receiver:
    """Reads framed messages from a pipe on the event loop and hands each to `deliver`."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop, deliver: Callable[[Any], None]) -> None:
        self._conn = conn
        self._fd = conn.fileno()
        self._loop = loop
        self._deliver = deliver
        self._buffer = bytearray()
        os.set_blocking(self._fd, False)
        _grow(self._fd)
        loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, PIPE_BYTES)
        except BlockingIOError:
            return
        if not chunk:  # the worker is gone (its last whole messages were delivered)
            self.stop()
            return
        buffer = self._buffer
        buffer += chunk
        start = 0
        try:
            while len(buffer) - start >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buffer, start)
                body = start + _HEADER.size
                if size == -1:
                    if len(buffer) - body < _LONG.size:
                        break
                    (size,) = _LONG.unpack_from(buffer, body)
                    body += _LONG.size
                if len(buffer) - body < size:
                    break
                with memoryview(buffer) as view:
                    msg = pickle.loads(view[body : body + size])
                start = body + size
                for one in msg if type(msg) is list else (msg,):  # a list: several in one write
                    try:
                        self._deliver(one)
                    except Exception as exc:  # one bad answer must not hold back the ones behind it
                        context = {"message": "delivering a worker's message", "exception": exc}
                        self._loop.call_exception_handler(context)
        finally:
            del buffer[:start]

    def stop(self) -> None:
        self._loop.remove_reader(self._fd)

    def close(self) -> None:
        """Stop reading and close the pipe; a partial message left by a worker that was killed while
        writing it is dropped with it."""
        self.stop()
        self._buffer.clear()
        self._conn.close()


class Outbox:
    """A worker's end of its answer pipe: each message is written whole, under a lock, by the
    thread that sends it (the batcher, a decode thread, the control thread). A front end that reads
    too slowly makes them wait, rather than letting answers pile up in memory."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def put(self, msg: Any) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._conn.send_bytes(data)

    def put_all(self, msgs: list[Any]) -> None:
        """Several messages in one write (a batch's answers): the :class:`Receiver` hands each over
        on its own, in order. A list is what marks them (the messages are tuples, never lists)."""
        if msgs:
            self.put(msgs if len(msgs) > 1 else msgs[0])


class Inbox:
    """The worker's end of its pipe from the front end: ``get`` blocks for the next message, and
    raises EOFError once the front end is gone."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self) -> Any:
        return pickle.loads(self._conn.recv_bytes())
