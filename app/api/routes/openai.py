"""OpenAI-compatible routes: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{id}``.

Requests and responses follow OpenAI's shapes, so the official client and the libraries built on
it (LangChain, LlamaIndex) work when pointed here; errors on these routes carry OpenAI's
``param`` field too, and their statuses map to the client's usual exception types.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request

from app.api.access_log import note_embedding
from app.api.deps import ModelsDep
from app.api.disconnect import unless_disconnected
from app.api.errors import EMBEDDING_ERRORS, error_responses
from app.api.responses import FastJSONResponse
from app.api.schemas import (
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIModel,
    OpenAIModelList,
)
from app.engine.engine import EmbeddingEngine
from app.engine.pooling import Floats, shorten
from app.errors import ErrorCode as C
from app.errors import InvalidParameter

router = APIRouter(prefix="/v1", tags=["openai"])
OWNER = "embed-service"


@router.post(
    "/embeddings",
    response_model=OpenAIEmbeddingResponse,
    responses=error_responses(*EMBEDDING_ERRORS, C.INVALID_PARAMETER, C.INVALID_TOKEN_ID),
)
async def create_embeddings(
    request: Request, body: OpenAIEmbeddingRequest, models: ModelsDep
) -> FastJSONResponse:
    """OpenAI's embeddings call. Texts longer than the model's limit are truncated (as
    ``/embed`` does by default); token-id inputs are taken verbatim and must fit."""
    engine = models.get(body.model)
    if body.dimensions is not None and not 1 <= body.dimensions <= engine.dimension:
        raise InvalidParameter(
            f"dimensions must be between 1 and {engine.dimension} for {engine.model_id}; "
            f"got {body.dimensions}",
            param="dimensions",
        )
    inputs = body.input
    if isinstance(inputs, str):
        work = engine.embed([inputs])
    elif isinstance(inputs[0], str):
        work = engine.embed(inputs)
    elif isinstance(inputs[0], int):
        work = engine.embed_ids([inputs])
    else:
        work = engine.embed_ids(inputs)
    result = await unless_disconnected(request.scope, request.receive, work)
    vectors = result.vectors
    if body.dimensions is not None and body.dimensions < engine.dimension:
        vectors = shorten(vectors, body.dimensions)
    tokens = sum(result.token_counts)
    return FastJSONResponse(
        {
            "object": "list",
            "data": _data(vectors, body.encoding_format),
            "model": engine.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        headers=note_embedding(request.scope, engine.model_id, result),
    )


def _data(vectors: Floats, encoding_format: str) -> list[dict[str, Any]]:
    if encoding_format == "base64":  # little-endian float32, as the OpenAI SDK decodes it
        raw = vectors.astype("<f4", copy=False)
        encoded: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in raw]
    else:
        encoded = list(vectors)
    return [
        {"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(encoded)
    ]


@router.get(
    "/models",
    response_model=OpenAIModelList,
    responses=error_responses(C.INVALID_API_KEY, C.NOT_READY),
)
async def list_models(models: ModelsDep) -> OpenAIModelList:
    """The served models, in OpenAI's shape."""
    return OpenAIModelList(object="list", data=[_describe(engine) for engine in models])


@router.get(
    "/models/{model_id}",
    response_model=OpenAIModel,
    responses=error_responses(
        C.INVALID_API_KEY, C.MODEL_NOT_FOUND, C.VALIDATION_ERROR, C.NOT_READY
    ),
)
async def get_model(model_id: str, models: ModelsDep) -> OpenAIModel:
    """One served model; a 404 ``model_not_found`` listing the served ones otherwise."""
    return _describe(models.get(model_id))


def _describe(engine: EmbeddingEngine) -> OpenAIModel:
    exported = engine.encoder.bundle.manifest.get("exported_at")
    created = int(datetime.fromisoformat(exported).timestamp()) if exported else 0
    return OpenAIModel(id=engine.model_id, object="model", created=created, owned_by=OWNER)
