"""Pure ASGI middleware: request ids and metrics around every request, API keys, and the
body-size limit.

Pure ASGI rather than ``BaseHTTPMiddleware``, which costs a task and a stream per request on the
hot path.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import os
import re
import time
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import render_error
from app.errors import InvalidApiKey, PayloadTooLarge
from app.metrics import REQUEST_DURATION, REQUESTS

access_log = logging.getLogger("app.access")
REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    """Gives each request an id (taken from ``X-Request-ID`` or made), echoes it, counts it, and
    writes its access-log line.

    The ``route`` label is the matched route's template, or ``unmatched``, so that scanning random
    paths cannot blow up the metric's label set. An embedding route leaves what it did in
    ``scope["state"]["access"]`` (model, inputs, tokens, queue and inference time; see
    ``app.api.access_log``); this adds ``x-total-time`` to its response and those fields to the
    line.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id.decode()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id)]
                if "access" in state:
                    total = f"{(time.perf_counter() - started) * 1000:.2f}".encode()
                    headers.append((b"x-total-time", total))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(template, str(status)).inc()
            REQUEST_DURATION.labels(template).observe(elapsed)
            if access_log.isEnabledFor(logging.INFO):
                fields = {
                    "request_id": state["request_id"],
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    **state.get("access", {}),
                    "total_ms": round(elapsed * 1000, 2),
                }
                access_log.info(
                    "%s %s %d", scope["method"], scope["path"], status, extra={"fields": fields}
                )


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
            return bytes(value)
    return b"%s%012x" % (_ID_PREFIX, next(_ID_COUNTER))


# Made ids: 20 random hex digits per process, then a counter. As unique as a UUID across replicas
# and restarts, without a getrandom() call per request as uuid4 makes.
_ID_PREFIX = os.urandom(10).hex().encode()
_ID_COUNTER = itertools.count()


OPEN_PATHS = frozenset({"/health", "/health/live", "/metrics"})
"""Paths that never need a key: probes and the Prometheus scrape."""


class ApiKeyMiddleware:
    """With ``EMBED_API_KEYS`` set, every path but the probes and ``/metrics`` needs
    ``Authorization: Bearer <key>``. Keys are compared in constant time, every one of them, so
    the timing tells nothing; neither a key nor the header is ever logged. CORS preflights are
    answered by the CORS middleware outside this one, so they pass without a key."""

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        error = InvalidApiKey(
            "a valid API key is required: send Authorization: Bearer <key> (one of EMBED_API_KEYS)"
        )
        headers = {"www-authenticate": 'Bearer realm="embed"'}
        await render_error(error, headers, path=scope["path"])(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        token = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = bytes(value).partition(b" ")
                if scheme.lower() != b"bearer":
                    token = b""
                break
        token = token.strip()
        matched = False
        for key in self.keys:  # no early exit: the time taken does not depend on which matched
            matched |= hmac.compare_digest(token, key)
        return matched and bool(token)


class BodyLimitMiddleware:
    """Refuses a body over ``max_bytes`` with a 413 before the route parses it.

    A declared ``Content-Length`` over the limit is refused without reading; a chunked body is
    counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) <= self.max_bytes:
                await self.app(scope, receive, send)  # the server enforces Content-Length
                return
            await self._refuse(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, replay([message]), send)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
        request = {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, replay([request], then=receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(
            f"the request body is larger than the limit of {self.max_bytes} bytes "
            "(EMBED_MAX_BODY_BYTES)"
        )
        # Connection: close, since the rest of the body is left unread.
        response = render_error(error, {"connection": "close"}, path=scope["path"])
        await response(scope, receive, send)


def replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A ``receive`` that hands out ``messages`` first, then defers to ``then``."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive
