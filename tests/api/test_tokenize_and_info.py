"""``/tokenize``, ``/info``, ``/v1`` shapes that need no real client, API keys and CORS."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.config import Settings
from app.core.engine import Engine
from app.main import create_app
from tests.conftest import error_of


def test_tokenize_gives_ids_tokens_offsets_and_whether_it_would_truncate(
    client: TestClient,
) -> None:
    text = "Hello, world!"
    response = client.post("/tokenize", json={"inputs": [text, "word " * 300]})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "all-MiniLM-L6-v2" and body["max_tokens"] == 256
    first, long = body["data"]
    assert first["tokens"] == ["[CLS]", "hello", ",", "world", "!", "[SEP]"]
    assert first["ids"][0] == 101 and first["ids"][-1] == 102
    assert first["count"] == 6 and first["truncated"] is False
    assert [text[a:b] for a, b in first["offsets"][1:-1]] == ["Hello", ",", "world", "!"]
    assert long["count"] == 302 and long["truncated"] is True  # nothing cut off here


def test_tokenize_counts_match_what_embedding_feeds_the_model(client: TestClient) -> None:
    texts = ["A man is playing a guitar.", "Short."]
    counts = [
        row["count"] for row in client.post("/tokenize", json={"inputs": texts}).json()["data"]
    ]
    usage = client.post("/embed", json={"inputs": texts}).json()["usage"]["prompt_tokens"]
    assert sum(counts) == usage


def test_info_describes_models_and_limits(client: TestClient) -> None:
    info = client.get("/info").json()
    assert info["models"] == [
        {
            "id": "all-MiniLM-L6-v2",
            "kind": "dense",
            # sentence-transformers gives every model empty query and document prompts.
            "prompts": {"query": "", "document": ""},
            "default_prompt_name": None,
            "dimension": 384,
            "max_seq_length": 256,
            "pooling": "mean",
            "normalize": True,
            "variant": "fp32",
            "provider": "CPUExecutionProvider",
            "default": True,
        }
    ]
    assert info["limits"]["max_inputs"] == 2048 and info["auth"] is False
    assert info["version"]


def test_an_unknown_model_is_a_404_that_lists_the_served_ones(client: TestClient) -> None:
    for path, body in [
        ("/embed", {"inputs": "a", "model": "nope"}),
        ("/similarity", {"source": "a", "targets": ["b"], "model": "nope"}),
        ("/tokenize", {"inputs": "a", "model": "nope"}),
        ("/v1/embeddings", {"input": "a", "model": "nope"}),
    ]:
        response = client.post(path, json=body)
        assert error_of(response) == (404, "invalid_request_error", "model_not_found")
        assert "served: all-MiniLM-L6-v2" in response.json()["error"]["message"]


def test_v1_ignores_unknown_fields_and_errors_carry_param(client: TestClient) -> None:
    ok = client.post("/v1/embeddings", json={"input": "a", "model": "all-MiniLM-L6-v2", "x": 1})
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 384
    bad = client.post("/v1/embeddings", json={"input": 42})
    assert error_of(bad) == (422, "invalid_request_error", "validation_error")
    assert bad.json()["error"]["param"] == "input"
    empty = client.post("/v1/embeddings", json={"input": []})
    assert error_of(empty)[0] == 422
    long_ids = client.post("/v1/embeddings", json={"input": [101] * 257})
    assert error_of(long_ids) == (422, "invalid_request_error", "input_too_long")
    # The native routes keep their strict shape: no param, unknown fields refused.
    native = client.post("/embed", json={"inputs": "a", "x": 1})
    assert set(native.json()["error"]) == {"message", "type", "code"}


KEY = "k-123"


@pytest.fixture(scope="module")
def guarded(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    keyed = settings.model_copy(
        update={
            "api_keys": [SecretStr("first"), SecretStr(KEY)],
            "cors_origins": ["https://app.example"],
        }
    )
    with TestClient(create_app(keyed, engine), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x"]
)
def test_a_missing_or_wrong_key_is_a_401(guarded: TestClient, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = guarded.post("/embed", json={"inputs": "a"}, headers=headers)
    assert error_of(response) == (401, "authentication_error", "invalid_api_key")


def test_any_configured_key_is_accepted(guarded: TestClient) -> None:
    for key in ("first", KEY):
        response = guarded.post(
            "/embed", json={"inputs": "a"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200


def test_cors_preflight_passes_without_a_key_and_answers_carry_cors_headers(
    guarded: TestClient,
) -> None:
    preflight = guarded.options(
        "/v1/embeddings",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    refused = guarded.post(
        "/embed", json={"inputs": "a"}, headers={"Origin": "https://app.example"}
    )
    assert refused.status_code == 401  # the browser can read the 401, so it can tell the user
    assert refused.headers["access-control-allow-origin"] == "https://app.example"
    other = guarded.options(
        "/embed",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default(client: TestClient) -> None:
    response = client.post(
        "/embed", json={"inputs": "a"}, headers={"Origin": "https://app.example"}
    )
    assert "access-control-allow-origin" not in response.headers


def test_tokenize_a_long_text_in_the_tokenizer_thread(client: TestClient) -> None:
    response = client.post("/tokenize", json={"inputs": "word " * 1000})  # over 4,096 chars
    (row,) = response.json()["data"]
    assert row["count"] == 1002 and row["truncated"] is True
