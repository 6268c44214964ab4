"""The native routes: ``POST /embed``, ``POST /similarity`` and ``POST /tokenize``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.types import Receive, Scope

from app.api.access_log import note_embedding
from app.api.deps import ModelsDep
from app.api.disconnect import unless_disconnected
from app.api.errors import EMBEDDING_ERRORS, TEXT_ERRORS, error_responses
from app.api.responses import FastJSONResponse
from app.api.schemas import (
    EmbedRequest,
    EmbedResponse,
    SimilarityRequest,
    SimilarityResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from app.engine.registry import ModelRegistry

router = APIRouter(tags=["embeddings"])


@router.post("/embed", response_model=EmbedResponse, responses=error_responses(*EMBEDDING_ERRORS))
async def embed(request: Request, body: EmbedRequest, models: ModelsDep) -> FastJSONResponse:
    """Embed one text or a list of texts; one vector per input, in input order."""
    # A well-formed JSON request never gets here: app/api/fastpath.py answers it with
    # embed_response below. This route declares /embed in the OpenAPI document and serves
    # what the fast path hands on (bodies that do not validate, other content types).
    return await embed_response(models, body, request.scope, request.receive)


async def embed_response(
    models: ModelRegistry, body: EmbedRequest, scope: Scope, receive: Receive
) -> FastJSONResponse:
    """``POST /embed``'s answer; also called by ``EmbedFastPath``, which skips FastAPI's
    request handling for this one hot route."""
    engine = models.get(body.model)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    work = engine.embed(texts, normalize=body.normalize, truncate=body.truncate)
    result = await unless_disconnected(scope, receive, work)
    tokens = sum(result.token_counts)
    return FastJSONResponse(
        {
            "model": engine.model_id,
            "dimensions": engine.dimension,
            "embeddings": result.vectors,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        headers=note_embedding(scope, engine.model_id, result),
    )


@router.post(
    "/similarity", response_model=SimilarityResponse, responses=error_responses(*EMBEDDING_ERRORS)
)
async def similarity(
    request: Request, body: SimilarityRequest, models: ModelsDep
) -> FastJSONResponse:
    """Cosine similarity of ``source`` with each of ``targets``, in order."""
    engine = models.get(body.model)
    work = engine.similarity(body.source, body.targets, truncate=body.truncate)
    scores, result = await unless_disconnected(request.scope, request.receive, work)
    tokens = sum(result.token_counts)
    return FastJSONResponse(
        {
            "model": engine.model_id,
            "scores": scores,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        headers=note_embedding(request.scope, engine.model_id, result),
    )


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    responses=error_responses(*TEXT_ERRORS),
)
async def tokenize(body: TokenizeRequest, models: ModelsDep) -> FastJSONResponse:
    """Each input's token ids, tokens and character offsets, nothing cut off, and whether an
    embedding would truncate it: what a RAG pipeline needs to chunk text to the model's limit."""
    engine = models.get(body.model)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    limit = engine.encoder.bundle.max_seq_length
    encodings = await engine.tokenize(texts)
    return FastJSONResponse(
        {
            "model": engine.model_id,
            "max_tokens": limit,
            "data": [
                {
                    "ids": e.ids,
                    "tokens": e.tokens,
                    "offsets": e.offsets,
                    "count": len(e.ids),
                    "truncated": len(e.ids) > limit,
                }
                for e in encodings
            ],
        }
    )
