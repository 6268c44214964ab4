"""Reranking with a cross-encoder: ``POST /rerank`` in text-embeddings-inference's shape, and
Cohere's ``POST /v1/rerank`` and ``POST /v2/rerank``, which the ``cohere`` SDK's
``Client.rerank`` and ``ClientV2.rerank`` reach with ``base_url`` set to the server's root.

Every route scores the query with each document in one request to the engine: the pairs share the
batcher with every other request, and the request limits apply to the documents as to texts.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api.deps import ModelsDep, engine_for
from app.api.errors import EMBEDDING_ERRORS, error_responses
from app.api.responses import OutcomeResponse, outcome_response
from app.api.schemas import CohereRerankRequest, CohereRerankResponse, Rank, RerankRequest
from app.core.model import Floats, ModelKind, Outcome
from app.core.registry import ModelRegistry
from app.transport.disconnect import unless_disconnected

router = APIRouter(tags=["rerank"])
RESPONSES = error_responses(*EMBEDDING_ERRORS)


@router.post("/rerank", response_model=list[Rank], responses=RESPONSES)
async def rerank(request: Request, body: RerankRequest, models: ModelsDep) -> OutcomeResponse:
    """Score ``query`` with each of ``texts``; the texts' indices, best first."""
    outcome = await _scores(
        request, models, body.model, body.query, body.texts, body.truncate, body.raw_scores
    )
    ranks: list[dict[str, Any]] = []
    for index in _best_first(outcome.values):
        rank: dict[str, Any] = {"index": index, "score": float(outcome.values[index])}
        if body.return_text:
            rank["text"] = body.texts[index]
        ranks.append(rank)
    return outcome_response(ranks, outcome)


@router.post(
    "/v1/rerank", response_model=CohereRerankResponse, responses=RESPONSES, tags=["cohere"]
)
async def cohere_rerank_v1(
    request: Request, body: CohereRerankRequest, models: ModelsDep
) -> OutcomeResponse:
    """Cohere's v1 rerank: documents as strings or ``{"text": ...}`` objects."""
    return await _cohere(request, body, models, version="1")


@router.post(
    "/v2/rerank", response_model=CohereRerankResponse, responses=RESPONSES, tags=["cohere"]
)
async def cohere_rerank_v2(
    request: Request, body: CohereRerankRequest, models: ModelsDep
) -> OutcomeResponse:
    """Cohere's v2 rerank: documents as strings."""
    return await _cohere(request, body, models, version="2")


async def _cohere(
    request: Request, body: CohereRerankRequest, models: ModelsDep, *, version: str
) -> OutcomeResponse:
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    outcome = await _scores(request, models, body.model, body.query, texts, True, False)
    order = _best_first(outcome.values)[: body.top_n]
    results: list[dict[str, Any]] = []
    for index in order:
        result: dict[str, Any] = {
            "index": index,
            "relevance_score": float(outcome.values[index]),
        }
        if body.return_documents:
            result["document"] = {"text": texts[index]}
        results.append(result)
    content = {
        "id": request.scope["state"]["request_id"],
        "results": results,
        "meta": {
            "api_version": {"version": version},
            "billed_units": {"search_units": 1},
            "tokens": {"input_tokens": outcome.tokens},
        },
    }
    return outcome_response(content, outcome)


async def _scores(
    request: Request,
    models: ModelRegistry,
    model: str | None,
    query: str,
    texts: list[str],
    truncate: bool,
    raw_scores: bool,
) -> Outcome[Floats]:
    engine = engine_for(models, model, ModelKind.RERANK)
    work = engine.rerank(query, texts, truncate=truncate, raw_scores=raw_scores)
    return await unless_disconnected(request.scope, request.receive, work)


def _best_first(scores: Floats) -> list[int]:
    """Indices by score, highest first; equal scores keep their input order."""
    return sorted(range(len(scores)), key=lambda i: -float(scores[i]))
