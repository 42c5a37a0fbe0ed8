"""The pipes between the front end and its workers (`modelops_server.pipes`): real pipes, a real
event loop, the worker's end in this process or in a spawned one."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from multiprocessing.connection import Connection
from typing import Any

import pytest

from modelops_server.pipes import PIPE_BYTES, Inbox, Outbox, Receiver, Sender

CTX = multiprocessing.get_context("spawn")


def drain(inbox: Inbox, count: int, into: list[Any]) -> threading.Thread:
    """A thread that reads `count` messages, as a worker's intake thread does."""

    def run() -> None:
        for _ in range(count):
            into.append(inbox.get())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def send_all(messages: list[Any]) -> list[Any]:
    reader, writer = CTX.Pipe(duplex=False)
    sender = Sender(writer, asyncio.get_running_loop())
    got: list[Any] = []
    for msg in messages:  # all sent before anything is read: what the pipe cannot take waits
        sender.send(msg)
    thread = drain(Inbox(reader), len(messages), got)
    while thread.is_alive():
        await asyncio.sleep(0.01)
    sender.close()
    return got


def test_messages_larger_than_the_pipe_arrive_whole_and_in_order():
    big = os.urandom(3 * PIPE_BYTES + 17)  # a large photo: more than the pipe holds at once
    messages = [("small", 1), ("big", big), ("after", b"x" * 10), ("big2", big[::-1]), ("last", None)]
    assert asyncio.run(send_all(messages)) == messages


def test_a_send_to_a_worker_that_is_gone_is_dropped_not_raised():
    async def run() -> bool:
        reader, writer = CTX.Pipe(duplex=False)
        sender = Sender(writer, asyncio.get_running_loop())
        reader.close()
        sender.send(("one", b"x" * (2 * PIPE_BYTES)))
        sender.send(("two", 2))
        broken = sender.broken
        sender.close()
        return broken

    assert asyncio.run(run())


def test_the_inbox_ends_with_eof_when_the_front_end_is_gone():
    reader, writer = CTX.Pipe(duplex=False)
    writer.close()
    with pytest.raises(EOFError):
        Inbox(reader).get()


def test_answers_cut_across_reads_are_delivered_once_each_in_order():
    async def run() -> list[Any]:
        reader, writer = CTX.Pipe(duplex=False)
        loop = asyncio.get_running_loop()
        got: list[Any] = []
        done = loop.create_future()

        def deliver(msg: Any) -> None:
            got.append(msg)
            if msg == "end" and not done.done():
                done.set_result(None)

        receiver = Receiver(reader, loop, deliver)
        outbox = Outbox(writer)
        big = os.urandom(PIPE_BYTES + 5)  # spans several reads of the loop

        # Written from another thread, as the workers' threads write them, while the loop reads.
        def write() -> None:
            for msg in [1, big, "two", big, *range(500), "end"]:
                outbox.put(msg)

        thread = threading.Thread(target=write)
        thread.start()
        await asyncio.wait_for(done, 30)
        thread.join()
        receiver.stop()
        return [*got[:4], len(got)]

    one, big, two, big2, count = asyncio.run(run())
    assert (one, two, count) == (1, "two", 505)
    assert len(big) == PIPE_BYTES + 5 and big == big2


def test_a_delivery_that_raises_does_not_deliver_anything_twice():
    async def run() -> list[Any]:
        reader, writer = CTX.Pipe(duplex=False)
        loop = asyncio.get_running_loop()
        got: list[Any] = []
        errors: list[BaseException] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))

        def deliver(msg: Any) -> None:
            got.append(msg)
            if msg == "boom":
                raise RuntimeError("a bad answer")

        receiver = Receiver(reader, loop, deliver)
        outbox = Outbox(writer)
        for msg in ("a", "boom", "b"):
            outbox.put(msg)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if "b" in got:
                break
        receiver.stop()
        assert errors and isinstance(errors[0], RuntimeError)
        return got

    assert asyncio.run(run()) == ["a", "boom", "b"]


def _echo(inbox: Connection, outbox: Connection) -> None:
    """A spawned 'worker': answers each message with it doubled, until the front end is gone."""
    source, sink = Inbox(inbox), Outbox(outbox)
    while True:
        try:
            msg = source.get()
        except EOFError:
            sink.put("front end gone")
            return
        sink.put(msg * 2)


def test_a_spawned_worker_reads_its_pipe_and_answers_into_its_own():
    async def run() -> list[Any]:
        loop = asyncio.get_running_loop()
        answers, answer_end = CTX.Pipe(duplex=False)
        worker_end, our_end = CTX.Pipe(duplex=False)
        process = CTX.Process(target=_echo, args=(worker_end, answer_end), daemon=True)
        process.start()
        worker_end.close()
        answer_end.close()
        got: list[Any] = []
        receiver = Receiver(answers, loop, got.append)
        sender = Sender(our_end, loop)
        for n in (1, 2, 3):
            sender.send(n)
        sender.send(b"p" * PIPE_BYTES)
        while sender.backlog:  # more than the pipe holds: written as the worker reads
            await asyncio.sleep(0.01)
        sender.close()  # the worker sees EOF after the last message
        for _ in range(1000):
            if "front end gone" in got:
                break
            await asyncio.sleep(0.01)
        await asyncio.to_thread(process.join, 10)
        receiver.stop()
        return got

    got = asyncio.run(run())
    assert got[:3] == [2, 4, 6] and got[3] == b"p" * (2 * PIPE_BYTES) and got[4:] == ["front end gone"]


def test_a_batchs_answers_in_one_write_arrive_one_by_one():
    async def run() -> list[Any]:
        reader, writer = CTX.Pipe(duplex=False)
        loop = asyncio.get_running_loop()
        got: list[Any] = []
        receiver = Receiver(reader, loop, got.append)
        outbox = Outbox(writer)
        outbox.put_all([("result", 1), ("result", 2), ("ran", 2)])
        outbox.put_all([("result", 3)])
        outbox.put_all([])
        outbox.put(("loaded", "m"))
        for _ in range(200):
            if len(got) == 5:
                break
            await asyncio.sleep(0.01)
        receiver.stop()
        return got

    assert asyncio.run(run()) == [("result", 1), ("result", 2), ("ran", 2), ("result", 3), ("loaded", "m")]


def test_a_worker_killed_mid_answer_garbles_nothing_but_its_own_pipe():
    async def run() -> tuple[list[Any], list[Any]]:
        loop = asyncio.get_running_loop()
        dead_in, dead_out = CTX.Pipe(duplex=False)
        live_in, live_out = CTX.Pipe(duplex=False)
        from_dead: list[Any] = []
        from_live: list[Any] = []
        dead = Receiver(dead_in, loop, from_dead.append)
        live = Receiver(live_in, loop, from_live.append)
        Outbox(dead_out).put(("whole", 1))
        os.write(dead_out.fileno(), (100).to_bytes(4, "big") + b"only ten b")  # killed mid-write
        dead_out.close()
        Outbox(live_out).put(("answer", 2))
        for _ in range(200):
            if from_dead and from_live:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        dead.close()
        Outbox(live_out).put(("answer", 3))
        for _ in range(200):
            if len(from_live) == 2:
                break
            await asyncio.sleep(0.01)
        live.close()
        return from_dead, from_live

    from_dead, from_live = asyncio.run(run())
    assert from_dead == [("whole", 1)]
    assert from_live == [("answer", 2), ("answer", 3)]
