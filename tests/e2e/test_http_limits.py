"""The HTTP layer's limits on the real server, over raw sockets: slow and idle clients are closed
within their timeouts while others are served, connections past the limit get a fast 503,
headers past their limits a 431, broken HTTP a 400, all in the JSON error shape and counted."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.e2e.conftest import Server, serving

pytestmark = pytest.mark.e2e
HEADER_TIMEOUT_S = 1.0
BODY_GRACE_S = 0.5
KEEPALIVE_S = 1.0
MAX_CONNECTIONS = 24


@pytest.fixture(scope="module")
def strict(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(
        settings,
        tmp_path_factory.mktemp("strict"),
        EMBED_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        EMBED_BODY_RATE_GRACE_S=str(BODY_GRACE_S),
        EMBED_KEEPALIVE_TIMEOUT_S=str(KEEPALIVE_S),
        EMBED_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
    ) as running:
        yield running


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(10)
    return sock


def answer(sock: socket.socket) -> tuple[int | None, dict[str, str], bytes, float]:
    """Read until the server closes: the status, headers and body of what it sent (None if it
    sent nothing), and when it closed, in seconds from now."""
    started = time.monotonic()
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    closed_after = time.monotonic() - started
    sock.close()
    if not data:
        return None, {}, b"", closed_after
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body, closed_after


def refused(sock: socket.socket, status: int, code: str) -> tuple[str, float]:
    """The connection's one answer is ``status`` with ``code`` in the JSON error shape, and then
    it is closed; its message and when it closed."""
    got, headers, body, closed_after = answer(sock)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == code, error
    return str(error["message"]), closed_after


def embeds(server: Server) -> float:
    """One /embed on a fresh connection; its latency in seconds."""
    started = time.perf_counter()
    response = httpx.post(f"{server.url}/embed", json={"inputs": "still serving"}, timeout=10)
    assert response.status_code == 200
    return time.perf_counter() - started


def counted(server: Server, route: str, status: int) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    found = re.search(rf'embed_requests_total{{route="{route}",status="{status}"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_slow_header_slow_body_and_idle_clients_are_closed_while_others_are_served(
    strict: Server,
) -> None:
    before = counted(strict, "invalid_http", 408)
    slow_headers, slow_body, idle = connect(strict), connect(strict), connect(strict)
    stop = threading.Event()

    def trickle() -> None:  # one byte of the headers every 0.2 s, never finishing them
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: abcdefghijklmnopqrstuvwxyz":
            if stop.wait(0.2):
                return
            try:
                slow_headers.send(bytes([byte]))
            except OSError:
                return

    head = b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    slow_body.sendall(head + b"Content-Length: 1000\r\n\r\n" + b'{"inputs": "')
    sender = threading.Thread(target=trickle)
    sender.start()
    # Meanwhile others are served, at their usual speed.
    latencies = [embeds(strict) for _ in range(5)]
    assert max(latencies) < 0.5, latencies
    message, after = refused(slow_headers, 408, "client_timeout")
    assert "EMBED_HEADER_TIMEOUT_S" in message
    assert after < HEADER_TIMEOUT_S + 1.0
    message, after = refused(slow_body, 408, "client_timeout")
    assert "EMBED_BODY_MIN_RATE_BPS" in message
    assert after < BODY_GRACE_S + 1.5
    status, _, _, after = answer(idle)  # never sent a byte: closed in silence
    assert status is None
    assert after < KEEPALIVE_S + 1.0
    stop.set()
    sender.join()
    assert counted(strict, "invalid_http", 408) == before + 2
    embeds(strict)


def test_a_kept_alive_connection_is_closed_once_idle(strict: Server) -> None:
    sock = connect(strict)
    sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _, after = answer(sock)
    assert status == 200
    assert KEEPALIVE_S - 0.2 < after < KEEPALIVE_S + 1.0


def test_past_the_connection_limit_a_new_connection_gets_a_fast_503(strict: Server) -> None:
    held = []
    try:
        for _ in range(MAX_CONNECTIONS + 5):
            sock = connect(strict)
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            held.append(sock)
        time.sleep(0.2)
        over = held[MAX_CONNECTIONS:]
        for sock in over:
            started = time.monotonic()
            message, _ = refused(sock, 503, "too_many_connections")
            assert "EMBED_MAX_CONNECTIONS" in message
            assert time.monotonic() - started < 0.5
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)  # the server sees them close
    embeds(strict)
    assert counted(strict, "connection_limit", 503) >= 5


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        ("one header of 8 MB", b"X-Big: " + b"a" * 8 * 1024 * 1024 + b"\r\n"),
        ("10,000 headers", b"".join(b"X-%d: 1\r\n" % i for i in range(10_000))),
        ("100 headers of 64 KB", b"".join(b"X-%d: %s\r\n" % (i, b"a" * 65536) for i in range(100))),
        ("101 small headers", b"".join(b"X-%d: 1\r\n" % i for i in range(101))),
        ("one header of 9 KB", b"X-Big: " + b"a" * 9000 + b"\r\n"),
    ],
)
def test_headers_past_their_limits_get_a_431(strict: Server, name: str, headers: bytes) -> None:
    before = counted(strict, "invalid_http", 431)
    sock = connect(strict)
    # The server may answer and close before the last of it; the answer is there all the same.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    message, _ = refused(sock, 431, "headers_too_large")
    assert "EMBED_MAX_HEADER" in message, name
    assert counted(strict, "invalid_http", 431) == before + 1
    embeds(strict)


@pytest.mark.parametrize(
    ("name", "request_bytes", "phrase"),
    [
        ("no Host", b"GET /health HTTP/1.1\r\n\r\n", "Host"),
        (
            "an invalid chunk size",
            b"POST /embed HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "not valid HTTP",
        ),
        ("a newline inside a header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", ""),
        ("not HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", ""),
    ],
)
def test_broken_http_gets_a_400_in_the_json_shape(
    strict: Server, name: str, request_bytes: bytes, phrase: str
) -> None:
    before = counted(strict, "invalid_http", 400)
    sock = connect(strict)
    sock.sendall(request_bytes)
    message, _ = refused(sock, 400, "invalid_http")
    assert phrase in message, name
    assert counted(strict, "invalid_http", 400) == before + 1
    embeds(strict)


def test_a_body_over_the_limit_is_counted_under_its_route(strict: Server) -> None:
    before = counted(strict, "/v1/embeddings", 413)
    sock = connect(strict)
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000000\r\n\r\n")
    refused(sock, 413, "payload_too_large")
    assert counted(strict, "/v1/embeddings", 413) == before + 1


def test_every_refusal_has_an_access_line(strict: Server) -> None:
    sock = connect(strict)
    sock.sendall(b"GET /health HTTP/1.1\r\n\r\n")
    refused(sock, 400, "invalid_http")
    lines = [json.loads(x) for x in Path(strict.log).read_text().splitlines() if x.startswith("{")]
    access = [x for x in lines if x.get("logger") == "app.access" and x["route"] == "invalid_http"]
    assert access
    assert access[-1]["status"] == 400
    assert access[-1]["method"] == "GET"
