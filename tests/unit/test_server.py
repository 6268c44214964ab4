"""The coalescing transport: writes of one event-loop turn leave as one write, in order.

A recording transport stands in for the socket here, to count the writes; the e2e tests run
every request through the real one (``python -m app`` serves with this protocol).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from app.transport.server import CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> Any:
        return f"extra {name}"


def on_a_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run the async test on an event loop of its own."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


def coalescing() -> tuple[CoalescingTransport, RecordingTransport]:
    real = RecordingTransport()
    return CoalescingTransport(real, asyncio.get_running_loop()), real  # type: ignore[arg-type]


@on_a_loop
async def test_the_writes_of_one_turn_go_out_as_one_write_in_order() -> None:
    transport, real = coalescing()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert real.writes == []
    assert transport.get_write_buffer_size() == 40
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    transport.write(b"next")  # a later turn: a write of its own
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"next"]


@on_a_loop
async def test_a_flush_sends_at_once_and_only_once() -> None:
    transport, real = coalescing()
    transport.write(b"head ")
    transport.write(b"body")
    transport.flush()  # the protocol's, when a response is complete
    assert real.writes == [b"head body"]
    await asyncio.sleep(0)
    assert real.writes == [b"head body"]


@on_a_loop
async def test_closing_sends_what_is_held_first_and_aborting_drops_it() -> None:
    transport, real = coalescing()
    transport.write(b"last words")
    transport.close()
    assert (real.writes, real.closed) == ([b"last words"], True)
    await asyncio.sleep(0)
    assert real.writes == [b"last words"]  # sent once, not again at the end of the turn

    transport, real = coalescing()
    transport.write(b"never sent")
    transport.abort()
    await asyncio.sleep(0)
    assert (real.writes, real.aborted) == ([], True)


@on_a_loop
async def test_nothing_is_written_to_a_transport_that_closed_meanwhile() -> None:
    transport, real = coalescing()
    transport.write(b"too late")
    real.closed = True  # the peer went away before the end of the turn
    await asyncio.sleep(0)
    assert real.writes == []


@on_a_loop
async def test_everything_else_is_the_real_transports() -> None:
    transport, _ = coalescing()
    assert transport.get_extra_info("peername") == "extra peername"


def test_the_connection_limit_stays_under_the_open_file_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import resource

    from app.transport import limits

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1024))
    monkeypatch.setattr(resource, "setrlimit", lambda *_: None)
    assert limits.connection_limit(1000) == 1024 - limits.FD_MARGIN
    assert limits.connection_limit(100) == 100
    raised: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda _, pair: raised.append(pair))
    assert limits.connection_limit(1000) == 1000  # the soft limit raised towards the hard one
    assert raised == [(1000 + limits.FD_MARGIN, 4096)]
