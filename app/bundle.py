"""Check a model bundle, a folder or a zip archive, offline, as a server would before serving it.

    python -m app.bundle check PATH      # exit code 0: fit to serve; 1: prints what is wrong

A bundle holds ``config.json``, ``model.onnx`` and ``tokenizer.json``, and optionally
``reference.json`` and ``model.onnx.data`` (external weights); nothing else. An archive holds
those files at its top level, or all in one top-level folder (which is stripped). The checks:

- the archive, before a byte is extracted: no absolute path, no ``..``, no link or special file,
  only the files a bundle may hold, at most ``max_bytes`` uncompressed in all and no member
  compressed more than 50:1; then, while extracting, no member larger than it declared;
- the manifest: its required fields and their types, a kind and pooling this service serves;
- the graph: ``model.onnx`` matches the manifest's sha256, keeps its external data inside the
  bundle (in ``model.onnx.data``), declares the inputs and output the manifest names and an
  output as wide as its dimension, loads in onnxruntime and turns a test sentence into finite
  numbers of that width; and, with a ``reference.json``, gives its vectors (cosine 0.9999, or
  what the export measured for a variant such as int8).
"""

from __future__ import annotations

import argparse
import json
import shutil
import stat
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from app.backends.onnx.bundle import (
    MANIFEST,
    MODEL_FILE,
    REFERENCE_FILE,
    TOKENIZER_FILE,
    Bundle,
    load_bundle,
    sha256_of,
)
from app.backends.onnx.model import OnnxModel
from app.core.model import ModelKind, Row
from app.core.vectors import encode_now, l2_normalize
from app.errors import InvalidArchive, InvalidBundle, StartupError

EXTERNAL_DATA = "model.onnx.data"
REQUIRED_FILES = (MANIFEST, MODEL_FILE, TOKENIZER_FILE)
BUNDLE_FILES = (*REQUIRED_FILES, REFERENCE_FILE, EXTERNAL_DATA)
MAX_RATIO = 50  # a member compressed more than this is taken for a zip bomb
MAX_BYTES = 2 * 1024**3  # EMBED_MAX_UPLOAD_BYTES' default
PARITY = 0.9999  # the export's own gate to PyTorch
FIELDS: dict[str, type | tuple[type, ...]] = {
    "dimension": int,
    "pooling": str,
    "normalize": bool,
    "max_seq_length": int,
    "inputs": list,
    "output": str,
    "model_sha256": str,
}


def archive_members(archive: Path, max_bytes: int = MAX_BYTES) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by the bundle file each becomes, checked before extracting."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidArchive(f"{archive.name}: not a zip archive ({exc})") from None
    with zf:
        infos = [info for info in zf.infolist() if not info.is_dir()]
    names = [_member_path(info) for info in infos]
    tops = {path.parts[0] for path in names}
    strip = len(tops) == 1 and all(len(path.parts) == 2 for path in names)
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info, path in zip(infos, names, strict=True):
        name = path.parts[-1] if strip else str(path)
        if name not in BUNDLE_FILES:
            raise InvalidArchive(
                f"{info.filename}: not a bundle file; a bundle holds {', '.join(BUNDLE_FILES)} "
                "(at the archive's top level or in one folder), nothing else"
            )
        if name in members:
            raise InvalidArchive(f"{info.filename}: {name} appears twice in the archive")
        total += info.file_size
        if total > max_bytes:
            raise InvalidArchive(
                f"the archive holds more than {max_bytes} bytes uncompressed "
                "(EMBED_MAX_UPLOAD_BYTES)"
            )
        if info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise InvalidArchive(
                f"{info.filename}: compressed {info.file_size / max(info.compress_size, 1):.0f}"
                f":1, more than {MAX_RATIO}:1 (a zip bomb?)"
            )
        members[name] = info
    missing = [name for name in REQUIRED_FILES if name not in members]
    if missing:
        raise InvalidArchive(f"the archive has no {', '.join(missing)}; a bundle needs all three")
    return members


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename
    mode = info.external_attr >> 16
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InvalidArchive(f"{name}: an absolute path; members must be relative")
    path = PurePosixPath(name.replace("\\", "/"))
    if ".." in path.parts:
        raise InvalidArchive(f"{name}: a path with '..'; members must stay inside the bundle")
    if mode and (stat.S_ISLNK(mode) or not stat.S_ISREG(mode)):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "a special file"
        raise InvalidArchive(f"{name}: {kind}; a bundle holds regular files only")
    return path


def extract(archive: Path, folder: Path, max_bytes: int = MAX_BYTES) -> None:
    """Check ``archive`` and extract its bundle files into ``folder`` (made here), counting
    every byte: a member that inflates past the size it declared is refused."""
    members = archive_members(archive, max_bytes)
    folder.mkdir(parents=True)
    with zipfile.ZipFile(archive) as zf:
        for name, info in members.items():
            written = 0
            with zf.open(info) as source, (folder / name).open("wb") as target:
                while block := source.read(1 << 20):
                    written += len(block)
                    if written > info.file_size:
                        raise InvalidArchive(f"{info.filename}: larger than it declares")
                    target.write(block)


def check_folder(folder: Path) -> dict[str, Any]:
    """Check the bundle in ``folder`` as the server would; its manifest, or ``InvalidBundle``."""
    extra = sorted(p.name for p in folder.iterdir() if p.name not in BUNDLE_FILES)
    if extra:
        raise InvalidBundle(f"{', '.join(extra)}: not a bundle file ({', '.join(BUNDLE_FILES)})")
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise InvalidBundle(f"{name}: missing; a bundle needs {', '.join(REQUIRED_FILES)}")
    manifest = _manifest(folder / MANIFEST)
    found = sha256_of(folder / MODEL_FILE)
    if found != manifest["model_sha256"]:
        raise InvalidBundle(
            f"{MODEL_FILE}: sha256 {found}, the manifest's model_sha256 is "
            f"{manifest['model_sha256']} (a corrupt or partly copied file)"
        )
    graph = _check_external_data(folder)
    _check_names(manifest, graph)
    try:
        bundle = load_bundle(folder)
    except StartupError as exc:
        raise InvalidBundle(f"{MANIFEST}: {exc}") from None
    _check_runs(folder, manifest, bundle)
    return manifest


def _manifest(file: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidBundle(f"{MANIFEST}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise InvalidBundle(f"{MANIFEST}: a JSON object expected, found {type(manifest).__name__}")
    for field, kind in FIELDS.items():
        if field not in manifest:
            raise InvalidBundle(f"{MANIFEST}: no {field!r}")
        value = manifest[field]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidBundle(
                f"{MANIFEST}: {field!r} must be {getattr(kind, '__name__', kind)}, found "
                f"{json.dumps(value)[:60]}"
            )
    if not all(isinstance(name, str) for name in manifest["inputs"]) or not manifest["inputs"]:
        raise InvalidBundle(f"{MANIFEST}: 'inputs' must be a non-empty list of input names")
    for field in ("dimension", "max_seq_length"):
        if manifest[field] < 1:
            raise InvalidBundle(
                f"{MANIFEST}: {field!r} must be at least 1, found {manifest[field]}"
            )
    return manifest


def _check_external_data(folder: Path) -> Any:
    """The graph, once every tensor it keeps outside itself is known to be in this bundle's
    ``model.onnx.data``."""
    import onnx

    try:
        model = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not ONNX
        raise InvalidBundle(f"{MODEL_FILE}: not an ONNX model ({str(exc)[:200]})") from None
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if location != EXTERNAL_DATA:
            raise InvalidBundle(
                f"{MODEL_FILE}: tensor {tensor.name!r} keeps its data in {location!r}; external "
                f"data must be in {EXTERNAL_DATA} beside it"
            )
        if not (folder / EXTERNAL_DATA).is_file():
            raise InvalidBundle(f"{EXTERNAL_DATA}: missing; {MODEL_FILE} keeps tensors in it")
    return model.graph


def _tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _tensors(sub)


def _check_names(manifest: dict[str, Any], graph: Any) -> None:
    """The manifest's inputs and output are the graph's, and its dimension the output's width."""
    weights = {tensor.name for tensor in graph.initializer}
    declared = [i.name for i in graph.input if i.name not in weights]
    if sorted(declared) != sorted(manifest["inputs"]):
        raise InvalidBundle(
            f"{MANIFEST}: 'inputs' {manifest['inputs']}, the graph declares {declared}"
        )
    outputs = {o.name: o for o in graph.output}
    if manifest["output"] not in outputs:
        raise InvalidBundle(
            f"{MANIFEST}: 'output' {manifest['output']!r}, the graph declares {list(outputs)}"
        )
    dims = outputs[manifest["output"]].type.tensor_type.shape.dim
    width = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None
    if width is not None and width != manifest["dimension"]:
        raise InvalidBundle(
            f"{MANIFEST}: 'dimension' {manifest['dimension']}, the graph's output "
            f"{manifest['output']!r} is {width} wide"
        )


def _check_runs(folder: Path, manifest: dict[str, Any], bundle: Bundle) -> None:
    """The graph loads in onnxruntime and gives finite numbers of the declared width."""
    try:
        model = OnnxModel.load(bundle, intra_op_threads=1)
    except StartupError as exc:
        raise InvalidBundle(f"{MODEL_FILE}: {exc}") from None
    sentence = "A test sentence checks the bundle."
    rows: Sequence[Row] = (
        model.tokenize_pairs([(sentence, sentence)], truncate=True)
        if bundle.kind == ModelKind.RERANK
        else model.tokenize([sentence], truncate=True)
    )
    try:
        out = model.run(rows)
    except Exception as exc:  # onnxruntime's errors for a graph that cannot run these inputs
        raise InvalidBundle(f"{MODEL_FILE}: a test sentence fails: {str(exc)[:200]}") from None
    if out.shape != (1, manifest["dimension"]) or not np.isfinite(out).all():
        raise InvalidBundle(
            f"{MODEL_FILE}: a test sentence gives {out.shape} "
            f"{'finite' if np.isfinite(out).all() else 'non-finite'} numbers; expected "
            f"(1, {manifest['dimension']}) finite"
        )
    if bundle.kind == ModelKind.DENSE and (folder / REFERENCE_FILE).is_file():
        _check_reference(folder, model, _parity_floor(manifest))


def _parity_floor(manifest: dict[str, Any]) -> float:
    """The worst cosine to the reference a bundle must reach: 0.9999, or for a variant whose
    export measured less (int8: about 0.96 to PyTorch), what it measured, less 0.001."""
    verification = manifest.get("verification")
    recorded = (
        verification.get("worst_cosine_to_pytorch") if isinstance(verification, dict) else None
    )
    if isinstance(recorded, float) and recorded < PARITY:
        return recorded - 0.001
    return PARITY


def _check_reference(folder: Path, model: OnnxModel, floor: float) -> None:
    try:
        reference = json.loads((folder / REFERENCE_FILE).read_text(encoding="utf-8"))
        sentences, expected = reference["sentences"], reference["embeddings"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidBundle(f"{REFERENCE_FILE}: no sentences and embeddings ({exc})") from None
    # The export's reference is PyTorch's, with the model's default prompt, as encode gives it.
    bundle = model.bundle
    prompt = bundle.prompts.get(bundle.default_prompt_name or "", "")
    ours = encode_now(model, sentences, prompt=prompt)
    theirs = l2_normalize(np.asarray(expected, dtype=np.float32))
    if ours.shape != theirs.shape:
        raise InvalidBundle(
            f"{REFERENCE_FILE}: {theirs.shape} vectors, the model gives {ours.shape}"
        )
    worst = float((ours * theirs).sum(axis=1).min())
    if worst < floor:
        raise InvalidBundle(
            f"{REFERENCE_FILE}: worst cosine {worst:.6f} to the reference vectors, expected at "
            f"least {floor:.6f}"
        )


def write_archive(folder: Path, archive: Path) -> Path:
    """The bundle in ``folder`` as a zip of its files at the top level (deflated), written
    beside ``archive`` and renamed into place, so that a half-written one is never seen."""
    partial = archive.with_name(f".{archive.name}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in BUNDLE_FILES:
            if (folder / name).is_file():
                zf.write(folder / name, name)
    partial.replace(archive)
    return archive


@contextmanager
def opened(path: Path, max_bytes: int = MAX_BYTES) -> Iterator[Path]:
    """The bundle folder at ``path``: the folder itself, or an archive extracted to a
    temporary one (removed after)."""
    if path.is_dir():
        yield path
        return
    scratch = Path(tempfile.mkdtemp(prefix="bundle-"))
    try:
        extract(path, scratch / "bundle", max_bytes)
        yield scratch / "bundle"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check(path: Path, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """Check a bundle folder or archive; its manifest, or ``InvalidBundle``."""
    if not path.exists():
        raise InvalidBundle(f"{path}: no such file or folder")
    with opened(path, max_bytes) as folder:
        return check_folder(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.bundle", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    checking = commands.add_parser("check", help="check a bundle folder or zip archive")
    checking.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    try:
        manifest = check(args.path)
    except InvalidBundle as fault:
        print(f"{args.path}: {fault.code.value}: {fault}")
        return 1
    print(
        f"{args.path}: ok: {manifest.get('kind', 'dense')}, dimension {manifest['dimension']}, "
        f"{manifest.get('variant', 'fp32')}, model sha256 {manifest['model_sha256'][:12]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
