"""STS Benchmark through the HTTP API: the published score of the model, within a hair."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient
from scipy.stats import spearmanr


def test_stsb_spearman_through_embed(
    client: TestClient, stsb: list[tuple[float, str, str]]
) -> None:
    def embed(texts: list[str]) -> np.ndarray:
        vectors = []
        for start in range(0, len(texts), 256):
            response = client.post("/embed", json={"inputs": texts[start : start + 256]})
            assert response.status_code == 200
            vectors.extend(response.json()["embeddings"])
        return np.array(vectors, dtype=np.float32)

    left = embed([a for _, a, _ in stsb])
    right = embed([b for _, _, b in stsb])
    predicted = (left * right).sum(axis=1)
    gold = [score for score, _, _ in stsb]
    rho = spearmanr(gold, predicted).statistic
    print(f"STS-B test Spearman through POST /embed: {rho:.4f} ({len(stsb)} pairs)")
    assert rho >= 0.8195
