"""The table of bad inputs, sent over real HTTP: each row's status, type and code from the error
table; afterwards the server still embeds correctly and ``/metrics`` has counted every error."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.api.errors import speaks_inference_protocol
from app.core.engine import Engine
from app.core.vectors import encode_now
from tests.conftest import error_of
from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e
INVALID = "invalid_request_error"
JSON = {"content-type": "application/json"}
MB = 1024 * 1024


@dataclass(frozen=True)
class Row:
    name: str
    body: bytes | None
    status: int
    code: str | None  # None: a success
    path: str = "/embed"
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: JSON)
    chunked: bool = False


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 64 * 1024):
        yield body[start : start + 64 * 1024]


TABLE = [
    Row("body not JSON", b'{"inputs": ', 400, "invalid_json"),
    Row("invalid UTF-8 bytes", b'{"inputs": "\xff\xfe"}', 400, "invalid_json"),
    Row("deeply nested JSON", b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
    Row(
        "deeply nested inputs",
        b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        400,
        "invalid_json",
    ),
    Row("JSON of the wrong type", b'"just a string"', 422, "validation_error"),
    Row("an array body", b'["a", "b"]', 422, "validation_error"),
    Row("missing fields", b"{}", 422, "validation_error"),
    Row("unknown fields", b'{"inputs": "a", "colour": "red"}', 422, "validation_error"),
    Row("inputs empty", b'{"inputs": []}', 422, "validation_error"),
    Row("inputs null", b'{"inputs": null}', 422, "validation_error"),
    Row("a number for the text", b'{"inputs": 42}', 422, "validation_error"),
    Row("a number among texts", b'{"inputs": ["a", 7]}', 422, "validation_error"),
    Row("normalize as a string", b'{"inputs": "a", "normalize": "true"}', 422, "validation_error"),
    Row("truncate as a number", b'{"inputs": "a", "truncate": 1}', 422, "validation_error"),
    Row("not JSON content type", b'{"inputs": "a"}', 422, "validation_error", headers={}),
    Row(
        "10,000 inputs",
        b'{"inputs": [' + b",".join([b'"a"'] * 10_000) + b"]}",
        413,
        "payload_too_large",
    ),
    Row("an input of 5 MB", b'{"inputs": "' + b"a" * (5 * MB) + b'"}', 413, "payload_too_large"),
    Row(
        "a chunked body over the limit",
        b'{"inputs": ["' + b"word " * MB + b'"]}',
        413,
        "payload_too_large",
        chunked=True,
    ),
    Row(
        "an input over the character limit",
        b'{"inputs": "' + b"a" * 100_001 + b'"}',
        413,
        "payload_too_large",
    ),
    Row("NUL bytes are text", b'{"inputs": "a\\u0000b"}', 200, None),
    Row("a lone surrogate", b'{"inputs": "\\ud800"}', 422, "invalid_text"),
    Row("a lone low surrogate", b'{"inputs": ["fine", "bad \\udfff"]}', 422, "invalid_text"),
    Row(
        "too long with truncate off",
        b'{"inputs": "' + b"word " * 300 + b'", "truncate": false}',
        422,
        "input_too_long",
    ),
    Row("similarity without targets", b'{"source": "a"}', 422, "validation_error", "/similarity"),
    Row(
        "similarity, targets empty",
        b'{"source": "a", "targets": []}',
        422,
        "validation_error",
        "/similarity",
    ),
    Row(
        "similarity, a number source",
        b'{"source": 1, "targets": ["b"]}',
        422,
        "validation_error",
        "/similarity",
    ),
    Row(
        "similarity, lone surrogate",
        b'{"source": "\\ud800", "targets": ["b"]}',
        422,
        "invalid_text",
        "/similarity",
    ),
    Row("unknown route", None, 404, "not_found", "/nope", "GET"),
    Row("unknown nested route", b"{}", 404, "not_found", "/embed/extra"),
    Row("root", None, 404, "not_found", "/", "GET"),
]


def wrong_methods(spec: dict[str, Any]) -> list[Row]:
    """Every documented route called with each method it does not take."""
    rows = []
    for path, operations in spec["paths"].items():
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            if method.lower() not in operations:
                name = f"{method} {path}"
                rows.append(Row(name, None, 405, "method_not_allowed", path, method))
    return rows


def errors_by_status(metrics: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(metrics):
        if family.name == "embed_requests":
            for sample in family.samples:
                if sample.name == "embed_requests_total":
                    counts[sample.labels["status"]] += int(sample.value)
    return counts


def send(client: httpx.Client, row: Row) -> httpx.Response:
    content: Any = _chunks(row.body) if row.chunked and row.body else row.body
    return client.request(row.method, row.path, content=content, headers=row.headers)


def test_every_bad_input_gets_its_row_of_the_error_table(server: Server, engine: Engine) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        table = TABLE + wrong_methods(client.get("/openapi.json").json())
        assert len(table) > 40
        before = errors_by_status(client.get("/metrics").text)
        failures = []
        for row in table:
            response = send(client, row)
            if row.code is None:
                got: tuple[int, str, str] | int = response.status_code
                want: tuple[int, str, str] | int = row.status
            elif speaks_inference_protocol(row.path):  # that protocol's shape: {"error": "..."}
                body = response.json()
                assert set(body) == {"error"} and isinstance(body["error"], str), body
                got, want = response.status_code, row.status
            else:
                got = error_of(response)
                error_type = "invalid_request_error" if row.status < 500 else "server_error"
                want = (row.status, error_type, row.code)
            if row.status == 405 and "allow" not in response.headers:
                failures.append(f"{row.name}: a 405 without an Allow header")
            if got != want:
                failures.append(f"{row.name}: got {got}, want {want}")
        assert not failures, "\n".join(failures)

        # The server still embeds correctly after all that ...
        response = client.post("/embed", json={"inputs": ["still here", "and well"]})
        assert response.status_code == 200
        expected = encode_now(engine.model, ["still here", "and well"])
        assert np.allclose(response.json()["embeddings"], expected, atol=1e-5)

        # ... and /metrics counted every row by its status (the /metrics scrapes count too).
        after = errors_by_status(client.get("/metrics").text)
        counted = after - before
        sent = Counter(str(row.status) for row in table)
        sent.update({"200": 2})  # the check above, and the first /metrics scrape
        assert counted == sent, (counted, sent)
