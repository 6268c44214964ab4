"""The SPLADE model through the API: PyTorch's vectors, STS-B, pruning, tokens, kinds, the cap on
a sparse pass's tokens, and a graph that stays exact whatever the threads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from scipy.stats import spearmanr

from app.backends.onnx.bundle import load_bundle
from app.backends.onnx.model import OnnxModel
from app.config import Settings
from app.core.engine import Engine
from app.core.registry import ModelRegistry
from app.loading import load_engine
from app.main import create_app
from tests.conftest import ROOT, error_of

SPLADE_DIR = ROOT / "models" / "splade-tiny"
REFERENCE = json.loads((SPLADE_DIR / "reference.json").read_text(encoding="utf-8"))
VOCAB = 30522


@pytest.fixture(scope="module")
def sparse(settings: Settings) -> Iterator[Engine]:
    loaded = load_engine(settings, SPLADE_DIR)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def both(settings: Settings, engine: Engine, sparse: Engine) -> Iterator[TestClient]:
    models = ModelRegistry([engine, sparse])
    with TestClient(create_app(settings, models), raise_server_exceptions=False) as client:
        yield client


def dense_of(entries: list[dict[str, Any]]) -> np.ndarray:
    vector = np.zeros(VOCAB, dtype=np.float64)
    for entry in entries:
        vector[entry["index"]] = entry["value"]
    return vector


def expected(index: int) -> np.ndarray:
    vector = np.zeros(VOCAB, dtype=np.float64)
    for i, value in REFERENCE["vectors"][index]:
        vector[i] = value
    return vector


def embed_sparse(client: TestClient, inputs: Any, **options: Any) -> Any:
    response = client.post(
        "/embed_sparse", json={"inputs": inputs, "model": "splade-tiny", **options}
    )
    assert response.status_code == 200, response.text
    return response.json()


def assert_like_pytorch(got: np.ndarray, want: np.ndarray) -> None:
    assert np.array_equal(got > 1e-3, want > 1e-3)  # the same entries
    assert np.all(np.abs(got - want) <= 1e-4 + 1e-4 * np.abs(want))


def test_every_check_sentence_matches_pytorch_together_and_alone(both: TestClient) -> None:
    sentences = REFERENCE["sentences"]
    together = embed_sparse(both, sentences)
    assert together["usage"]["prompt_tokens"] == sum(REFERENCE["token_counts"])
    for index, entries in enumerate(together["embeddings"]):
        assert_like_pytorch(dense_of(entries), expected(index))
        alone = embed_sparse(both, sentences[index])["embeddings"][0]
        assert_like_pytorch(dense_of(alone), expected(index))


def test_stsb_spearman_of_sparse_dot_products_equals_pytorchs(
    both: TestClient, stsb: list[tuple[float, str, str]]
) -> None:
    texts = [a for _, a, _ in stsb] + [b for _, _, b in stsb]
    vectors = []
    for start in range(0, len(texts), 256):
        for entries in embed_sparse(both, texts[start : start + 256])["embeddings"]:
            vectors.append({e["index"]: e["value"] for e in entries})
    left, right = vectors[: len(stsb)], vectors[len(stsb) :]
    dots = [sum(v * b.get(i, 0.0) for i, v in a.items()) for a, b in zip(left, right, strict=True)]
    served = float(spearmanr([gold for gold, _, _ in stsb], dots).statistic)
    print(
        f"STS-B Spearman, sparse dot products: served {served:.6f}, "
        f"PyTorch {REFERENCE['stsb_spearman_pytorch']:.6f}"
    )
    assert round(served, 4) == round(REFERENCE["stsb_spearman_pytorch"], 4)


def test_entries_come_highest_first_pruned_by_threshold_then_top_k(both: TestClient) -> None:
    text = "What is the capital of France?"
    (full,) = embed_sparse(both, text)["embeddings"]
    order = [(-e["value"], e["index"]) for e in full]
    assert order == sorted(order) and all(e["value"] > 0 for e in full)
    (above,) = embed_sparse(both, text, threshold=1.0)["embeddings"]
    assert above == [e for e in full if e["value"] > 1.0]
    (top,) = embed_sparse(both, text, threshold=1.0, top_k=2)["embeddings"]
    assert top == above[:2]
    (named,) = embed_sparse(both, text, top_k=3, return_tokens=True)["embeddings"]
    assert [e["token"] for e in named][:2] == ["capital", "france"]
    assert all(set(e) == {"index", "value"} for e in full)  # no token unless asked


@pytest.mark.parametrize(
    ("path", "body", "route"),
    [
        ("/embed", {"inputs": "a", "model": "splade-tiny"}, "/embed_sparse"),
        ("/similarity", {"source": "a", "targets": ["b"], "model": "splade-tiny"}, "/embed_sparse"),
        ("/v1/embeddings", {"input": "a", "model": "splade-tiny"}, "/embed_sparse"),
        ("/embed_sparse", {"inputs": "a", "model": "all-MiniLM-L6-v2"}, "/embed"),
    ],
)
def test_a_route_for_another_kind_is_a_400_naming_the_right_one(
    both: TestClient, path: str, body: dict[str, Any], route: str
) -> None:
    response = both.post(path, json=body)
    assert error_of(response) == (400, "invalid_request_error", "wrong_model_kind")
    assert route in response.json()["error"]["message"]


def test_without_model_a_route_takes_the_one_model_of_its_kind(both: TestClient) -> None:
    """The default model is dense; /embed_sparse without ``model`` gets the sparse one, as a
    text-embeddings-inference user expects of a server with one model per kind."""
    response = both.post("/embed_sparse", json={"inputs": "a"})
    assert response.status_code == 200 and response.json()["model"] == "splade-tiny"


def test_kinds_show_in_info_and_models_and_tokenize_serves_both(both: TestClient) -> None:
    kinds = {m["id"]: m["kind"] for m in both.get("/info").json()["models"]}
    assert kinds == {"all-MiniLM-L6-v2": "dense", "splade-tiny": "sparse"}
    listed = {m["id"]: m["kind"] for m in both.get("/v1/models").json()["data"]}
    assert listed == kinds
    for model in kinds:
        response = both.post("/tokenize", json={"inputs": "Hello, world!", "model": model})
        assert response.json()["data"][0]["count"] == 6


def padded_tokens_by_bucket() -> dict[str, float]:
    samples = REGISTRY.get_sample_value
    return {
        bound: samples(
            "embed_batch_tokens_bucket", {"model": "splade-tiny", "kind": "padded", "le": bound}
        )
        or 0.0
        for bound in ("2048.0", "+Inf")
    }


def test_a_sparse_pass_never_holds_more_tokens_than_its_cap(both: TestClient) -> None:
    before = padded_tokens_by_bucket()
    long = " ".join(["a long passage about sparse retrieval and its vocabulary"] * 40)
    result = embed_sparse(both, [long] * 24, top_k=1)  # 24 x 256 tokens = 6,144
    assert len(result["embeddings"]) == 24 and result["usage"]["prompt_tokens"] == 24 * 256
    after = padded_tokens_by_bucket()
    passes = after["+Inf"] - before["+Inf"]
    assert passes >= 3 and after["2048.0"] - before["2048.0"] == passes  # all within 2,048


def test_the_graph_is_exact_on_any_number_of_threads() -> None:
    """onnxruntime's ScatterND max races on several threads; the bundle asks for one."""
    bundle = load_bundle(SPLADE_DIR)
    assert bundle.max_intra_op_threads == 1
    model = OnnxModel.load(bundle, intra_op_threads=2)
    rows = model.tokenize([REFERENCE["sentences"][-1]], truncate=True)  # one row of 256 tokens
    first = model.run(rows)
    assert all(np.array_equal(model.run(rows), first) for _ in range(20))
    assert_like_pytorch(first[0].astype(np.float64), expected(len(REFERENCE["sentences"]) - 1))
