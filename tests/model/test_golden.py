"""``/embed`` against vectors committed to git, computed by sentence-transformers on PyTorch
(``scripts/golden_vectors.py``): an export that drifts fails here even if it agrees with the
``reference.json`` it wrote itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

GOLDEN = json.loads(
    (Path(__file__).parent / "golden" / "all-MiniLM-L6-v2.json").read_text(encoding="utf-8")
)
EXPECTED = np.array(GOLDEN["vectors"], dtype=np.float64)


def assert_golden(vectors: Any, expected: np.ndarray) -> None:
    got = np.array(vectors, dtype=np.float64)
    assert got.shape == expected.shape
    cosines = (got * expected).sum(axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosines.min() >= 0.99999, cosines
    assert np.abs(got - expected).max() <= 1e-4


def test_embed_matches_the_golden_vectors_together(client: TestClient) -> None:
    response = client.post("/embed", json={"inputs": GOLDEN["sentences"]})
    assert response.status_code == 200
    assert_golden(response.json()["embeddings"], EXPECTED)


@pytest.mark.parametrize("index", range(len(GOLDEN["sentences"])))
def test_embed_matches_each_golden_vector_alone(client: TestClient, index: int) -> None:
    response = client.post("/embed", json={"inputs": GOLDEN["sentences"][index]})
    assert_golden(response.json()["embeddings"], EXPECTED[index : index + 1])


def test_the_openai_route_gives_the_same_vectors(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"input": GOLDEN["sentences"]})
    assert_golden([item["embedding"] for item in response.json()["data"]], EXPECTED)
