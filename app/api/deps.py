"""Dependencies the routes share, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.engine import Engine
from app.core.model import ModelKind
from app.core.registry import ModelRegistry
from app.errors import NotReady, ShuttingDown, WrongModelKind
from app.lifecycle import Lifecycle
from app.transport.guards import ADMIN_KEY


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

ROUTES_FOR: dict[ModelKind, str] = {
    ModelKind.DENSE: "/embed, /similarity or /v1/embeddings",
    ModelKind.SPARSE: "/embed_sparse",
    ModelKind.RERANK: "/rerank, /v1/rerank or /v2/rerank",
}


def engine_for(models: ModelRegistry, model: str | None, kind: ModelKind) -> Engine:
    """The engine serving ``model``, which must be of ``kind``; else ``WrongModelKind`` naming
    the routes that do serve it. Without ``model``: the default model, or, where that is of
    another kind, the one model of ``kind`` served."""
    if model is None:
        of_kind = [engine for engine in models if engine.info.kind == kind]
        if len(of_kind) == 1 and models.get(None).info.kind != kind:
            return of_kind[0]
    engine = models.get(model)
    served = engine.info.kind
    if served != kind:
        raise WrongModelKind(
            f"{engine.model_id} is a {served} model, which this route does not serve; "
            f"send it to {ROUTES_FOR[served]}"
        )
    return engine


def readiness(request: Request) -> None:
    """``ShuttingDown`` from the moment the server is told to stop (the models dependency says
    ``NotReady`` before they are loaded)."""
    if getattr(request.app.state, "draining", False):
        raise ShuttingDown("the server is shutting down; send requests to another replica")


async def get_lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle | None = getattr(request.state, "lifecycle", None)
    if lifecycle is None:
        raise NotReady("the model repository is not open yet; retry shortly")
    return lifecycle


LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]


def key_of(request: Request) -> str:
    """The admin key of the request, as the log names it: by position, never the key."""
    return f"admin key #{request.scope.get(ADMIN_KEY, '?')}"
