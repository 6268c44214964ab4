"""A model bundle on disk: ``model.onnx``, ``tokenizer.json`` and the manifest ``config.json``.

The manifest says what the model is: its ``kind`` (``dense``, ``sparse`` or ``rerank``; a
manifest without one is ``dense``), its dimension, pooling and limit, and how it was exported.

``scripts/export_onnx.py`` writes bundles; ``load_bundle`` reads one back and checks it, so that
every fault a user can make (wrong path, a half-copied file, an unsupported pooling mode) stops
the start-up with one line that says how to fix it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from app.backends.onnx.pooling import SUPPORTED_POOLING, PoolingMode
from app.core.model import ModelKind
from app.core.vectors import ACTIVATIONS
from app.errors import StartupError

MANIFEST = "config.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
REFERENCE_FILE = "reference.json"
POOLING_IN_GRAPH: dict[ModelKind, tuple[str, ...]] = {
    ModelKind.SPARSE: ("splade",),  # the graph returns the pooled vector (scripts/sparse_graph.py)
    ModelKind.RERANK: ("none",),
}
EXPORT_HINT = "build it with `make models` or `scripts/export_onnx.py --source <model>`"


@dataclass(frozen=True, slots=True)
class Bundle:
    """What the engine needs to know about one exported model."""

    id: str
    path: Path
    kind: ModelKind
    dimension: int
    pooling: PoolingMode | str  # a PoolingMode for dense bundles; done in the graph otherwise
    normalize: bool
    max_seq_length: int
    input_names: tuple[str, ...]
    output_name: str
    variant: str
    manifest: dict[str, Any]
    max_intra_op_threads: int | None = None  # a graph unsafe on more threads says so
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    include_prompt: bool = True  # whether pooling counts a prompt's tokens
    activation: str | None = None  # a reranker's: sigmoid, identity or tanh

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(path: Path, *, verify_checksum: bool = True, model_id: str | None = None) -> Bundle:
    """Read and check the bundle in ``path``; raise ``StartupError`` saying what is wrong. Its id
    is ``model_id``, else the folder's name."""
    path = path.resolve()
    if not path.is_dir():
        raise StartupError(f"model bundle {path} does not exist; {EXPORT_HINT}")
    manifest = _read_manifest(path)
    for name in (MODEL_FILE, TOKENIZER_FILE):
        if not (path / name).is_file():
            raise StartupError(f"model bundle {path} has no {name}; re-export it ({EXPORT_HINT})")
    expected = manifest.get("model_sha256")
    if verify_checksum and expected and sha256_of(path / MODEL_FILE) != expected:
        raise StartupError(
            f"{path / MODEL_FILE} does not match the sha256 in its manifest (corrupted or "
            f"partly copied); re-export it ({EXPORT_HINT})"
        )
    kind = manifest.get("kind", ModelKind.DENSE)  # bundles from before kinds are dense
    if kind not in set(ModelKind):
        raise StartupError(
            f"model bundle {path} is of kind {kind!r}; this service knows {', '.join(ModelKind)}"
        )
    pooling = manifest["pooling"]
    supported = SUPPORTED_POOLING if kind == ModelKind.DENSE else POOLING_IN_GRAPH[ModelKind(kind)]
    if pooling not in supported:
        raise StartupError(
            f"model bundle {path} ({kind}) uses pooling mode {pooling!r}; this service supports "
            f"{', '.join(supported)} only"
        )
    return Bundle(
        id=model_id or path.name,
        path=path,
        kind=ModelKind(kind),
        dimension=int(manifest["dimension"]),
        pooling=cast(PoolingMode, pooling) if kind == ModelKind.DENSE else pooling,
        normalize=bool(manifest["normalize"]),
        max_seq_length=int(manifest["max_seq_length"]),
        input_names=tuple(manifest["inputs"]),
        output_name=str(manifest["output"]),
        variant=str(manifest.get("variant", "fp32")),
        max_intra_op_threads=manifest.get("max_intra_op_threads"),
        prompts=_prompts(path / MANIFEST, manifest),
        default_prompt_name=manifest.get("default_prompt_name"),
        include_prompt=bool(manifest.get("include_prompt", True)),
        activation=_activation(path, kind, manifest),
        manifest=manifest,
    )


def _prompts(file: Path, manifest: dict[str, Any]) -> dict[str, str]:
    prompts = manifest.get("prompts", {})
    if not isinstance(prompts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()
    ):
        raise StartupError(f"{file}: prompts must map names to strings; re-export the bundle")
    default = manifest.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise StartupError(
            f"{file}: default_prompt_name {default!r} is not one of its prompts "
            f"({', '.join(prompts) or 'none'}); re-export the bundle"
        )
    return prompts


def _activation(path: Path, kind: str, manifest: dict[str, Any]) -> str | None:
    if kind != ModelKind.RERANK:
        return None
    activation = manifest.get("activation", "sigmoid")
    if activation not in ACTIVATIONS:
        raise StartupError(
            f"model bundle {path} scores with activation {activation!r}; this service applies "
            f"{', '.join(ACTIVATIONS)}"
        )
    return str(activation)


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StartupError(f"model bundle {path} has no {MANIFEST}; {EXPORT_HINT}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StartupError(f"{file} is not valid JSON ({exc}); re-export the bundle") from None
    required = ("dimension", "pooling", "normalize", "max_seq_length", "inputs", "output")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise StartupError(f"{file} lacks {', '.join(missing)}; re-export the bundle")
    return cast(dict[str, Any], manifest)
