"""The ONNX backend on the real model: tokenization as sentence-transformers does it, devices."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from app.backends.onnx.bundle import load_bundle
from app.backends.onnx.model import OnnxModel
from app.backends.onnx.session import CUDA, select_providers
from app.config import Settings
from app.core.engine import Engine
from app.core.vectors import encode_now
from app.errors import InputTooLong, StartupError


def onnx_model(engine: Engine) -> OnnxModel:
    assert isinstance(engine.model, OnnxModel)
    return engine.model


needs_no_cuda = pytest.mark.skipif(
    CUDA in ort.get_available_providers(), reason="this onnxruntime has the CUDA provider"
)


def test_token_counts_match_sentence_transformers(
    engine: Engine, reference: dict[str, Any]
) -> None:
    encodings = onnx_model(engine).tokenize(reference["sentences"], truncate=True)
    assert [len(e.ids) for e in encodings] == reference["token_counts"]


def test_long_input_is_truncated_to_max_seq_length(engine: Engine) -> None:
    (encoding,) = onnx_model(engine).tokenizer.tokenize(["word " * 1000], truncate=True)
    assert len(encoding.ids) == 256
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"


def test_truncate_false_names_the_count_and_the_limit(engine: Engine) -> None:
    with pytest.raises(InputTooLong, match=r"input 1 has 1002 tokens.*limit of 256"):
        onnx_model(engine).tokenize(["short", "word " * 1000], truncate=False)


def test_vectors_are_unit_length_and_float32(engine: Engine) -> None:
    vectors = encode_now(engine.model, ["one", "two words", "three whole words"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_a_vector(engine: Engine) -> None:
    short, long = "A cat.", "A much longer sentence that forces plenty of padding on the first."
    alone = encode_now(engine.model, [short])[0]
    padded = encode_now(engine.model, [short, long])[0]
    assert np.allclose(alone, padded, atol=1e-5)


@needs_no_cuda
def test_cuda_without_the_provider_fails_with_what_to_install(settings: Settings) -> None:
    with pytest.raises(StartupError, match=r"no CUDA provider.*onnxruntime-gpu"):
        OnnxModel.load(load_bundle(settings.model_dir), device="cuda")


@needs_no_cuda
def test_auto_falls_back_to_the_cpu(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    assert select_providers("auto") == ["CPUExecutionProvider"]
    encoder = OnnxModel.load(load_bundle(settings.model_dir), device="auto")
    assert encoder.provider == "CPUExecutionProvider"
    assert "no CUDA provider" in caplog.text


def test_pairs_are_tokenized_as_a_cross_encoder_takes_them(engine: Engine) -> None:
    (pair,) = onnx_model(engine).tokenize_pairs([("a question", "an answer")], truncate=True)
    assert pair.tokens == ["[CLS]", "a", "question", "[SEP]", "an", "answer", "[SEP]"]
    assert pair.type_ids == [0, 0, 0, 0, 1, 1, 1]
    (long,) = onnx_model(engine).tokenize_pairs([("short query", "word " * 1000)], truncate=True)
    assert len(long.ids) == 256 and long.tokens[1:3] == ["short", "query"]  # longest first
    with pytest.raises(InputTooLong, match="input 0 has 1005 tokens"):
        onnx_model(engine).tokenize_pairs([("short query", "word " * 1000)], truncate=False)
