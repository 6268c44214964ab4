"""Reranking and prompts on the real server: Cohere's own client, TEI's shape, and prompts that
match sentence-transformers, on the tiny models ``make test`` exports (``tests/model``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import cohere
import httpx
import numpy as np
import pytest

from app.config import Settings
from app.core.vectors import l2_normalize
from tests.e2e.conftest import Server, serving
from tests.model.test_families import bundle

pytestmark = pytest.mark.e2e
KEY = "rerank-test-key"
RERANKER = "tiny-cross-encoder"


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default model, a reranker and two tiny models with prompts; the server's default
    prompt name is ``passage``."""
    served = [settings.model_dir, *(bundle(n) for n in (RERANKER, "tiny-bert", "tiny-mpnet"))]
    with serving(
        settings,
        tmp_path_factory.mktemp("rerank"),
        EMBED_MODELS=",".join(str(p) for p in served),
        EMBED_API_KEYS=KEY,
        EMBED_DEFAULT_PROMPT_NAME="passage",
    ) as running:
        yield running


def post(server: Server, path: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=30)


def reference(name: str) -> dict[str, Any]:
    return json.loads((bundle(name) / "reference.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def pairs() -> tuple[str, list[str], np.ndarray]:
    """A query, its documents, and CrossEncoder.predict's scores for them on PyTorch."""
    ref = reference(RERANKER)
    query = ref["pairs"][0][0]
    documents = [d for q, d in ref["pairs"] if q == query][:8]
    return query, documents, np.array(ref["scores"][:8], dtype=np.float32)


def test_the_cohere_clients_rerank_with_the_scores_of_cross_encoder_predict(
    server: Server, pairs: tuple[str, list[str], np.ndarray]
) -> None:
    query, documents, expected = pairs
    with httpx.Client(timeout=30) as http:  # closed here: the SDK leaves its own open
        v1 = cohere.Client(api_key=KEY, base_url=server.url, httpx_client=http)
        v2 = cohere.ClientV2(api_key=KEY, base_url=server.url, httpx_client=http)
        check_cohere(v1, v2, query, documents, expected)


def check_cohere(
    v1: cohere.Client, v2: cohere.ClientV2, query: str, documents: list[str], expected: np.ndarray
) -> None:
    best_first = np.argsort(-expected, kind="stable")
    answer = v1.rerank(
        model=RERANKER, query=query, documents=documents, top_n=3, return_documents=True
    )
    assert [r.index for r in answer.results] == best_first[:3].tolist()
    for result in answer.results:
        assert abs(result.relevance_score - expected[result.index]) < 1e-5
        assert result.document is not None and result.document.text == documents[result.index]
    assert answer.meta is not None and answer.meta.api_version is not None
    assert answer.meta.api_version.version == "1"

    answer2 = v2.rerank(model=RERANKER, query=query, documents=documents, top_n=100)
    assert [r.index for r in answer2.results] == best_first.tolist()  # top_n past the end: all
    scores = np.array([r.relevance_score for r in sorted(answer2.results, key=lambda r: r.index)])
    assert np.abs(scores - expected).max() < 1e-5


def test_tei_rerank_sorts_by_score_and_gives_raw_logits_on_request(
    server: Server, pairs: tuple[str, list[str], np.ndarray]
) -> None:
    query, documents, expected = pairs
    ranks = post(server, "/rerank", {"query": query, "texts": documents, "return_text": True})
    assert ranks.status_code == 200, ranks.text
    body = ranks.json()
    assert [r["index"] for r in body] == np.argsort(-expected, kind="stable").tolist()
    assert all(r["text"] == documents[r["index"]] for r in body)
    raw = post(server, "/rerank", {"query": query, "texts": documents, "raw_scores": True}).json()
    logits = np.array(reference(RERANKER)["logits"][:8])
    got = np.array([r["score"] for r in sorted(raw, key=lambda r: r["index"])])
    assert (np.abs(got - logits) / (1 + np.abs(logits))).max() < 1e-5
    assert "text" not in raw[0]


def test_v1_documents_may_be_objects_and_the_answer_counts_tokens(server: Server) -> None:
    body = {"query": "a cat", "documents": [{"text": "a cat sat"}, "a dog ran"]}
    answer = post(server, "/v1/rerank", body)
    assert answer.status_code == 200
    texts = {"inputs": ["a cat", "a cat sat", "a dog ran"], "model": RERANKER}
    query, *documents = (t["count"] for t in post(server, "/tokenize", texts).json()["data"])
    # [CLS] query [SEP] document [SEP]: one special token fewer than the two texts alone.
    expected = sum(query + document - 1 for document in documents)
    assert answer.json()["meta"]["tokens"]["input_tokens"] == expected
    assert answer.headers["x-request-id"] == answer.json()["id"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/rerank", {"query": "q", "texts": []}, 422, "validation_error"),
        ("/v1/rerank", {"query": "q", "documents": []}, 422, "validation_error"),
        ("/rerank", {"query": "q", "texts": ["a"], "model": "tiny-bert"}, 400, "wrong_model_kind"),
        ("/embed", {"inputs": "a", "model": RERANKER}, 400, "wrong_model_kind"),
        ("/rerank", {"query": "q", "texts": ["a"], "model": "nope"}, 404, "model_not_found"),
        (
            "/rerank",
            {"query": "q", "texts": ["a " * 200], "truncate": False},
            422,
            "input_too_long",
        ),
        ("/v2/rerank", {"query": "q", "documents": ["a"] * 2049}, 413, "payload_too_large"),
    ],
)
def test_bad_rerank_requests_get_clear_errors(
    server: Server, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    answer = post(server, path, body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code


def vector(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    body = response.json()
    key = "embeddings" if "embeddings" in body else "data"
    rows = body[key] if key == "embeddings" else [d["embedding"] for d in body[key]]
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-mpnet"])  # prompt pooled, prompt left out
def test_prompts_match_sentence_transformers(server: Server, model: str) -> None:
    ref = reference(model)
    sentences = ref["sentences"][:6]
    by_name = {
        n: l2_normalize(np.array(v[:6], dtype=np.float32))
        for n, v in ref["prompt_embeddings"].items()
    }

    def embed(**fields: Any) -> np.ndarray:
        return vector(post(server, "/embed", {"inputs": sentences, "model": model, **fields}))

    def close(got: np.ndarray, expected: np.ndarray) -> bool:
        return bool((got * expected).sum(1).min() >= 0.9999)

    assert close(embed(prompt_name="query"), by_name["query"])
    assert close(embed(prompt="query: "), by_name["query"])  # a literal, the same text
    assert close(embed(), by_name["passage"])  # EMBED_DEFAULT_PROMPT_NAME=passage
    assert close(embed(prompt=""), by_name["document"])  # "" is no prompt ("document" is "")
    openai = post(
        server, "/v1/embeddings", {"input": sentences, "model": model, "prompt_name": "query"}
    )
    assert close(vector(openai), by_name["query"])


def test_usage_and_tokenize_count_the_prompt(server: Server) -> None:
    plain = post(server, "/embed", {"inputs": "a cat", "model": "tiny-bert", "prompt": ""})
    query = post(
        server, "/embed", {"inputs": "a cat", "model": "tiny-bert", "prompt_name": "query"}
    )
    extra = query.json()["usage"]["total_tokens"] - plain.json()["usage"]["total_tokens"]
    tokens = post(
        server, "/tokenize", {"inputs": "a cat", "model": "tiny-bert", "prompt_name": "query"}
    ).json()["data"][0]
    assert extra == tokens["count"] - 4 > 0  # [CLS] a cat [SEP] without the prompt
    prompt_tokens = tokens["tokens"][1 : 1 + extra]  # however the tiny vocabulary splits it
    assert "".join(prompt_tokens).replace("#", "") == "query:"


@pytest.mark.parametrize(
    ("path", "body", "code", "says"),
    [
        (
            "/embed",
            {"inputs": "a", "model": "tiny-bert", "prompt_name": "nope"},
            "validation_error",
            "its prompts: 'query'",
        ),
        (
            "/v1/embeddings",
            {"input": [1, 2, 3], "model": "tiny-bert", "prompt_name": "query"},
            "validation_error",
            "not token ids",
        ),
        (
            "/embed",
            {"inputs": "a", "prompt_name": "passage"},
            "validation_error",
            "its prompts: 'query', 'document'",
        ),
    ],
)
def test_bad_prompts_are_a_422(
    server: Server, path: str, body: dict[str, Any], code: str, says: str
) -> None:
    answer = post(server, path, body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == code and says in answer.json()["error"]["message"]


def test_info_and_models_list_each_models_kind_and_prompts(server: Server) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    info = httpx.get(f"{server.url}/info", headers=headers).json()
    by_id = {m["id"]: m for m in info["models"]}
    assert by_id[RERANKER]["kind"] == "rerank"
    assert by_id["tiny-bert"]["prompts"]["query"] == "query: "
    assert by_id["tiny-bert"]["default_prompt_name"] == "passage"  # the server's default wins
    assert by_id["all-MiniLM-L6-v2"]["prompts"] == {"query": "", "document": ""}
    listed = httpx.get(f"{server.url}/v1/models", headers=headers).json()["data"]
    assert {m["id"]: m["kind"] for m in listed}[RERANKER] == "rerank"
    assert {m["id"]: m["prompts"] for m in listed}["tiny-mpnet"]["passage"] == "passage: "


def test_rerank_needs_a_key(server: Server) -> None:
    answer = httpx.post(f"{server.url}/v1/rerank", json={"query": "q", "documents": ["a"]})
    assert answer.status_code == 401
