"""Probes, ``/health`` (ready to serve) and ``/health/live`` (the process runs), and ``/info``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app import __version__
from app.api.deps import ModelsDep, readiness
from app.api.errors import error_responses
from app.api.schemas import HealthResponse, InfoResponse, LiveResponse, ModelInfo
from app.errors import ErrorCode

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthResponse,
    responses=error_responses(ErrorCode.NOT_READY, ErrorCode.SHUTTING_DOWN),
)
async def health(request: Request, models: ModelsDep) -> HealthResponse:
    """200 once the models are loaded and warmed up; 503 before, and from the moment the server
    is told to stop (SIGTERM), so that load balancers stop sending to it."""
    readiness(request)
    return HealthResponse(
        status="ok", model=models.default_id, models=[engine.model_id for engine in models]
    )


@router.get("/health/live", response_model=LiveResponse)
async def live() -> LiveResponse:
    """200 for as long as the process answers at all."""
    return LiveResponse(status="alive")


@router.get(
    "/info",
    response_model=InfoResponse,
    responses=error_responses(ErrorCode.NOT_READY, ErrorCode.INVALID_API_KEY),
    tags=["models"],
)
async def info(request: Request, models: ModelsDep) -> InfoResponse:
    """The served models (id, kind, dimension, limit, pooling, variant, provider), the
    server's limits and its version."""
    described = [
        ModelInfo(
            id=engine.info.id,
            kind=engine.info.kind.value,
            prompts=engine.info.prompts,
            default_prompt_name=engine.default_prompt_name,
            dimension=engine.info.width,
            max_seq_length=engine.info.max_seq_length,
            pooling=engine.info.details.get("pooling", ""),
            normalize=engine.info.normalize,
            variant=engine.info.variant,
            provider=engine.info.runtime,
            default=engine.model_id == models.default_id,
        )
        for engine in models
    ]
    settings = request.app.state.settings
    limits: dict[str, int | float] = {
        name: getattr(settings, name)
        for name in (
            "max_inputs",
            "max_input_chars",
            "max_body_bytes",
            "max_batch_tokens",
            "max_batch_rows",
            "max_queue_tokens",
            "max_sparse_pass_tokens",
            "max_wait_ms",
            "request_timeout_s",
        )
    }
    return InfoResponse(
        version=__version__, models=described, limits=limits, auth=bool(settings.api_keys)
    )
