"""``create_app(settings)``: the FastAPI application, its lifespan, routers and error handlers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app import __version__
from app.api.errors import install_error_handlers
from app.api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.api.routes import embeddings, health, metrics
from app.api.routes.docs import install_docs
from app.config import Settings
from app.engine.engine import EmbeddingEngine


def create_app(settings: Settings | None = None, engine: EmbeddingEngine | None = None) -> FastAPI:
    """Build the app. ``engine`` may be loaded and warmed beforehand (``python -m app`` does, so
    that a bad bundle stops the process before it listens); otherwise the lifespan loads it."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        loaded = engine
        if loaded is None:
            loaded = await asyncio.to_thread(EmbeddingEngine.from_settings, settings)
            await asyncio.to_thread(loaded.warm_up)
        try:
            yield {"engine": loaded}
        finally:
            if engine is None:  # an engine handed in belongs to the caller
                loaded.close()

    app = FastAPI(
        title="Embedding service",
        version=__version__,
        summary="Sentence embeddings from ONNX Runtime, behind a small JSON API.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    for module in (embeddings, health, metrics):
        app.include_router(module.router)
    install_docs(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)  # added last: outermost, sees every response
    return app
