"""uvicorn, as ``python -m app`` runs it: it drains on SIGTERM, sends each response in one
write, and tells a request when its client has left.

uvicorn writes a response's status line and headers, then its body, in two ``transport.write``
calls, and uvloop sends each at once: two ``send`` system calls per response, and on loopback
two wake-ups of the client. ``ServerHttpProtocol``, uvicorn's HTTP protocol as run here, writes
through a transport that holds writes and sends them together as soon as the response is
complete (or at the end of the event loop's turn, for a response that is not). The event loop's
CPU is taken from inference, so this matters (docs/design.md has the figures).

The protocol also gives every request a ``ClientWatch`` (``app.transport.disconnect``): when a
connection is lost before its response is complete, it calls back the request waiting on it,
so that the request's rows leave the queue, with no task per request waiting on ``receive``.
"""

from __future__ import annotations

import asyncio
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.transport.disconnect import CLIENT_WATCH, ClientWatch


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM first marks the app as draining, so that ``/health``
    answers 503 at once while the requests already in flight finish."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.app.state.draining = True
        super().handle_exit(sig, frame)


class CoalescingTransport:
    """Stands in for a connection's transport: writes are held until ``flush``, or until the end
    of the event loop's turn at the latest, and go out as one. Everything else is the real
    transport's; closing sends what is held first, and aborting drops it, as both do with the
    real transport's own buffer."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        """Send what is held, in one write."""
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ServerHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol as ``python -m app`` runs it. It writes through a
    ``CoalescingTransport`` that it flushes when a response is complete, and it gives each
    request a ``ClientWatch``. Flushing there, rather than at the end of the loop's turn, sends
    the response before the access log and the rest of the request's bookkeeping run."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.coalescing = CoalescingTransport(transport, self.loop)
        coalescing: Any = self.coalescing
        super().connection_made(coalescing)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()  # makes the request's cycle; its task has not run yet
        scope: Any = self.scope  # uvicorn's type leaves no room for an extension of ours
        scope.setdefault("extensions", {})[CLIENT_WATCH] = ClientWatch(self.flow.resume_reading)

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and cycle.disconnected:  # lost before the response was complete
            scope: Any = cycle.scope
            watch = scope.get("extensions", {}).get(CLIENT_WATCH)
            if isinstance(watch, ClientWatch):
                watch.connection_lost()

    def on_response_complete(self) -> None:
        self.coalescing.flush()
        super().on_response_complete()
