"""Export a sentence-transformers ``CrossEncoder`` to a rerank bundle (``export_onnx.py --kind
rerank``).

The graph is the sequence classifier: a pair's tokens in, ``logits`` (rows x labels) out. The
manifest records the activation that ``CrossEncoder.predict`` applies by default: the one the
model's config names (``activation_fn``), else sigmoid for one label and identity otherwise. The
service serves one-label models (one relevance score per pair).

Before it exits 0 the export loads the new bundle with the service's own model and holds its
scores to ``CrossEncoder.predict`` on PyTorch within 1e-5, for the check pairs in one pass and one
by one. ``reference.json`` keeps the pairs and PyTorch's scores for the serving tests.
"""

from __future__ import annotations

import json
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx_variants as variants
import torch
from by_keyword import ByKeyword
from onnx_variants import ExportFailed
from sentence_transformers import CrossEncoder

from app.backends.onnx.bundle import (
    MANIFEST,
    MODEL_FILE,
    REFERENCE_FILE,
    TOKENIZER_FILE,
    load_bundle,
    sha256_of,
)
from app.backends.onnx.model import KNOWN_INPUTS, OnnxModel
from app.core.model import ModelKind
from app.core.vectors import ACTIVATIONS

OPSET = 17
TOLERANCE = 1e-5
# torch's activation modules and the names the manifest and the core use for them.
ACTIVATION_NAMES = {"Sigmoid": "sigmoid", "Identity": "identity", "Tanh": "tanh"}


def check_pairs(sentences: list[str]) -> list[tuple[str, str]]:
    """A query against every check sentence, each sentence as the query, and a pair of two long
    texts that truncation must cut, longest first."""
    query = sentences[1]
    pairs = [(query, s) for s in sentences] + [(s, query) for s in sentences]
    long = max(sentences, key=len)
    return [*pairs, (long, long[: len(long) // 2])]


def activation_of(encoder: CrossEncoder) -> str:
    name = type(encoder.activation_fn).__name__
    if name not in ACTIVATION_NAMES:
        raise ExportFailed(
            f"activation {name} is not supported; the service applies "
            f"{', '.join(ACTIVATION_NAMES)} (or raw scores)"
        )
    activation = ACTIVATION_NAMES[name]
    assert activation in ACTIVATIONS
    return activation


def build_rerank(
    source: str,
    description: str,
    out_dir: Path,
    *,
    sentences: list[str],
    tools: dict[str, str],
    check_family: Any,
) -> dict[str, Any]:
    """Export the cross-encoder in ``source`` into ``out_dir``, check it, and return the
    summary that ``export_onnx.py`` prints."""
    started = time.perf_counter()
    encoder = CrossEncoder(source, device="cpu")
    model = encoder.model.eval()
    check_family(model.config.model_type)
    if encoder.num_labels != 1:
        raise ExportFailed(
            f"the model scores {encoder.num_labels} labels; a reranker gives one score per pair"
        )
    tokenizer = encoder.tokenizer
    input_names = [n for n in KNOWN_INPUTS if n in tokenizer.model_input_names]
    out_dir.mkdir(parents=True)
    model_path = out_dir / MODEL_FILE
    sample = tokenizer([("a query", "a short document")], return_tensors="pt")
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about shape-dependent Python branches
        torch.onnx.export(
            ByKeyword(model, input_names, "logits"),
            tuple(sample[name] for name in input_names),
            str(model_path),
            input_names=input_names,
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    backend = tokenizer.backend_tokenizer
    backend.no_padding()
    backend.no_truncation()  # the service sets truncation from max_seq_length
    backend.save(str(out_dir / TOKENIZER_FILE))

    pairs = check_pairs(sentences)
    with torch.no_grad():
        logits = encoder.predict(pairs, activation_fn=torch.nn.Identity(), batch_size=len(pairs))
        scores = encoder.predict(pairs, batch_size=len(pairs))
    activation = activation_of(encoder)
    reference = {
        "pairs": pairs,
        "logits": np.asarray(logits, dtype=np.float32).tolist(),
        "scores": np.asarray(scores, dtype=np.float32).tolist(),
        "produced_by": f"sentence-transformers CrossEncoder.predict on torch {torch.__version__}",
    }
    (out_dir / REFERENCE_FILE).write_text(json.dumps(reference), encoding="utf-8")
    manifest = {
        "format_version": 1,
        "kind": ModelKind.RERANK.value,
        "name": out_dir.name,
        "source": description,
        "model_type": model.config.model_type,
        "dimension": 1,
        "pooling": "none",
        "activation": activation,
        "normalize": False,
        "max_seq_length": int(encoder.max_seq_length),
        "inputs": input_names,
        "output": "logits",
        "layout": "padded",
        "variant": "fp32",
        "opset": OPSET,
        "model_sha256": sha256_of(model_path),
        "tools": tools,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    checks = _differences(out_dir, manifest, pairs, logits, scores)
    manifest["verification"] = {"pairs": len(pairs), **checks}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if checks["worst_score_difference"] > TOLERANCE:
        raise ExportFailed(
            f"scores differ from CrossEncoder.predict by {checks['worst_score_difference']:.2e} "
            f"> {TOLERANCE}"
        )
    if checks["worst_relative_logit_difference"] > TOLERANCE:
        raise ExportFailed(
            "logits differ from PyTorch's by "
            f"{checks['worst_relative_logit_difference']:.2e} x (1 + |logit|) > {TOLERANCE}"
        )
    return {
        "dir": out_dir,
        "variant": "fp32",
        "layout": "padded",
        "size_mb": round(model_path.stat().st_size / 1e6, 1),
        "nodes": variants.node_count(model_path),
        "optimization": None,
        "checks": checks,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _differences(
    out_dir: Path, manifest: dict[str, Any], pairs: list[tuple[str, str]], logits: Any, scores: Any
) -> dict[str, float]:
    """The bundle's scores and logits against PyTorch's, all pairs in one pass and each alone:
    the worst score difference, and the worst logit difference relative to 1 + |logit|."""
    (out_dir / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    model = OnnxModel.load(load_bundle(out_dir))
    expected = np.asarray(logits, dtype=np.float32).reshape(-1)
    batched = model.run(model.tokenize_pairs(pairs, truncate=True))[:, 0]
    alone = np.array([model.run(model.tokenize_pairs([p], truncate=True))[0, 0] for p in pairs])
    activate = ACTIVATIONS[manifest["activation"]]
    expected_scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    return {
        "worst_score_difference": float(
            max(np.abs(activate(got) - expected_scores).max() for got in (batched, alone))
        ),
        "worst_relative_logit_difference": float(
            max((np.abs(got - expected) / (1 + np.abs(expected))).max() for got in (batched, alone))
        ),
    }
