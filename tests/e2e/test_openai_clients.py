"""Real clients against a real server that serves two models and wants an API key: the official
``openai`` package and ``langchain-openai``'s ``OpenAIEmbeddings``."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings

from app.config import Settings
from tests.e2e.conftest import Server, serving

pytestmark = pytest.mark.e2e
KEY = "sk-test-0123456789"
FP32 = "all-MiniLM-L6-v2"
INT8 = "all-MiniLM-L6-v2-int8"
TEXTS = ["A man is playing a guitar.", "The new movie is awesome.", "Cats sleep a lot."]


@pytest.fixture(scope="module")
def two_models(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    fp32 = settings.model_dir
    int8 = fp32.with_name(INT8)
    if not (int8 / "config.json").is_file():
        pytest.fail(f"no bundle at {int8}: run the tests with `make test`, which builds it")
    folder = tmp_path_factory.mktemp("two-models")
    env = {"EMBED_MODELS": f"{fp32},{int8}", "EMBED_API_KEYS": f"other-key,{KEY}"}
    with serving(settings, folder, **env) as server:
        yield server


@pytest.fixture(scope="module")
def client(two_models: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{two_models.url}/v1", api_key=KEY, max_retries=0) as made:
        yield made


def native(server: Server, texts: list[str], model: str = FP32) -> Any:
    """The same texts through the native ``/embed``."""
    response = httpx.post(
        f"{server.url}/embed",
        json={"inputs": texts, "model": model},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return np.array(response.json()["embeddings"])


def vectors(response: Any) -> Any:
    return np.array([item.embedding for item in response.data])


def test_defaults_which_may_ask_for_base64(client: openai.OpenAI, two_models: Server) -> None:
    response = client.embeddings.create(input=TEXTS[0], model=FP32)
    assert response.model == FP32 and response.object == "list"
    assert [item.index for item in response.data] == [0]
    assert response.usage.prompt_tokens == response.usage.total_tokens == 9
    assert np.allclose(vectors(response), native(two_models, TEXTS[:1]), atol=1e-6)


def test_float_format_and_a_list(client: openai.OpenAI, two_models: Server) -> None:
    response = client.embeddings.create(input=TEXTS, model=FP32, encoding_format="float")
    assert [item.index for item in response.data] == [0, 1, 2]
    assert np.allclose(vectors(response), native(two_models, TEXTS), atol=1e-6)


def test_base64_is_little_endian_float32(two_models: Server) -> None:
    response = httpx.post(
        f"{two_models.url}/v1/embeddings",
        json={"input": TEXTS[0], "model": FP32, "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    raw = base64.b64decode(response.json()["data"][0]["embedding"])
    assert np.allclose(np.frombuffer(raw, "<f4"), native(two_models, TEXTS[:1])[0], atol=1e-6)


def test_dimensions_keeps_the_first_components_renormalised(
    client: openai.OpenAI, two_models: Server
) -> None:
    response = client.embeddings.create(input=TEXTS, model=FP32, dimensions=128)
    got = vectors(response)
    full = native(two_models, TEXTS)[:, :128]
    assert got.shape == (3, 128)
    assert np.allclose(got, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-6)


def test_token_ids_are_taken_verbatim(client: openai.OpenAI, two_models: Server) -> None:
    ids = httpx.post(
        f"{two_models.url}/tokenize",
        json={"inputs": TEXTS[:2]},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()["data"]
    one = client.embeddings.create(input=ids[0]["ids"], model=FP32, encoding_format="float")
    many = client.embeddings.create(
        input=[row["ids"] for row in ids], model=FP32, encoding_format="float"
    )
    assert np.allclose(vectors(one), native(two_models, TEXTS[:1]), atol=1e-6)
    assert np.allclose(vectors(many), native(two_models, TEXTS[:2]), atol=1e-6)
    assert many.usage.prompt_tokens == sum(row["count"] for row in ids)


def test_the_model_field_picks_the_bundle(client: openai.OpenAI, two_models: Server) -> None:
    fp32 = vectors(client.embeddings.create(input=TEXTS, model=FP32))
    int8 = client.embeddings.create(input=TEXTS, model=INT8)
    assert int8.model == INT8
    assert np.allclose(vectors(int8), native(two_models, TEXTS, INT8), atol=1e-6)
    cosines = (fp32 * vectors(int8)).sum(axis=1)
    assert not np.allclose(fp32, vectors(int8), atol=1e-3)  # really another model
    assert cosines.min() > 0.95  # yet close to it
    assert {m.id for m in client.models.list()} == {FP32, INT8}
    assert client.models.retrieve(INT8).id == INT8


def test_errors_raise_the_clients_usual_exceptions(
    client: openai.OpenAI, two_models: Server
) -> None:
    wrong = openai.OpenAI(base_url=f"{two_models.url}/v1", api_key="sk-wrong", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError) as auth:
        wrong.embeddings.create(input="hi", model=FP32)
    assert auth.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(input="hi", model="text-embedding-3-small")
    assert missing.value.code == "model_not_found"
    assert FP32 in missing.value.message and INT8 in missing.value.message
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    for dimensions in (385, 0):
        with pytest.raises(openai.BadRequestError) as bad:
            client.embeddings.create(input="hi", model=FP32, dimensions=dimensions)
        assert bad.value.code == "invalid_parameter" and bad.value.param == "dimensions"
    with pytest.raises(openai.UnprocessableEntityError) as vocab:
        client.embeddings.create(input=[101, 10**6, 102], model=FP32)
    assert vocab.value.code == "invalid_token_id"


def test_langchain_openai_embeddings(two_models: Server) -> None:
    with httpx.Client() as http_client:
        embeddings = OpenAIEmbeddings(
            model=FP32,
            base_url=f"{two_models.url}/v1",
            api_key=KEY,  # type: ignore[arg-type]
            check_embedding_ctx_length=False,  # send text, not tiktoken ids (OpenAI's own)
            max_retries=0,
            http_client=http_client,
        )
        documents = embeddings.embed_documents(TEXTS)
        query = embeddings.embed_query(TEXTS[0])
    expected = native(two_models, TEXTS)
    assert np.allclose(documents, expected, atol=1e-6)
    assert np.allclose(query, expected[0], atol=1e-6)


def test_only_the_probes_and_metrics_go_without_a_key(two_models: Server) -> None:
    url = two_models.url
    for path in ("/health", "/health/live", "/metrics"):
        assert httpx.get(f"{url}{path}").status_code == 200
    for method, path in [
        ("POST", "/embed"),
        ("GET", "/info"),
        ("GET", "/v1/models"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("POST", "/tokenize"),
    ]:
        response = httpx.request(method, f"{url}{path}", json={"inputs": "x"})
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
    info = httpx.get(f"{url}/info", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [m["id"] for m in info["models"]] == [FP32, INT8]
    assert info["models"][1]["variant"] == "int8" and info["auth"] is True
    assert KEY not in two_models.log.read_text()
