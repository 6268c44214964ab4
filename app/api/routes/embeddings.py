"""The native embedding routes: ``POST /embed`` and ``POST /similarity``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import EngineDep
from app.api.disconnect import unless_disconnected
from app.api.errors import error_responses
from app.api.responses import FastJSONResponse
from app.api.schemas import EmbedRequest, EmbedResponse, SimilarityRequest, SimilarityResponse
from app.errors import ErrorCode as C

router = APIRouter(tags=["embeddings"])

_TEXT_ERRORS = (
    C.INVALID_JSON,
    C.VALIDATION_ERROR,
    C.INVALID_TEXT,
    C.INPUT_TOO_LONG,
    C.PAYLOAD_TOO_LARGE,
    C.OVERLOADED,
    C.NOT_READY,
    C.TIMEOUT,
)


@router.post("/embed", response_model=EmbedResponse, responses=error_responses(*_TEXT_ERRORS))
async def embed(request: Request, body: EmbedRequest, engine: EngineDep) -> FastJSONResponse:
    """Embed one text or a list of texts; one vector per input, in input order."""
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    work = engine.embed(texts, normalize=body.normalize, truncate=body.truncate)
    result = await unless_disconnected(request, work)
    tokens = sum(result.token_counts)
    return FastJSONResponse(
        {
            "model": engine.model_id,
            "dimensions": engine.dimension,
            "embeddings": result.vectors,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


@router.post(
    "/similarity", response_model=SimilarityResponse, responses=error_responses(*_TEXT_ERRORS)
)
async def similarity(
    request: Request, body: SimilarityRequest, engine: EngineDep
) -> FastJSONResponse:
    """Cosine similarity of ``source`` with each of ``targets``, in order."""
    work = engine.similarity(body.source, body.targets, truncate=body.truncate)
    scores, tokens = await unless_disconnected(request, work)
    return FastJSONResponse(
        {
            "model": engine.model_id,
            "scores": scores,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
