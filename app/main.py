"""``create_app(settings)``: the FastAPI application, its lifespan, routers and error handlers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from app import __version__
from app.api.errors import install_error_handlers
from app.api.fastpath import PATH as EMBED_PATH
from app.api.fastpath import EmbedFastPath
from app.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestContextMiddleware
from app.api.routes import embeddings, health, metrics, openai
from app.api.routes.docs import install_docs
from app.config import Settings
from app.engine.engine import EmbeddingEngine
from app.engine.registry import ModelRegistry


def create_app(
    settings: Settings | None = None, models: ModelRegistry | EmbeddingEngine | None = None
) -> FastAPI:
    """Build the app. ``models`` may be loaded and warmed beforehand (``python -m app`` does, so
    that a bad bundle stops the process before it listens); otherwise the lifespan loads them.
    One engine stands for a registry serving that model alone."""
    settings = settings or Settings()
    given = ModelRegistry([models]) if isinstance(models, EmbeddingEngine) else models

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        loaded = given
        if loaded is None:
            loaded = await asyncio.to_thread(ModelRegistry.from_settings, settings)
            await asyncio.to_thread(loaded.warm_up)
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
    for module in (embeddings, openai, health, metrics):
        app.include_router(module.router)
    install_docs(app)
    # Added innermost first: a request meets RequestContext, CORS, ApiKey, BodyLimit, then the
    # /embed fast path or FastAPI's routing.
    embed_route = next(r for r in embeddings.router.routes if getattr(r, "path", "") == EMBED_PATH)
    app.add_middleware(EmbedFastPath, route=embed_route)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_keys:
        keys = [key.get_secret_value() for key in settings.api_keys]
        app.add_middleware(ApiKeyMiddleware, keys=keys)
    if settings.cors_origins:  # outside the key check: preflights carry no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware)  # added last: outermost, sees every response
    return app
