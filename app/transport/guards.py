"""Guards in front of the routes: API keys, admin keys and the body-size limits, as pure ASGI
middleware."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import render_error
from app.errors import InvalidApiKey, NotAdmin, PayloadTooLarge, ServiceError
from app.transport.direct import replay

OPEN_PATHS = frozenset(
    {"/health", "/health/live", "/metrics", "/v2/health/live", "/v2/health/ready"}
)
"""Paths that never need a key: probes and the Prometheus scrape."""
ADMIN_PREFIXES = ("/admin/", "/v2/repository/")  # the admin API, Triton's repository extension
ADMIN_KEY = "embed.admin_key"
"""Where an admin request's scope holds the position (from 1) of its key in EMBED_ADMIN_KEYS."""


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
        return bool(matching(bearer(scope), self.keys))


class AdminKeyMiddleware:
    """Paths under ``/admin/`` and ``/v2/repository/`` need one of ``EMBED_ADMIN_KEYS``: without
    a valid key a 401, with a user key (``EMBED_API_KEYS``) a 403 ``not_admin``. The key's
    position goes into the scope for the log; the key itself never does."""

    def __init__(self, app: ASGIApp, admin_keys: Iterable[str], user_keys: Iterable[str]) -> None:
        self.app = app
        self.admin_keys = [key.encode() for key in admin_keys]
        self.user_keys = [key.encode() for key in user_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(ADMIN_PREFIXES):
            await self.app(scope, receive, send)
            return
        token = bearer(scope)
        position = matching(token, self.admin_keys)
        if position:
            scope[ADMIN_KEY] = position
            await self.app(scope, receive, send)
            return
        headers = {"www-authenticate": 'Bearer realm="embed-admin"'}
        error: ServiceError
        if matching(token, self.user_keys):
            error = NotAdmin("this route needs an admin key (one of EMBED_ADMIN_KEYS)")
        else:
            error = InvalidApiKey(
                "an admin key is required: send Authorization: Bearer <key> (one of "
                "EMBED_ADMIN_KEYS)"
            )
        await render_error(error, headers, path=scope["path"])(scope, receive, send)


def bearer(scope: Scope) -> bytes:
    """The request's ``Authorization: Bearer`` token; empty when there is none."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


def matching(token: bytes, keys: list[bytes]) -> int:
    """The position (from 1) of the key ``token`` is, or 0. Every key is compared, in constant
    time, so the time taken says nothing about which one matched, or how much of it."""
    found = 0
    for position, key in enumerate(keys, 1):  # no early exit
        if hmac.compare_digest(token, key):
            found = position
    return found if token else 0


class BodyLimitMiddleware:
    """Refuses a body over ``max_bytes`` with a 413 before the route parses it.

    A declared ``Content-Length`` over the limit is refused without reading; a chunked body is
    counted as it arrives and refused as soon as it passes the limit. ``uploads`` are the paths
    that stream their body to disk themselves (a model bundle): theirs may declare up to
    ``max_upload_bytes`` and is never buffered here; the route counts a chunked one.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        *,
        uploads: Iterable[str] = (),
        max_upload_bytes: int = 0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.uploads = frozenset(uploads)
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if scope["path"] in self.uploads and scope["method"] == "POST":
            if declared is None or (declared.isdigit() and int(declared) <= self.max_upload_bytes):
                await self.app(scope, receive, send)
                return
            await self._refuse(scope, receive, send, self.max_upload_bytes, "UPLOAD")
            return
        if declared is not None:
            if declared.isdigit() and int(declared) <= self.max_bytes:
                await self.app(scope, receive, send)  # the server enforces Content-Length
                return
            await self._refuse(scope, receive, send, self.max_bytes)
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
                await self._refuse(scope, receive, send, self.max_bytes)
                return
        request = {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, replay([request], then=receive), send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, limit: int, what: str = "BODY"
    ) -> None:
        error = PayloadTooLarge(
            f"the request body is larger than the limit of {limit} bytes (EMBED_MAX_{what}_BYTES)"
        )
        # Connection: close, since the rest of the body is left unread.
        response = render_error(error, {"connection": "close"}, path=scope["path"])
        await response(scope, receive, send)
