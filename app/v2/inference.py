"""What the protocol's HTTP and gRPC faces share: model metadata, the one BYTES input, its
parameters, and an inference on the engine.

A model is served as a Triton embedding ensemble is called: one input of datatype ``BYTES``
(any name; ``TEXT`` in the metadata) shaped ``[N]`` or ``[N, 1]``, and one output, ``embedding``,
``FP32`` ``[N, dim]``. Only dense models are served; a version is the repository's (a bundle the
settings serve is version 1).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app import __version__
from app.core.engine import Engine
from app.core.model import Floats, ModelKind, Outcome
from app.core.registry import SEPARATOR, ModelRegistry
from app.errors import InvalidTensor, WrongModelKind, cut
from app.lifecycle import Lifecycle

INPUT = "TEXT"
OUTPUT = "embedding"
BYTES = "BYTES"
FP32 = "FP32"
PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "embed-service"
BOOLEAN_PARAMETERS = ("normalize", "truncate")
LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request, whichever face it came through."""

    texts: list[str]
    normalize: bool = True
    truncate: bool = True


def server_metadata(repository: bool) -> dict[str, Any]:
    extensions = ["binary_tensor_data", "parameters"]
    if repository:
        extensions.append("model_repository")
    return {"name": SERVER_NAME, "version": __version__, "extensions": extensions}


def served(models: ModelRegistry, name: str, version: str | None = None) -> Engine:
    """The model ``name`` (at ``version``, which must be the deployed one), of any kind: what
    readiness asks about."""
    return models.get(f"{name}{SEPARATOR}{version}" if version else name)


def engine_for(models: ModelRegistry, name: str, version: str | None = None) -> Engine:
    """The dense model ``name`` (at ``version``, which must be the deployed one)."""
    engine = served(models, name, version)
    if engine.info.kind != ModelKind.DENSE:
        raise WrongModelKind(
            f"{engine.model_id} is a {engine.info.kind} model; the inference protocol serves "
            "dense embedding models (use /embed_sparse or /rerank for it)"
        )
    return engine


def version_of(models: ModelRegistry, engine: Engine) -> str:
    return str(models.version_of(engine.model_id) or 1)


def model_metadata(models: ModelRegistry, engine: Engine) -> dict[str, Any]:
    return {
        "name": engine.model_id,
        "versions": [version_of(models, engine)],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": BYTES, "shape": [-1]}],
        "outputs": [{"name": OUTPUT, "datatype": FP32, "shape": [-1, engine.info.width]}],
    }


def count_of(shape: Sequence[int], where: str) -> int:
    """How many texts a BYTES input of ``shape`` holds: ``[N]`` or ``[N, 1]``."""
    if not shape or len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise InvalidTensor(
            f"{where}: shape {list(shape)}; a BYTES input of texts is [N] or [N, 1]"
        )
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise InvalidTensor(f"{where}: shape {list(shape)} must be non-negative integers")
    return int(shape[0])


def check_datatype(datatype: str, where: str) -> None:
    if datatype != BYTES:
        raise InvalidTensor(
            f"{where}: datatype {cut(datatype)!r}; this model takes texts, datatype BYTES"
        )


def decode_bytes(raw: bytes | memoryview, count: int, where: str) -> list[str]:
    """The texts of a BYTES tensor in the binary form: each element a 4-byte little-endian
    length, then that many bytes of UTF-8; exactly ``count`` elements filling ``raw``."""
    texts: list[str] = []
    view = memoryview(raw)
    offset = 0
    while offset < len(view):
        if offset + LENGTH.size > len(view):
            raise InvalidTensor(f"{where}: {len(view) - offset} bytes left, too few for a length")
        (size,) = LENGTH.unpack_from(view, offset)
        offset += LENGTH.size
        if offset + size > len(view):
            raise InvalidTensor(
                f"{where}: element {len(texts)} says {size} bytes, {len(view) - offset} remain"
            )
        texts.append(utf8(view[offset : offset + size], f"{where}: element {len(texts)}"))
        offset += size
    if len(texts) != count:
        raise InvalidTensor(f"{where}: {len(texts)} elements in its data, its shape says {count}")
    return texts


def utf8(data: bytes | memoryview, where: str) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidTensor(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def encode_bytes(texts: Sequence[str]) -> bytes:
    """The binary form of a BYTES tensor (what clients send)."""
    parts = []
    for text in texts:
        data = text.encode("utf-8")
        parts += [LENGTH.pack(len(data)), data]
    return b"".join(parts)


def request_flags(parameters: Mapping[str, Any]) -> dict[str, bool]:
    """``normalize`` and ``truncate`` from the request's parameters (booleans); the others
    (Triton's ``binary_data_output``, ``timeout``, a client's own) are not about the model."""
    flags: dict[str, bool] = {}
    for name in BOOLEAN_PARAMETERS:
        if name in parameters:
            value = parameters[name]
            if not isinstance(value, bool):
                raise InvalidTensor(f"parameter {name!r} must be a boolean, found {value!r:.40}")
            flags[name] = value
    return flags


def check_outputs(names: Sequence[str]) -> None:
    for name in names:
        if name != OUTPUT:
            raise InvalidTensor(f"output {cut(name)!r}: this model has one output, {OUTPUT!r}")


async def infer(engine: Engine, request: Request) -> Outcome[Floats]:
    """The request's vectors, as ``/embed`` gives them (the model's default prompt included)."""
    return await engine.embed(
        request.texts,
        normalize=request.normalize,
        truncate=request.truncate,
        prompt=engine.prompt(),
    )


TRITON_STATES = {"deployed": "READY", "loading": "LOADING", "registered": "UNAVAILABLE"}


async def repository_index(lifecycle: Lifecycle, only_ready: bool) -> list[dict[str, str]]:
    """Triton's repository index: every version with Triton's state (``READY`` for the deployed
    one; a failed load is ``UNAVAILABLE`` with its reason)."""
    index = [
        {
            "name": record["name"],
            "version": str(record["version"]),
            "state": TRITON_STATES.get(record["state"], "UNAVAILABLE"),
            "reason": record["reason"] or "",
        }
        for record in await lifecycle.records()
    ]
    return [entry for entry in index if entry["state"] == "READY" or not only_ready]
