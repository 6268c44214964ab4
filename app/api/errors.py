"""Turning every failure into ``{"error": {...}}`` with the status from ``app.errors.ERROR_TABLE``.

Starlette's and FastAPI's own errors (no route, bad JSON, schema mismatch) are first translated
into ``ServiceError``s, so one function renders every error response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from app.errors import (
    ERROR_TABLE,
    ErrorCode,
    InvalidJSON,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    ValidationFailed,
    cut,
)

_FROM_STATUS: dict[int, type[ServiceError]] = {
    400: InvalidJSON,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


OPENAI_PREFIX = "/v1/"
INFERENCE_PROTOCOL = ("/v2/models", "/v2/health", "/v2/repository")
"""The Open Inference Protocol's paths, and ``/v2`` itself (``/v2/rerank`` is Cohere's)."""


def speaks_inference_protocol(path: str) -> bool:
    return path == "/v2" or path.startswith(INFERENCE_PROTOCOL)


def render_error(
    error: ServiceError, headers: Mapping[str, str] | None = None, *, path: str = ""
) -> Response:
    """The one place an error becomes an HTTP response. Under ``/v1/`` the body also carries
    OpenAI's ``param`` (the field at fault, or null), which its client libraries read. Under the
    Open Inference Protocol's ``/v2`` paths it has that protocol's shape, ``{"error": "..."}``,
    and what is a 422 elsewhere is a 400 there."""
    if speaks_inference_protocol(path):
        status = 400 if error.status == 422 else error.status
        return Response(
            orjson.dumps({"error": error.message}),
            status,
            headers=headers or error.headers,
            media_type="application/json",
        )
    detail: dict[str, Any] = {
        "message": error.message,
        "type": error.type,
        "code": error.code.value,
    }
    if path.startswith(OPENAI_PREFIX):
        detail["param"] = error.param
    return Response(
        orjson.dumps({"error": detail}),
        error.status,
        headers=headers or error.headers,
        media_type="application/json",
    )


TEXT_ERRORS = (
    ErrorCode.INVALID_JSON,
    ErrorCode.INVALID_API_KEY,
    ErrorCode.MODEL_NOT_FOUND,
    ErrorCode.VALIDATION_ERROR,
    ErrorCode.INVALID_TEXT,
    ErrorCode.PAYLOAD_TOO_LARGE,
    ErrorCode.NOT_READY,
)
"""What a route that takes texts and a model can answer: /tokenize, and every embedding route."""

EMBEDDING_ERRORS = (
    *TEXT_ERRORS,
    ErrorCode.WRONG_MODEL_KIND,
    ErrorCode.INPUT_TOO_LONG,
    ErrorCode.OVERLOADED,
    ErrorCode.TIMEOUT,
)
"""...and, for a route whose texts go through the queue to the model, these as well."""


def error_responses(*codes: ErrorCode, model: Any = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` declaring the error statuses a route can give, with the body
    ``model`` (``ErrorResponse`` unless given)."""
    from app.api.schemas import ErrorResponse

    declared: dict[int | str, dict[str, Any]] = {}
    for code in (*codes, ErrorCode.INTERNAL_ERROR):
        row = ERROR_TABLE[code]
        status = 400 if model is not None and row.status == 422 else row.status
        entry = declared.setdefault(status, {"model": model or ErrorResponse, "description": ""})
        entry["description"] = ", ".join(filter(None, [entry["description"], code.value]))
    return declared


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """One readable line from pydantic's error list, e.g. ``body.normalize: Input should be...``."""
    parts = []
    for err in errors[:5]:
        where = ".".join(cut(str(p)) for p in err.get("loc", ()))
        message = err.get("msg", "invalid")
        if err.get("type") in {"model_attributes_type", "dict_type"} and len(err["loc"]) == 1:
            message += " (send a JSON object with Content-Type: application/json)"
        parts.append(f"{where}: {message}")
    more = len(errors) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return render_error(exc, path=request.url.path)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        detail = errors[0].get("ctx", {}).get("error", "malformed JSON")
        error: ServiceError = InvalidJSON(f"the body is not valid JSON: {detail}")
    else:
        error = ValidationFailed(describe_validation_errors(errors))
        location = [str(part) for part in errors[0].get("loc", ())[1:2]] if errors else []
        error.param = location[0] if location else None
    return render_error(error, path=request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = _FROM_STATUS.get(exc.status_code)
    if kind is NotFound:
        error: ServiceError = NotFound(f"no route {cut(request.url.path)}; see /docs")
    elif kind is MethodNotAllowed:
        error = MethodNotAllowed(f"{cut(request.method)} is not allowed on {cut(request.url.path)}")
    elif kind is InvalidJSON:
        error = InvalidJSON("the body is not valid JSON in UTF-8")
    elif kind is not None:
        error = kind(str(exc.detail))
    else:  # a status this service never raises on purpose: as unexpected as any exception
        raise exc
    return render_error(error, exc.headers, path=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    """Route every expected kind of failure to the one renderer. Anything else is caught by
    ``app.transport.context.ErrorGuard``, inside the request-id and CORS layers."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
