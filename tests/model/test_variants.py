"""The exported variants: the default bundle is plain fp32 in the packed layout; the optimiser
fuses attention; int8 keeps its accuracy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import spearmanr

from app.backends.onnx.bundle import load_bundle
from app.backends.onnx.model import OnnxModel
from app.config import Settings
from app.core.engine import Engine
from app.core.vectors import encode_now, l2_normalize


def test_the_default_bundle_is_fp32_as_pytorch_computes_it(settings: Settings) -> None:
    bundle = load_bundle(settings.model_dir)
    assert bundle.variant == "fp32"
    assert bundle.manifest["verification"]["worst_cosine_to_pytorch"] >= 0.9999


def test_the_packed_graph_gives_pytorchs_vectors_in_any_company(
    engine: Engine, reference: dict[str, Any]
) -> None:
    # The export's check sentences run from empty to truncated at 256 tokens: one pass of all of
    # them is mostly padding in a padded graph, and none in the packed one.
    assert isinstance(engine.model, OnnxModel) and engine.model.packed
    expected = l2_normalize(np.asarray(reference["embeddings"], dtype=np.float32))
    together = encode_now(engine.model, reference["sentences"])
    alone = np.vstack([encode_now(engine.model, [s]) for s in reference["sentences"]])
    assert (together * expected).sum(axis=1).min() >= 0.9999
    assert np.allclose(together, alone, atol=1e-5)


def int8_bundle(settings: Settings) -> Path:
    int8_dir = settings.model_dir.with_name(settings.model_dir.name + "-int8")
    if not (int8_dir / "config.json").is_file():
        pytest.fail(f"no int8 bundle at {int8_dir}: `make test` builds it")
    return int8_dir


def test_the_optimiser_fuses_every_attention_block_of_this_export(settings: Settings) -> None:
    # int8 quantises the optimised graph, and its manifest records what the optimiser fused.
    manifest = load_bundle(int8_bundle(settings)).manifest
    fused = manifest["optimization"]["fused"]
    assert fused["Attention"] == manifest["num_layers"] == 6
    assert manifest["optimization"]["nodes_after"] < manifest["optimization"]["nodes_before"]


def test_int8_is_its_own_bundle_and_keeps_stsb(
    settings: Settings, stsb: list[tuple[float, str, str]]
) -> None:
    int8_dir = int8_bundle(settings)
    bundle = load_bundle(int8_dir)
    assert (bundle.id, bundle.variant) == ("all-MiniLM-L6-v2-int8", "int8")
    assert bundle.manifest["layout"] == "padded"  # quantised from the optimised, padded graph
    checks = bundle.manifest["verification"]
    assert checks["stsb_spearman"] >= 0.815 and checks["worst_cosine_to_fp32"] >= 0.95
    assert bundle.model_path.stat().st_size < 30e6  # a quarter of fp32's 90 MB
    encoder = OnnxModel.load(bundle)
    left = np.vstack(
        [encode_now(encoder, [a for _, a, _ in stsb[i : i + 64]]) for i in range(0, len(stsb), 64)]
    )
    right = np.vstack(
        [encode_now(encoder, [b for _, _, b in stsb[i : i + 64]]) for i in range(0, len(stsb), 64)]
    )
    rho = spearmanr([g for g, _, _ in stsb], (left * right).sum(axis=1)).statistic
    assert rho >= 0.815
    assert json.loads((int8_dir / "config.json").read_text())["quantization"]["per_channel"]
