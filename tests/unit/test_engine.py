"""The engine's checks and post-processing, on a model that costs nothing: limits, token ids,
truncation, dimensions, normalisation in one place, similarity."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from app.core.engine import Engine, Limits
from app.core.model import ModelKind
from app.errors import (
    InputTooLong,
    InvalidParameter,
    InvalidText,
    InvalidTokenId,
    PayloadTooLarge,
    ValidationFailed,
    WrongModelKind,
)
from tests.fakes import VOCAB, FakeModel


@pytest.fixture
def engine() -> Iterator[Engine]:
    served = Engine(FakeModel(max_seq_length=8), Limits(max_inputs=4, max_input_chars=100))
    yield served
    served.close()


def model_of(engine: Engine) -> FakeModel:
    assert isinstance(engine.model, FakeModel)
    return engine.model


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


@pytest.mark.parametrize(
    ("texts", "error", "says"),
    [
        (["a"] * 5, PayloadTooLarge, "EMBED_MAX_INPUTS"),
        (["a" * 101], PayloadTooLarge, "EMBED_MAX_INPUT_CHARS"),
        (["fine", "bad \ud800"], InvalidText, "input 1"),
    ],
)
def test_what_must_not_reach_the_model_is_refused(
    engine: Engine, texts: list[str], error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        run(engine.embed(texts))
    assert model_of(engine).passes == []


def test_truncation_cuts_to_the_limit_and_its_absence_refuses(engine: Engine) -> None:
    long = "one two three four five six seven eight nine"
    outcome = run(engine.embed([long]))
    assert outcome.token_counts == [8]
    with pytest.raises(InputTooLong):
        run(engine.embed([long], truncate=False))


def test_token_ids_are_checked_against_the_vocabulary_and_the_limit(engine: Engine) -> None:
    assert run(engine.embed_ids([[5, 6, 7]])).token_counts == [3]
    with pytest.raises(InvalidTokenId, match=f"0 to {VOCAB - 1}"):
        run(engine.embed_ids([[5], [VOCAB]]))
    with pytest.raises(InputTooLong, match="verbatim"):
        run(engine.embed_ids([[5] * 9]))


def test_vectors_are_unit_length_or_raw_as_asked(engine: Engine) -> None:
    model = model_of(engine)
    unit = run(engine.embed(["a cat sat"])).values
    raw = run(engine.embed(["a cat sat"], normalize=False)).values
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    assert np.allclose(raw, model.vectors(model.tokenize(["a cat sat"], truncate=True)))


def test_dimensions_cut_first_and_normalise_once(engine: Engine) -> None:
    model = model_of(engine)
    raw = model.vectors(model.tokenize(["a cat sat"], truncate=True))[:, :3]
    cut = run(engine.embed(["a cat sat"], dimensions=3)).values
    assert cut.shape == (1, 3)
    assert np.allclose(cut, raw / np.linalg.norm(raw), atol=1e-6)
    assert run(engine.embed(["a cat sat"], dimensions=8)).values.shape == (1, 8)
    for wrong in (0, 9):
        with pytest.raises(InvalidParameter, match="between 1 and 8"):
            run(engine.embed(["a cat sat"], dimensions=wrong))


def test_similarity_is_the_cosine_of_the_two_vectors(engine: Engine) -> None:
    model = model_of(engine)
    outcome = run(engine.similarity("a cat", ["a cat", "the dog barks", "a cat sat"]))
    vectors = model.expected(["a cat", "a cat", "the dog barks", "a cat sat"])
    assert np.allclose(outcome.values, vectors[1:] @ vectors[0], atol=1e-6)
    assert outcome.values[0] == pytest.approx(1.0, abs=1e-6)
    assert outcome.token_counts == [4, 4, 5, 5]


def test_tokenize_shows_the_whole_text(engine: Engine) -> None:
    long = "one two three four five six seven eight nine"
    (view,) = run(engine.tokenize([long]))
    assert len(view.ids) == 11 and view.tokens[1] == "one" and view.offsets[1] == (0, 3)


def test_closing_the_engine_frees_the_model(engine: Engine) -> None:
    engine.close()
    assert model_of(engine).closed


def test_each_kind_does_its_own_work_only() -> None:
    dense = Engine(FakeModel())
    sparse = Engine(FakeModel(kind=ModelKind.SPARSE, width=50))
    try:
        with pytest.raises(WrongModelKind, match="fake is a dense model"):
            run(dense.embed_sparse(["a cat"]))
        for work in (
            sparse.embed(["a cat"]),
            sparse.embed_ids([[5]]),
            sparse.similarity("a", ["b"]),
        ):
            with pytest.raises(WrongModelKind, match="fake is a sparse model"):
                run(work)
    finally:
        dense.close()
        sparse.close()


def test_sparse_rows_are_pruned_highest_first_by_threshold_then_top_k() -> None:
    sparse = Engine(FakeModel(kind=ModelKind.SPARSE, width=50))
    model = model_of(sparse)
    raw = model.vectors(model.tokenize(["a cat sat on the mat"], truncate=True))[0]
    try:
        (full,) = run(sparse.embed_sparse(["a cat sat on the mat"])).values
        assert sorted(full.indices.tolist()) == np.flatnonzero(raw > 0).tolist()
        assert np.array_equal(full.values, raw[full.indices])
        assert np.all(np.diff(full.values) <= 0)  # highest first
        (cut,) = run(sparse.embed_sparse(["a cat sat on the mat"], threshold=0.1, top_k=3)).values
        assert cut.indices.tolist() == [i for i in full.indices.tolist() if raw[i] > 0.1][:3]
    finally:
        sparse.close()


PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.mark.parametrize(
    ("server_default", "model_default", "prompt", "name", "expected"),
    [
        (None, None, None, None, ""),
        (None, "query", None, None, "query: "),  # the model's default
        ("passage", "query", None, None, "passage: "),  # the server's default comes first
        ("unknown", "query", None, None, "query: "),  # ...where the model has that name
        ("passage", "query", None, "query", "query: "),  # a named prompt comes before both
        ("passage", "query", "Represent: ", "query", "Represent: "),  # a literal before all
        ("passage", "query", "", "query", ""),  # "" turns prompts off
    ],
)
def test_prompts_are_chosen_as_sentence_transformers_chooses_them(
    server_default: str | None,
    model_default: str | None,
    prompt: str | None,
    name: str | None,
    expected: str,
) -> None:
    model = FakeModel(prompts=PROMPTS, default_prompt_name=model_default)
    engine = Engine(model, default_prompt_name=server_default)
    try:
        assert engine.prompt(prompt, name) == expected
    finally:
        engine.close()


def test_an_unknown_prompt_name_lists_the_prompts_and_is_cut_short() -> None:
    engine = Engine(FakeModel(prompts=PROMPTS))
    try:
        with pytest.raises(ValidationFailed, match="its prompts: 'query', 'passage'") as raised:
            engine.prompt(None, "x" * 10_000)
        assert raised.value.param == "prompt_name"
        assert len(raised.value.message) < 200
    finally:
        engine.close()


def test_a_prompt_goes_before_each_text_and_counts_its_tokens() -> None:
    engine = Engine(FakeModel(prompts=PROMPTS))
    try:
        plain = run(engine.embed(["a cat"]))
        prompted = run(engine.embed(["a cat"], prompt="query: "))
        assert prompted.token_counts == [plain.token_counts[0] + 1]
        assert not np.allclose(plain.values, prompted.values)
    finally:
        engine.close()


def test_rerank_scores_each_pair_in_input_order() -> None:
    reranker = Engine(FakeModel(kind=ModelKind.RERANK, width=1))
    try:
        texts = ["a cat", "a dog", "the mat"]
        raw = run(reranker.rerank("cat", texts, raw_scores=True))
        scores = run(reranker.rerank("cat", texts))
        model = model_of(reranker)
        expected = model.vectors(model.tokenize_pairs([("cat", t) for t in texts], truncate=True))
        assert np.allclose(raw.values, expected[:, 0], atol=1e-6)
        assert np.allclose(scores.values, 1 / (1 + np.exp(-expected[:, 0])), atol=1e-6)
        with pytest.raises(WrongModelKind, match="fake is a rerank model"):
            run(reranker.embed(["a cat"]))
    finally:
        reranker.close()
