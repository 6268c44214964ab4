"""The whole stack of layers around the routes, on a model that costs nothing: every response
has its request id, a 500 too, with CORS headers when CORS is on; the timing headers, the
metrics and the access-log fields come from the request's outcome."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app.config import Settings
from app.core.engine import Engine
from app.main import create_app
from tests.conftest import error_of
from tests.fakes import FakeModel

ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    engine = Engine(FakeModel(name="fake-ctx"))
    app = create_app(Settings(cors_origins=[ORIGIN]), engine)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    engine.close()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/embed", {"inputs": ["fine", "poison pill"]}),  # the direct path
        ("/similarity", {"source": "fine", "targets": ["poison"]}),  # through FastAPI
        ("/v1/embeddings", {"input": "poison", "model": "fake-ctx"}),
    ],
)
def test_a_500_carries_the_request_id_and_the_cors_headers(
    client: TestClient, path: str, body: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"origin": ORIGIN, "x-request-id": "trace-500"}
    response = client.post(path, json=body, headers=headers)
    assert error_of(response) == (500, "server_error", "internal_error")
    assert response.headers["x-request-id"] == "trace-500"
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "trace-500" in response.json()["error"]["message"]
    assert "injected" not in response.text  # never echoes what went wrong
    logged = [r for r in caplog.records if r.name == "app.errors"]
    assert logged and logged[0].exc_info is not None and "trace-500" in logged[0].getMessage()
    assert client.post(path, json={**body, **_harmless(path)}).status_code == 200  # still serving


def _harmless(path: str) -> dict[str, object]:
    if path == "/similarity":
        return {"targets": ["fine"]}
    return {"input": "fine"} if path.startswith("/v1/") else {"inputs": ["fine"]}


def test_every_response_has_an_id_even_without_a_model_call(client: TestClient) -> None:
    for response in (client.get("/health/live"), client.get("/nope"), client.post("/embed")):
        assert len(response.headers["x-request-id"]) >= 20


def counter(name: str, model: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": model}) or 0.0


def test_timings_metrics_and_log_fields_come_from_the_outcome(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.access")
    inputs = counter("embed_inputs_total", "fake-ctx")
    tokens = counter("embed_tokens_total", "fake-ctx")
    response = client.post("/embed", json={"inputs": ["a cat", "a dog sat"]})
    assert response.status_code == 200
    for header in ("x-queue-time", "x-inference-time", "x-total-time"):
        assert float(response.headers[header]) >= 0
    assert counter("embed_inputs_total", "fake-ctx") == inputs + 2
    assert counter("embed_tokens_total", "fake-ctx") == tokens + 9
    (line,) = [r for r in caplog.records if r.name == "app.access"]
    fields = line.__dict__["fields"]
    assert fields["route"] == "/embed" and fields["status"] == 200
    assert (fields["model"], fields["inputs"], fields["tokens"]) == ("fake-ctx", 2, 9)
    assert fields["inference_ms"] == pytest.approx(float(response.headers["x-inference-time"]))


def test_a_route_without_a_model_call_has_no_timing_headers(client: TestClient) -> None:
    response = client.post("/tokenize", json={"inputs": "a cat"})
    assert response.status_code == 200 and "x-total-time" not in response.headers
