"""The outermost layer: a request id, the access-log line and the request metrics for every
request, and the one handler of unexpected errors.

Pure ASGI rather than ``BaseHTTPMiddleware``, which costs a task and a stream per request on the
hot path. Two layers, with CORS between them (``app.main`` stacks them)::

    RequestContext   id in, X-Request-ID out, metrics, access log      (outermost)
    CORS             Access-Control-* headers                           (when EMBED_CORS_ORIGINS)
    ErrorGuard       an unexpected exception becomes a generic 500     (inside both, so the 500
    ...the guards, the direct path and the routes                       carries the id and CORS)

A response that did model work says so on its way up: its ``http.response.start`` message carries
the route's access-log fields under ``ACCESS_FIELDS`` (``app.api.responses`` puts them there);
this layer adds them to the line and ``X-Total-Time`` to the headers. Nothing is left in the
scope for a later layer to read back.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import render_error
from app.errors import InternalError
from app.metrics import REQUEST_DURATION, REQUESTS

access_log = logging.getLogger("app.access")
error_log = logging.getLogger("app.errors")
REQUEST_ID_HEADER = b"x-request-id"
ACCESS_FIELDS = "app.access_fields"
"""Key of the ``http.response.start`` message holding a route's access-log fields."""
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
UNMATCHED = "unmatched"
REFUSED = "app.refused"
"""Scope extension set when the HTTP layer refused a request after it reached the app (a body
that came in too slowly): the HTTP layer answered and counted it, so this layer does not."""
INVALID_HTTP = "invalid_http"
"""The ``route`` label of what the HTTP layer refused before any route could see it."""


class RequestContext:
    """Gives each request an id (taken from ``X-Request-ID`` or made), echoes it, counts it, and
    writes its access-log line.

    The ``route`` label is the route's template, or ``unmatched``, so that scanning random paths
    cannot blow up the metric's label set.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        status = 500
        fields: dict[str, Any] = {}

        async def send_with_id(message: Message) -> None:
            nonlocal status, fields
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id)]
                if ACCESS_FIELDS in message:
                    fields = message.pop(ACCESS_FIELDS)
                    total = f"{(time.perf_counter() - started) * 1000:.2f}".encode()
                    headers.append((b"x-total-time", total))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if not scope.get("extensions", {}).get(REFUSED):
                record_request(
                    _template(scope),
                    status,
                    elapsed,
                    scope["method"],
                    scope["path"],
                    request_id.decode(),
                    fields,
                )


def record_request(
    route: str,
    status: int,
    elapsed: float,
    method: str,
    path: str,
    request_id: str = "-",
    fields: dict[str, Any] | None = None,
) -> None:
    """Count a request under its route and status, and write its access-log line."""
    REQUESTS.labels(route, str(status)).inc()
    REQUEST_DURATION.labels(route).observe(elapsed)
    if access_log.isEnabledFor(logging.INFO):
        line = {
            "request_id": request_id,
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            **(fields or {}),
            "total_ms": round(elapsed * 1000, 2),
        }
        access_log.info("%s %s %d", method, path, status, extra={"fields": line})


def _template(scope: Scope) -> str:
    """The route's template: the one the router matched, or for a request refused before
    routing (a body over the limit, a missing key), the one its path and method would match."""
    route = scope.get("route")
    if route is not None:
        return str(route.path)
    for candidate in _routes(getattr(scope.get("app"), "router", None)):
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return str(candidate.path)
    return UNMATCHED


def _routes(router: Any) -> Iterator[Any]:
    """Every route under ``router``, those of the routers included in it too (FastAPI wraps
    those; the app includes them without a prefix)."""
    for route in getattr(router, "routes", ()):
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included)
        elif hasattr(route, "path"):
            yield route


class ErrorGuard:
    """Turns an exception that no route handled into a generic 500 naming the request id, and
    logs it with its traceback; the message never says what went wrong. If the response had
    already started, it can only be cut short: the connection is closed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watching)
        except Exception as exc:
            request_id = scope.get("state", {}).get("request_id", "-")
            error_log.error("unhandled error in request %s", request_id, exc_info=exc)
            if started:
                raise
            error = InternalError(f"internal error; request id {request_id}")
            await render_error(error, path=scope["path"])(scope, receive, send)


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
            return bytes(value)
    return b"%s%012x" % (_ID_PREFIX, next(_ID_COUNTER))


# Made ids: 20 random hex digits per process, then a counter. As unique as a UUID across replicas
# and restarts, without a getrandom() call per request as uuid4 makes.
_ID_PREFIX = os.urandom(10).hex().encode()
_ID_COUNTER = itertools.count()
