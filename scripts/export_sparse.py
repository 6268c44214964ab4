"""Export a SPLADE masked-language model to a sparse bundle (``export_onnx.py --kind sparse``).

The graph holds the SPLADE pooling (``sparse_graph.py``): the session returns one vector over the
vocabulary per row. Before it exits 0, the export loads the new bundle with the service's own
model code and holds it to PyTorch (``AutoModelForMaskedLM`` and the formula), for the check
sentences in one pass and one by one: the same entries above 1e-3, and every value within
1e-4 + 1e-4 x |PyTorch's|. ``reference.json`` keeps PyTorch's vectors and PyTorch's STS-B
Spearman of sparse dot products, for the serving tests, which have no torch.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx_variants as variants
import torch
from onnx_variants import ExportFailed
from onnxruntime.transformers import optimizer
from packed_graph import packable
from sparse_graph import OPSET, OUTPUT, export_packed_splade, export_padded_splade, splade
from transformers import AutoModelForMaskedLM, AutoTokenizer

from app.backends.onnx.bundle import (
    MANIFEST,
    MODEL_FILE,
    REFERENCE_FILE,
    TOKENIZER_FILE,
    load_bundle,
    sha256_of,
)
from app.backends.onnx.model import KNOWN_INPUTS, OnnxModel
from app.backends.onnx.packing import PACKED_INPUTS
from app.core.model import ModelKind, TokenIds

log = logging.getLogger("export")

MAX_SEQ_LENGTH = 256
ENTRY_FLOOR = 1e-3  # entries above it must be the same as PyTorch's
ABSOLUTE, RELATIVE = 1e-4, 1e-4  # every value within ABSOLUTE + RELATIVE x |PyTorch's|


def pytorch_vectors(
    mlm: torch.nn.Module, tokenizer: Any, texts: list[str], batch: int = 32
) -> tuple[np.ndarray, list[int]]:
    """SPLADE vectors as the formula defines them, on PyTorch, and each text's token count."""
    vectors, counts = [], []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            inputs = tokenizer(
                texts[start : start + batch],
                padding=True,
                truncation=True,
                max_length=MAX_SEQ_LENGTH,
                return_tensors="pt",
            )
            logits = mlm(**inputs).logits
            mask = inputs["attention_mask"][:, :, None]
            vectors.append((splade(logits) * mask).amax(dim=1).numpy())
            counts += inputs["attention_mask"].sum(dim=1).tolist()
    return np.vstack(vectors).astype(np.float32), [int(c) for c in counts]


def compare(
    got: np.ndarray, expected: np.ndarray, absolute: float, relative: float
) -> dict[str, Any]:
    """How far the bundle's vectors are from PyTorch's, and whether they pass."""
    same_entries = bool(np.array_equal(got > ENTRY_FLOOR, expected > ENTRY_FLOOR))
    excess = np.abs(got - expected) - (absolute + relative * np.abs(expected))
    return {
        "same_entries_above_1e-3": same_entries,
        "worst_excess_over_tolerance": float(excess.max()),
        "max_abs_difference": float(np.abs(got - expected).max()),
        "passed": same_entries and float(excess.max()) <= 0.0,
    }


def check_bundle(bundle_dir: Path, texts: list[str], expected: np.ndarray) -> dict[str, Any]:
    """Load the bundle as the server does; compare one pass of all and each text alone. Every
    variant is held to the same gate: fp16 is offered only where it holds it."""
    try:
        model = OnnxModel.load(load_bundle(bundle_dir))
        together = model.run(model.tokenize(texts, truncate=True))
        alone = np.vstack([model.run(model.tokenize([t], truncate=True)) for t in texts])
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise ExportFailed(f"onnxruntime cannot run the exported graph here: {exc}") from None
    checks = {"together": compare(together, expected, ABSOLUTE, RELATIVE)}
    checks["alone"] = compare(alone, expected, ABSOLUTE, RELATIVE)
    return checks


def stsb_spearman(vectors: np.ndarray, pairs: list[tuple[float, str, str]]) -> float:
    """Spearman of the gold scores against the dot products of each pair's sparse vectors."""
    left, right = vectors[: len(pairs)], vectors[len(pairs) :]
    return variants.spearman([gold for gold, _, _ in pairs], list((left * right).sum(axis=1)))


def export_graph(mlm: torch.nn.Module, tokenizer: Any, path: Path) -> tuple[str, list[str]]:
    """The packed graph where the model allows it, else the padded one; its layout and inputs."""
    samples = ["a short sample", "and a slightly longer sample sentence"]
    if packable(mlm):
        ids = tokenizer(samples)["input_ids"]
        export_packed_splade(mlm, path, [TokenIds(row) for row in ids])
        return "packed", list(PACKED_INPUTS)
    log.warning("no packed graph for %s models: exporting the padded one", mlm.config.model_type)
    sample = tokenizer(samples, padding=True, return_tensors="pt")
    names = [name for name in KNOWN_INPUTS if name in sample]
    export_padded_splade(mlm, path, dict(sample), names)
    return "padded", names


def optimize(path: Path) -> dict[str, int]:
    """onnxruntime's transformer optimizer (LayerNorm, GELU); the node counts before and after."""
    before = variants.node_count(path)
    model = optimizer.optimize_model(str(path), model_type="bert", opt_level=0)
    model.save_model_to_file(str(path))
    return {"nodes_before": before, "nodes_after": variants.node_count(path)}


def build_sparse(
    location: str,
    source_description: str,
    out_dir: Path,
    stsb: Path | None,
    *,
    optimized: bool,
    fp16: bool,
    sentences: list[str],
    tools: dict[str, str],
) -> dict[str, Any]:
    """Export, check and describe a sparse bundle in ``out_dir``; the summary to print."""
    started = time.perf_counter()
    mlm = AutoModelForMaskedLM.from_pretrained(location, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(location)
    out_dir.mkdir()
    model_path = out_dir / MODEL_FILE
    layout, input_names = export_graph(mlm, tokenizer, model_path)
    optimization = optimize(model_path) if optimized else None
    variant = "fp32-optimized" if optimized else "fp32"
    if fp16:  # onnxruntime's CPU provider has no float16 ScatterND max: that node stays fp32
        variants.to_fp16(model_path, model_path, keep_fp32=["ScatterND"])
        variant = "fp16"
    backend = tokenizer.backend_tokenizer
    backend.no_padding()
    backend.no_truncation()  # the engine sets truncation from max_seq_length
    backend.save(str(out_dir / TOKENIZER_FILE))
    expected, counts = pytorch_vectors(mlm, tokenizer, sentences)
    reference: dict[str, Any] = {
        "sentences": sentences,
        "token_counts": counts,
        "vectors": [[[int(i), float(row[i])] for i in np.flatnonzero(row)] for row in expected],
        "produced_by": f"transformers AutoModelForMaskedLM on torch {torch.__version__}, "
        "max over tokens of log(1 + relu(logits)), padding masked",
    }
    if stsb is not None and stsb.is_file():
        pairs = variants.load_stsb(stsb)
        texts = [a for _, a, _ in pairs] + [b for _, _, b in pairs]
        reference["stsb_spearman_pytorch"] = stsb_spearman(
            pytorch_vectors(mlm, tokenizer, texts)[0], pairs
        )
    (out_dir / REFERENCE_FILE).write_text(json.dumps(reference), encoding="utf-8")
    config = mlm.config
    manifest = {
        "format_version": 1,
        "kind": ModelKind.SPARSE.value,
        "name": out_dir.name,
        "source": source_description,
        "model_type": config.model_type,
        "num_heads": config.num_attention_heads,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_hidden_layers,
        "dimension": config.vocab_size,
        "pooling": "splade",
        "normalize": False,
        "max_seq_length": MAX_SEQ_LENGTH,
        "inputs": input_names,
        "output": OUTPUT,
        "layout": layout,
        # onnxruntime's ScatterND applies a max reduction's updates in parallel on several
        # threads, and two tokens of one row then race: run the packed graph on one thread.
        "max_intra_op_threads": 1 if layout == "packed" else None,
        "variant": variant,
        "opset": OPSET,
        "model_sha256": sha256_of(model_path),
        "tools": tools,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if optimization:
        manifest["optimization"] = optimization
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    checks = check_bundle(out_dir, sentences, expected)
    manifest["verification"] = {"sentences": len(sentences), **checks}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    failed = [f"{how}: {result}" for how, result in checks.items() if not result["passed"]]
    if failed:
        raise ExportFailed("sparse vectors differ from PyTorch's: " + "; ".join(failed))
    return {
        "dir": out_dir,
        "variant": variant,
        "layout": layout,
        "size_mb": round(model_path.stat().st_size / 1e6, 1),
        "nodes": variants.node_count(model_path),
        "optimization": optimization,
        "checks": {
            "worst_excess_over_tolerance": max(
                r["worst_excess_over_tolerance"] for r in checks.values()
            ),
            "stsb_spearman_pytorch": reference.get("stsb_spearman_pytorch", float("nan")),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
