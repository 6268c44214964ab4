"""The success shapes of /embed, /similarity and /health on the real model."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi.testclient import TestClient


def test_embed_parity_with_pytorch_for_every_reference_sentence(
    client: TestClient, reference: dict[str, Any]
) -> None:
    response = client.post("/embed", json={"inputs": reference["sentences"]})
    assert response.status_code == 200
    got = np.array(response.json()["embeddings"], dtype=np.float32)
    expected = np.array(reference["embeddings"], dtype=np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    cosines = (got * expected).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines


def test_embed_shape_and_usage(client: TestClient, reference: dict[str, Any]) -> None:
    texts = reference["sentences"][:3]
    body = client.post("/embed", json={"inputs": texts}).json()
    assert set(body) == {"model", "dimensions", "embeddings", "usage"}
    assert body["model"] == "all-MiniLM-L6-v2" and body["dimensions"] == 384
    assert [len(v) for v in body["embeddings"]] == [384, 384, 384]
    tokens = sum(reference["token_counts"][:3])  # special tokens included, as PyTorch counts
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_a_single_string_gives_a_list_of_one(client: TestClient) -> None:
    one = client.post("/embed", json={"inputs": "hello"}).json()
    listed = client.post("/embed", json={"inputs": ["hello"]}).json()
    assert len(one["embeddings"]) == 1
    assert np.allclose(one["embeddings"], listed["embeddings"], atol=1e-6)


def test_vectors_come_back_in_input_order(client: TestClient) -> None:
    texts = ["a much longer sentence than the others, by quite some way", "b", "medium one"]
    together = client.post("/embed", json={"inputs": texts}).json()["embeddings"]
    for text, vector in zip(texts, together, strict=True):
        alone = client.post("/embed", json={"inputs": text}).json()["embeddings"][0]
        assert np.allclose(vector, alone, atol=1e-5)


def test_normalize_false_gives_raw_mean_pooled_vectors(client: TestClient) -> None:
    raw = client.post("/embed", json={"inputs": "hello world", "normalize": False}).json()
    unit = client.post("/embed", json={"inputs": "hello world"}).json()
    raw_v, unit_v = np.array(raw["embeddings"][0]), np.array(unit["embeddings"][0])
    assert not np.isclose(np.linalg.norm(raw_v), 1.0, atol=1e-3)
    assert np.allclose(raw_v / np.linalg.norm(raw_v), unit_v, atol=1e-5)


def test_truncate_true_embeds_a_long_input_as_its_first_256_tokens(client: TestClient) -> None:
    body = client.post("/embed", json={"inputs": "word " * 1000}).json()
    assert body["usage"]["prompt_tokens"] == 256


def test_empty_and_nul_texts_are_embedded(client: TestClient) -> None:
    body = client.post("/embed", json={"inputs": ["", "a \u0000 b"]}).json()
    assert len(body["embeddings"]) == 2
    assert body["usage"]["prompt_tokens"] == 2 + 4  # [CLS] [SEP]; [CLS] a b [SEP]


def test_a_large_request_is_split_and_kept_in_order(client: TestClient) -> None:
    texts = [f"sentence number {i} " * (1 + i % 40) for i in range(300)]
    body = client.post("/embed", json={"inputs": texts}).json()
    got = np.array(body["embeddings"])
    check = [0, 7, 150, 299]
    alone = client.post("/embed", json={"inputs": [texts[i] for i in check]}).json()
    assert np.allclose(got[check], alone["embeddings"], atol=1e-5)


def test_similarity_ranks_the_paraphrase_first(client: TestClient) -> None:
    response = client.post(
        "/similarity",
        json={
            "source": "A man is playing a guitar.",
            "targets": ["A woman is slicing an onion.", "A man plays the guitar.", "Cats sleep."],
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "all-MiniLM-L6-v2" and len(body["scores"]) == 3
    assert max(body["scores"]) == body["scores"][1] > 0.8
    assert all(-1.0 <= s <= 1.0 for s in body["scores"])


def test_similarity_equals_the_dot_product_of_embed_vectors(client: TestClient) -> None:
    texts = ["The cat sat on the mat.", "A cat is sitting on a mat.", "Stocks fell sharply."]
    vectors = np.array(client.post("/embed", json={"inputs": texts}).json()["embeddings"])
    scores = client.post("/similarity", json={"source": texts[0], "targets": texts[1:]}).json()
    assert np.allclose(scores["scores"], vectors[1:] @ vectors[0], atol=1e-5)


def test_health_and_liveness(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health == {"status": "ok", "model": "all-MiniLM-L6-v2", "models": ["all-MiniLM-L6-v2"]}
    assert client.get("/health/live").json() == {"status": "alive"}


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    given = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = client.get("/health")
    assert len(made.headers["x-request-id"]) == 32
