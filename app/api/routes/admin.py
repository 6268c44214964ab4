"""``/admin/``: the model repository over REST (register, deploy, undeploy, delete, the default).

Mounted only with ``EMBED_ADMIN_KEYS`` set; ``app.transport.guards.AdminKeyMiddleware`` lets
through only requests with an admin key. The work is ``app.lifecycle``'s; these routes read the
request and shape the answer.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from app.api.deps import LifecycleDep, key_of
from app.api.errors import error_responses
from app.api.schemas import DefaultModel, DefaultModelResponse, VersionRecord
from app.api.upload import receive_upload
from app.errors import ErrorCode

ADMIN_ERRORS = (ErrorCode.INVALID_API_KEY, ErrorCode.NOT_ADMIN, ErrorCode.NOT_READY)
router = APIRouter(prefix="/admin", tags=["admin"], responses=error_responses(*ADMIN_ERRORS))


Name = Annotated[str, Path(description="The model's name.", examples=["minilm"])]
Number = Annotated[int, Path(description="One of its versions: 1, 2, ...", examples=[1])]


UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "file"],
                    "properties": {
                        "name": {
                            "type": "string",
                            "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$",
                            "description": "The model's name; each registration is its next "
                            "version.",
                        },
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The bundle's zip (scripts/export_onnx.py --archive).",
                        },
                        "description": {"type": "string", "maxLength": 4096},
                    },
                }
            }
        },
    }
}


@router.post(
    "/models",
    status_code=201,
    response_model=VersionRecord,
    openapi_extra=UPLOAD_FORM,
    responses={
        200: {"model": VersionRecord, "description": "Identical content: the version it is."},
        **error_responses(
            ErrorCode.VALIDATION_ERROR,
            ErrorCode.INVALID_ARCHIVE,
            ErrorCode.INVALID_BUNDLE,
            ErrorCode.MODEL_EXISTS,
            ErrorCode.PAYLOAD_TOO_LARGE,
        ),
    },
)
async def register(request: Request, lifecycle: LifecycleDep) -> JSONResponse:
    """Register a bundle archive as the next version of a model: checked whole (archive safety,
    manifest, graph, a test sentence, parity with its reference) before it is stored. A new
    version is a 201; content identical to a version there already is that version, a 200."""
    settings = request.app.state.settings
    target = lifecycle.repository.upload_path()
    try:
        with lifecycle.action("register", "an upload", key_of(request)) as done:
            upload = await receive_upload(request, target, settings.max_upload_bytes)
            record, created = await lifecycle.register(upload.file, upload.name, upload.description)
            done(f"{record['name']}@{record['version']}" + ("" if created else " (known)"))
    finally:
        target.unlink(missing_ok=True)
    return JSONResponse(record, status_code=201 if created else 200)


@router.get("/models", response_model=list[VersionRecord])
async def list_models(lifecycle: LifecycleDep) -> list[dict[str, Any]]:
    """Every version of every model: the settings' bundles, then the uploaded ones."""
    return await lifecycle.records()


@router.get(
    "/models/{name}",
    response_model=list[VersionRecord],
    responses=error_responses(ErrorCode.MODEL_NOT_FOUND),
)
async def model_versions(name: Name, lifecycle: LifecycleDep) -> list[dict[str, Any]]:
    """Every version of one model, oldest first."""
    return await lifecycle.records(name)


VERSION_ERRORS = (ErrorCode.MODEL_NOT_FOUND, ErrorCode.VERSION_NOT_FOUND)


@router.post(
    "/models/{name}/versions/{version}/deploy",
    response_model=VersionRecord,
    responses=error_responses(
        *VERSION_ERRORS, ErrorCode.DEPLOY_IN_PROGRESS, ErrorCode.DEPLOY_FAILED
    ),
)
async def deploy(
    name: Name, version: Number, request: Request, lifecycle: LifecycleDep
) -> dict[str, Any]:
    """Load and warm this version (every route keeps answering), then make it the one
    ``"model": "<name>"`` reaches; the version it replaces finishes its requests and is
    unloaded. A load that fails is a 422 and leaves the deployed version as it was."""
    return await lifecycle.deploy(name, version, key_of(request))


@router.post(
    "/models/{name}/versions/{version}/undeploy",
    response_model=VersionRecord,
    responses=error_responses(
        *VERSION_ERRORS, ErrorCode.MODEL_IS_DEFAULT, ErrorCode.DEPLOY_IN_PROGRESS
    ),
)
async def undeploy(
    name: Name, version: Number, request: Request, lifecycle: LifecycleDep
) -> dict[str, Any]:
    """Stop serving this version; its memory goes back once its last request is done."""
    return await lifecycle.undeploy(name, version, key_of(request))


@router.delete(
    "/models/{name}/versions/{version}",
    response_model=VersionRecord,
    responses=error_responses(*VERSION_ERRORS, ErrorCode.MODEL_DEPLOYED),
)
async def delete_version(
    name: Name, version: Number, request: Request, lifecycle: LifecycleDep
) -> dict[str, Any]:
    """Remove one version's files; refused while it is deployed, and for the settings'
    bundles."""
    removed = await lifecycle.delete(name, version, key_of(request))
    return removed[0]


@router.delete(
    "/models/{name}",
    response_model=list[VersionRecord],
    responses=error_responses(ErrorCode.MODEL_NOT_FOUND, ErrorCode.MODEL_DEPLOYED),
)
async def delete_model(
    name: Name, request: Request, lifecycle: LifecycleDep
) -> list[dict[str, Any]]:
    """Remove every version of a model; refused while one is deployed."""
    return await lifecycle.delete(name, None, key_of(request))


@router.get("/default-model", response_model=DefaultModelResponse)
async def default_model(lifecycle: LifecycleDep) -> dict[str, str]:
    """The model a request without ``model`` gets."""
    return {"default": lifecycle.models.default_id}


@router.put(
    "/default-model",
    response_model=DefaultModelResponse,
    responses=error_responses(ErrorCode.MODEL_NOT_FOUND, ErrorCode.VALIDATION_ERROR),
)
async def set_default_model(
    body: DefaultModel, request: Request, lifecycle: LifecycleDep
) -> dict[str, str]:
    """Make a deployed model the default, here and on every replica of the repository."""
    return {"default": await lifecycle.set_default(body.model, key_of(request))}
