"""The encoder on the real model: tokenization as sentence-transformers does it, devices."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from app.config import Settings
from app.engine.bundle import load_bundle
from app.engine.encoder import CUDA, Encoder, select_providers
from app.engine.engine import EmbeddingEngine
from app.errors import InputTooLong, StartupError

needs_no_cuda = pytest.mark.skipif(
    CUDA in ort.get_available_providers(), reason="this onnxruntime has the CUDA provider"
)


def test_token_counts_match_sentence_transformers(
    engine: EmbeddingEngine, reference: dict[str, Any]
) -> None:
    encodings = engine.encoder.tokenize(reference["sentences"])
    assert [len(e.ids) for e in encodings] == reference["token_counts"]


def test_long_input_is_truncated_to_max_seq_length(engine: EmbeddingEngine) -> None:
    (encoding,) = engine.encoder.tokenize(["word " * 1000])
    assert len(encoding.ids) == 256
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"


def test_truncate_false_names_the_count_and_the_limit(engine: EmbeddingEngine) -> None:
    with pytest.raises(InputTooLong, match=r"input 1 has 1002 tokens.*limit of 256"):
        engine.encoder.tokenize(["short", "word " * 1000], truncate=False)


def test_vectors_are_unit_length_and_float32(engine: EmbeddingEngine) -> None:
    vectors = engine.encoder.encode(["one", "two words", "three whole words"]).vectors
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_a_vector(engine: EmbeddingEngine) -> None:
    short, long = "A cat.", "A much longer sentence that forces plenty of padding on the first."
    alone = engine.encoder.encode([short]).vectors[0]
    padded = engine.encoder.encode([short, long]).vectors[0]
    assert np.allclose(alone, padded, atol=1e-5)


@needs_no_cuda
def test_cuda_without_the_provider_fails_with_what_to_install(settings: Settings) -> None:
    with pytest.raises(StartupError, match=r"no CUDA provider.*onnxruntime-gpu"):
        Encoder.load(load_bundle(settings.model_dir), device="cuda")


@needs_no_cuda
def test_auto_falls_back_to_the_cpu(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    assert select_providers("auto") == ["CPUExecutionProvider"]
    encoder = Encoder.load(load_bundle(settings.model_dir), device="auto")
    assert encoder.provider == "CPUExecutionProvider"
    assert "no CUDA provider" in caplog.text
