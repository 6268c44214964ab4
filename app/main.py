"""``create_app(settings)``: the FastAPI application, its lifespan, routers and the layers
around them.

A request walks down once and back up once::

    RequestContext -> CORS -> ErrorGuard -> ApiKey -> BodyLimit -> DirectRoute (POST /embed)
        -> FastAPI (routing, dependencies, the expected errors) -> a route -> the engine
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from app import __version__
from app.api.errors import install_error_handlers
from app.api.responses import open_series
from app.api.routes import embeddings, health, metrics, openai, rerank
from app.api.routes.docs import install_docs
from app.api.schemas import EmbedRequest
from app.config import Settings
from app.core.engine import Engine
from app.core.registry import ModelRegistry
from app.loading import load_models
from app.transport.context import ErrorGuard, RequestContext
from app.transport.direct import DirectRoute
from app.transport.guards import ApiKeyMiddleware, BodyLimitMiddleware


def create_app(
    settings: Settings | None = None, models: ModelRegistry | Engine | None = None
) -> FastAPI:
    """Build the app. ``models`` may be loaded and warmed beforehand (``python -m app`` does, so
    that a bad bundle stops the process before it listens); otherwise the lifespan loads them.
    One engine stands for a registry serving that model alone."""
    settings = settings or Settings()
    given = ModelRegistry([models]) if isinstance(models, Engine) else models

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        loaded = given
        if loaded is None:
            loaded = await asyncio.to_thread(load_models, settings)
            await asyncio.to_thread(loaded.warm_up)
        open_series(engine.model_id for engine in loaded)
        try:
            yield {"models": loaded}
        finally:
            if given is None:  # models handed in belong to the caller
                loaded.close()

    app = FastAPI(
        title="Embedding service",
        version=__version__,
        summary="Sentence embeddings from ONNX Runtime, behind a small JSON API.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    for module in (embeddings, rerank, openai, health, metrics):
        app.include_router(module.router)
    install_docs(app)
    # Added innermost first.
    app.add_middleware(
        DirectRoute,
        method="POST",
        path="/embed",
        schema=EmbedRequest,
        answer=embeddings.answer_embed,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_keys:
        keys = [key.get_secret_value() for key in settings.api_keys]
        app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(ErrorGuard)  # inside CORS and the request context: a 500 gets both
    if settings.cors_origins:  # outside the key check: preflights carry no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(RequestContext)  # added last: outermost, sees every response
    return app
