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

And it holds each connection to ``HttpLimits`` (``app.transport.limits``) as its bytes arrive:
a deadline for the headers, a least rate for the body, a keep-alive timeout that also covers a
connection that never sends a byte, limits on the headers' size and number, a ``Host`` on every
HTTP/1.1 request, and the number of open connections. One timer per connection at most.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, ClassVar

import httptools
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.errors import (
    ClientTimeout,
    HeadersTooLarge,
    InvalidHttp,
    ServiceError,
    TooManyConnections,
)
from app.transport.context import INVALID_HTTP, REFUSED, record_request
from app.transport.disconnect import CLIENT_WATCH, ClientWatch
from app.transport.limits import HttpLimits, Refusal, error_response

BODY_RATE_EVERY_S = 1.0  # once a body's rate is checked, it is checked again this often
LINGER_S = 1.0  # after a refusal, how long what the client still sends is read and dropped


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM first marks the app as draining, so that ``/health``
    answers 503 at once while the requests already in flight finish, and starts draining the
    gRPC server (``NOT_SERVING``, no new calls, those in flight finish)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.app.state.draining = True
        grpc = getattr(self.app.state, "grpc", None)
        if grpc is not None and self._drain is None:  # gRPC drains alongside HTTP
            self._drain = asyncio.get_running_loop().create_task(grpc.drain())
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
    ``CoalescingTransport`` that it flushes when a response is complete, gives each request a
    ``ClientWatch``, and holds the connection to ``limits`` (``with_limits`` sets them). Flushing
    when a response is complete, rather than at the end of the loop's turn, sends the response
    before the access log and the rest of the request's bookkeeping run."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[ServerHttpProtocol]:
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None  # the one deadline this connection has
        self._refused = False
        self._in_headers = False
        self._head_bytes = 0  # bytes received while this request's head was incomplete
        self._header_lines = 0
        self._header_bytes = 0
        self._body_from = 0.0
        self._body_bytes = 0
        self._started = 0.0  # when this connection, then its latest request, began

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.coalescing = CoalescingTransport(transport, self.loop)
        coalescing: Any = self.coalescing
        over = len(self.connections) >= self.limits.max_connections
        super().connection_made(coalescing)
        self._started = time.perf_counter()
        if over:
            error = TooManyConnections(
                f"the server holds {self.limits.max_connections} connections already "
                "(EMBED_MAX_CONNECTIONS); retry shortly"
            )
            error.headers = {"retry-after": "1"}
            self._refuse(error, route="connection_limit")
            return
        # A connection that never sends a byte is as idle as one between requests.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, Refusal):
                self._refuse(cause.error)
            else:
                self._refuse(InvalidHttp(f"the request is not valid HTTP: {str(exc)[:100]}"))
            return
        if self._in_headers:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_total_bytes:
                self._refuse(self._too_large("the request line and headers", self._head_bytes))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._started = time.perf_counter()
        self._in_headers = True
        self._head_bytes = self._header_lines = self._header_bytes = 0
        self._arm(self.limits.header_timeout_s, self._headers_late)

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.limits
        line = len(name) + len(value) + 4  # ": " and CRLF
        self._header_lines += 1
        self._header_bytes += line
        if self._header_lines > limits.max_headers:
            raise Refusal(
                HeadersTooLarge(f"more than {limits.max_headers} header lines (EMBED_MAX_HEADERS)")
            )
        if line > limits.max_header_bytes:
            header = name[:64].decode("latin-1")
            raise Refusal(
                HeadersTooLarge(
                    f"the header {header!r} is {line} bytes; the limit for one header line is "
                    f"{limits.max_header_bytes} (EMBED_MAX_HEADER_BYTES)"
                )
            )
        if self._header_bytes > limits.max_header_total_bytes:
            raise Refusal(self._too_large("the headers", self._header_bytes))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        if self.parser.get_http_version() == "1.1" and not any(
            name == b"host" for name, _ in self.headers
        ):
            raise Refusal(InvalidHttp("an HTTP/1.1 request must carry a Host header"))
        super().on_headers_complete()  # makes the request's cycle; its task has not run yet
        scope: Any = self.scope  # uvicorn's type leaves no room for an extension of ours
        scope.setdefault("extensions", {})[CLIENT_WATCH] = ClientWatch(self.flow.resume_reading)
        if self.limits.body_min_rate_bps and self._has_body():
            self._body_from, self._body_bytes = self.loop.time(), 0
            self._arm(self.limits.body_rate_grace_s, self._check_body_rate)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
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

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length":
                return value.strip() != b"0"
            if name == b"transfer-encoding":
                return True
        return False

    def _headers_late(self) -> None:
        self._refuse(
            ClientTimeout(
                f"the request's headers were not complete within "
                f"{self.limits.header_timeout_s:g} s (EMBED_HEADER_TIMEOUT_S)"
            )
        )

    def _check_body_rate(self) -> None:
        """Cut a body whose average rate since the headers is under the least allowed; the
        event loop does this, once a second, only while a body is arriving."""
        self._timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the server stopped reading, not the client sending
            self._arm(BODY_RATE_EVERY_S, self._check_body_rate)
            return
        rate = self._body_bytes / max(self.loop.time() - self._body_from, 1e-9)
        if rate < self.limits.body_min_rate_bps:
            self._refuse(
                ClientTimeout(
                    f"the request body came in at {rate:.0f} bytes/s; the least allowed is "
                    f"{self.limits.body_min_rate_bps} (EMBED_BODY_MIN_RATE_BPS)"
                )
            )
            return
        self._arm(BODY_RATE_EVERY_S, self._check_body_rate)

    def _too_large(self, what: str, size: int) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"{what} are {size} bytes or more; the limit is {self.limits.max_header_total_bytes} "
            "(4 x EMBED_MAX_HEADER_BYTES)"
        )

    def _refuse(self, error: ServiceError, route: str = INVALID_HTTP) -> None:
        """Answer ``error`` and close the connection. A request that reached the app sees its
        client leave (and is counted here, not there); a response already under way is cut
        short instead. What the client still sends is read and dropped for up to ``LINGER_S``
        first, so that a client still sending (a huge header) reads the answer rather than a
        reset connection."""
        self._refused = True
        self._disarm()
        self._unset_keepalive_if_required()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            scope: Any = cycle.scope
            scope.setdefault("extensions", {})[REFUSED] = True
        if cycle is None or not cycle.response_started or cycle.response_complete:
            self.transport.write(error_response(error))
        self.coalescing.flush()
        if route == INVALID_HTTP and self.coalescing.can_write_eof():
            self.coalescing.write_eof()
            self.flow.resume_reading()
            self._arm(LINGER_S, self.transport.close)
        else:
            self.transport.close()
        path = self.url[:64].decode("latin-1") if getattr(self, "url", None) else "-"
        elapsed = time.perf_counter() - self._started
        record_request(route, error.status, elapsed, self._method(), path)

    def _method(self) -> str:
        if not getattr(self, "url", None):  # no request line yet
            return "-"
        try:
            return str(self.parser.get_method().decode("latin-1"))[:16]
        except Exception:  # no request line yet
            return "-"

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
