"""``create_app(settings)``: the FastAPI application, its lifespan, routers and the layers
around them.

A request walks down once and back up once::

    RequestContext -> CORS -> ErrorGuard -> ApiKey -> AdminKey -> BodyLimit
        -> DirectRoute (POST /embed) -> FastAPI (routing, dependencies, the expected errors)
        -> a route -> the engine

With ``EMBED_ADMIN_KEYS`` set, the ``/admin/`` routes exist and the lifespan opens the model
repository (``EMBED_REPOSITORY``): it restores what the shared state says is deployed before the
server listens, and follows the state while it runs (``app.lifecycle``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from app import __version__
from app.api.errors import install_error_handlers
from app.api.responses import open_series
from app.api.routes import admin, embeddings, health, metrics, openai, rerank
from app.api.routes.docs import install_docs
from app.api.schemas import EmbedRequest
from app.config import Settings
from app.core.engine import Engine
from app.core.registry import ModelRegistry
from app.lifecycle import Lifecycle
from app.loading import load_models, static_bundles
from app.metrics import MODELS_DEPLOYED
from app.repository import Repository
from app.transport.context import ErrorGuard, RequestContext
from app.transport.direct import DirectRoute
from app.transport.guards import AdminKeyMiddleware, ApiKeyMiddleware, BodyLimitMiddleware
from app.v2 import http as v2_http

if TYPE_CHECKING:  # grpc (22 MB resident) is imported only where gRPC is served
    from app.v2.grpc import GrpcServer

UPLOAD_PATH = "/admin/models"


def create_app(
    settings: Settings | None = None,
    models: ModelRegistry | Engine | None = None,
    grpc: GrpcServer | None = None,
) -> FastAPI:
    """Build the app. ``models`` may be loaded and warmed beforehand (``python -m app`` does, so
    that a bad bundle stops the process before it listens); otherwise the lifespan loads them.
    One engine stands for a registry serving that model alone. ``grpc``, bound already, is
    started with the app and stopped with it."""
    settings = settings or Settings()
    given = ModelRegistry([models]) if isinstance(models, Engine) else models

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        loaded = given
        if loaded is None:
            loaded = await asyncio.to_thread(load_models, settings)
            await asyncio.to_thread(loaded.warm_up)
        open_series(engine.model_id for engine in loaded)
        for engine in loaded:
            MODELS_DEPLOYED.labels(engine.model_id, str(loaded.version_of(engine.model_id))).set(1)
        theirs = set(loaded) if given is not None else set()  # the caller closes these
        lifecycle = following = None
        if settings.admin_keys:
            repository = await asyncio.to_thread(
                Repository, settings.repository, static_bundles(settings)
            )
            lifecycle = Lifecycle(settings, loaded, repository)
            await lifecycle.converge()  # what the shared state says is deployed, before serving
            following = asyncio.create_task(lifecycle.follow())
        if grpc is not None:
            await grpc.start(loaded, lifecycle)
        try:
            yield {"models": loaded, "lifecycle": lifecycle}
        finally:
            if grpc is not None:  # HTTP has drained: the calls in flight get the same grace
                await grpc.stop(grace=settings.shutdown_grace_s)
            if following is not None:
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await following
            if lifecycle is not None:
                await lifecycle.close()
            for engine in loaded:
                if engine not in theirs:
                    engine.close()

    app = FastAPI(
        title="Embedding service",
        version=__version__,
        summary="Sentence embeddings from ONNX Runtime, behind a small JSON API.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.grpc = grpc
    install_error_handlers(app)
    for module in (embeddings, rerank, openai, health, metrics, v2_http):
        app.include_router(module.router)
    if settings.admin_keys:  # otherwise the admin routes do not exist, not even in /openapi.json
        app.include_router(admin.router)
        app.include_router(v2_http.repository_router)
    install_docs(app)
    # Added innermost first.
    app.add_middleware(
        DirectRoute,
        method="POST",
        path="/embed",
        schema=EmbedRequest,
        answer=embeddings.answer_embed,
    )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        uploads=[UPLOAD_PATH] if settings.admin_keys else [],
        max_upload_bytes=settings.max_upload_bytes,
    )
    user_keys = [key.get_secret_value() for key in settings.api_keys]
    admin_keys = [key.get_secret_value() for key in settings.admin_keys]
    if admin_keys:
        app.add_middleware(AdminKeyMiddleware, admin_keys=admin_keys, user_keys=user_keys)
    if user_keys:  # an admin key is a user key too
        app.add_middleware(ApiKeyMiddleware, keys=user_keys + admin_keys)
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
