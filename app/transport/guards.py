"""Guards in front of the routes: API keys and the body-size limit, as pure ASGI middleware."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import render_error
from app.errors import InvalidApiKey, PayloadTooLarge
from app.transport.direct import replay

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
