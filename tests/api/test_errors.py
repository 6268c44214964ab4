"""The error table's rows in detail: messages, limits, deadlines and faults. The table of bad
inputs sent over real HTTP is ``tests/e2e/test_bad_input.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.core.engine import Batching, Engine, Limits
from app.core.vectors import encode_now
from app.main import create_app
from tests.conftest import HeldForward, error_of, slowed

INVALID = "invalid_request_error"
JSON = {"content-type": "application/json"}


def test_a_body_without_json_content_type_says_what_to_send(client: TestClient) -> None:
    plain = {"content-type": "text/plain"}
    response = client.post("/embed", content=b'{"inputs": "a"}', headers=plain)
    assert error_of(response) == (422, INVALID, "validation_error")
    assert "Content-Type: application/json" in response.json()["error"]["message"]


def test_input_too_long_names_its_token_count_and_the_limit(client: TestClient) -> None:
    response = client.post("/embed", json={"inputs": ["ok", "word " * 300], "truncate": False})
    assert error_of(response) == (422, INVALID, "input_too_long")
    assert response.json()["error"]["message"].startswith("input 1 has 302 tokens")
    assert "limit of 256" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def small_limits(engine: Engine) -> Iterator[TestClient]:
    """The same model behind limits small enough to hit with a few bytes."""
    settings = Settings(max_inputs=4, max_input_chars=50, max_body_bytes=2048)
    limited = Engine(engine.model, Limits(max_inputs=4, max_input_chars=50))
    with TestClient(create_app(settings, limited), raise_server_exceptions=False) as client:
        yield client
    limited.stop()  # the model is the session's


def test_engine_limits_come_from_the_settings(engine: Engine) -> None:
    assert engine.limits.max_inputs == 2048 and engine.limits.max_input_chars == 100_000


def test_too_many_inputs(client: TestClient, settings: Settings) -> None:
    response = client.post("/embed", json={"inputs": ["a"] * (settings.max_inputs + 1)})
    assert error_of(response) == (413, INVALID, "payload_too_large")
    assert "2049 inputs" in response.json()["error"]["message"]
    assert "limit is 2048 (EMBED_MAX_INPUTS)" in response.json()["error"]["message"]


def test_too_many_characters(client: TestClient) -> None:
    response = client.post("/embed", json={"inputs": ["ok", "x" * 100_001]})
    assert error_of(response) == (413, INVALID, "payload_too_large")
    assert "input 1 has 100001 characters; the limit is 100000" in response.text


def test_similarity_takes_max_inputs_targets_besides_its_source(client: TestClient) -> None:
    response = client.post("/similarity", json={"source": "s", "targets": ["t"] * 2048})
    assert response.status_code == 200
    assert len(response.json()["scores"]) == 2048
    response = client.post("/similarity", json={"source": "s", "targets": ["t"] * 2049})
    assert error_of(response) == (413, INVALID, "payload_too_large")
    assert "2049 targets in one request; the limit is 2048 (EMBED_MAX_INPUTS)" in response.text


def test_body_over_the_limit_by_content_length(client: TestClient) -> None:
    body = b'{"inputs": "' + b"a" * (4 * 1024 * 1024) + b'"}'
    response = client.post("/embed", content=body, headers=JSON)
    assert error_of(response) == (413, INVALID, "payload_too_large")
    assert "limit of 4194304 bytes (EMBED_MAX_BODY_BYTES)" in response.text


def test_chunked_body_over_the_limit(small_limits: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": "'
        for _ in range(10):
            yield b"a" * 512
        yield b'"}'

    response = small_limits.post("/embed", content=chunks(), headers=JSON)
    assert error_of(response) == (413, INVALID, "payload_too_large")


def test_chunked_body_under_the_limit_is_served(small_limits: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": '
        yield b'"hello"}'

    response = small_limits.post("/embed", content=chunks(), headers=JSON)
    assert response.status_code == 200 and len(response.json()["embeddings"]) == 1


def test_limits_from_settings(small_limits: TestClient) -> None:
    assert error_of(small_limits.post("/embed", json={"inputs": ["a"] * 5}))[0] == 413
    assert error_of(small_limits.post("/embed", json={"inputs": "x" * 51}))[0] == 413
    assert small_limits.post("/embed", json={"inputs": ["x" * 50] * 4}).status_code == 200


def test_not_ready_before_the_model_is_loaded(settings: Settings) -> None:
    unstarted = TestClient(create_app(settings))  # lifespan not run: nothing loaded
    assert error_of(unstarted.get("/health")) == (503, "service_unavailable", "not_ready")
    response = unstarted.post("/embed", json={"inputs": "a"})
    assert error_of(response) == (503, "service_unavailable", "not_ready")
    assert unstarted.get("/health/live").status_code == 200


def test_an_engine_fault_is_a_500_with_a_request_id_and_no_internals(
    client: TestClient,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail /opt/model")

    monkeypatch.setattr(engine.model, "run", explode)
    response = client.post("/embed", json={"inputs": "a"}, headers={"X-Request-ID": "req-500"})
    assert error_of(response) == (500, "server_error", "internal_error")
    assert "req-500" in response.json()["error"]["message"]
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert "req-500" in caplog.text and "secret internal detail" in caplog.text
    monkeypatch.undo()
    assert client.post("/embed", json={"inputs": "a"}).status_code == 200


def test_a_fault_on_one_requests_rows_spares_the_others_in_its_batch(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldForward(engine.model.run)

    def poisoned(encodings: Any, *, alone: bool = False) -> Any:
        if any("poison" in e.tokens for e in encodings):
            raise RuntimeError("injected fault at /opt/model")
        return held(encodings, alone=alone)

    monkeypatch.setattr(engine.model, "run", poisoned)
    texts = ["hold the model", "cats sleep", "poison pill", "dogs bark"]

    def post(text: str) -> Any:
        return client.post(
            "/embed", json={"inputs": text}, headers={"X-Request-ID": f"r-{text[:4]}"}
        )

    with ThreadPoolExecutor(len(texts)) as pool:
        first = pool.submit(post, texts[0])
        held.entered.wait(5)  # the other three queue up behind it and share the next pass
        rest = [pool.submit(post, text) for text in texts[1:]]
        time.sleep(0.1)
        held.release.set()
        responses = [first.result(), *(f.result() for f in rest)]
    monkeypatch.undo()
    assert error_of(responses[2]) == (500, "server_error", "internal_error")
    assert "r-pois" in responses[2].text and "/opt/model" not in responses[2].text
    for text, response in zip(texts, responses, strict=True):
        if text != "poison pill":
            assert response.status_code == 200
            expected = encode_now(engine.model, [text])[0]
            assert np.allclose(response.json()["embeddings"][0], expected, atol=1e-5)
    assert client.post("/embed", json={"inputs": "poison pill"}).status_code == 200


def test_a_request_past_its_deadline_is_a_503_timeout(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    hasty = Engine(engine.model, engine.limits, Batching(request_timeout_s=0.1))
    monkeypatch.setattr(engine.model, "run", slowed(engine.model.run, 0.3))
    with TestClient(create_app(settings, hasty), raise_server_exceptions=False) as client:
        response = client.post("/embed", json={"inputs": "too slow"})
        assert error_of(response) == (503, "service_unavailable", "timeout")
        assert "EMBED_REQUEST_TIMEOUT_S" in response.json()["error"]["message"]
    hasty.stop()  # the model is the session's


def test_bad_input_never_reaches_the_model(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes: list[int] = []
    forward = engine.model.run

    def counting(rows: Any, *, alone: bool = False) -> Any:
        passes.append(len(rows))
        return forward(rows)

    monkeypatch.setattr(engine.model, "run", counting)
    bad = [
        b'{"inputs": ["fine", "\\ud800"]}',
        b'{"inputs": ["fine", "' + b"word " * 300 + b'"], "truncate": false}',
        b'{"inputs": [' + b",".join([b'"a"'] * 2049) + b"]}",
        b'{"inputs": ["fine", "' + b"x" * 100_001 + b'"]}',
        b'{"inputs": "fine", "normalize": "yes"}',
    ]
    for body in bad:
        assert client.post("/embed", content=body, headers=JSON).status_code in {413, 422}
    assert passes == []
    assert client.post("/embed", json={"inputs": "fine"}).status_code == 200
    assert passes == [1]


def test_health_is_503_while_draining(client: TestClient) -> None:
    app: Any = client.app
    app.state.draining = True  # what SIGTERM does first (app/__main__.py)
    try:
        response = client.get("/health")
        assert error_of(response) == (503, "service_unavailable", "shutting_down")
        assert client.get("/health/live").status_code == 200
        assert client.post("/embed", json={"inputs": "in flight"}).status_code == 200
    finally:
        app.state.draining = False
