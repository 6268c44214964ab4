"""Dependencies the routes share, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.engine.engine import EmbeddingEngine
from app.errors import NotReady


async def get_engine(request: Request) -> EmbeddingEngine:
    """The loaded engine; a 503 ``not_ready`` until the lifespan has loaded and warmed it.

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread
    hop per request that cost most of the throughput under load.
    """
    engine: EmbeddingEngine | None = getattr(request.state, "engine", None)
    if engine is None:
        raise NotReady("the model is not loaded yet; retry shortly")
    return engine


EngineDep = Annotated[EmbeddingEngine, Depends(get_engine)]
