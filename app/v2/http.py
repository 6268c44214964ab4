"""The Open Inference Protocol over HTTP: ``/v2`` (server and model metadata, health,
readiness, inference) and Triton's model repository extension.

Inference takes JSON tensors and Triton's binary tensor extension: with an
``Inference-Header-Content-Length`` header, the body is that many bytes of JSON followed by the
inputs' data (each input's ``binary_data_size`` bytes, in order; BYTES elements as a 4-byte
little-endian length and the bytes); an output asked for with ``binary_data`` (or every output,
with the request's ``binary_data_output``) comes back the same way, raw little-endian float32
after the JSON. A request body compressed with gzip or deflate (``tritonclient``'s
``request_compression_algorithm``) is accepted within ``EMBED_MAX_BODY_BYTES``.

Errors have the protocol's shape, ``{"error": "..."}``, their status from the one error table
(``app.api.errors.render_error``), a 422 elsewhere being a 400 here.
"""

from __future__ import annotations

import zlib
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from app.api.deps import LifecycleDep, ModelsDep, key_of, readiness
from app.api.errors import error_responses
from app.api.responses import outcome_response
from app.api.schemas import InferenceError
from app.errors import ErrorCode, InvalidJSON, InvalidTensor, PayloadTooLarge, cut
from app.transport.disconnect import unless_disconnected
from app.v2 import inference
from app.v2.inference import FP32, OUTPUT

HEADER_LENGTH = "inference-header-content-length"
INFER_ERRORS = (
    ErrorCode.INVALID_TENSOR,
    ErrorCode.INVALID_JSON,
    ErrorCode.WRONG_MODEL_KIND,
    ErrorCode.INVALID_API_KEY,
    ErrorCode.MODEL_NOT_FOUND,
    ErrorCode.PAYLOAD_TOO_LARGE,
    ErrorCode.OVERLOADED,
    ErrorCode.TIMEOUT,
    ErrorCode.NOT_READY,
)
router = APIRouter(prefix="/v2", tags=["inference protocol"])


def v2_errors(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """The error statuses a route can give, in the protocol's shape."""
    return error_responses(*codes, model=InferenceError)


Name = Annotated[str, Path(description="A served dense model.", examples=["all-MiniLM-L6-v2"])]
Version = Annotated[str, Path(description="Its deployed version.", examples=["1"])]


@router.get("")
async def server_metadata(request: Request) -> dict[str, Any]:
    """The server's name, version and the protocol extensions it serves."""
    repository = getattr(request.state, "lifecycle", None) is not None
    return inference.server_metadata(repository)


EMPTY: dict[int | str, dict[str, Any]] = {
    200: {"description": "Yes: an empty body.", "content": {}}
}


@router.get("/health/live", response_class=Response, responses=EMPTY)
async def live() -> Response:
    """200 while the process answers (the body is empty, as the protocol says)."""
    return Response(status_code=200)


@router.get(
    "/health/ready",
    response_class=Response,
    responses={**EMPTY, **v2_errors(ErrorCode.NOT_READY, ErrorCode.SHUTTING_DOWN)},
)
async def ready(request: Request, models: ModelsDep) -> Response:
    """200 once the models are loaded and warmed up, 503 before and while draining."""
    readiness(request)
    return Response(status_code=200)


@router.get("/models/{name}", responses=v2_errors(*INFER_ERRORS[2:5]))
@router.get("/models/{name}/versions/{version}", responses=v2_errors(*INFER_ERRORS[2:5]))
async def model_metadata(name: Name, models: ModelsDep, version: Version | None = None) -> Any:
    """The model's versions, platform, its input (``TEXT``, BYTES, ``[-1]``) and output
    (``embedding``, FP32, ``[-1, dim]``)."""
    return inference.model_metadata(models, inference.engine_for(models, name, version))


@router.get(
    "/models/{name}/ready",
    response_class=Response,
    responses={**EMPTY, **v2_errors(*INFER_ERRORS[2:5])},
)
@router.get(
    "/models/{name}/versions/{version}/ready",
    response_class=Response,
    responses={**EMPTY, **v2_errors(*INFER_ERRORS[2:5])},
)
async def model_ready(name: Name, models: ModelsDep, version: Version | None = None) -> Response:
    """200 when the model (at that version) is loaded here, whatever its kind; 404 otherwise."""
    inference.served(models, name, version)
    return Response(status_code=200)


@router.post("/models/{name}/infer", response_model=None, responses=v2_errors(*INFER_ERRORS))
@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=None,
    responses=v2_errors(*INFER_ERRORS),
)
async def infer(
    name: Name, request: Request, models: ModelsDep, version: Version | None = None
) -> Response:
    """Embed the texts of the one BYTES input; JSON tensors or the binary tensor extension."""
    engine = inference.engine_for(models, name, version)
    body = _decompressed(await request.body(), request)
    parsed = _parse(body, request.headers.get(HEADER_LENGTH))
    outcome = await unless_disconnected(
        request.scope, request.receive, inference.infer(engine, parsed.request)
    )
    vectors = outcome.values
    tensor: dict[str, Any] = {"name": OUTPUT, "datatype": FP32, "shape": list(vectors.shape)}
    answer: dict[str, Any] = {
        "model_name": engine.model_id,
        "model_version": inference.version_of(models, engine),
    }
    if parsed.id is not None:
        answer["id"] = parsed.id
    answer["outputs"] = [tensor]
    if not parsed.binary:
        tensor["data"] = vectors.reshape(-1)
        return outcome_response(answer, outcome)
    data = vectors.astype("<f4", copy=False).tobytes()
    tensor["parameters"] = {"binary_data_size": len(data)}
    header = orjson.dumps(answer)
    return outcome_response(
        answer,
        outcome,
        body=header + data,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


class _Parsed:
    __slots__ = ("binary", "id", "request")

    def __init__(self, request: inference.Request, binary: bool, request_id: str | None) -> None:
        self.request, self.binary, self.id = request, binary, request_id


def _parse(body: bytes, header_length: str | None) -> _Parsed:
    """The request in ``body``: its JSON (all of it, or the first ``header_length`` bytes) and
    the binary data after it."""
    size = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > size:
            raise InvalidTensor(
                f"Inference-Header-Content-Length {cut(header_length)!r}: the body has {size} "
                "bytes; the header must be a length within it"
            )
        size = int(header_length)
    try:
        document = orjson.loads(body[:size])
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidTensor("the inference request must be a JSON object")
    binary = memoryview(body)[size:]
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidTensor("'inputs' must hold exactly one input: the texts, datatype BYTES")
    texts, used = _texts(inputs[0], binary)
    if used != len(binary):
        raise InvalidTensor(
            f"the body has {len(binary)} bytes after its JSON, the inputs' binary_data_size "
            f"say {used}"
        )
    parameters = _object(document.get("parameters"), "parameters")
    default_binary = parameters.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise InvalidTensor("parameter 'binary_data_output' must be a boolean")
    binary_output = default_binary
    outputs = document.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidTensor("'outputs' must be a list of the outputs wanted")
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidTensor("each of 'outputs' must be an object with a 'name'")
        inference.check_outputs([output["name"]])
        wanted = _object(output.get("parameters"), "an output's parameters")
        binary_output = wanted.get("binary_data", default_binary)
        if not isinstance(binary_output, bool):
            raise InvalidTensor("an output's parameter 'binary_data' must be a boolean")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidTensor("'id' must be a string")
    flags = inference.request_flags(parameters)
    return _Parsed(inference.Request(texts, **flags), binary_output, request_id)


def _texts(tensor: dict[str, Any], binary: memoryview) -> tuple[list[str], int]:
    """The input's texts, and how many bytes of ``binary`` they took."""
    where = f"input {cut(str(tensor.get('name', '')))!r}"
    inference.check_datatype(str(tensor.get("datatype", "")), where)
    shape = tensor.get("shape")
    if not isinstance(shape, list):
        raise InvalidTensor(f"{where}: no shape; a BYTES input of texts is [N] or [N, 1]")
    count = inference.count_of(shape, where)
    parameters = _object(tensor.get("parameters"), f"{where}'s parameters")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise InvalidTensor(
                f"{where}: binary_data_size {size!r:.20}, but {len(binary)} bytes follow the JSON"
            )
        return inference.decode_bytes(binary[:size], count, where), size
    data = tensor.get("data")
    if not isinstance(data, list):
        raise InvalidTensor(f"{where}: no data, and no binary_data_size")
    flat = [item for row in data for item in (row if isinstance(row, list) else [row])]
    if len(flat) != count:
        raise InvalidTensor(f"{where}: {len(flat)} elements in its data, its shape says {count}")
    for index, item in enumerate(flat):
        if not isinstance(item, str):
            raise InvalidTensor(f"{where}: element {index} is not a string")
    return flat, 0


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidTensor(f"{what} must be a JSON object")
    return value


def _decompressed(body: bytes, request: Request) -> bytes:
    """The body, inflated when its ``Content-Encoding`` is gzip or deflate (at most
    ``EMBED_MAX_BODY_BYTES`` once inflated)."""
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidTensor(f"Content-Encoding {cut(encoding)!r}: gzip, deflate or none")
    limit = request.app.state.settings.max_body_bytes
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidTensor(f"the body is not valid {encoding} data ({exc})") from None
    if len(inflated) > limit:
        raise PayloadTooLarge(
            f"the request body inflates past the limit of {limit} bytes (EMBED_MAX_BODY_BYTES)"
        )
    return inflated


# Triton's model repository extension, over the admin API's repository: mounted with
# EMBED_ADMIN_KEYS only, and, like /admin/, only for an admin key.
repository_router = APIRouter(prefix="/v2/repository", tags=["inference protocol"])
REPOSITORY_ERRORS = (ErrorCode.INVALID_API_KEY, ErrorCode.NOT_ADMIN, ErrorCode.MODEL_NOT_FOUND)


@repository_router.post("/index", responses=v2_errors(*REPOSITORY_ERRORS[:2]))
async def repository_index(request: Request, lifecycle: LifecycleDep) -> list[dict[str, str]]:
    """Every version in the repository, with Triton's states (``READY`` for the deployed one);
    ``{"ready": true}`` keeps the ready ones only. An empty body is ``{}``."""
    body = await request.body()
    options = _object(orjson.loads(body) if body.strip() else None, "the index request")
    return await inference.repository_index(lifecycle, options.get("ready") is True)


@repository_router.post(
    "/models/{name}/load",
    response_class=Response,
    responses={**EMPTY, **v2_errors(*REPOSITORY_ERRORS, ErrorCode.DEPLOY_FAILED)},
)
async def repository_load(name: Name, request: Request, lifecycle: LifecycleDep) -> Response:
    """Deploy the model's highest registered version (``POST /admin/.../deploy``)."""
    await lifecycle.deploy_latest(name, key_of(request))
    return Response(status_code=200)


@repository_router.post(
    "/models/{name}/unload",
    response_class=Response,
    responses={**EMPTY, **v2_errors(*REPOSITORY_ERRORS, ErrorCode.MODEL_IS_DEFAULT)},
)
async def repository_unload(name: Name, request: Request, lifecycle: LifecycleDep) -> Response:
    """Undeploy the model's deployed version (nothing to do when none is)."""
    await lifecycle.undeploy_any(name, key_of(request))
    return Response(status_code=200)
