"""Dependencies the routes share, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.registry import ModelRegistry
from app.errors import NotReady


async def get_models(request: Request) -> ModelRegistry:
    """The served models; a 503 ``not_ready`` until the lifespan has loaded and warmed them.

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread
    hop per request that cost most of the throughput under load.
    """
    models: ModelRegistry | None = getattr(request.state, "models", None)
    if models is None:
        raise NotReady("the model is not loaded yet; retry shortly")
    return models


ModelsDep = Annotated[ModelRegistry, Depends(get_models)]
