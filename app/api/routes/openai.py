"""OpenAI-compatible routes: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{id}``.

Requests and responses follow OpenAI's shapes, so the official client and the libraries built on
it (LangChain, LlamaIndex) work when pointed here; errors on these routes carry OpenAI's
``param`` field too, and their statuses map to the client's usual exception types.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request

from app.api.deps import ModelsDep, engine_for
from app.api.errors import EMBEDDING_ERRORS, error_responses
from app.api.responses import OutcomeResponse, outcome_response, usage
from app.api.schemas import (
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIModel,
    OpenAIModelList,
)
from app.core.engine import Engine
from app.core.model import Floats, ModelKind
from app.errors import ErrorCode as C
from app.errors import ValidationFailed
from app.transport.disconnect import unless_disconnected

router = APIRouter(prefix="/v1", tags=["openai"])
OWNER = "embed-service"


@router.post(
    "/embeddings",
    response_model=OpenAIEmbeddingResponse,
    responses=error_responses(*EMBEDDING_ERRORS, C.INVALID_PARAMETER, C.INVALID_TOKEN_ID),
)
async def create_embeddings(
    request: Request, body: OpenAIEmbeddingRequest, models: ModelsDep
) -> OutcomeResponse:
    """OpenAI's embeddings call. Texts longer than the model's limit are truncated (as
    ``/embed`` does by default); token-id inputs are taken verbatim and must fit."""
    engine = engine_for(models, body.model, ModelKind.DENSE)
    inputs, dimensions = body.input, body.dimensions
    if isinstance(inputs, str) or isinstance(inputs[0], str):
        texts = [inputs] if isinstance(inputs, str) else inputs
        prompt = engine.prompt(body.prompt, body.prompt_name)
        work = engine.embed(texts, dimensions=dimensions, prompt=prompt)
    elif body.prompt is not None or body.prompt_name is not None:
        # Token ids are the model's input verbatim: there is no text to put a prompt before.
        error = ValidationFailed("prompt and prompt_name apply to text inputs, not token ids")
        error.param = "prompt" if body.prompt is not None else "prompt_name"
        raise error
    elif isinstance(inputs[0], int):
        work = engine.embed_ids([inputs], dimensions=dimensions)
    else:
        work = engine.embed_ids(inputs, dimensions=dimensions)
    outcome = await unless_disconnected(request.scope, request.receive, work)
    content = {
        "object": "list",
        "data": _data(outcome.values, body.encoding_format),
        "model": outcome.model,
        "usage": usage(outcome),
    }
    return outcome_response(content, outcome)


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


def _describe(engine: Engine) -> OpenAIModel:
    info = engine.info
    return OpenAIModel(
        id=info.id,
        object="model",
        created=info.created,
        owned_by=OWNER,
        kind=info.kind.value,
        prompts=info.prompts,
        default_prompt_name=engine.default_prompt_name,
    )
