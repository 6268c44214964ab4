"""What one connection may cost the server before its request reaches the app: how long it may
take to send its headers and its body, how large its headers may be, how long it may sit idle,
and how many connections may be open at once.

``ServerHttpProtocol`` (``app.transport.server``) enforces these as the bytes arrive. A request
refused here gets the service's JSON error shape, ``Connection: close``, an access-log line and a
count under ``route="invalid_http"`` (``route="connection_limit"`` for a connection over the
limit), and its connection is closed. No limit here is waited out by a worker or by the event
loop: a slow client costs a file descriptor and a timer until its deadline, nothing more.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

import orjson

from app.config import Settings
from app.errors import ServiceError

log = logging.getLogger(__name__)

FD_MARGIN = 64
"""File descriptors kept back from connections: models, logs, the listening socket, threads."""
HEADER_LINES_PER_TOTAL = 4
"""All headers together may take this many times the limit of one header line."""


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The limits of one connection and of the server's connections together."""

    header_timeout_s: float = 10.0
    body_min_rate_bps: int = 1024
    body_rate_grace_s: float = 5.0
    keepalive_timeout_s: float = 5.0
    max_connections: int = 1000
    max_header_bytes: int = 8192
    max_headers: int = 100

    @property
    def max_header_total_bytes(self) -> int:
        return self.max_header_bytes * HEADER_LINES_PER_TOTAL

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            header_timeout_s=settings.header_timeout_s,
            body_min_rate_bps=settings.body_min_rate_bps,
            body_rate_grace_s=settings.body_rate_grace_s,
            keepalive_timeout_s=settings.keepalive_timeout_s,
            max_connections=connection_limit(settings.max_connections),
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
        )


class Refusal(Exception):
    """Raised from a parser callback to refuse the request with ``error``."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(error.message)
        self.error = error


def connection_limit(wanted: int) -> int:
    """``wanted``, or fewer if the open-file limit (raised to its hard limit first, where that
    helps) leaves less than that after ``FD_MARGIN``; a connection past it would fail ``accept``
    rather than get a clean 503."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FD_MARGIN
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    allowed = max(1, min(wanted, soft - FD_MARGIN))
    if allowed < wanted:
        log.warning(
            "EMBED_MAX_CONNECTIONS=%d lowered to %d: the open-file limit is %d (ulimit -n)",
            wanted,
            allowed,
            soft,
        )
    return allowed


def error_response(error: ServiceError) -> bytes:
    """``error`` as a whole HTTP/1.1 response in the JSON error shape, closing the connection."""
    body = orjson.dumps(
        {"error": {"message": error.message, "type": error.type, "code": error.code.value}}
    )
    reason = _REASONS.get(error.status, "Error")
    head = [
        f"HTTP/1.1 {error.status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in error.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
