"""Probes: ``/health`` (ready to serve) and ``/health/live`` (the process runs)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import EngineDep
from app.api.errors import error_responses
from app.api.schemas import HealthResponse, LiveResponse
from app.errors import ErrorCode

router = APIRouter(tags=["health"])


@router.get(
    "/health", response_model=HealthResponse, responses=error_responses(ErrorCode.NOT_READY)
)
async def health(engine: EngineDep) -> HealthResponse:
    """200 once the model is loaded and warmed up; 503 before (and while shutting down)."""
    return HealthResponse(status="ok", model=engine.model_id)


@router.get("/health/live", response_model=LiveResponse)
async def live() -> LiveResponse:
    """200 for as long as the process answers at all."""
    return LiveResponse(status="alive")
