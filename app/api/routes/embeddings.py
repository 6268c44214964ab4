"""The native routes: ``POST /embed``, ``POST /embed_sparse``, ``POST /similarity`` and
``POST /tokenize``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request
from starlette.types import Receive, Scope

from app.api.deps import ModelsDep, engine_for
from app.api.errors import EMBEDDING_ERRORS, TEXT_ERRORS, error_responses
from app.api.responses import FastJSONResponse, OutcomeResponse, outcome_response, usage
from app.api.schemas import (
    EmbedRequest,
    EmbedResponse,
    SimilarityRequest,
    SimilarityResponse,
    SparseEmbedRequest,
    SparseEmbedResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from app.core.model import ModelKind, SparseVector
from app.core.registry import ModelRegistry
from app.transport.disconnect import unless_disconnected

router = APIRouter(tags=["embeddings"])


async def answer_embed(
    models: ModelRegistry, body: EmbedRequest, scope: Scope, receive: Receive
) -> OutcomeResponse:
    """Every ``POST /embed`` answer for a valid body. Served by ``app.transport.direct`` for a
    JSON body, which skips FastAPI's request handling on this one hot route, and by the route
    below for anything that reaches FastAPI."""
    engine = engine_for(models, body.model, ModelKind.DENSE)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    prompt = engine.prompt(body.prompt, body.prompt_name)
    work = engine.embed(texts, normalize=body.normalize, truncate=body.truncate, prompt=prompt)
    outcome = await unless_disconnected(scope, receive, work)
    content = {
        "model": outcome.model,
        "dimensions": engine.info.width,
        "embeddings": outcome.values,
        "usage": usage(outcome),
    }
    return outcome_response(content, outcome)


@router.post("/embed", response_model=EmbedResponse, responses=error_responses(*EMBEDDING_ERRORS))
async def embed(request: Request, body: EmbedRequest, models: ModelsDep) -> OutcomeResponse:
    """Embed one text or a list of texts; one vector per input, in input order."""
    return await answer_embed(models, body, request.scope, request.receive)


@router.post(
    "/similarity", response_model=SimilarityResponse, responses=error_responses(*EMBEDDING_ERRORS)
)
async def similarity(
    request: Request, body: SimilarityRequest, models: ModelsDep
) -> OutcomeResponse:
    """Cosine similarity of ``source`` with each of ``targets``, in order."""
    engine = engine_for(models, body.model, ModelKind.DENSE)
    work = engine.similarity(body.source, body.targets, truncate=body.truncate)
    outcome = await unless_disconnected(request.scope, request.receive, work)
    content = {"model": outcome.model, "scores": outcome.values, "usage": usage(outcome)}
    return outcome_response(content, outcome)


@router.post(
    "/embed_sparse",
    response_model=SparseEmbedResponse,
    response_model_exclude_none=True,
    responses=error_responses(*EMBEDDING_ERRORS),
)
async def embed_sparse(
    request: Request, body: SparseEmbedRequest, models: ModelsDep
) -> OutcomeResponse:
    """A sparse (SPLADE) model's vector for each text: its entries above ``threshold``, highest
    first, at most ``top_k``; with ``return_tokens``, each entry names its token."""
    engine = engine_for(models, body.model, ModelKind.SPARSE)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    work = engine.embed_sparse(
        texts,
        truncate=body.truncate,
        threshold=body.threshold,
        top_k=body.top_k,
        prompt=engine.prompt(body.prompt, body.prompt_name),
    )
    outcome = await unless_disconnected(request.scope, request.receive, work)
    name = engine.model.id_to_token if body.return_tokens else None
    content = {
        "model": outcome.model,
        "embeddings": [sparse_entries(vector, name) for vector in outcome.values],
        "usage": usage(outcome),
    }
    return outcome_response(content, outcome)


def sparse_entries(
    vector: SparseVector, name: Callable[[Sequence[int]], list[str]] | None
) -> list[dict[str, Any]]:
    """A sparse vector as ``{"index", "value"}`` entries, with ``"token"`` when named."""
    indices, values = vector.indices.tolist(), vector.values.tolist()
    if name is None:
        return [{"index": i, "value": v} for i, v in zip(indices, values, strict=True)]
    tokens = name(indices)
    return [
        {"index": i, "value": v, "token": t}
        for i, v, t in zip(indices, values, tokens, strict=True)
    ]


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
    limit = engine.info.max_seq_length
    views = await engine.tokenize(texts, prompt=engine.prompt(body.prompt, body.prompt_name))
    return FastJSONResponse(
        {
            "model": engine.model_id,
            "max_tokens": limit,
            "data": [
                {
                    "ids": view.ids,
                    "tokens": view.tokens,
                    "offsets": view.offsets,
                    "count": len(view.ids),
                    "truncated": len(view.ids) > limit,
                }
                for view in views
            ],
        }
    )
